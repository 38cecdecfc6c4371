//! `rush-actor-runtime`: the same actor on actix's actor runtime and as a
//! tokio task with a bounded mpsc mailbox (what rush's actors are), side by
//! side in one process, so the machine's noise hits both alike.
//!
//! The actor is a red packet's in-memory decision as rush's packet actor
//! makes it before its store call: a grab is refused if the user already
//! grabbed, else it takes the next part; every request carries a oneshot
//! for its answer, as in rush. Both mailboxes are bounded and refuse a send
//! when full (`try_send`: 503 `overloaded` in rush). The tokio actor drains
//! its mailbox in batches (`recv_many`, rush's `actors.batch_len_max`); the
//! actix actor handles one message per `Handler::handle` call, actix's
//! model. No store call: this measures the runtimes, not Redis.
//!
//! Two loads, each for `--seconds` per runtime, the runtimes alternated
//! `--rounds` times:
//! - `open`: `--clients` closed-loop clients (fewer than the mailbox
//!   holds): messages/s and the latency from send to answer;
//! - `full`: `--flood` clients against a mailbox of `--full-mailbox`: the
//!   mailbox stays full; messages/s answered, p99 of the answered, and the
//!   share refused.
//!
//! Both run on one thread (actix runs an actor on one arbiter thread; the
//! tokio actor gets a current-thread runtime too), then the tokio actor
//! once more on a two-thread runtime, which is how `rush serve` runs it.
//!
//! Only in-process channels: nothing goes over a network.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use clap::Parser;
use tokio::sync::{mpsc, oneshot};

#[derive(Parser, Clone)]
#[command(name = "rush-actor-runtime", about = "actix actor vs tokio task: the same actor, side by side")]
struct Opts {
    /// Seconds each runtime runs each load.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Times the runtimes are alternated.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Closed-loop clients of the `open` load.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Mailbox of the `open` load (rush's `actors.mailbox_len_max`).
    #[arg(long, default_value_t = 8192)]
    mailbox: usize,
    /// Clients of the `full` load.
    #[arg(long, default_value_t = 4096)]
    flood: usize,
    /// Mailbox of the `full` load.
    #[arg(long, default_value_t = 256)]
    full_mailbox: usize,
    /// The tokio actor's batch (rush's `actors.batch_len_max`).
    #[arg(long, default_value_t = 512)]
    batch: usize,
}

/// The packet's memory: who grabbed, what is left.
struct Packet {
    grabbed: HashSet<u64>,
    /// Parts left; the next part's amount is derived from it (rush pops a
    /// precomputed split: the same O(1) step).
    parts_left: u64,
}

#[derive(Debug, PartialEq)]
enum Refused {
    Already,
    Empty,
}

impl Packet {
    fn new() -> Self {
        // More parts than any run asks for: every grab is a real decision
        // that takes a part.
        Packet { grabbed: HashSet::new(), parts_left: u64::MAX }
    }

    fn grab(&mut self, user: u64) -> Result<u64, Refused> {
        if !self.grabbed.insert(user) {
            return Err(Refused::Already);
        }
        if self.parts_left == 0 {
            return Err(Refused::Empty);
        }
        self.parts_left -= 1;
        Ok(self.parts_left % 977 + 1)
    }
}

/// A grab with its answer's channel, as rush's `PacketMsg::Grab`.
#[derive(Message)]
#[rtype(result = "()")]
struct Grab {
    user: u64,
    reply: oneshot::Sender<Result<u64, Refused>>,
}

struct ActixPacket {
    packet: Packet,
    mailbox: usize,
}

impl Actor for ActixPacket {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

impl Handler<Grab> for ActixPacket {
    type Result = ();

    fn handle(&mut self, m: Grab, _: &mut Self::Context) {
        let _ = m.reply.send(self.packet.grab(m.user));
    }
}

/// Sends without waiting for room: `Err(grab)` back when the mailbox is full.
trait Mailbox: Clone + 'static {
    fn try_send(&self, g: Grab) -> Result<(), Grab>;
}

impl Mailbox for Addr<ActixPacket> {
    fn try_send(&self, g: Grab) -> Result<(), Grab> {
        Addr::try_send(self, g).map_err(|e| match e {
            SendError::Full(g) | SendError::Closed(g) => g,
        })
    }
}

impl Mailbox for mpsc::Sender<Grab> {
    fn try_send(&self, g: Grab) -> Result<(), Grab> {
        mpsc::Sender::try_send(self, g).map_err(|e| match e {
            mpsc::error::TrySendError::Full(g) | mpsc::error::TrySendError::Closed(g) => g,
        })
    }
}

/// The tokio actor: rush's loop, without the store call.
async fn tokio_packet(mut rx: mpsc::Receiver<Grab>, batch: usize) {
    let mut packet = Packet::new();
    let mut buf = Vec::with_capacity(batch);
    while rx.recv_many(&mut buf, batch).await > 0 {
        for m in buf.drain(..) {
            let _ = m.reply.send(packet.grab(m.user));
        }
    }
}

/// What a load measured.
#[derive(Default)]
struct Tally {
    answered: u64,
    refused: u64,
    /// Send-to-answer of every answered grab, in microseconds.
    latencies_us: Vec<u32>,
    elapsed: Duration,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.answered += other.answered;
        self.refused += other.refused;
        self.latencies_us.extend(other.latencies_us);
    }

    fn line(mut self, runtime: &str, load: &str) -> String {
        self.latencies_us.sort_unstable();
        let pct = |q: f64| -> f64 {
            if self.latencies_us.is_empty() {
                return 0.0;
            }
            let i = ((self.latencies_us.len() as f64 - 1.0) * q).round() as usize;
            f64::from(self.latencies_us[i])
        };
        let rate = self.answered as f64 / self.elapsed.as_secs_f64();
        let refused_pct = 100.0 * self.refused as f64 / (self.answered + self.refused).max(1) as f64;
        format!(
            "| {runtime} | {load} | {rate:.0} | {:.0} | {:.0} | {:.0} | {refused_pct:.1}% |",
            pct(0.5),
            pct(0.99),
            pct(0.999)
        )
    }
}

/// One closed-loop client: grab, wait for the answer, again, until `stop`.
/// A full mailbox is counted and the client yields before it tries again.
async fn client(mb: impl Mailbox, next_user: Rc<AtomicU64>, stop: Rc<AtomicBool>) -> Tally {
    let mut t = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let (reply, rx) = oneshot::channel();
        let user = next_user.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        match mb.try_send(Grab { user, reply }) {
            Ok(()) => {
                if let Ok(Ok(_)) = rx.await {
                    t.answered += 1;
                    t.latencies_us.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                }
            }
            Err(_) => {
                t.refused += 1;
                tokio::task::yield_now().await;
            }
        }
    }
    t
}

/// Runs `clients` clients on the current thread's local set for `seconds`.
async fn drive(mb: impl Mailbox, clients: usize, seconds: u64) -> Tally {
    let (next_user, stop) = (Rc::new(AtomicU64::new(1)), Rc::new(AtomicBool::new(false)));
    let started = Instant::now();
    let tasks: Vec<_> =
        (0..clients).map(|_| tokio::task::spawn_local(client(mb.clone(), next_user.clone(), stop.clone()))).collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for t in tasks {
        if let Ok(t) = t.await {
            total.merge(t);
        }
    }
    total.elapsed = started.elapsed();
    total
}

fn actix_run(o: &Opts, clients: usize, mailbox: usize) -> Tally {
    let (clients, seconds) = (clients, o.seconds);
    actix::System::new().block_on(async move {
        let addr = ActixPacket { packet: Packet::new(), mailbox }.start();
        drive(addr, clients, seconds).await
    })
}

fn tokio_run(o: &Opts, clients: usize, mailbox: usize) -> Tally {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => panic!("a current-thread runtime: {e}"),
    };
    let local = tokio::task::LocalSet::new();
    let (seconds, batch) = (o.seconds, o.batch);
    local.block_on(&rt, async move {
        let (tx, rx) = mpsc::channel(mailbox);
        tokio::spawn(tokio_packet(rx, batch));
        drive(tx, clients, seconds).await
    })
}

/// The tokio actor on a two-thread runtime; the clients on a local set of
/// one of its threads (they share `Rc`s), the actor free to run on the other.
fn tokio_mt_run(o: &Opts, clients: usize, mailbox: usize) -> Tally {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => panic!("a two-thread runtime: {e}"),
    };
    let (seconds, batch) = (o.seconds, o.batch);
    let (tx, rx) = mpsc::channel(mailbox);
    rt.spawn(tokio_packet(rx, batch));
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, drive(tx, clients, seconds))
}

fn main() {
    let o = Opts::parse();
    println!("| runtime | load | answered/s | p50 µs | p99 µs | p99.9 µs | refused |");
    println!("|---|---|---|---|---|---|---|");
    for round in 0..o.rounds {
        // Alternate which runtime goes first.
        let order: [&str; 3] =
            if round % 2 == 0 { ["actix", "tokio", "tokio-2t"] } else { ["tokio-2t", "tokio", "actix"] };
        for (load, clients, mailbox) in [("open", o.clients, o.mailbox), ("full", o.flood, o.full_mailbox)] {
            for runtime in order {
                let t = match runtime {
                    "actix" => actix_run(&o, clients, mailbox),
                    "tokio" => tokio_run(&o, clients, mailbox),
                    _ => tokio_mt_run(&o, clients, mailbox),
                };
                println!("{}", t.line(runtime, load));
            }
        }
    }
}
