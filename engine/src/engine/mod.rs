//! The engine: the use cases the gateway calls, one file per capability.
//! They validate input into domain types, route decisions to actors and
//! read from the stores. No HTTP here, and no wiring: `crate::node` builds
//! an engine for its mode and starts its workers.
//!
//! # Layout
//! - [`input`]: what the use cases take, and the limits that are not configuration.
//! - [`events`]: events, seats, holds and orders; settling what is due.
//! - [`lifecycle`]: an event's changes, cancellation, the catalogue, operators' views.
//! - [`packets`]: red packets and grabs.
//! - [`payments`]: paying orders, recharges, channel callbacks, refunds.
//! - [`wallet`]: balances, the ledger, credits and withdrawals.
//! - [`webhooks`]: webhook subscriptions and their deliveries.

pub mod events;
pub mod input;
pub mod lifecycle;
pub mod packets;
pub mod payments;
pub mod queue;
pub mod wallet;
pub mod webhooks;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::oneshot;

use crate::actors::event::EventMsg;
use crate::actors::packet::PacketMsg;
use crate::actors::Actors;
use crate::config::Config;
use crate::domain::{EventInfo, Id, IdGen};
use crate::durable::Durable;
use crate::error::{EngineError, Entity};
use crate::events::EventLog;
use crate::idempotency::IdempotencyStore;
use crate::pay::Payments;
use crate::recovery::HotGuard;
use crate::store::HotStore;
use crate::telemetry::Metrics;

pub use crate::actors::event::{CategoryView, SeatView, Selection};
pub use events::EventView;
pub use input::{Caller, NewCategory, NewEvent, NewHold, NewLimits, NewPacket, NewWaitingRoom};
pub use lifecycle::{CancellationView, CatalogueItem, EventPatch, EventStats, PriceChange};
pub use packets::GrabOk;

/// How often [`Engine::settle`] looks at the lag again: short, since tests
/// and reconciliation wait on it, and a lag probe is one cheap query.
const SETTLE_POLL: Duration = Duration::from_millis(10);

/// What an engine is made of; `crate::node` builds it for its mode.
pub struct Parts {
    pub cfg: Config,
    pub ids: Arc<IdGen>,
    pub store: Arc<dyn HotStore>,
    pub log: Arc<dyn EventLog>,
    pub durable: Durable,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub guard: Option<Arc<HotGuard>>,
    /// The outbox's last measured length, kept by the outbox monitor.
    pub outbox_len: Arc<AtomicU64>,
    pub metrics: Metrics,
}

pub struct Engine {
    cfg: Arc<Config>,
    ids: Arc<IdGen>,
    store: Arc<dyn HotStore>,
    log: Arc<dyn EventLog>,
    durable: Durable,
    /// Where Idempotency-Key records live (durable store or Redis).
    idempotency: Arc<dyn IdempotencyStore>,
    actors: Actors,
    /// Event definitions by id, cached for reads of holds (seat labels and
    /// prices, which do not change once on sale); refreshed by reads of
    /// the event and by this node's changes.
    infos: DashMap<Id, Arc<EventInfo>>,
    /// The catalogue's remaining seats per event (see `lifecycle`).
    catalogue: crate::actors::event::CatalogueCache,
    /// Last measured outbox length (see [`crate::config::OutboxConfig`]).
    outbox_len: Arc<AtomicU64>,
    /// Payment channels (the sandboxes) and outbound HTTP.
    pay: Payments,
    pub metrics: Metrics,
    /// Shutdown has begun: readiness fails (see [`Engine::begin_drain`]).
    draining: AtomicBool,
    /// Redis mode: knows when Redis lost its data, and rebuilds it.
    guard: Option<Arc<HotGuard>>,
    /// Waiting rooms this node admits for (see `queue`).
    queues: queue::ServedQueues,
}

pub(crate) fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::Invalid(msg.into())
}

pub(crate) fn check_text(what: &str, s: &str, max: usize) -> Result<(), EngineError> {
    if s.trim().is_empty() || s.chars().count() > max {
        return Err(invalid(format!("{what} must be 1-{max} characters")));
    }
    Ok(())
}

/// Awaits an actor's reply; a dropped reply means the actor stopped
/// mid-batch (its store failed), which the client may retry.
async fn answer<T>(rx: oneshot::Receiver<T>) -> Result<T, EngineError> {
    rx.await.map_err(|_| EngineError::StoreUnavailable)
}

/// The cursor of the page after `page`: its last item's, when the page is
/// full (a shorter page is the last one).
pub(crate) fn next_cursor<T, C>(page: &[T], limit: u32, cursor: impl Fn(&T) -> C) -> Option<C> {
    if page.len() as u32 == limit {
        page.last().map(cursor)
    } else {
        None
    }
}

impl Engine {
    pub fn new(p: Parts) -> Engine {
        // Embedded, this node is the store's only writer.
        let sole_owner = p.cfg.redis.url.is_none();
        let catalogue = moka::sync::Cache::builder()
            .max_capacity(p.cfg.events.catalogue_cache_entries_max)
            .time_to_live(Duration::from_millis(p.cfg.events.catalogue_cache_ttl_ms))
            .build();
        let actors =
            Actors::new(p.store.clone(), p.cfg.actors.clone(), p.metrics.clone(), sole_owner, catalogue.clone());
        let pay = Payments::new(&p.cfg, p.durable.db());
        Engine {
            cfg: Arc::new(p.cfg),
            ids: p.ids,
            store: p.store,
            log: p.log,
            durable: p.durable,
            idempotency: p.idempotency,
            actors,
            infos: DashMap::new(),
            catalogue,
            outbox_len: p.outbox_len,
            pay,
            metrics: p.metrics,
            draining: AtomicBool::new(false),
            guard: p.guard,
            queues: queue::ServedQueues::default(),
        }
    }

    /// Shutdown, step 1: readiness fails from now on, requests are still
    /// served (load balancers stop sending while this node finishes).
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Shutdown, step 2: new requests and new actor messages are refused
    /// with [`EngineError::ShuttingDown`]; what the mailboxes hold is still
    /// decided and committed.
    pub fn close_intake(&self) {
        self.begin_drain();
        self.actors.close();
    }

    pub fn intake_open(&self) -> bool {
        self.actors.is_open()
    }

    /// Shutdown, step 3: waits for every actor to answer its mailbox and
    /// end; false if `timeout` passed first.
    pub async fn drain_actors(&self, timeout: Duration) -> bool {
        self.actors.drained(timeout).await
    }

    /// Who drains the outbox: the relay in full mode, the persist worker otherwise.
    pub fn outbox_consumer(&self) -> &'static str {
        match self.cfg.kafka.brokers {
            Some(_) => crate::workers::relay::RELAY_CONSUMER,
            None => crate::workers::PERSIST_CONSUMER,
        }
    }

    /// False while Redis is lost and not yet rebuilt.
    pub fn hot_intact(&self) -> bool {
        self.guard.as_ref().is_none_or(|g| g.intact())
    }

    /// Nothing reaches the hot store while it is being rebuilt.
    fn check_hot(&self) -> Result<(), EngineError> {
        if !self.hot_intact() {
            return Err(EngineError::HotStoreRecovering);
        }
        Ok(())
    }

    /// New holds, packets and grabs are refused while the outbox is full,
    /// rather than letting it grow without bound.
    fn check_outbox(&self) -> Result<(), EngineError> {
        if self.outbox_len.load(Ordering::Relaxed) >= self.cfg.outbox.len_max {
            return Err(EngineError::OutboxFull);
        }
        Ok(())
    }

    /// Whether the outbox is below `outbox.ready_pct` of its bound.
    pub fn outbox_ok(&self) -> bool {
        let len = u128::from(self.outbox_len.load(Ordering::Relaxed));
        len * 100 < u128::from(self.cfg.outbox.len_max) * u128::from(self.cfg.outbox.ready_pct)
    }

    /// Outbound HTTP (sandbox callbacks, webhook deliveries).
    pub fn http(&self) -> &reqwest::Client {
        &self.pay.http
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// This node's id in the ids it mints (leased when `node_id_auto`).
    pub fn node_id(&self) -> u16 {
        self.ids.node()
    }

    pub fn log(&self) -> Arc<dyn EventLog> {
        self.log.clone()
    }

    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    pub fn idempotency(&self) -> &dyn IdempotencyStore {
        self.idempotency.as_ref()
    }

    pub async fn ready(&self) -> bool {
        self.not_ready().await.is_empty()
    }

    /// What keeps this node from taking traffic: `shutting_down`, `outbox` (near its bound),
    /// `durable_store`, `hot_store`. Empty when ready.
    pub async fn not_ready(&self) -> Vec<&'static str> {
        let mut failing = Vec::new();
        if self.is_draining() {
            failing.push("shutting_down");
        }
        if !self.outbox_ok() {
            failing.push("outbox");
        }
        if !self.durable.db().ping().await {
            failing.push("durable_store");
        }
        if !self.store.ready().await {
            failing.push("hot_store");
        }
        if !self.hot_intact() {
            failing.push("hot_store_lost");
        }
        failing
    }

    /// Waits until the workers have applied every event so far (tests,
    /// reconciliation). False if `timeout` passes first.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let probe = match &self.cfg.kafka.brokers {
            Some(b) => match crate::events::kafka::LagProbe::new(&self.cfg.kafka, b) {
                Ok(p) => Some(p),
                Err(_) => return false,
            },
            None => None,
        };
        loop {
            if matches!(self.log.lag(self.outbox_consumer()).await, Ok(0)) {
                let applied = match &probe {
                    None => true,
                    Some(p) => matches!(p.lag().await, Ok(0)),
                };
                if applied {
                    return true;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    async fn info(&self, event_id: Id) -> Result<Arc<EventInfo>, EngineError> {
        if let Some(i) = self.infos.get(&event_id) {
            return Ok(i.clone());
        }
        let snapshot = self.store.load_event(event_id).await?.ok_or(EngineError::NotFound(Entity::Event))?;
        self.infos.insert(event_id, snapshot.info.clone());
        Ok(snapshot.info)
    }

    async fn ask_event<T>(&self, event_id: Id, msg: EventMsg, rx: oneshot::Receiver<T>) -> Result<T, EngineError> {
        self.check_hot()?;
        if !self.actors.send_event(event_id, msg).await? {
            return Err(EngineError::NotFound(Entity::Event));
        }
        answer(rx).await
    }

    async fn ask_packet<T>(&self, packet_id: Id, msg: PacketMsg, rx: oneshot::Receiver<T>) -> Result<T, EngineError> {
        self.check_hot()?;
        if !self.actors.send_packet(packet_id, msg).await? {
            return Err(EngineError::NotFound(Entity::Packet));
        }
        answer(rx).await
    }

    /// A page's length: `orders.list_limit_default` unless given, at most
    /// `orders.list_limit_max`.
    pub(crate) fn page_limit(&self, limit: Option<u32>) -> Result<u32, EngineError> {
        let oc = &self.cfg.orders;
        let limit = limit.unwrap_or(oc.list_limit_default);
        if limit == 0 || limit > oc.list_limit_max {
            return Err(invalid(format!("limit must be 1-{}", oc.list_limit_max)));
        }
        Ok(limit)
    }

    /// Drops every actor: after a rebuild of the hot store their memory is stale.
    pub fn reset_actors(&self) {
        self.actors.reset();
    }
}
