//! The `rush` binary: load config, start telemetry, run a subcommand.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use rush_engine::Config;
use rush_gateway::commands;

#[derive(Parser)]
#[command(name = "rush", about = "rush flash-sale engine", version)]
struct Cli {
    /// TOML config file (layered over defaults, under RUSH__SECTION__FIELD env vars).
    #[arg(long, global = true, env = "RUSH_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API with its actors and in-process workers (in full
    /// mode: the relay and the timeouts).
    Serve {
        /// Load and validate the configuration, print its shape (no
        /// secrets) as JSON, and exit: 0 if valid, 1 with the reason if not.
        #[arg(long)]
        check_config: bool,
        /// With --check-config: the settings only, without connecting to
        /// Redis to check that it keeps `redis.durability`'s promise.
        #[arg(long, requires = "check_config")]
        offline: bool,
    },
    /// Full mode: apply the Kafka topics to the durable store (Postgres).
    Worker,
    /// Full mode: move the Redis outbox streams to Kafka, outside `serve`
    /// (set `RUSH__KAFKA__RELAY_IN_SERVE=false` on the serve nodes).
    Relay,
    /// Create or upgrade the database schemas (Postgres when
    /// `postgres.url` is set, else the SQLite files), then exit.
    Migrate,
    /// Check the ledger against itself and each channel's bill; prints a
    /// JSON report and exits 1 if anything disagrees.
    Reconcile {
        /// Bill day (YYYY-MM-DD, days start at `wallet.day_offset_min`);
        /// repeat for several. Default: yesterday and today.
        #[arg(long = "date")]
        dates: Vec<chrono::NaiveDate>,
    },
    /// List the events the durable store refused (parked, JSON), or apply
    /// them again after fixing what they broke on.
    Parked {
        /// Event ids to replay; each is applied and unparked, or stays
        /// parked with the new reason.
        #[arg(long)]
        replay: Vec<String>,
        /// Replay every parked event.
        #[arg(long, conflicts_with = "replay")]
        all: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref())?;
    if let Command::Serve { check_config: true, offline } = cli.command {
        println!("{}", commands::check_config(&cfg, offline)?);
        return Ok(());
    }
    let role = match cli.command {
        Command::Serve { .. } => "serve",
        Command::Worker => "worker",
        Command::Relay => "relay",
        Command::Migrate => "migrate",
        Command::Reconcile { .. } => "reconcile",
        Command::Parked { .. } => "parked",
    };
    // Declared before the runtime, so dropped (traces flushed) after it.
    let _telemetry = rush_gateway::telemetry::init(&cfg, role)?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if cfg.threads > 0 {
        rt.worker_threads(cfg.threads);
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve { .. } => commands::serve(cfg).await,
            Command::Worker => commands::worker(cfg).await,
            Command::Relay => commands::relay(cfg).await,
            Command::Reconcile { dates } => commands::reconcile(cfg, dates).await,
            Command::Parked { replay, all } => commands::parked(cfg, replay, all).await,
            Command::Migrate => commands::migrate(cfg).await,
        }
    })
}
