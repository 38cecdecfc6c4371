//! Workers: in-process in embedded and Redis mode; in full mode `rush
//! serve` runs the relay and the timeouts, `rush worker` the persist loop
//! over Kafka.
//!
//! - persist: reads the event log and applies each batch to the durable
//!   store in one transaction (effects and processed ids together), then
//!   commits the log position. A batch that fails for being unreachable
//!   is retried as it is, with doubling backoff, so no event is skipped; one
//!   the store refuses for what it holds is split until the offending
//!   event is alone, which is parked (`parked_events`, a metric, an error
//!   log) while the rest is applied: no poison event stalls the projection.
//! - relay (full mode, `relay.rs`): outbox streams → Kafka.
//! - outbox monitor: the outbox's length for the metric, readiness and the
//!   write bound.
//! - timeouts: finds holds and packets whose time is up and settles them
//!   through their actors (which re-check the deadline).
//! - payments (`payments.rs`): active query, close at expiry, refunds.
//! - webhooks (`webhooks.rs`): signed deliveries with backoff.

pub mod lead;
pub mod payments;
pub mod relay;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::watch;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::WorkerConfig;
use crate::durable::Durable;
use crate::error::EngineError;
use crate::events::EventLog;
use crate::telemetry::Metrics;

pub const PERSIST_CONSUMER: &str = "persist";

/// How often the Kafka worker refreshes its consumer-lag gauge: asking the
/// broker for offsets costs a round trip, and a scrape every few seconds
/// needs nothing fresher.
const LAG_REFRESH_EVERY: Duration = Duration::from_secs(1);

/// Old Idempotency-Key records are deleted this often: rarely enough to
/// cost nothing, often enough that the table stays about a day long.
const IDEMPOTENCY_PURGE_EVERY: Duration = Duration::from_secs(60);

/// Applies the log to the durable store until `shutdown`: each batch in one
/// transaction, then the log position. `lag` (the Kafka worker's consumer
/// lag) is refreshed at most once a second. After `shutdown` it flushes:
/// it applies what the log still holds, without waiting for more, until an
/// empty poll, retrying what fails (the caller bounds how long by dropping
/// it).
pub async fn persist_loop(
    log: Arc<dyn EventLog>,
    durable: Durable,
    cfg: WorkerConfig,
    metrics: Metrics,
    lag: Option<IntGauge>,
    lease: Option<Box<dyn crate::store::Lease>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut lead = lead::Leadership::new(lease, PERSIST_CONSUMER, "persist");
    let failures = metrics.worker_failures.with_label_values(&["persist"]);
    let mut lag_checked = tokio::time::Instant::now();
    loop {
        let flushing = *shutdown.borrow();
        if let Some(gauge) = &lag {
            if lag_checked.elapsed() >= LAG_REFRESH_EVERY {
                lag_checked = tokio::time::Instant::now();
                if let Ok(n) = log.lag(PERSIST_CONSUMER).await {
                    gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        }
        if !lead.check(log.as_ref(), &mut shutdown).await {
            if flushing {
                break;
            }
            continue;
        }
        let batch = if flushing {
            log.poll(PERSIST_CONSUMER, cfg.batch_len_max, Duration::ZERO).await
        } else {
            tokio::select! {
                r = log.poll(PERSIST_CONSUMER, cfg.batch_len_max, Duration::from_millis(cfg.poll_wait_ms)) => r,
                _ = shutdown.changed() => continue,
            }
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                // Flushing too: what is acknowledged is in the log, and the
                // caller's deadline bounds the retries.
                failures.inc();
                tracing::warn!(error = %e, flushing, "event log poll failed");
                tokio::time::sleep(Duration::from_millis(cfg.retry_backoff_ms)).await;
                continue;
            }
        };
        let Some(last) = batch.last().map(|e| e.position) else {
            if flushing {
                tracing::info!("persist worker flushed the event log");
                break;
            }
            continue;
        };
        apply_until_done(log.as_ref(), &durable, &batch, last, &cfg, &metrics).await;
    }
}

/// Applies one batch to the durable store and commits the log position,
/// retrying with doubling backoff until both succeed (or, stopping, the
/// caller's deadline drops the task: the batch stays in the log for the
/// next reader). Events the store refuses are parked, counted and logged.
async fn apply_until_done(
    log: &dyn EventLog,
    durable: &Durable,
    batch: &[crate::domain::Envelope],
    last: u64,
    cfg: &WorkerConfig,
    metrics: &Metrics,
) {
    let failures = metrics.worker_failures.with_label_values(&["persist"]);
    let applied = metrics.worker_events.with_label_values(&["persist"]);
    let mut backoff = cfg.retry_backoff_ms;
    loop {
        let done = match durable.apply_or_park(batch).await {
            Ok((n, parked)) => {
                applied.inc_by(n as u64);
                for (event_id, reason) in &parked {
                    metrics.parked_events.inc();
                    tracing::error!(%event_id, reason, "event parked: it cannot be applied to the durable store");
                }
                log.commit(PERSIST_CONSUMER, last).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match done {
            Ok(()) => return,
            Err(e) => {
                failures.inc();
                tracing::error!(error = %e, position = last, "persist batch failed; retrying");
                tokio::time::sleep(Duration::from_millis(backoff)).await;
                backoff = (backoff * 2).min(cfg.retry_backoff_max_ms);
            }
        }
    }
}

pub(crate) fn ticker(every_ms: u64) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(Duration::from_millis(every_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Waits for the next tick; false once `shutdown` turns true.
pub(crate) async fn next_tick(tick: &mut tokio::time::Interval, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tick.tick() => {},
        _ = shutdown.changed() => {},
    }
    !*shutdown.borrow()
}

/// Measures the outbox every `every_ms` for the metric, the readiness
/// signal and the write bound (see [`crate::config::OutboxConfig`]), into
/// `len`, which the engine reads.
pub async fn outbox_monitor(
    log: Arc<dyn EventLog>,
    consumer: &'static str,
    len: Arc<AtomicU64>,
    metrics: Metrics,
    every_ms: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = ticker(every_ms);
    while next_tick(&mut tick, &mut shutdown).await {
        match log.lag(consumer).await {
            Ok(n) => {
                metrics.outbox_lag.set(i64::try_from(n).unwrap_or(i64::MAX));
                len.store(n, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "measuring the outbox failed"),
        }
    }
}

/// What the timeout sweep needs of the use cases.
#[async_trait::async_trait]
pub trait Sweep: Send + Sync + 'static {
    /// False once shutdown has closed the actors' intake.
    fn intake_open(&self) -> bool;
    /// Settles up to `limit` due holds and packets; how many were due.
    async fn settle_due(&self, limit: usize) -> Result<usize, EngineError>;
    /// Carries on every cancellation whose refund fan-out has not finished.
    async fn resume_cancellations(&self) -> Result<(), EngineError>;
}

/// Settles due holds and packets every `workers.timeout_poll_ms`, and
/// purges Idempotency-Key records older than `idempotency_ttl_ms`.
pub async fn timeouts(
    sweep: Arc<dyn Sweep>,
    durable: Durable,
    cfg: WorkerConfig,
    idempotency_ttl_ms: u64,
    cancel_resume_ms: u64,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = ticker(cfg.timeout_poll_ms);
    let mut last_purge = tokio::time::Instant::now();
    let resume_every = Duration::from_millis(cancel_resume_ms);
    // The first look right after start: a fan-out cut by a restart goes on.
    let mut last_resume: Option<tokio::time::Instant> = None;
    while next_tick(&mut tick, &mut shutdown).await {
        if !sweep.intake_open() {
            // Shutting down: the actors take no more messages; the next
            // node's sweep settles what is due.
            continue;
        }
        if last_purge.elapsed() >= IDEMPOTENCY_PURGE_EVERY {
            last_purge = tokio::time::Instant::now();
            let before = crate::domain::now_unix_ms().saturating_sub(idempotency_ttl_ms);
            if let Err(e) = durable.idempotency_purge(before).await {
                tracing::warn!(error = %e, "purging idempotency keys failed");
            }
        }
        if let Err(e) = sweep.settle_due(cfg.due_batch_max).await {
            metrics.worker_failures.with_label_values(&["timeouts"]).inc();
            tracing::warn!(error = %e, "timeout sweep failed");
        }
        if last_resume.is_none_or(|t| t.elapsed() >= resume_every) {
            last_resume = Some(tokio::time::Instant::now());
            if let Err(e) = sweep.resume_cancellations().await {
                metrics.worker_failures.with_label_values(&["cancellations"]).inc();
                tracing::warn!(error = %e, "resuming cancellations failed");
            }
        }
    }
}

/// Checks every `redis.marker_check_ms` until `shutdown`; `reset` drops
/// this node's actors after a rebuild (here or elsewhere).
pub async fn watch_hot_store(
    guard: Arc<crate::recovery::HotGuard>,
    reset: impl Fn() + Send + 'static,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = ticker(guard.check_every_ms());
    while next_tick(&mut tick, &mut shutdown).await {
        match guard.check().await {
            Ok(crate::recovery::Checked::Rebuilt | crate::recovery::Checked::RebuiltElsewhere) => reset(),
            Ok(_) => {}
            Err(e) => {
                // Redis or the durable store unreachable: readiness says
                // so already; a lost one stays lost until a check succeeds.
                tracing::debug!(error = %e, "hot store check failed");
                if !guard.intact() {
                    tracing::warn!(error = %e, "rebuilding the hot store failed; retrying");
                }
            }
        }
    }
}
