//! Scenarios: each sets up its own users, events and packets through the
//! API, measures the HTTP ceiling, runs its stages, then checks the
//! guarantees. `pay` runs the whole purchase through the sandbox channels.

pub mod grab;
pub mod mixed;
pub mod pay;
pub mod seats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::api::Api;
use crate::checks::{Check, Checks};
use crate::load::{drive, Ceiling, LoadOpts, Model, StageResult, Workload};
use grab::{check_balances, GrabLoad, Packets, Sender};
use seats::{CategoryLoad, Events, NamedLoad};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    Grab,
    Seats,
    Mixed,
    Pay,
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

async fn stage(name: &str, opts: &RunOpts, w: Arc<dyn Workload>) -> StageResult {
    drive(name, &opts.load(), w).await
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

    // The ceiling is the most the machine serves: always closed loop.
    let ceiling = if opts.ceiling {
        let closed = RunOpts { model: Model::Closed, ..opts.clone() };
        Some(stage("ceiling", &closed, Arc::new(Ceiling::new())).await)
    } else {
        None
    };
    let mut checks = Checks::default();
    let mut stages = Vec::new();
    match opts.scenario {
        Scenario::Grab => {
            let (packets, sender) = make_packets(&mut api, &run_id, opts.packets * 2, opts.parts).await?;
            let n = opts.packets;
            let hot = GrabLoad::new(packets.clone(), tokens.clone(), 0, n, 1, opts.concurrency);
            if opts.runs("grab-hot") {
                stages.push(stage("grab-hot", &opts, Arc::new(hot)).await);
            }
            let spread = GrabLoad::new(packets.clone(), tokens.clone(), n, 2 * n, opts.spread.min(n), opts.concurrency);
            if opts.runs("grab-spread") {
                stages.push(stage("grab-spread", &opts, Arc::new(spread)).await);
            }
            packets.check(&api, &users, &sender.token, &mut checks).await?;
            check_balances(&api, &packets, &users, &tokens, &sender, opts.settle_s, &mut checks).await?;
        }
        Scenario::Seats => {
            let n = opts.events;
            let events = Arc::new(Events::create(&mut api, &run_id, 2 * n, opts.rows, opts.cols).await?);
            let by_category = CategoryLoad::new(events.clone(), tokens.clone(), 0, n);
            if opts.runs("seats-category") {
                stages.push(stage("seats-category", &opts, Arc::new(by_category)).await);
            }
            let named = NamedLoad::new(events.clone(), tokens.clone(), n, 2 * n);
            if opts.runs("seats-named") {
                stages.push(stage("seats-named", &opts, Arc::new(named)).await);
            }
            events.check(&api, &users, &mut checks).await?;
        }
        Scenario::Mixed => {
            let events = Arc::new(Events::create(&mut api, &run_id, opts.events, opts.rows, opts.cols).await?);
            let (packets, sender) = make_packets(&mut api, &run_id, opts.packets, opts.parts).await?;
            let mixed = mixed::MixedLoad::new(events.clone(), packets.clone(), tokens.clone());
            if opts.runs("mixed") {
                stages.push(stage("mixed", &opts, Arc::new(mixed)).await);
            }
            events.check(&api, &users, &mut checks).await?;
            packets.check(&api, &users, &sender.token, &mut checks).await?;
            check_balances(&api, &packets, &users, &tokens, &sender, opts.settle_s, &mut checks).await?;
        }
        Scenario::Pay => {
            let events = pay::events(&mut api, &run_id, opts.events, opts.rows, opts.cols).await?;
            let before = pay::succeeded_count(&mut api).await?;
            let load = Arc::new(pay::PayLoad::new(events, tokens.clone()));
            if opts.runs("pay") {
                stages.push(stage("pay", &opts, load.clone()).await);
            }
            load.check(&mut api, before, opts.settle_s, &mut checks).await?;
        }
    }
    let ceiling_ratio = match &ceiling {
        Some(c) if c.ok_per_s > 0.0 => stages.iter().map(|s| (s.name.clone(), s.ok_per_s / c.ok_per_s)).collect(),
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
        violations: checks.violations(),
        checks: checks.checks,
    })
}

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
