//! Surviving Redis (issue 15): knowing when it lost data, refusing work
//! until it is rebuilt, and rebuilding it from the durable store.
//!
//! **Knowing.** Every Redis partition holds a marker (`{pN}:marker`) with
//! the epoch of the data set; the durable store records the same epoch.
//! Every writing script refuses to run without its partition's marker
//! (`StoreError::Lost`), so a Redis that restarted empty acknowledges
//! nothing, not even before a node notices. Each node also checks, every
//! `redis.marker_check_ms`, that the markers are all there and equal to the
//! durable store's epoch, and that Redis's replication id is the one
//! recorded at the last rebuild: a new one means the server restarted or a
//! replica was promoted, which may have rolled writes back (with `fsync`
//! durability a restart loses nothing, so only then is it merely recorded).
//!
//! **Refusing.** While lost, readiness fails (`hot_store_lost`) and intake
//! answers 503 `hot_store_recovering` with `Retry-After`.
//!
//! **Rebuilding.** One node at a time (a lease in Redis) removes every
//! marker (so all nodes' scripts refuse), merges the durable store's view
//! of each event and packet into what Redis still has (`store::restore`),
//! records a new epoch in the durable store, then writes it as every
//! partition's marker. Each node that sees the new epoch drops its actors
//! (their memory predates the rebuild) and takes work again. Consumer groups
//! that went with the data are created again by the event log itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{Durability, RedisConfig};
use crate::domain::now_unix_ms;
use crate::durable::Durable;
use crate::store::restore::{HotRecovery, Markers};
use crate::store::StoreError;
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Durable(#[from] crate::durable::DurableError),
    #[error("another node took over the rebuild")]
    LeaseLost,
}

/// Entities restored between two renewals of the rebuild lease.
const RENEW_EVERY: usize = 50;

pub struct HotGuard {
    hot: Arc<dyn HotRecovery>,
    durable: Durable,
    cfg: RedisConfig,
    metrics: Metrics,
    /// Lost and not yet rebuilt: intake is closed.
    lost: AtomicBool,
    /// The epoch this node's actors were built on.
    known: Mutex<Option<String>>,
    token: String,
}

/// What a check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// Markers intact and the durable store's epoch: serving.
    Intact,
    /// Another node rebuilt since this one last looked: its actors must go.
    RebuiltElsewhere,
    /// This node rebuilt Redis: its actors must go.
    Rebuilt,
    /// Lost, and another node holds the rebuild lease.
    Waiting,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HotGuard {
    /// How often [`HotGuard::check`] should run (`redis.marker_check_ms`).
    pub fn check_every_ms(&self) -> u64 {
        self.cfg.marker_check_ms
    }

    pub fn new(hot: Arc<dyn HotRecovery>, durable: Durable, cfg: RedisConfig, metrics: Metrics) -> Self {
        HotGuard {
            hot,
            durable,
            cfg,
            metrics,
            lost: AtomicBool::new(false),
            known: Mutex::new(None),
            token: format!("{:016x}", fastrand::u64(..)),
        }
    }

    /// False while the hot store is lost and not yet rebuilt.
    pub fn intact(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
    }

    fn set_lost(&self, why: &str) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            self.metrics.hot_store_losses.inc();
            self.metrics.hot_store_lost.set(1);
            tracing::error!(
                why,
                "the hot store lost its data: refusing work until it is rebuilt from the durable store"
            );
        }
    }

    fn set_intact(&self, epoch: String) {
        *lock(&self.known) = Some(epoch);
        if self.lost.swap(false, Ordering::SeqCst) {
            self.metrics.hot_store_lost.set(0);
            tracing::info!("the hot store is whole again: taking work");
        }
    }

    /// One look at Redis; rebuilds it when it is lost and nobody else is.
    pub async fn check(&self) -> Result<Checked, RecoveryError> {
        let markers = self.hot.markers().await?;
        let epoch = self.durable.hot_epoch().await?;
        let why = match (&markers, &epoch) {
            (Markers::Intact(m), Some(e)) if m == e => match self.replication_changed().await? {
                None => {
                    let known = lock(&self.known).clone();
                    self.set_intact(m.clone());
                    return Ok(match known {
                        Some(k) if k != *m => Checked::RebuiltElsewhere,
                        _ => Checked::Intact,
                    });
                }
                Some(why) => {
                    // Make every node's scripts refuse before the rebuild.
                    self.hot.clear_markers().await?;
                    why
                }
            },
            (Markers::None, None) => "first start: nothing recorded yet".to_string(),
            (Markers::None, Some(_)) => "every identity marker is gone (Redis restarted empty?)".to_string(),
            (Markers::Broken { missing, epochs }, _) => {
                format!("{missing} of the partitions lost their marker ({epochs} epochs seen)")
            }
            (Markers::Intact(m), e) => format!("Redis holds data set {m}, the durable store was fed from {e:?}"),
        };
        if epoch.is_some() {
            self.set_lost(&why);
        }
        if !self.hot.rebuild_lease(&self.token, self.cfg.rebuild_lease_ms).await? {
            return Ok(Checked::Waiting);
        }
        self.rebuild(&why).await?;
        Ok(Checked::Rebuilt)
    }

    /// `Some(why)` when Redis's replication id is not the one recorded at
    /// the last rebuild and that may have lost writes.
    async fn replication_changed(&self) -> Result<Option<String>, StoreError> {
        let Some(now) = self.hot.replication_id().await? else { return Ok(None) };
        let recorded = self.hot.recorded_replication_id().await?;
        if recorded.as_deref() == Some(now.as_str()) {
            return Ok(None);
        }
        if self.cfg.durability == Durability::Fsync || recorded.is_none() {
            // fsync: a restart keeps every write. None recorded: the marker
            // check above vouches for the data set.
            self.hot.record_replication_id(&now).await?;
            return Ok(None);
        }
        Ok(Some(format!("Redis's replication id changed ({recorded:?} → {now}): it restarted or failed over")))
    }

    async fn renew(&self) -> Result<(), RecoveryError> {
        if self.hot.rebuild_lease(&self.token, self.cfg.rebuild_lease_ms).await? {
            Ok(())
        } else {
            Err(RecoveryError::LeaseLost)
        }
    }

    /// Merges the durable store into Redis, then marks it whole.
    async fn rebuild(&self, why: &str) -> Result<(), RecoveryError> {
        let started = std::time::Instant::now();
        tracing::warn!(why, "rebuilding the hot store from the durable store");
        self.hot.clear_markers().await?;
        let now = now_unix_ms();
        let since = now.saturating_sub(self.cfg.rebuild_history_s.saturating_mul(1000));
        let (mut events, mut packets, mut restored, mut conflicts) = (0usize, 0usize, 0usize, 0usize);
        let mut after = None;
        loop {
            let page = self.durable.events_since(since, after).await?;
            let Some(last) = page.last().map(|d| d.event_id) else { break };
            for def in &page {
                let applied = self.durable.applied_orders(def.event_id).await?;
                let r = self.hot.restore_event(def, &applied, now).await?;
                restored += r.restored;
                conflicts += self.report(r.conflicts);
                events += 1;
                if events % RENEW_EVERY == 0 {
                    self.renew().await?;
                }
            }
            after = Some(last);
        }
        let mut after = None;
        loop {
            let page = self.durable.packets_since(since, after).await?;
            let Some(last) = page.last().map(|p| p.def.packet_id) else { break };
            for p in &page {
                let r = self.hot.restore_packet(p, now).await?;
                restored += r.restored;
                conflicts += self.report(r.conflicts);
                packets += 1;
                if packets % RENEW_EVERY == 0 {
                    self.renew().await?;
                }
            }
            after = Some(last);
        }
        self.renew().await?;
        let epoch = format!("{now:x}-{:08x}", fastrand::u32(..));
        self.durable.set_hot_epoch(&epoch).await?;
        if let Some(id) = self.hot.replication_id().await? {
            self.hot.record_replication_id(&id).await?;
        }
        self.hot.set_markers(&epoch).await?;
        tracing::warn!(
            events,
            packets,
            restored,
            conflicts,
            ms = started.elapsed().as_millis() as u64,
            epoch,
            "hot store rebuilt from the durable store"
        );
        self.set_intact(epoch);
        Ok(())
    }

    fn report(&self, conflicts: Vec<String>) -> usize {
        for c in &conflicts {
            self.metrics.hot_store_conflicts.inc();
            tracing::error!(conflict = %c, "rebuild could not put an order or grab back");
        }
        conflicts.len()
    }
}
