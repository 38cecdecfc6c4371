//! `rush-latency-proxy`: a TCP proxy that adds a fixed delay to each
//! direction, to stand in for a network between rush and Redis (or any
//! store) on one machine, where netem and toxiproxy are not available.
//!
//! Each direction of each connection is a reader thread and a writer
//! thread: the reader stamps every chunk it reads with the time it
//! arrived, the writer sends it on no earlier than that time plus the
//! delay. Chunks are never held back by the ones before them beyond their
//! own due time, so a pipelined client sees the added round trip once per
//! round trip, not once per command: a wire, not a queue. Blocking sockets
//! and OS threads (a thread's `nanosleep` with the timer slack set to 1 µs)
//! keep delays of a tenth of a millisecond accurate, which an async timer
//! with millisecond ticks would not.
//!
//! `rush-latency-proxy --listen 127.0.0.1:6380 --upstream 127.0.0.1:6379 --delay-us 250`
//! adds 0.25 ms each way (0.5 ms per round trip).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(name = "rush-latency-proxy", about = "TCP proxy adding a delay per direction (loopback only)", version)]
struct Cli {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    upstream: SocketAddr,
    /// Microseconds added to each direction (client → upstream and back),
    /// unless `--delay-up-us` / `--delay-down-us` say otherwise.
    #[arg(long, default_value_t = 0)]
    delay_us: u64,
    /// Microseconds added client → upstream.
    #[arg(long)]
    delay_up_us: Option<u64>,
    /// Microseconds added upstream → client.
    #[arg(long)]
    delay_down_us: Option<u64>,
}

/// Bytes read at once.
const CHUNK: usize = 64 * 1024;

fn pump(from: TcpStream, to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let mut reader = from;
    let read = std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = reader.shutdown(Shutdown::Read);
    });
    let mut writer = to;
    for (due, bytes) in rx {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if writer.write_all(&bytes).is_err() {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Write);
    let _ = read.join();
}

fn serve(client: TcpStream, upstream: SocketAddr, up: Duration, down: Duration) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (c2, s2) = (client.try_clone()?, server.try_clone()?);
    std::thread::spawn(move || pump(client, server, up));
    std::thread::spawn(move || pump(s2, c2, down));
    Ok(())
}

/// Asks the kernel to wake sleeping threads within 1 µs of their time
/// (Linux; the default slack is 50 µs).
fn tight_timers() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches no
    // memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        cli.listen.ip().is_loopback() && cli.upstream.ip().is_loopback(),
        "the proxy only listens on and forwards to loopback addresses"
    );
    tight_timers();
    let up = Duration::from_micros(cli.delay_up_us.unwrap_or(cli.delay_us));
    let down = Duration::from_micros(cli.delay_down_us.unwrap_or(cli.delay_us));
    let listener = TcpListener::bind(cli.listen)?;
    println!(
        "{{\"listen\":\"{}\",\"upstream\":\"{}\",\"delay_up_us\":{},\"delay_down_us\":{}}}",
        listener.local_addr()?,
        cli.upstream,
        up.as_micros(),
        down.as_micros()
    );
    for conn in listener.incoming() {
        match conn {
            // Threads inherit the timer slack of the thread that makes them.
            Ok(c) => {
                if let Err(e) = serve(c, cli.upstream, up, down) {
                    eprintln!("upstream {}: {e}", cli.upstream);
                }
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
    Ok(())
}
