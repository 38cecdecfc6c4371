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
use crate::domain::now_unix_ms;
use crate::engine::Engine;

pub async fn payments(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    let pc = engine.config().payments.clone();
    let mut tick = ticker(pc.worker_poll_ms);
    while next_tick(&mut tick, &mut shutdown).await {
        if let Err(e) = round(&engine, pc.worker_batch_max, pc.claim_ms).await {
            engine.metrics.worker_failures.with_label_values(&["payments"]).inc();
            tracing::warn!(error = %e, "payments round failed");
        }
    }
}

/// One round: returns how many payments were checked.
pub async fn round(engine: &Arc<Engine>, limit: usize, claim_ms: u64) -> Result<usize, crate::EngineError> {
    let now = now_unix_ms();
    let due = engine.durable().payments_due(now, limit).await?;
    let mut checks = JoinSet::new();
    for p in due {
        if !engine.durable().claim_check(&p, now + claim_ms).await? {
            continue; // another node took it
        }
        let engine = engine.clone();
        checks.spawn(async move {
            let payment_id = p.payment_id;
            if let Err(e) = engine.check_payment(p).await {
                engine.metrics.worker_failures.with_label_values(&["payments"]).inc();
                tracing::warn!(%payment_id, error = %e, "payment check failed; will look again");
            }
        });
    }
    let n = checks.len();
    while checks.join_next().await.is_some() {}
    Ok(n)
}
