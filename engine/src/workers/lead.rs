//! One reader of the outbox streams at a time.
//!
//! Two processes reading one partition's stream in one consumer group would
//! each get part of an entity's events and could pass them on out of order
//! (a release before its hold). So the outbox's single consumer role — the
//! relay in full mode, the persist worker in Redis mode — is held through a
//! lease in Redis: the holder works, the others stand by. A new holder first
//! takes over what the previous one had read and not committed, and handles
//! that before anything newer (duplicates are possible, reordering is not:
//! effects are idempotent by event id).

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::events::EventLog;
use crate::store::Lease;

pub struct Leadership {
    lease: Option<Box<dyn Lease>>,
    consumer: &'static str,
    role: &'static str,
    leading: bool,
    renewed: Instant,
}

impl Leadership {
    /// Without a lease this process is the only reader and always leads.
    pub fn new(lease: Option<Box<dyn Lease>>, consumer: &'static str, role: &'static str) -> Self {
        let leading = lease.is_none();
        Leadership { lease, consumer, role, leading, renewed: Instant::now() }
    }

    /// True when this process holds the lease (renewed every third of it)
    /// and may work; false after standing by a while (the caller loops).
    pub async fn check(&mut self, log: &dyn EventLog, shutdown: &mut watch::Receiver<bool>) -> bool {
        let Some(lease) = &self.lease else { return true };
        let every = Duration::from_millis((lease.lease_ms() / 3).max(1));
        if !self.leading || self.renewed.elapsed() >= every {
            let held = lease.hold().await.unwrap_or_else(|e| {
                tracing::warn!(role = self.role, error = %e, "lease check failed");
                false
            });
            if held && !self.leading {
                if let Err(e) = log.take_over(self.consumer).await {
                    tracing::warn!(role = self.role, error = %e, "taking over pending outbox entries failed");
                    self.stand_by(every, shutdown).await;
                    return false;
                }
                tracing::info!(role = self.role, "this process now reads the outbox");
            }
            if !held && self.leading {
                tracing::warn!(role = self.role, "outbox lease lost; standing by");
            }
            self.leading = held;
            self.renewed = Instant::now();
        }
        if !self.leading {
            self.stand_by(every, shutdown).await;
        }
        self.leading
    }

    async fn stand_by(&self, every: Duration, shutdown: &mut watch::Receiver<bool>) {
        tokio::select! {
            _ = tokio::time::sleep(every) => {},
            _ = shutdown.changed() => {},
        }
    }
}
