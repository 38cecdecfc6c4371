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
    /// seats-named or mixed (the ceiling and the checks still run).
    #[arg(long)]
    stage: Option<String>,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let addr = rush_loadtest::client::parse_base(&cli.url)?;
    let also = cli.also.iter().map(|u| rush_loadtest::client::parse_base(u)).collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(
        cli.concurrency > 0 && cli.users > 0 && cli.packets > 0 && cli.events > 0,
        "counts must be positive"
    );
    let opts = RunOpts {
        addr,
        also,
        scenario: cli.scenario,
        model: match cli.rate {
            Some(rate_per_s) => Model::Open { rate_per_s },
            None => Model::Closed,
        },
        concurrency: cli.concurrency,
        duration: Duration::from_secs(cli.duration),
        users: cli.users,
        parts: cli.parts,
        packets: cli.packets,
        spread: cli.spread,
        events: cli.events,
        rows: cli.rows,
        cols: cli.cols,
        settle_s: cli.settle,
        ceiling: !cli.no_ceiling,
        progress: true,
        only: cli.stage,
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
