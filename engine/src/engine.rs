//! The engine: what the gateway calls. It validates input into domain
//! types, routes decisions to actors, reads from the stores, and runs the
//! workers. No HTTP here.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::actors::event::{CategoryView, EventMsg, HoldRequest, ReleaseReason, SeatView, Selection};
use crate::actors::packet::PacketMsg;
use crate::actors::Actors;
use crate::config::{Config, EngineMode};
use crate::domain::packet::split;
use crate::domain::{
    gene_of_user, now_unix_ms, valid_user_id, Category, EventDef, EventInfo, Fen, Id, IdGen, Limits, OrderStatus,
    PacketKind, SeatDef, SeatMap, SectionLayout,
};
use crate::durable::{Audit, Balance, Db, Durable, JournalEntry, Pools};
use crate::error::EngineError;
use crate::events::outbox::OutboxLog;
use crate::events::redis_stream::RedisStreamLog;
use crate::events::EventLog;
use crate::idempotency::IdempotencyStore;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::{Attendee, DirectGrab, DueItem, HotStore, PacketDef, Voided};
use crate::telemetry::Metrics;
use crate::views::{OrderView, PacketView};

/// Who is asking.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: String,
    pub admin: bool,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NewCategory {
    pub id: String,
    pub name: String,
    pub price: i64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NewLimits {
    pub per_order: Option<u32>,
    pub per_user: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct NewEvent {
    pub name: String,
    pub venue: String,
    pub starts_at: DateTime<Utc>,
    pub hold_ttl_s: Option<u32>,
    pub limits: Option<NewLimits>,
    pub categories: Vec<NewCategory>,
    pub layout: Option<Vec<SectionLayout>>,
    pub seats: Option<Vec<SeatDef>>,
}

#[derive(Clone, Debug)]
pub struct NewHold {
    pub event_id: Id,
    pub selection: Selection,
    pub attendees: Vec<Attendee>,
}

#[derive(Clone, Debug)]
pub struct NewPacket {
    pub kind: PacketKind,
    pub total_amount: i64,
    pub count: u32,
    pub greeting: Option<String>,
    pub expires_in_s: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EventView {
    pub event_id: Id,
    pub name: String,
    pub venue: String,
    pub starts_at: DateTime<Utc>,
    pub hold_ttl_s: u32,
    pub categories: Vec<CategoryView>,
    pub limits: Limits,
}

#[derive(Clone, Debug, Serialize)]
pub struct GrabOk {
    pub packet_id: Id,
    pub grab_id: Id,
    pub amount: Fen,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] crate::durable::DbOpenError),
    #[error("opening the hot store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    NodeId(#[from] crate::domain::id::NodeIdError),
    #[error("Redis at {0} is unreachable or refused the scripts: {1}")]
    Redis(String, crate::store::StoreError),
    #[error("node id {0} is held by another live node on this Redis; give each node its own RUSH__NODE_ID")]
    NodeIdTaken(u16),
    #[error("node_id_auto: every node id (0..=1023) is held by a live node on this Redis")]
    NoFreeNodeId,
    #[error("{0}")]
    Kafka(String),
    /// Redis cannot keep the promise `redis.durability` makes.
    #[error("Redis at {0} cannot keep redis.durability: {1}")]
    Durability(String, String),
}

/// Who opens Redis: a serving node (leases its node id so no other live
/// node mints the same ids; consumer `node-<id>`) or a standalone relay
/// (mints no ids; consumer `relay-<id>`, so a restarted relay with the same
/// id re-sends what it had read and not acknowledged).
#[derive(Clone, Copy, PartialEq, Eq)]
enum RedisRole {
    Node,
    Relay,
}

/// The hot store, event log, idempotency records and outbox-reader lease of
/// Redis mode, on a single server or a cluster.
async fn redis_roles(cfg: &Config, url: &str, ids: Arc<IdGen>, role: RedisRole) -> Result<Roles, StartError> {
    let timeout = Duration::from_millis(cfg.redis.timeout_ms);
    let (prefix, seats_max) = (&cfg.redis.key_prefix, cfg.events.seats_max);
    let redis_err = |e| StartError::Redis(url.to_string(), e);
    if cfg.redis.cluster {
        let store =
            RedisStore::connect_cluster(url, prefix, ids.clone(), seats_max, timeout).await.map_err(redis_err)?;
        roles_of(store, cfg, url, role, &ids).await
    } else {
        let store = RedisStore::connect(url, prefix, ids.clone(), seats_max, timeout).await.map_err(redis_err)?;
        roles_of(store, cfg, url, role, &ids).await
    }
}

async fn roles_of<C>(
    store: RedisStore<C>,
    cfg: &Config,
    url: &str,
    role: RedisRole,
    ids: &IdGen,
) -> Result<Roles, StartError>
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    let redis_err = |e| StartError::Redis(url.to_string(), e);
    if role == RedisRole::Node {
        let lease_ms = cfg.redis.node_lease_ms;
        if cfg.node_id_auto {
            let node =
                lease_free_node_id(&store, lease_ms).await.map_err(redis_err)?.ok_or(StartError::NoFreeNodeId)?;
            ids.set_node(node)?;
        } else {
            let wait = Duration::from_millis(lease_ms + lease_ms / 2);
            if !store.lease_node_id(cfg.node_id, lease_ms, wait).await.map_err(redis_err)? {
                return Err(StartError::NodeIdTaken(cfg.node_id));
            }
        }
    }
    let consumer = match role {
        RedisRole::Node => format!("node-{}", ids.node()),
        RedisRole::Relay => format!("relay-{}", cfg.node_id),
    };
    let r = &cfg.redis;
    let log = RedisStreamLog::new(store.connection(), &r.key_prefix, &consumer, store.appended())
        .with_replication(r.replication());
    let lease = relay_lease(&store, cfg, &consumer);
    let mut store = store;
    if role == RedisRole::Node {
        store
            .check_durability(r.durability, r.replicas_min)
            .await
            .map_err(|e| StartError::Durability(url.to_string(), e))?;
        store = store.with_replication(r.replication());
    }
    // One store, three roles: hot state, Idempotency-Key records, recovery.
    let store = Arc::new(store);
    Ok(Roles {
        store: store.clone(),
        log: Arc::new(log),
        idempotency: store.clone(),
        lease: Some(lease),
        recovery: Some(store),
    })
}

/// `rush serve --check-config`: whether the configured Redis keeps the
/// promise `redis.durability` makes (a sentence saying how), or why not.
pub async fn check_redis_durability(cfg: &Config) -> Result<Option<String>, StartError> {
    let Some(url) = cfg.redis.url.as_deref() else { return Ok(None) };
    let timeout = Duration::from_millis(cfg.redis.timeout_ms);
    let ids = Arc::new(IdGen::new(cfg.node_id)?);
    let (prefix, seats_max) = (&cfg.redis.key_prefix, cfg.events.seats_max);
    let redis_err = |e| StartError::Redis(crate::durable::pool::redact_url(url), e);
    let r = &cfg.redis;
    let checked = if r.cluster {
        let store = RedisStore::connect_cluster(url, prefix, ids, seats_max, timeout).await.map_err(redis_err)?;
        store.check_durability(r.durability, r.replicas_min).await
    } else {
        let store = RedisStore::connect(url, prefix, ids, seats_max, timeout).await.map_err(redis_err)?;
        store.check_durability(r.durability, r.replicas_min).await
    };
    checked.map(Some).map_err(|e| StartError::Durability(crate::durable::pool::redact_url(url), e))
}

/// `node_id_auto`: the first id free in Redis, from a hash of the host name
/// on (so a restarted pod tends to get its old id back once it is free).
async fn lease_free_node_id<C>(store: &RedisStore<C>, lease_ms: u64) -> Result<Option<u16>, crate::store::StoreError>
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let slots = u64::from(crate::domain::id::NODE_MAX) + 1;
    let start = crate::domain::id::stable_hash(host.as_bytes()) % slots;
    for k in 0..slots {
        let node = u16::try_from((start + k) % slots).unwrap_or(0);
        if store.lease_node_id(node, lease_ms, Duration::ZERO).await? {
            return Ok(Some(node));
        }
    }
    Ok(None)
}

/// The lease that lets one process at a time read the outbox streams (see
/// [`crate::workers::lead`]): the relay in full mode, the persist worker in Redis mode.
fn relay_lease<C>(store: &RedisStore<C>, cfg: &Config, who: &str) -> Box<dyn crate::workers::lead::Lease>
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    let token = format!("{who}-{:016x}", fastrand::u64(..));
    Box::new(store.lease("outbox-reader", &token, cfg.outbox.reader_lease_ms))
}

fn kafka_err(e: crate::events::LogError) -> StartError {
    StartError::Kafka(match e {
        crate::events::LogError::Unavailable(m) => m,
        e => e.to_string(),
    })
}

/// Checks the brokers answer and the topics exist (creating them).
async fn kafka_ready(cfg: &Config) -> Result<&str, StartError> {
    let brokers = cfg.kafka.brokers.as_deref().ok_or_else(|| StartError::Kafka("kafka.brokers is not set".into()))?;
    crate::events::kafka::check_reachable(&cfg.kafka, brokers).await.map_err(kafka_err)?;
    crate::events::kafka::ensure_topics(&cfg.kafka, brokers).await.map_err(kafka_err)?;
    Ok(brokers)
}

/// `rush relay`: the relay as its own process.
pub async fn standalone_relay(cfg: &Config, metrics: Metrics) -> Result<crate::workers::relay::Relay, StartError> {
    let url = cfg.redis.url.as_deref().ok_or_else(|| StartError::Kafka("the relay needs redis.url".into()))?;
    let brokers = kafka_ready(cfg).await?;
    let roles = redis_roles(cfg, url, Arc::new(IdGen::new(cfg.node_id)?), RedisRole::Relay).await?;
    Ok(crate::workers::relay::Relay {
        log: roles.log,
        lease: roles.lease,
        producer: crate::events::kafka::producer(&cfg.kafka, brokers).map_err(kafka_err)?,
        kafka: cfg.kafka.clone(),
        workers: cfg.workers.clone(),
        metrics,
        poll_wait: Duration::from_millis(cfg.kafka.relay_poll_ms),
    })
}

/// `rush worker`: the durable store and the Kafka log it applies.
pub async fn kafka_worker(cfg: &Config) -> Result<(Durable, Arc<dyn EventLog>), StartError> {
    let brokers = kafka_ready(cfg).await?;
    let pools = Pools::of_config(cfg).await?;
    let log = crate::events::kafka::KafkaLog::new(&cfg.kafka, brokers).map_err(kafka_err)?;
    Ok((Durable::new(pools), Arc::new(log)))
}

/// What a mode's stores are: the hot store, the event log, where
/// Idempotency-Key records live, and (Redis) the outbox reader's lease and
/// the recovery handle.
struct Roles {
    store: Arc<dyn HotStore>,
    log: Arc<dyn EventLog>,
    idempotency: Arc<dyn IdempotencyStore>,
    lease: Option<Box<dyn crate::workers::lead::Lease>>,
    recovery: Option<Arc<dyn crate::store::restore::HotRecovery>>,
}

pub struct Engine {
    pub(crate) cfg: Arc<Config>,
    pub(crate) ids: Arc<IdGen>,
    pub(crate) store: Arc<dyn HotStore>,
    log: Arc<dyn EventLog>,
    pub(crate) durable: Durable,
    /// Where Idempotency-Key records live (durable store or Redis).
    idempotency: Arc<dyn IdempotencyStore>,
    actors: Actors,
    /// Event definitions by id: immutable, so cached for reads of holds.
    infos: DashMap<Id, Arc<EventInfo>>,
    /// Last measured outbox length (see [`crate::config::OutboxConfig`]).
    outbox_len: AtomicU64,
    /// Handed to the in-process relay or persist worker when they start.
    relay_lease: std::sync::Mutex<Option<Box<dyn crate::workers::lead::Lease>>>,
    /// Payment channels (the sandboxes) and outbound HTTP.
    pub(crate) pay: crate::pay::flow::Payments,
    pub metrics: Metrics,
    /// Shutdown has begun: readiness fails (see [`Engine::begin_drain`]).
    draining: std::sync::atomic::AtomicBool,
    /// Redis mode: knows when Redis lost its data, and rebuilds it.
    guard: Option<Arc<crate::recovery::HotGuard>>,
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

impl Engine {
    /// Redis mode when `redis.url` is set, embedded otherwise.
    pub async fn open(cfg: Config, metrics: Metrics) -> Result<Arc<Engine>, StartError> {
        Self::open_with(cfg, metrics, |store| store).await
    }

    /// [`Engine::open`] with the hot store passed through `wrap` first: how
    /// fault tests put a store that fails on cue in front of the real one.
    pub async fn open_with(
        cfg: Config,
        metrics: Metrics,
        wrap: impl FnOnce(Arc<dyn HotStore>) -> Arc<dyn HotStore>,
    ) -> Result<Arc<Engine>, StartError> {
        let ids = Arc::new(IdGen::new(cfg.node_id)?);
        let pools = Pools::of_config(&cfg).await?;
        let durable = Durable::new(pools);
        if cfg.kafka.brokers.is_some() {
            kafka_ready(&cfg).await?;
        }
        let roles = match &cfg.redis.url {
            // Redis: hot state, scripts and outbox streams in Redis.
            Some(url) => redis_roles(&cfg, url, ids.clone(), RedisRole::Node).await?,
            // Embedded: in-memory hot store persisted to hot.db, whose
            // outbox table is the event log.
            None => {
                let hot_db = Db::open(&cfg.data_dir, &cfg.sqlite).await?;
                let store = MemoryStore::open(hot_db.clone(), ids.clone(), cfg.events.seats_max).await?;
                let log = OutboxLog::new(hot_db, store.appended());
                Roles {
                    store: Arc::new(store),
                    log: Arc::new(log),
                    idempotency: Arc::new(durable.clone()),
                    lease: None,
                    recovery: None,
                }
            }
        };
        let Roles { store, log, idempotency, lease: relay_lease, recovery } = roles;
        let guard = recovery.map(|hot| {
            Arc::new(crate::recovery::HotGuard::new(hot, durable.clone(), cfg.redis.clone(), metrics.clone()))
        });
        if let Some(g) = &guard {
            // Before serving: a first start marks the data set; a lost
            // Redis is rebuilt now (or by the node already at it).
            if let Err(e) = g.check().await {
                tracing::warn!(error = %e, "checking the hot store's identity failed; retrying in the background");
            }
        }
        let store = wrap(store);
        // Embedded, this node is the store's only writer.
        let sole_owner = cfg.redis.url.is_none();
        let actors = Actors::new(store.clone(), cfg.actors.clone(), metrics.clone(), sole_owner);
        let pay = crate::pay::flow::Payments::new(&cfg, durable.db());
        Ok(Arc::new(Engine {
            cfg: Arc::new(cfg),
            ids,
            store,
            log,
            durable,
            idempotency,
            actors,
            infos: DashMap::new(),
            outbox_len: AtomicU64::new(0),
            relay_lease: std::sync::Mutex::new(relay_lease),
            pay,
            metrics,
            draining: std::sync::atomic::AtomicBool::new(false),
            guard,
        }))
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

    /// Starts the in-process workers; they stop when `shutdown` turns true.
    /// Full mode (Kafka): the relay (unless `kafka.relay_in_serve` is off)
    /// instead of the persist worker, which runs in `rush worker`.
    pub fn start_workers(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> Result<Vec<JoinHandle<()>>, StartError> {
        let mut tasks = vec![
            tokio::spawn(crate::workers::timeouts(self.clone(), shutdown.clone())),
            tokio::spawn(crate::workers::outbox_monitor(self.clone(), shutdown.clone())),
            tokio::spawn(crate::workers::payments::payments(self.clone(), shutdown.clone())),
            tokio::spawn(crate::workers::webhooks::webhooks(self.clone(), shutdown.clone())),
        ];
        if let Some(guard) = &self.guard {
            let engine = self.clone();
            let reset = move || engine.actors.reset();
            tasks.push(tokio::spawn(crate::recovery::watch_hot_store(guard.clone(), reset, shutdown.clone())));
        }
        match &self.cfg.kafka.brokers {
            None => tasks.push(tokio::spawn(crate::workers::persist(self.clone(), shutdown))),
            Some(brokers) if self.cfg.kafka.relay_in_serve => {
                let producer = crate::events::kafka::producer(&self.cfg.kafka, brokers).map_err(kafka_err)?;
                let relay = crate::workers::relay::Relay {
                    log: self.log.clone(),
                    lease: self.take_outbox_lease(),
                    producer,
                    kafka: self.cfg.kafka.clone(),
                    workers: self.cfg.workers.clone(),
                    metrics: self.metrics.clone(),
                    poll_wait: Duration::from_millis(self.cfg.kafka.relay_poll_ms),
                };
                tasks.push(tokio::spawn(relay.run(shutdown)));
            }
            Some(_) => {}
        }
        Ok(tasks)
    }

    /// The outbox-reader lease (Redis mode), once.
    pub fn take_outbox_lease(&self) -> Option<Box<dyn crate::workers::lead::Lease>> {
        self.relay_lease.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Who drains the outbox: the relay in full mode, the persist worker otherwise.
    pub fn outbox_consumer(&self) -> &'static str {
        match self.cfg.kafka.brokers {
            Some(_) => crate::workers::relay::RELAY_CONSUMER,
            None => crate::workers::PERSIST_CONSUMER,
        }
    }

    pub fn set_outbox_len(&self, len: u64) {
        self.outbox_len.store(len, Ordering::Relaxed);
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
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // ---- events and seats ----

    pub async fn create_event(&self, input: NewEvent) -> Result<(Id, usize), EngineError> {
        let ec = &self.cfg.events;
        check_text("name", &input.name, ec.name_len_max)?;
        check_text("venue", &input.venue, ec.name_len_max)?;
        if input.categories.is_empty() || input.categories.len() > ec.categories_max {
            return Err(invalid(format!("an event needs 1-{} categories", ec.categories_max)));
        }
        let mut seen = HashSet::new();
        let mut categories = Vec::with_capacity(input.categories.len());
        for c in input.categories {
            check_text("category id", &c.id, 32)?;
            check_text("category name", &c.name, ec.name_len_max)?;
            if !seen.insert(c.id.clone()) {
                return Err(invalid(format!("category {} appears twice", c.id)));
            }
            // Free tickets are refused: an order completes through a
            // payment, and a payment of 0 fen moves no money to confirm it.
            if c.price < 1 || c.price > ec.price_max_fen {
                return Err(invalid(format!(
                    "price must be 1-{} fen (free tickets are not supported)",
                    ec.price_max_fen
                )));
            }
            categories.push(Category { id: c.id, name: c.name, price: Fen::new(c.price) });
        }
        let hold_ttl_s = input.hold_ttl_s.unwrap_or(ec.hold_ttl_s_default);
        if hold_ttl_s == 0 || hold_ttl_s > ec.hold_ttl_s_max {
            return Err(invalid(format!("hold_ttl_s must be 1-{}", ec.hold_ttl_s_max)));
        }
        let limits = Limits {
            per_order: input.limits.as_ref().and_then(|l| l.per_order).unwrap_or(ec.per_order_default),
            per_user: input.limits.as_ref().and_then(|l| l.per_user).unwrap_or(ec.per_user_default),
        };
        if limits.per_order == 0
            || limits.per_user == 0
            || limits.per_order > ec.seats_max
            || limits.per_user > ec.seats_max
        {
            return Err(invalid(format!("limits must be 1-{}", ec.seats_max)));
        }
        let cat_ids: Vec<&str> = categories.iter().map(|c| c.id.as_str()).collect();
        let map = match (input.layout, input.seats) {
            (Some(layout), None) => SeatMap::from_layout(&layout, &cat_ids, ec.seats_max),
            (None, Some(seats)) => SeatMap::from_seats(seats, &cat_ids, ec.seats_max),
            _ => return Err(invalid("give exactly one of layout or seats")),
        }
        .map_err(|e| invalid(e.to_string()))?;
        let def = EventDef {
            event_id: self.ids.next(0),
            name: input.name,
            venue: input.venue,
            starts_at: input.starts_at,
            hold_ttl_s,
            limits,
            categories,
            seats: map.seats().to_vec(),
        };
        let count = map.len();
        self.check_hot()?;
        // The durable store first: a rebuild knows every event Redis had.
        self.durable.save_event(&def).await?;
        self.store.create_event(&def).await?;
        let id = def.event_id;
        self.infos.insert(id, Arc::new(EventInfo { def, map }));
        crate::telemetry::record_ids(&[("event_id", id)]);
        Ok((id, count))
    }

    async fn info(&self, event_id: Id) -> Result<Arc<EventInfo>, EngineError> {
        if let Some(i) = self.infos.get(&event_id) {
            return Ok(i.clone());
        }
        let snapshot = self.store.load_event(event_id).await?.ok_or(EngineError::NotFound("event"))?;
        self.infos.insert(event_id, snapshot.info.clone());
        Ok(snapshot.info)
    }

    async fn ask_event<T>(&self, event_id: Id, msg: EventMsg, rx: oneshot::Receiver<T>) -> Result<T, EngineError> {
        self.check_hot()?;
        if !self.actors.send_event(event_id, msg).await? {
            return Err(EngineError::NotFound("event"));
        }
        answer(rx).await
    }

    async fn ask_packet<T>(&self, packet_id: Id, msg: PacketMsg, rx: oneshot::Receiver<T>) -> Result<T, EngineError> {
        self.check_hot()?;
        if !self.actors.send_packet(packet_id, msg).await? {
            return Err(EngineError::NotFound("packet"));
        }
        answer(rx).await
    }

    pub async fn event(&self, event_id: Id) -> Result<EventView, EngineError> {
        let (tx, rx) = oneshot::channel();
        let categories = self.ask_event(event_id, EventMsg::View(tx), rx).await?;
        let info = self.info(event_id).await?;
        Ok(EventView {
            event_id,
            name: info.def.name.clone(),
            venue: info.def.venue.clone(),
            starts_at: info.def.starts_at,
            hold_ttl_s: info.def.hold_ttl_s,
            categories,
            limits: info.def.limits,
        })
    }

    pub async fn seats(&self, event_id: Id, section: Option<String>) -> Result<Vec<SeatView>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.ask_event(event_id, EventMsg::Seats { section, reply }, rx).await
    }

    // ---- orders ----

    pub async fn hold(&self, user_id: &str, input: NewHold) -> Result<OrderView, EngineError> {
        let ec = &self.cfg.events;
        if input.attendees.len() > ec.attendees_max {
            return Err(invalid(format!("at most {} attendees", ec.attendees_max)));
        }
        for a in &input.attendees {
            check_text("attendee name", &a.name, ec.name_len_max)?;
            check_text("attendee id_number", &a.id_number, 64)?;
        }
        if let Selection::Named(seats) = &input.selection {
            if seats.is_empty() {
                return Err(invalid("name at least one seat"));
            }
        }
        self.check_outbox()?;
        let req = HoldRequest {
            order_id: self.ids.next_for_user(user_id),
            user_id: user_id.to_string(),
            selection: input.selection,
            attendees: input.attendees,
            now_ms: now_unix_ms(),
        };
        crate::telemetry::record_ids(&[("order_id", req.order_id), ("event_id", input.event_id)]);
        let (tx, rx) = oneshot::channel();
        let result = self.ask_event(input.event_id, EventMsg::Hold(req, tx), rx).await?;
        let outcome = match &result {
            Ok(_) => "held",
            Err(EngineError::SoldOut { .. }) => "sold_out",
            Err(EngineError::SeatUnavailable(_)) => "seat_unavailable",
            Err(EngineError::LimitExceeded { .. }) => "limit_exceeded",
            Err(_) => "refused",
        };
        self.metrics.holds.with_label_values(&[outcome]).inc();
        result
    }

    /// An order by id, for its owner or an admin; 404 for anyone else.
    pub async fn order(&self, caller: &Caller, order_id: Id) -> Result<OrderView, EngineError> {
        let view = self.live_order(order_id).await?;
        if !caller.admin && view.user_id != caller.user_id {
            return Err(EngineError::NotFound("order"));
        }
        Ok(view)
    }

    /// The user's orders, newest first; `next` is the cursor for the page
    /// after this one.
    pub async fn orders(
        &self,
        user_id: &str,
        before: Option<Id>,
        limit: Option<u32>,
    ) -> Result<(Vec<OrderView>, Option<Id>), EngineError> {
        let limit = self.page_limit(limit)?;
        let records = self.durable.orders_of(user_id, before, limit).await?;
        let next = if records.len() as u32 == limit { records.last().map(|r| r.order_id) } else { None };
        Ok((records.iter().map(OrderView::from_record).collect(), next))
    }

    pub(crate) fn page_limit(&self, limit: Option<u32>) -> Result<u32, EngineError> {
        let oc = &self.cfg.orders;
        let limit = limit.unwrap_or(oc.list_limit_default);
        if limit == 0 || limit > oc.list_limit_max {
            return Err(invalid(format!("limit must be 1-{}", oc.list_limit_max)));
        }
        Ok(limit)
    }

    pub async fn cancel(&self, caller: &Caller, order_id: Id) -> Result<OrderView, EngineError> {
        let current = self.order(caller, order_id).await?;
        if current.status != OrderStatus::PendingPayment {
            return Err(EngineError::OrderNotPending { status: current.status });
        }
        let why = ReleaseReason::Cancel { user_id: (!caller.admin).then(|| caller.user_id.clone()) };
        let (reply, rx) = oneshot::channel();
        let msg = EventMsg::Release { order_id, why, now_ms: now_unix_ms(), reply };
        let released = match self.ask_event(current.event_id, msg, rx).await? {
            // Released between our read and the actor's decision.
            Err(EngineError::NotFound(_)) => Err(EngineError::OrderNotPending { status: OrderStatus::Expired }),
            other => other,
        }?;
        self.close_payments_of(order_id).await;
        Ok(released)
    }

    /// Held → sold; used by payments. Refused for money taken at or after
    /// the hold's expiry (`paid_at_ms`, the channel's time).
    pub async fn confirm(&self, event_id: Id, order_id: Id, paid_at_ms: u64) -> Result<OrderView, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.ask_event(event_id, EventMsg::Confirm { order_id, paid_at_ms, reply }, rx).await?
    }

    /// Sold → available after the order's money went back.
    pub async fn refund_seats(&self, event_id: Id, order_id: Id) -> Result<OrderView, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.ask_event(event_id, EventMsg::Refund { order_id, reply }, rx).await?
    }

    /// An order as it stands now: the hot store knows live holds and paid
    /// orders before the workers persist them; released ones are read from
    /// the durable store. No owner check.
    pub(crate) async fn live_order(&self, order_id: Id) -> Result<OrderView, EngineError> {
        // A lost Redis holds nothing: the guess below would be wrong.
        self.check_hot()?;
        if let Some((hot, status)) = self.store.order(order_id).await? {
            let info = self.info(hot.event_id).await?;
            return Ok(OrderView::from_hot(&hot, &info, status));
        }
        let Some(r) = self.durable.order(order_id).await? else {
            return Err(EngineError::NotFound("order"));
        };
        let mut view = OrderView::from_record(&r);
        // The hot store keeps every live hold and paid order; one it no
        // longer has was released, even if the workers have not persisted
        // that yet: expired past its deadline, cancelled before it, and a
        // paid one refunded.
        view.status = match r.status {
            OrderStatus::PendingPayment if now_unix_ms() >= r.expires_at_ms => OrderStatus::Expired,
            OrderStatus::PendingPayment => OrderStatus::Cancelled,
            OrderStatus::Paid => OrderStatus::Refunded,
            s => s,
        };
        Ok(view)
    }

    /// Settles up to `limit` due holds and packets through their actors.
    pub async fn settle_due(&self, limit: usize) -> Result<usize, EngineError> {
        if !self.hot_intact() {
            return Ok(0);
        }
        let now_ms = now_unix_ms();
        let lease_ms = self.cfg.workers.due_lease_ms;
        let due = self.store.claim_due(now_ms, limit, lease_ms).await?;
        let (mut holds, mut packets) = (Vec::new(), Vec::new());
        // Send everything first so each actor decides its share as one
        // batch, then wait for the answers.
        for item in &due {
            match *item {
                DueItem::Hold { event_id, order_id } => {
                    // Close the order's payments at their channels first:
                    // money taken in time is found and buys the seats, and
                    // none can come after. Not all settled: next round.
                    if !self.settle_payments_before_release(order_id).await {
                        continue;
                    }
                    let (reply, rx) = oneshot::channel();
                    let msg = EventMsg::Release { order_id, why: ReleaseReason::Expire, now_ms, reply };
                    if self.actors.send_event(event_id, msg).await? {
                        holds.push(rx);
                    }
                }
                DueItem::Packet { packet_id } => {
                    let (reply, rx) = oneshot::channel();
                    if self.actors.send_packet(packet_id, PacketMsg::Expire { reply }).await? {
                        packets.push(rx);
                    }
                }
            }
        }
        for rx in holds {
            if let Ok(Err(e)) = rx.await {
                tracing::debug!(error = %e, "due hold not settled");
            }
        }
        for rx in packets {
            if let Ok(Err(e)) = rx.await {
                tracing::debug!(error = %e, "due packet not settled");
            }
        }
        Ok(due.len())
    }

    // ---- packets ----

    pub async fn create_packet(&self, sender: &str, input: NewPacket) -> Result<PacketView, EngineError> {
        let pc = &self.cfg.packets;
        if input.total_amount <= 0 {
            return Err(invalid("total_amount must be a positive number of fen"));
        }
        if input.total_amount > pc.total_max_fen {
            return Err(invalid(format!("total_amount must be at most {}", pc.total_max_fen)));
        }
        let expires_in_s = input.expires_in_s.unwrap_or(pc.expires_in_s_default);
        if expires_in_s == 0 || expires_in_s > pc.expires_in_s_max {
            return Err(invalid(format!("expires_in_s must be 1-{}", pc.expires_in_s_max)));
        }
        let greeting = input.greeting.unwrap_or_default();
        if greeting.chars().count() > pc.greeting_len_max {
            return Err(invalid(format!("greeting must be at most {} characters", pc.greeting_len_max)));
        }
        let parts =
            split(input.kind, Fen::new(input.total_amount), input.count, pc.count_max, &mut fastrand::Rng::new())
                .map_err(|e| invalid(e.to_string()))?;
        let now = now_unix_ms();
        let def = PacketDef {
            packet_id: self.ids.next(gene_of_user(sender)),
            sender: sender.to_string(),
            kind: input.kind,
            total: Fen::new(input.total_amount),
            count: input.count,
            greeting,
            created_at_ms: now,
            expires_at_ms: now + expires_in_s * 1000,
            parts,
        };
        crate::telemetry::record_ids(&[("packet_id", def.packet_id)]);
        self.check_outbox()?;
        self.check_hot()?;
        // Money first: the packet exists only once its total is frozen.
        self.durable.freeze_for_packet(&def).await?;
        if let Err(e) = self.store.create_packet(&def).await {
            // The call may have run (a timeout is not a no): find out
            // before the money moves back.
            match self.store.void_packet(def.packet_id).await {
                Ok(Voided::Exists) => {}
                Ok(Voided::Voided) => {
                    unfreeze_voided(&self.durable, def.packet_id).await;
                    return Err(e.into());
                }
                Err(unknown) => {
                    tracing::warn!(packet_id = %def.packet_id, error = %unknown, "packet creation outcome unknown; resolving");
                    tokio::spawn(resolve_packet(self.store.clone(), self.durable.clone(), def.packet_id));
                    return Err(EngineError::OutcomeUnknown { what: "packet", id: def.packet_id });
                }
            }
        }
        Ok(PacketView::from(&crate::store::PacketSnapshot {
            def: Arc::new(def),
            status: crate::domain::PacketStatus::Active,
            grabs: vec![],
        }))
    }

    /// What became of a packet whose creation answered `outcome_unknown`:
    /// its view if it was created, `None` if it never will be (its money
    /// is unfrozen), still unknown while the hot store cannot say.
    pub async fn packet_outcome(&self, packet_id: Id) -> Result<Option<PacketView>, EngineError> {
        let unknown = |_| EngineError::OutcomeUnknown { what: "packet", id: packet_id };
        match self.store.void_packet(packet_id).await.map_err(unknown)? {
            Voided::Exists => Ok(Some(self.packet(packet_id).await?)),
            Voided::Voided => {
                self.durable.unfreeze_failed_packet(packet_id).await?;
                Ok(None)
            }
        }
    }

    pub async fn grab(&self, user_id: &str, packet_id: Id) -> Result<GrabOk, EngineError> {
        self.check_outbox()?;
        let grab_id = self.ids.next(gene_of_user(user_id));
        let result = match self.cfg.actors.mode {
            EngineMode::Actor => {
                let (reply, rx) = oneshot::channel();
                let msg = PacketMsg::Grab { user_id: user_id.to_string(), grab_id, reply };
                self.ask_packet(packet_id, msg, rx).await.and_then(|r| r)
            }
            // The actor path checks the hot store in `ask_packet`.
            EngineMode::Direct => {
                self.check_hot()?;
                match self.store.grab_direct(packet_id, user_id, grab_id, now_unix_ms()).await? {
                    DirectGrab::Granted(g) => Ok(g),
                    DirectGrab::Already(amount) => Err(EngineError::AlreadyGrabbed { amount }),
                    DirectGrab::Empty => Err(EngineError::PacketEmpty),
                    DirectGrab::Expired => Err(EngineError::PacketExpired),
                    DirectGrab::Unknown => Err(EngineError::NotFound("packet")),
                }
            }
        };
        let outcome = match &result {
            Ok(_) => "granted",
            Err(EngineError::AlreadyGrabbed { .. }) => "already_grabbed",
            Err(EngineError::PacketEmpty) => "empty",
            Err(EngineError::PacketExpired) => "expired",
            Err(EngineError::Overloaded(_) | EngineError::OutboxFull) => "overloaded",
            Err(_) => "failed",
        };
        self.metrics.grabs.with_label_values(&[outcome]).inc();
        result.map(|g| GrabOk { packet_id, grab_id: g.grab_id, amount: g.amount })
    }

    pub async fn packet(&self, packet_id: Id) -> Result<PacketView, EngineError> {
        let (tx, rx) = oneshot::channel();
        let snap = self.ask_packet(packet_id, PacketMsg::View(tx), rx).await?;
        Ok(PacketView::from(&snap))
    }

    // ---- wallet ----

    pub async fn wallet(&self, user_id: &str) -> Result<Balance, EngineError> {
        Ok(self.durable.balance(user_id).await?)
    }

    pub async fn ledger(
        &self,
        user_id: &str,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> Result<(Vec<JournalEntry>, Option<i64>), EngineError> {
        let limit = self.page_limit(limit)?;
        let entries = self.durable.ledger(user_id, before, limit).await?;
        let next = if entries.len() as u32 == limit { entries.last().map(|e| e.entry_id) } else { None };
        Ok((entries, next))
    }

    pub async fn credit(&self, user_id: &str, amount: i64, reason: &str) -> Result<Balance, EngineError> {
        if !valid_user_id(user_id) {
            return Err(invalid("user_id must be 1-64 letters, digits, _ - . @ and not start with @"));
        }
        let amount = Fen::positive(amount).map_err(|e| invalid(e.to_string()))?;
        if amount.get() > self.cfg.orders.credit_max_fen {
            return Err(invalid(format!("amount must be at most {}", self.cfg.orders.credit_max_fen)));
        }
        check_text("reason", reason, 200)?;
        self.durable.credit(user_id, amount, reason, self.ids.next(gene_of_user(user_id))).await?;
        self.wallet(user_id).await
    }

    pub async fn audit(&self) -> Result<Audit, EngineError> {
        Ok(self.durable.audit().await?)
    }
}

/// Attempts of [`resolve_packet`] before it gives up and leaves the money
/// frozen for an operator (logged at error), and the longest pause between
/// two: together about a day of a hot store that cannot answer.
const RESOLVE_TRIES_MAX: u32 = 3_000;
const RESOLVE_PAUSE_MS_MAX: u64 = 30_000;

/// Settles a packet whose creation's outcome is unknown, once the hot
/// store answers again: created (nothing to do) or voided (unfrozen).
async fn resolve_packet(store: Arc<dyn HotStore>, durable: Durable, packet_id: Id) {
    let mut pause_ms = 100;
    for _ in 0..RESOLVE_TRIES_MAX {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        match store.void_packet(packet_id).await {
            Ok(Voided::Exists) => return,
            Ok(Voided::Voided) => return unfreeze_voided(&durable, packet_id).await,
            Err(_) => pause_ms = (pause_ms * 2).min(RESOLVE_PAUSE_MS_MAX),
        }
    }
    tracing::error!(%packet_id, "packet creation still unresolved: its money stays frozen");
}

/// Gives a voided packet's money back (once, however often it is called).
async fn unfreeze_voided(durable: &Durable, packet_id: Id) {
    if let Err(e) = durable.unfreeze_failed_packet(packet_id).await {
        tracing::error!(%packet_id, error = %e, "could not unfreeze a packet that was not created");
    }
}
