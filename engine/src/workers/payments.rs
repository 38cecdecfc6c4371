//! The payments worker: every `payments.worker_poll_ms` it takes the
//! payments whose next check is due — pending ones to ask their channel
//! about (active query, with doubling backoff), expired ones to close,
//! due refunds to carry out — claims each (so one node at a time looks at
//! it) and checks them concurrently, at most `payments.worker_batch_max`
//! per round.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{next_tick, ticker};
use crate::config::PaymentsConfig;
use crate::domain::now_unix_ms;
use crate::durable::payments::PaymentRecord;
use crate::durable::Durable;
use crate::error::EngineError;
use crate::telemetry::Metrics;

/// What the payments worker needs of the use cases: one payment's check
/// (query its channel, close it, carry out its refund).
#[async_trait::async_trait]
pub trait PaymentCheck: Send + Sync + 'static {
    async fn check_payment(&self, p: PaymentRecord) -> Result<(), EngineError>;
}

pub async fn payments(
    checks: Arc<dyn PaymentCheck>,
    durable: Durable,
    pc: PaymentsConfig,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = ticker(pc.worker_poll_ms);
    while next_tick(&mut tick, &mut shutdown).await {
        if let Err(e) = round(&checks, &durable, &metrics, pc.worker_batch_max, pc.claim_ms).await {
            metrics.worker_failures.with_label_values(&["payments"]).inc();
            tracing::warn!(error = %e, "payments round failed");
        }
    }
}

/// One round: returns how many payments were checked.
pub async fn round(
    checks: &Arc<dyn PaymentCheck>,
    durable: &Durable,
    metrics: &Metrics,
    limit: usize,
    claim_ms: u64,
) -> Result<usize, EngineError> {
    let now = now_unix_ms();
    let due = durable.payments_due(now, limit).await?;
    let mut checks_running = JoinSet::new();
    for p in due {
        if !durable.claim_check(&p, now + claim_ms).await? {
            continue; // another node took it
        }
        let (checks, failures) = (checks.clone(), metrics.worker_failures.with_label_values(&["payments"]));
        checks_running.spawn(async move {
            let payment_id = p.payment_id;
            if let Err(e) = checks.check_payment(p).await {
                failures.inc();
                tracing::warn!(%payment_id, error = %e, "payment check failed; will look again");
            }
        });
    }
    let n = checks_running.len();
    while checks_running.join_next().await.is_some() {}
    Ok(n)
}
