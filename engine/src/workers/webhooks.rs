//! The webhook deliverer: takes due deliveries, signs each
//! `Rush-Signature: t=<unix>,v1=<hex hmac-sha256(secret, t + "." + body)>`
//! and POSTs it. A 2xx delivers it; 410 Gone disables the webhook (and its
//! pending deliveries); anything else is retried with doubling backoff
//! (`webhooks.backoff_first_ms` up to `backoff_max_ms`) until
//! `webhooks.retry_window_s` after the event, then it fails. Every attempt
//! is logged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{next_tick, ticker};
use crate::config::WebhookConfig;
use crate::domain::{now_unix_ms, Id};
use crate::durable::webhooks::{AttemptOutcome, DueDelivery};
use crate::durable::Durable;
use crate::error::EngineError;
use crate::pay::wire::{hex, hmac};
use crate::telemetry::Metrics;

pub const SIGNATURE_HEADER: &str = "Rush-Signature";

/// The `Rush-Signature` value for `body` sent at `t` (Unix seconds).
pub fn signature(secret: &str, t: u64, body: &str) -> String {
    let t = t.to_string();
    format!("t={t},v1={}", hex(&hmac(secret.as_bytes(), &[t.as_bytes(), b".", body.as_bytes()])))
}

/// When to try again after `attempts` attempts, or `None` once the retry
/// window has closed.
pub fn next_attempt_ms(cfg: &WebhookConfig, created_at_ms: u64, attempts: u32, now_ms: u64) -> Option<u64> {
    let window_end = created_at_ms + cfg.retry_window_s * 1000;
    if now_ms >= window_end {
        return None;
    }
    let backoff =
        cfg.backoff_first_ms.saturating_mul(1u64 << attempts.saturating_sub(1).min(40)).min(cfg.backoff_max_ms);
    // The last attempt happens at the window's end.
    Some((now_ms + backoff).min(window_end))
}

/// The deliverer's handles: where deliveries are, how they are sent.
#[derive(Clone)]
pub struct Webhooks {
    pub durable: Durable,
    /// Outbound HTTP, bounded per call.
    pub http: reqwest::Client,
    pub cfg: WebhookConfig,
    pub metrics: Metrics,
}

impl Webhooks {
    /// Sends due deliveries every `webhooks.poll_ms` until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = ticker(self.cfg.poll_ms);
        let this = Arc::new(self);
        while next_tick(&mut tick, &mut shutdown).await {
            if let Err(e) = this.round().await {
                this.metrics.worker_failures.with_label_values(&["webhooks"]).inc();
                tracing::warn!(error = %e, "webhook round failed");
            }
        }
    }

    /// One round: sends every due delivery it can claim; returns how many.
    pub async fn round(self: &Arc<Self>) -> Result<usize, EngineError> {
        let cfg = &self.cfg;
        let now = now_unix_ms();
        let due = self.durable.due_deliveries(now, cfg.batch_max).await?;
        // One task per webhook, its deliveries in order: an endpoint sees its
        // events in the order they were written, and a 410 stops the rest.
        let mut by_hook: BTreeMap<Id, Vec<DueDelivery>> = BTreeMap::new();
        for d in due {
            if self.durable.claim_delivery(&d.delivery, now + cfg.claim_ms).await? {
                by_hook.entry(d.delivery.webhook_id).or_default().push(d);
            }
        }
        let n = by_hook.values().map(Vec::len).sum();
        let mut sends = JoinSet::new();
        for (_, list) in by_hook {
            let this = self.clone();
            sends.spawn(async move {
                for d in list {
                    if this.deliver(d).await == AttemptOutcome::Gone {
                        break; // the rest were disabled with the webhook
                    }
                }
            });
        }
        while sends.join_next().await.is_some() {}
        Ok(n)
    }

    async fn deliver(&self, due: DueDelivery) -> AttemptOutcome {
        let cfg = &self.cfg;
        let d = &due.delivery;
        let started = Instant::now();
        let now = now_unix_ms();
        let sig = signature(&due.secret, now / 1000, &d.body);
        let sent = self
            .http
            .post(&due.url)
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, sig)
            .header("Rush-Delivery", &d.delivery_id)
            .body(d.body.clone())
            .send()
            .await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let (code, error) = match &sent {
            Ok(r) => (Some(r.status().as_u16()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let attempts = d.attempts + 1;
        let outcome = match code {
            Some(c) if (200..300).contains(&c) => AttemptOutcome::Delivered,
            Some(410) => AttemptOutcome::Gone,
            _ => match next_attempt_ms(cfg, d.created_at_ms, attempts, now_unix_ms()) {
                Some(at) => AttemptOutcome::RetryAt(at),
                None => AttemptOutcome::Failed,
            },
        };
        let label = match outcome {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Gone => "gone",
            AttemptOutcome::RetryAt(_) => "retry",
            AttemptOutcome::Failed => "failed",
        };
        self.metrics.webhook_deliveries.with_label_values(&[label]).inc();
        if outcome == AttemptOutcome::Gone {
            tracing::warn!(webhook_id = %d.webhook_id, url = %due.url, "webhook answered 410 Gone: disabled");
        }
        if let Err(e) = self.durable.record_attempt(d, now, code, error.as_deref(), duration_ms, &outcome).await {
            // The claim runs out and the delivery is sent again: at least once.
            tracing::warn!(delivery_id = %d.delivery_id, error = %e, "recording a webhook attempt failed");
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_of_time_dot_body() {
        let s = signature("whsec-0123456789", 1_700_000_000, "{\"a\":1}");
        let expected = hex(&hmac(b"whsec-0123456789", &[b"1700000000.{\"a\":1}"]));
        assert_eq!(s, format!("t=1700000000,v1={expected}"));
        assert_ne!(s, signature("another-secret-000", 1_700_000_000, "{\"a\":1}"));
    }

    #[test]
    fn retries_back_off_doubling_until_the_window_closes() {
        let cfg = WebhookConfig {
            retry_window_s: 3600,
            backoff_first_ms: 1000,
            backoff_max_ms: 600_000,
            ..Default::default()
        };
        let t0 = 1_000_000;
        assert_eq!(next_attempt_ms(&cfg, t0, 1, t0), Some(t0 + 1000));
        assert_eq!(next_attempt_ms(&cfg, t0, 2, t0), Some(t0 + 2000));
        assert_eq!(next_attempt_ms(&cfg, t0, 5, t0), Some(t0 + 16_000));
        assert_eq!(next_attempt_ms(&cfg, t0, 30, t0), Some(t0 + 600_000), "capped");
        let late = t0 + 3_599_000;
        assert_eq!(next_attempt_ms(&cfg, t0, 30, late), Some(t0 + 3_600_000), "last try at the window's end");
        assert_eq!(next_attempt_ms(&cfg, t0, 31, t0 + 3_600_000), None);
    }

    #[test]
    fn the_default_window_is_a_day() {
        let cfg = WebhookConfig::default();
        let t0 = 0;
        let mut now = t0;
        let mut attempts = 0;
        while let Some(at) = next_attempt_ms(&cfg, t0, attempts + 1, now) {
            attempts += 1;
            now = at;
            assert!(attempts < 1000);
        }
        assert_eq!(now, 24 * 3600 * 1000, "attempts go on until 24 h after the event");
    }
}
