//! The latency proxy passes bytes through unchanged, both ways, and adds
//! at least its delay to each direction.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

#[test]
fn bytes_pass_both_ways_and_each_direction_is_delayed() {
    // An echo server upstream.
    let upstream = TcpListener::bind("127.0.0.1:0").expect("bind");
    let up_addr = upstream.local_addr().expect("addr");
    std::thread::spawn(move || {
        for c in upstream.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rush-latency-proxy"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--upstream", &up_addr.to_string()])
        .args(["--delay-up-us", "3000", "--delay-down-us", "7000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn proxy");
    let mut banner = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut banner).expect("banner");
    let _proxy = Proxy(child);
    assert!(banner.contains("\"delay_up_us\":3000") && banner.contains("\"delay_down_us\":7000"), "{banner}");

    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    for round in 0..5u8 {
        let msg: Vec<u8> = (0..1000u32).map(|i| (i as u8).wrapping_add(round)).collect();
        let sent = Instant::now();
        c.write_all(&msg).expect("write");
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).expect("read");
        let rtt = sent.elapsed();
        assert_eq!(got, msg, "round {round}: bytes changed");
        assert!(rtt >= Duration::from_millis(10), "round {round}: round trip {rtt:?} < 3 ms + 7 ms");
    }
    // A half-closed client: the upstream sees the end, and so do we.
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("eof");
    assert!(rest.is_empty());
}
