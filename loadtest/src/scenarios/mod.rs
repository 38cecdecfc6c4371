//! Scenarios: each sets up its own users, events and packets through the
//! API, measures the HTTP ceiling, runs its stages, then checks the
//! guarantees. `pay` runs the whole purchase through the sandbox channels.

pub mod grab;
pub mod mixed;
pub mod pay;
pub mod queue;
pub mod seats;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::api::Api;
use crate::checks::{Check, Checks};
use crate::load::{drive, Ceiling, LoadOpts, Model, StageResult, Workload};
use crate::sample::{summarize, Sampler};
use grab::{check_balances, GrabLoad, Packets, Sender};
use seats::{CategoryLoad, Events, NamedLoad, OpeningLoad};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    Grab,
    Seats,
    Mixed,
    Pay,
    /// A sale behind a waiting room (`queue.rs`).
    Opening,
}

#[derive(Clone, Debug)]
pub struct RunOpts {
    pub addr: SocketAddr,
    /// More nodes sharing `addr`'s stores; load connections go round them.
    pub also: Vec<SocketAddr>,
    pub scenario: Scenario,
    pub model: Model,
    pub concurrency: usize,
    pub duration: Duration,
    /// Distinct users (each gets a token).
    pub users: usize,
    /// Parts per packet.
    pub parts: u32,
    /// Packets per grab stage (and in mixed).
    pub packets: usize,
    /// Packets at once in the spread grab stage.
    pub spread: usize,
    /// Events per seats stage (and in mixed).
    pub events: usize,
    /// Rows and cols of each of an event's two sections.
    pub rows: u32,
    pub cols: u32,
    /// How long to wait for workers to settle before checking balances.
    pub settle_s: u64,
    pub ceiling: bool,
    pub progress: bool,
    /// Run only the stage of this name (e.g. `grab-hot`); checks still run.
    pub only: Option<String>,
    /// Where `/metrics` is sampled (rush's nodes and `rush worker`); empty:
    /// no sampling, no lag or CPU figures.
    pub metrics: Vec<SocketAddr>,
    pub sample_every: Duration,
    /// A stage whose durable projection is further behind than this (p99,
    /// seconds) fails the run.
    pub lag_max_s: f64,
    /// A stage whose events are not all persisted this long after its load
    /// ends fails the run.
    pub drain_max_s: f64,
    /// Scenario `opening`: the waiting room's admissions per second.
    pub admit_per_s: u32,
    /// Scenario `seats`: idle live-update streams held open on the first
    /// event while the stages run (the fan-out's cost on the hot path).
    pub subscribers: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    #[serde(flatten)]
    pub model: Model,
    pub concurrency: usize,
    pub duration_s: f64,
    pub started_at: String,
    pub machine: Machine,
    pub ceiling: Option<StageResult>,
    pub stages: Vec<StageResult>,
    /// Successful operations per second of each stage over the ceiling's requests per second.
    pub ceiling_ratio: Vec<(String, f64)>,
    /// rush's CPU per successful operation of each stage (persistence
    /// included) over its CPU per ceiling request.
    pub cpu_ratio: Vec<(String, f64)>,
    /// From the end of the load until every grabber's wallet was right.
    pub wallets_settled_s: Option<f64>,
    pub checks: Vec<Check>,
    pub violations: usize,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub os: String,
}

impl RunOpts {
    fn load(&self) -> LoadOpts {
        LoadOpts {
            addrs: std::iter::once(self.addr).chain(self.also.iter().copied()).collect(),
            concurrency: self.concurrency,
            model: self.model,
            duration: self.duration,
            progress: self.progress,
        }
    }
}

/// Polls for "nothing behind" this often after a stage.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Runs one stage; with a sampler, also how far the durable side was
/// behind during it, how long it took to catch up after it, and rush's CPU
/// per successful operation until then, each checked against its bound.
async fn stage(
    name: &str,
    opts: &RunOpts,
    w: Arc<dyn Workload>,
    sampler: Option<&Sampler>,
    checks: &mut Checks,
) -> StageResult {
    let before = match sampler {
        Some(s) => s.now().await,
        None => None,
    };
    let start = std::time::Instant::now();
    let mut r = drive(name, &opts.load(), w).await;
    let (Some(sampler), Some(before)) = (sampler, before) else { return r };
    let end = std::time::Instant::now();
    let lag = summarize(&sampler.between(start, end));
    // The ceiling's `/healthz` writes nothing: nothing to wait for or check.
    let persists = name != "ceiling";
    let drained = if persists {
        sampler.drained(Duration::from_secs(opts.settle_s), DRAIN_POLL).await
    } else {
        Some(Duration::ZERO)
    };
    if let Some(after) = sampler.now().await {
        if r.ok > 0 && drained.is_some() {
            r.cpu_us_per_ok = Some((after.cpu_s - before.cpu_s).max(0.0) * 1e6 / r.ok as f64);
        }
    }
    r.drain_s = drained.map(|d| d.as_secs_f64());
    if persists {
        let keeps_up = if lag.seconds_p99 <= opts.lag_max_s {
            vec![]
        } else {
            vec![format!(
                "lag p99 {:.2} s > {} s ({:.0} events; the last quarter's backlog is {:.1}× the second's)",
                lag.seconds_p99, opts.lag_max_s, lag.events_p99, lag.growth
            )]
        };
        checks.each(&format!("{name}: the durable side keeps up (lag p99 ≤ {} s)", opts.lag_max_s), 1, keeps_up);
        let settled = match r.drain_s {
            Some(d) if d <= opts.drain_max_s => vec![],
            Some(d) => vec![format!("{d:.2} s")],
            None => vec![format!("still behind after {} s", opts.settle_s)],
        };
        checks.each(&format!("{name}: everything persisted ≤ {} s after the load", opts.drain_max_s), 1, settled);
    }
    r.lag = Some(lag);
    r
}

impl RunOpts {
    fn runs(&self, stage: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == stage)
    }
}

pub async fn run(opts: RunOpts) -> anyhow::Result<Report> {
    let started_at = chrono::Utc::now().to_rfc3339();
    let run_id = format!("lt{:08x}", fastrand::u32(..));
    let mut api = Api::new(opts.addr, &run_id).await?;
    let users: Vec<String> = (0..opts.users).map(|i| format!("{run_id}-u{i}")).collect();
    let tokens = Arc::new(api.tokens(&users).await?);
    let sampler = (!opts.metrics.is_empty()).then(|| Sampler::start(opts.metrics.clone(), opts.sample_every));
    let sampler = sampler.as_ref();
    let mut checks = Checks::default();
    // How long after the last stage drained every wallet was right.
    let mut wallets = None;

    // The ceiling is the most the machine serves: always closed loop.
    let ceiling = if opts.ceiling {
        let closed = RunOpts { model: Model::Closed, ..opts.clone() };
        Some(stage("ceiling", &closed, Arc::new(Ceiling::new()), sampler, &mut checks).await)
    } else {
        None
    };
    let mut stages = Vec::new();
    match opts.scenario {
        Scenario::Grab => {
            let (packets, sender) = make_packets(&mut api, &run_id, opts.packets * 2, opts.parts).await?;
            let n = opts.packets;
            let hot = GrabLoad::new(packets.clone(), tokens.clone(), 0, n, 1, opts.concurrency);
            if opts.runs("grab-hot") {
                stages.push(stage("grab-hot", &opts, Arc::new(hot), sampler, &mut checks).await);
            }
            let spread = GrabLoad::new(packets.clone(), tokens.clone(), n, 2 * n, opts.spread.min(n), opts.concurrency);
            if opts.runs("grab-spread") {
                stages.push(stage("grab-spread", &opts, Arc::new(spread), sampler, &mut checks).await);
            }
            packets.check(&api, &users, &sender.token, &mut checks).await?;
            wallets = check_balances(&api, &packets, &users, &tokens, &sender, opts.settle_s, &mut checks).await?;
        }
        Scenario::Seats => {
            let n = opts.events;
            if opts.runs("seats-category") || opts.runs("seats-named") {
                let events = Arc::new(Events::create(&mut api, &run_id, 2 * n, opts.rows, opts.cols).await?);
                let subs = if opts.subscribers > 0 {
                    // A watched event of its own, changed ten times a second
                    // through the stage (a hold, then its cancel): the
                    // fan-out runs at its bound while the stage measures.
                    let sections = serde_json::json!([{"name": "W", "rows": 10, "cols": 10, "category": "a"}]);
                    let watched = api.create_event(&format!("{run_id}-watched"), sections).await?;
                    let path = format!("/v1/events/{watched}/stream");
                    // RUSH_LT_SUBSCRIBERS_QUIET=1: the subscribers read
                    // nothing during the stage (rush's own cost alone).
                    let quiet = std::env::var("RUSH_LT_SUBSCRIBERS_QUIET").is_ok_and(|v| v == "1");
                    let read_after = quiet.then(|| tokio::time::Instant::now() + Duration::from_secs(60));
                    let mut subs = crate::subscribers::Subscribers::open(
                        &opts.load().addrs,
                        &path,
                        &tokens[0],
                        opts.subscribers,
                        read_after,
                    )
                    .await?;
                    subs.churn(opts.addr, &watched, tokens[1].clone());
                    subs.settled(opts.subscribers, Duration::from_secs(120)).await;
                    eprintln!(
                        "{} of {} live update streams open, {} bytes of snapshots received",
                        subs.open.load(Ordering::Relaxed),
                        opts.subscribers,
                        subs.bytes.load(Ordering::Relaxed)
                    );
                    Some(subs)
                } else {
                    None
                };
                let by_category = CategoryLoad::new(events.clone(), tokens.clone(), 0, n);
                if opts.runs("seats-category") {
                    stages.push(stage("seats-category", &opts, Arc::new(by_category), sampler, &mut checks).await);
                }
                let named = NamedLoad::new(events.clone(), tokens.clone(), n, 2 * n);
                if opts.runs("seats-named") {
                    stages.push(stage("seats-named", &opts, Arc::new(named), sampler, &mut checks).await);
                }
                if let Some(subs) = subs {
                    eprintln!(
                        "live update streams: {} open, {} changes messages, {} bytes received",
                        subs.open.load(Ordering::Relaxed),
                        subs.changes.load(Ordering::Relaxed),
                        subs.bytes.load(Ordering::Relaxed)
                    );
                    subs.close();
                }
                events.check(&api, &users, &mut checks).await?;
            }
            if opts.runs("opening") {
                // Opens a third into the stage: every connection is sending by then.
                let third = i64::try_from(opts.duration.as_millis() / 3).unwrap_or(i64::MAX);
                let opens = chrono::Utc::now() + chrono::Duration::milliseconds(third);
                let opens = chrono::DateTime::from_timestamp_millis(opens.timestamp_millis()).unwrap_or(opens);
                let at = opens.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                let one = Events::create_opening(&mut api, &run_id, 1, opts.rows, opts.cols, Some(&at)).await?;
                let one = Arc::new(one);
                let load = Arc::new(OpeningLoad::new(one.clone(), tokens.clone(), 0, opens.timestamp_millis()));
                stages.push(stage("opening", &opts, load.clone(), sampler, &mut checks).await);
                load.check(&mut checks);
                one.check(&api, &users, &mut checks).await?;
            }
        }
        Scenario::Mixed => {
            let events = Arc::new(Events::create(&mut api, &run_id, opts.events, opts.rows, opts.cols).await?);
            let (packets, sender) = make_packets(&mut api, &run_id, opts.packets, opts.parts).await?;
            let mixed = mixed::MixedLoad::new(events.clone(), packets.clone(), tokens.clone());
            if opts.runs("mixed") {
                stages.push(stage("mixed", &opts, Arc::new(mixed), sampler, &mut checks).await);
            }
            events.check(&api, &users, &mut checks).await?;
            packets.check(&api, &users, &sender.token, &mut checks).await?;
            wallets = check_balances(&api, &packets, &users, &tokens, &sender, opts.settle_s, &mut checks).await?;
        }
        Scenario::Opening => {
            let event = queue::create_event(&mut api, &run_id, opts.rows, opts.cols, opts.admit_per_s).await?;
            let mut q = queue::QueueRun::new(event, opts.users, opts.admit_per_s);
            let joins = Arc::new(q.join_load(tokens.clone()));
            // Joins until every pre-queue user is in, however long it takes.
            let long = RunOpts { duration: Duration::from_secs(3600), model: Model::Closed, ..opts.clone() };
            if opts.runs("queue-join") || opts.runs("queue-admit") {
                stages.push(stage("queue-join", &long, joins, sampler, &mut checks).await);
            }
            q.open_and_join_late(&mut api, &tokens, OPENING_AFTER_JOINS_MS).await?;
            // Long enough to admit everyone at the rate, and five seconds more.
            let secs = (opts.users as u64).div_ceil(u64::from(opts.admit_per_s.max(1))) + 5;
            let admit = RunOpts {
                duration: opts.duration.max(Duration::from_secs(secs)),
                model: Model::Closed,
                ..opts.clone()
            };
            let load = Arc::new(q.admit_load(tokens.clone(), opts.concurrency));
            if opts.runs("queue-admit") {
                stages.push(stage("queue-admit", &admit, load, sampler, &mut checks).await);
            }
            q.check(&mut api, &mut checks).await?;
        }
        Scenario::Pay => {
            let events = pay::events(&mut api, &run_id, opts.events, opts.rows, opts.cols).await?;
            let before = pay::succeeded_count(&mut api).await?;
            let load = Arc::new(pay::PayLoad::new(events, tokens.clone()));
            if opts.runs("pay") {
                stages.push(stage("pay", &opts, load.clone(), sampler, &mut checks).await);
            }
            load.check(&mut api, before, opts.settle_s, &mut checks).await?;
        }
    }
    let ceiling_ratio = match &ceiling {
        Some(c) if c.ok_per_s > 0.0 => stages.iter().map(|s| (s.name.clone(), s.ok_per_s / c.ok_per_s)).collect(),
        _ => vec![],
    };
    // The last stage's load ended `drain_s` before the wallets were checked.
    let wallets_settled_s = wallets.map(|w| w + stages.last().and_then(|s| s.drain_s).unwrap_or(0.0));
    let cpu_ratio = match ceiling.as_ref().and_then(|c| c.cpu_us_per_ok) {
        Some(c) if c > 0.0 => stages.iter().filter_map(|s| s.cpu_us_per_ok.map(|u| (s.name.clone(), u / c))).collect(),
        _ => vec![],
    };
    Ok(Report {
        scenario: opts.scenario,
        model: opts.model,
        concurrency: opts.concurrency,
        duration_s: opts.duration.as_secs_f64(),
        started_at,
        machine: Machine {
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            os: std::env::consts::OS.to_string(),
        },
        ceiling,
        stages,
        ceiling_ratio,
        cpu_ratio,
        wallets_settled_s,
        violations: checks.violations(),
        checks: checks.checks,
    })
}

/// Scenario `opening`: the sale opens this long after the last pre-queue
/// join.
const OPENING_AFTER_JOINS_MS: i64 = 2_000;

/// Below rush's default `orders.credit_max_fen`.
const CREDIT_SLICE_FEN: i64 = 50_000_000;

/// A funded sender and `count` lucky packets of `parts` parts (100 fen a
/// part on average), and who sent them.
async fn make_packets(api: &mut Api, run_id: &str, count: usize, parts: u32) -> anyhow::Result<(Arc<Packets>, Sender)> {
    let sender = format!("{run_id}-sender");
    let total = i64::from(parts) * 100;
    let credit = total * count as i64;
    // Credited in slices under rush's largest single credit.
    let mut left = credit;
    while left > 0 {
        let slice = left.min(CREDIT_SLICE_FEN);
        api.credit(&sender, slice).await?;
        left -= slice;
    }
    let token = api.tokens(std::slice::from_ref(&sender)).await?.remove(0);
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(api.create_packet(&token, "lucky", total, parts).await?);
    }
    Ok((Arc::new(Packets::new(ids, vec![total; count])), Sender { token, credit }))
}
