//! The `rush` binary: load config, start telemetry, run a subcommand.

use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rush_engine::telemetry::Metrics;
use rush_engine::{Config, Engine};

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
    /// Run the HTTP API with its actors and (embedded) workers.
    Serve,
    /// Create or upgrade the database schema, then exit.
    Migrate,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref())?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve => serve(cfg).await,
            Command::Migrate => {
                use rush_engine::durable::{Db, Schema};
                for schema in [Schema::Durable, Schema::Hot] {
                    Db::open(&cfg.data_dir, schema, &cfg.sqlite).await?;
                }
                println!("migrated {}", cfg.data_dir.display());
                Ok(())
            }
        }
    })
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&cfg.http.addr).with_context(|| format!("binding {}", cfg.http.addr))?;
    let addr = listener.local_addr()?;
    let engine = Engine::open(cfg, Metrics::new()).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers = engine.start_workers(stop_rx);
    let server = rush_gateway::serve::http_server(listener, engine.clone())?;
    println!("{}", rush_gateway::serve::banner(&addr, &engine));
    server.await?;
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    Ok(())
}
