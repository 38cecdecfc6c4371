//! The `rush` subcommands other than `serve`: the background roles
//! (`worker`, `relay`) with their ops server, and the one-shot tools
//! (`migrate`, `reconcile`, `parked`, `serve --check-config`).

use std::net::TcpListener;

use anyhow::Context;
use rush_engine::telemetry::Metrics;
use rush_engine::Config;

/// `rush serve --check-config`: the configuration's shape (no secrets) as
/// JSON, and unless `offline` whether Redis keeps `redis.durability`.
pub fn check_config(cfg: &Config, offline: bool) -> anyhow::Result<serde_json::Value> {
    let mut summary = cfg.summary();
    if !offline {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        if let Some(how) = rt.block_on(rush_engine::node::check_redis_durability(cfg))? {
            summary["redis_durability_check"] = how.into();
        }
    }
    Ok(summary)
}

/// `rush migrate`: creates or upgrades the schemas, then says which.
pub async fn migrate(mut cfg: Config) -> anyhow::Result<()> {
    use rush_engine::config::redact_url;
    use rush_engine::store::db::Db;
    // This is the deliberate step, whatever the processes do at start.
    cfg.postgres.migrate_on_start = true;
    durable_pools(&cfg).await?;
    match &cfg.postgres.url {
        Some(url) => println!("migrated {}", redact_url(url)),
        None => {
            Db::open(&cfg.data_dir, &cfg.sqlite).await?;
            println!("migrated {}", cfg.data_dir.display());
        }
    }
    Ok(())
}

/// Runs a background role (`rush worker`, `rush relay`) until
/// SIGTERM/Ctrl-C, serving `/metrics`, `/healthz` and `/readyz` on
/// `telemetry.metrics_addr`; then tells it to stop (it finishes its batch
/// and flushes) and waits at most `shutdown.timeout_ms`.
async fn run_until_terminated<F>(
    cfg: &Config,
    metrics: Metrics,
    mut banner: serde_json::Value,
    role: impl FnOnce(tokio::sync::watch::Receiver<bool>) -> F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ops = match cfg.telemetry.metrics_addr.as_str() {
        "" => None,
        addr => {
            let listener = TcpListener::bind(addr).with_context(|| format!("binding telemetry.metrics_addr {addr}"))?;
            banner["metrics_url"] = format!("http://{}/metrics", listener.local_addr()?).into();
            let server = crate::app::ops_server(listener, metrics, stopping.clone())?;
            let handle = server.handle();
            tokio::spawn(server);
            Some(handle)
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(role(stop_rx));
    println!("{banner}");
    crate::serve::terminated().await;
    stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let budget = std::time::Duration::from_millis(cfg.shutdown.timeout_ms);
    let done = tokio::time::timeout(budget, task).await.is_ok();
    tracing::info!(done, "stopped");
    if let Some(h) = ops {
        h.stop(false).await;
    }
    Ok(())
}

pub async fn worker(cfg: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let (durable, log) = rush_engine::node::kafka_worker(&cfg).await?;
    let lag = Some(metrics.consumer_lag.clone());
    let banner = serde_json::json!({"msg": "rush worker running", "group": cfg.kafka.group});
    let (workers, m) = (cfg.workers.clone(), metrics.clone());
    run_until_terminated(&cfg, metrics, banner, |stop| {
        rush_engine::workers::persist_loop(log, durable, workers, m, lag, None, stop)
    })
    .await
}

pub async fn relay(cfg: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let relay = rush_engine::node::standalone_relay(&cfg, metrics.clone()).await?;
    let banner = serde_json::json!({"msg": "rush relay running", "topic_prefix": cfg.kafka.topic_prefix});
    run_until_terminated(&cfg, metrics, banner, |stop| relay.run(stop)).await
}

async fn durable_pools(cfg: &Config) -> anyhow::Result<rush_engine::durable::Pools> {
    Ok(rush_engine::durable::Pools::of_config(cfg).await?)
}

/// Parked events read (and replayed) per page.
const PARKED_PAGE: u32 = 500;

/// Every parked event, page by page.
async fn all_parked(durable: &rush_engine::durable::Durable) -> anyhow::Result<Vec<rush_engine::durable::ParkedEvent>> {
    let (mut listed, mut after) = (Vec::new(), None);
    loop {
        let page = durable.parked(after, PARKED_PAGE).await?;
        after = page.last().map(|p| p.event_id);
        let done = page.len() < PARKED_PAGE as usize;
        listed.extend(page);
        if done {
            return Ok(listed);
        }
    }
}

pub async fn parked(cfg: Config, replay: Vec<String>, all: bool) -> anyhow::Result<()> {
    use rush_engine::domain::Id;
    let durable = rush_engine::durable::Durable::new(durable_pools(&cfg).await?);
    let mut ids: Vec<Id> = replay
        .iter()
        .map(|r| r.parse::<Id>().map_err(|e| anyhow::anyhow!("event id {r}: {e}")))
        .collect::<Result<_, _>>()?;
    if !all && ids.is_empty() {
        let listed = all_parked(&durable).await?;
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "parked": listed }))?);
        return Ok(());
    }
    if all {
        ids.extend(all_parked(&durable).await?.into_iter().map(|p| p.event_id));
    }
    let mut results = Vec::with_capacity(ids.len());
    let mut refused = false;
    for id in ids {
        let outcome = durable.replay_parked(id).await?;
        refused |= outcome != rush_engine::durable::Replayed::Applied;
        results.push(serde_json::json!({ "event_id": id, "result": outcome }));
    }
    println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "replayed": results }))?);
    if refused {
        std::process::exit(1);
    }
    Ok(())
}

pub async fn reconcile(cfg: Config, dates: Vec<chrono::NaiveDate>) -> anyhow::Result<()> {
    use rush_engine::durable::Durable;
    let pools = durable_pools(&cfg).await?;
    let offset = cfg.wallet.day_offset_min;
    let days: Vec<i64> = if dates.is_empty() {
        let today = rush_engine::pay::day_of(rush_engine::domain::now_unix_ms(), offset);
        vec![today - 1, today]
    } else {
        let epoch = chrono::NaiveDate::default();
        dates.iter().map(|d| (*d - epoch).num_days()).collect()
    };
    let payments = rush_engine::pay::Payments::new(&cfg, &pools);
    let durable = Durable::new(pools);
    let report = rush_engine::reconcile::reconcile(&durable, &payments.channels, &days, offset).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}

/// `rush serve`: binds `http.addr`, opens the node for its mode and
/// serves until SIGTERM (see `serve::run`).
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&cfg.http.addr).with_context(|| format!("binding {}", cfg.http.addr))?;
    let node = rush_engine::Node::open(cfg, Metrics::new()).await?;
    crate::serve::run(listener, node).await
}
