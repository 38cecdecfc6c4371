//! `rush-loadtest`: run a scenario against a rush on loopback.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use rush_loadtest::load::Model;
use rush_loadtest::scenarios::{run, RunOpts, Scenario};

#[derive(Parser)]
#[command(name = "rush-loadtest", about = "Load-test rush and check its guarantees", version)]
struct Cli {
    /// rush's base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Another rush node on the same stores (repeatable): the load's
    /// connections are spread over `--url` and these, so the same hot
    /// packets and events are reached through every node. Setup and checks
    /// go through `--url`.
    #[arg(long)]
    also: Vec<String>,
    #[arg(long, value_enum, default_value = "grab")]
    scenario: Scenario,
    /// Concurrent connections (closed loop: requests in flight).
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Open loop at this many requests per second (latency from the intended
    /// send time); without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds per stage.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 20_000)]
    users: usize,
    /// Parts per packet (rush's packets.count_max bounds it).
    #[arg(long, default_value_t = 10_000)]
    parts: u32,
    /// Packets per grab stage; the stage ends early if all are emptied.
    #[arg(long, default_value_t = 60)]
    packets: usize,
    /// Packets grabbed at once in the spread stage.
    #[arg(long, default_value_t = 32)]
    spread: usize,
    /// Events per seats stage; each has two sections of rows × cols.
    #[arg(long, default_value_t = 20)]
    events: usize,
    #[arg(long, default_value_t = 50)]
    rows: u32,
    #[arg(long, default_value_t = 50)]
    cols: u32,
    /// Seconds to wait for rush's workers before checking balances.
    #[arg(long, default_value_t = 60)]
    settle: u64,
    /// Skip the HTTP ceiling measurement.
    #[arg(long)]
    no_ceiling: bool,
    /// Where the JSON result and SVG chart go.
    #[arg(long, default_value = "loadtest-results")]
    out: PathBuf,
    /// Run only this stage: grab-hot, grab-spread, seats-category,
    /// seats-named, opening (an event opening a third into the stage while
    /// every connection sends), mixed, pay, or queue-join / queue-admit of
    /// scenario `opening` (the ceiling and the checks still run).
    #[arg(long)]
    stage: Option<String>,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// A sustained run: open loop at this many requests per second for
    /// `--duration` (at least 60 s), with enough packets or events for the
    /// whole stage; the run fails if the durable side falls behind by more
    /// than `--lag-max` or does not catch up within `--drain-max`.
    #[arg(long, conflicts_with = "rate")]
    sustained: Option<f64>,
    /// `/metrics` of `rush worker` (full mode), sampled with the nodes'.
    #[arg(long)]
    worker_metrics: Vec<String>,
    /// Do not sample `/metrics` (no lag, settle or CPU figures or checks).
    #[arg(long)]
    no_sample: bool,
    /// Milliseconds between `/metrics` samples.
    #[arg(long, default_value_t = 250)]
    sample_ms: u64,
    /// Largest lag (p99, seconds behind) of the durable side a stage may
    /// show.
    #[arg(long, default_value_t = 2.0)]
    lag_max: f64,
    /// Seconds after a stage's load by which every event must be persisted.
    #[arg(long, default_value_t = 10.0)]
    drain_max: f64,
    /// Scenario `opening`: the waiting room's admissions per second.
    #[arg(long, default_value_t = 2_000)]
    admit_per_s: u32,
    /// Scenario `seats`: idle live-update (SSE) streams held open on the
    /// first event while the stages run.
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
}

/// Seconds of a sustained run at the least.
const SUSTAINED_S_MIN: u64 = 60;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let addr = rush_loadtest::client::parse_base(&cli.url)?;
    let also = cli.also.iter().map(|u| rush_loadtest::client::parse_base(u)).collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(
        cli.concurrency > 0 && cli.users > 0 && cli.packets > 0 && cli.events > 0,
        "counts must be positive"
    );
    let mut metrics = vec![];
    if !cli.no_sample {
        metrics.push(addr);
        metrics.extend(also.iter().copied());
        for u in &cli.worker_metrics {
            metrics.push(rush_loadtest::client::parse_base(u)?);
        }
    }
    let (mut duration, mut packets, mut events) = (cli.duration, cli.packets, cli.events);
    let model = match (cli.sustained, cli.rate) {
        (Some(rate), _) => {
            duration = duration.max(SUSTAINED_S_MIN);
            // Enough for the whole stage, with a tenth to spare.
            let ops = rate * duration as f64 * 1.1;
            packets = packets.max((ops / f64::from(cli.parts.max(1))).ceil() as usize);
            events = events.max((ops / (2.0 * f64::from(cli.rows) * f64::from(cli.cols)).max(1.0)).ceil() as usize);
            Model::Open { rate_per_s: rate }
        }
        (None, Some(rate_per_s)) => Model::Open { rate_per_s },
        (None, None) => Model::Closed,
    };
    let opts = RunOpts {
        addr,
        also,
        scenario: cli.scenario,
        model,
        concurrency: cli.concurrency,
        duration: Duration::from_secs(duration),
        users: cli.users,
        parts: cli.parts,
        packets,
        spread: cli.spread,
        events,
        rows: cli.rows,
        cols: cli.cols,
        settle_s: cli.settle,
        ceiling: !cli.no_ceiling,
        progress: true,
        only: cli.stage,
        metrics,
        sample_every: Duration::from_millis(cli.sample_ms.max(10)),
        lag_max_s: cli.lag_max,
        drain_max_s: cli.drain_max,
        admit_per_s: cli.admit_per_s,
        subscribers: cli.subscribers,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(cli.threads.max(1)).enable_all().build()?;
    let report = rt.block_on(run(opts))?;
    let (json, svg) = rush_loadtest::report::write(&report, &cli.out)?;
    print!("{}", rush_loadtest::report::summary(&report));
    println!("result: {}\nchart:  {}", json.display(), svg.display());
    if report.violations > 0 {
        anyhow::bail!("{} guarantee violation(s)", report.violations);
    }
    Ok(())
}
