//! Wiring: builds a node for its mode (stores, event log, leases, the
//! engine) and starts and stops its workers. The use cases know nothing of
//! which store or log they run on; the workers get the narrow handles they
//! need.
//!
//! - embedded (no `redis.url`): the in-memory hot store committed to
//!   `hot.db`, whose outbox table is the event log;
//! - Redis mode: hot state, scripts and outbox streams in Redis (a single
//!   server or a cluster), a lease for the one outbox reader;
//! - full mode (`kafka.brokers`): the relay moves the outbox to Kafka,
//!   `rush worker` ([`kafka_worker`]) applies it to the durable store.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::domain::IdGen;
use crate::durable::{Durable, Pools};
use crate::engine::{Engine, Parts};
use crate::events::outbox::OutboxLog;
use crate::events::redis_stream::RedisStreamLog;
use crate::events::EventLog;
use crate::idempotency::IdempotencyStore;
use crate::recovery::HotGuard;
use crate::store::db::Db;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::{HotStore, Lease};
use crate::telemetry::Metrics;
use crate::workers::payments::PaymentCheck;
use crate::workers::Sweep;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] crate::store::db::DbOpenError),
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
    let redis_err = |e| StartError::Redis(crate::config::redact_url(url), e);
    let tls = crate::store::redis::tls_certificates(&cfg.redis).map_err(redis_err)?;
    if cfg.redis.cluster {
        let store =
            RedisStore::connect_cluster(url, tls, prefix, ids.clone(), seats_max, timeout).await.map_err(redis_err)?;
        roles_of(store, cfg, url, role, &ids).await
    } else {
        let store = RedisStore::connect(url, tls, prefix, ids.clone(), seats_max, timeout).await.map_err(redis_err)?;
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
    let store = store.remember_recent(cfg.orders.recent_keep_s.saturating_mul(1000), cfg.orders.recent_per_user_max);
    let redis_err = |e| StartError::Redis(crate::config::redact_url(url), e);
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
    let redis_err = |e| StartError::Redis(crate::config::redact_url(url), e);
    let r = &cfg.redis;
    let tls = crate::store::redis::tls_certificates(r).map_err(redis_err)?;
    let checked = if r.cluster {
        let store = RedisStore::connect_cluster(url, tls, prefix, ids, seats_max, timeout).await.map_err(redis_err)?;
        store.check_durability(r.durability, r.replicas_min).await
    } else {
        let store = RedisStore::connect(url, tls, prefix, ids, seats_max, timeout).await.map_err(redis_err)?;
        store.check_durability(r.durability, r.replicas_min).await
    };
    checked.map(Some).map_err(|e| StartError::Durability(crate::config::redact_url(url), e))
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
fn relay_lease<C>(store: &RedisStore<C>, cfg: &Config, who: &str) -> Box<dyn Lease>
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
    relay(cfg, brokers, roles.log, roles.lease, metrics)
}

/// The relay over `log` (outbox streams → Kafka), with its own producer.
fn relay(
    cfg: &Config,
    brokers: &str,
    log: Arc<dyn EventLog>,
    lease: Option<Box<dyn Lease>>,
    metrics: Metrics,
) -> Result<crate::workers::relay::Relay, StartError> {
    Ok(crate::workers::relay::Relay {
        log,
        lease,
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
    lease: Option<Box<dyn Lease>>,
    recovery: Option<Arc<dyn crate::store::restore::HotRecovery>>,
}

/// A serving node: its engine, and what its in-process workers need.
pub struct Node {
    engine: Arc<Engine>,
    /// Handed to the in-process relay or persist worker when they start.
    outbox_lease: Mutex<Option<Box<dyn Lease>>>,
    outbox_len: Arc<AtomicU64>,
    /// Redis mode: knows when Redis lost its data, and rebuilds it.
    guard: Option<Arc<HotGuard>>,
}

impl Node {
    /// Redis mode when `redis.url` is set, embedded otherwise.
    pub async fn open(cfg: Config, metrics: Metrics) -> Result<Node, StartError> {
        Self::open_with(cfg, metrics, |store| store).await
    }

    /// [`Node::open`] with the hot store passed through `wrap` first: how
    /// fault tests put a store that fails on cue in front of the real one.
    pub async fn open_with(
        cfg: Config,
        metrics: Metrics,
        wrap: impl FnOnce(Arc<dyn HotStore>) -> Arc<dyn HotStore>,
    ) -> Result<Node, StartError> {
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
                let store = MemoryStore::open(hot_db.clone(), ids.clone(), cfg.events.seats_max)
                    .await?
                    .remember_recent(cfg.orders.recent_keep_s.saturating_mul(1000), cfg.orders.recent_per_user_max);
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
        let Roles { store, log, idempotency, lease, recovery } = roles;
        let guard =
            recovery.map(|hot| Arc::new(HotGuard::new(hot, durable.clone(), cfg.redis.clone(), metrics.clone())));
        if let Some(g) = &guard {
            // Before serving: a first start marks the data set; a lost
            // Redis is rebuilt now (or by the node already at it).
            if let Err(e) = g.check().await {
                tracing::warn!(error = %e, "checking the hot store's identity failed; retrying in the background");
            }
        }
        let outbox_len = Arc::new(AtomicU64::new(0));
        let engine = Arc::new(Engine::new(Parts {
            cfg,
            ids,
            store: wrap(store),
            log,
            durable,
            idempotency,
            guard: guard.clone(),
            outbox_len: outbox_len.clone(),
            metrics,
        }));
        Ok(Node { engine, outbox_lease: Mutex::new(lease), outbox_len, guard })
    }

    pub fn engine(&self) -> Arc<Engine> {
        self.engine.clone()
    }

    /// Starts the in-process workers; they stop when `shutdown` turns true.
    /// Full mode (Kafka): the relay (unless `kafka.relay_in_serve` is off)
    /// instead of the persist worker, which runs in `rush worker`.
    pub fn start_workers(&self, shutdown: watch::Receiver<bool>) -> Result<Vec<JoinHandle<()>>, StartError> {
        let engine = &self.engine;
        let cfg = engine.config();
        let metrics = engine.metrics.clone();
        let sweep: Arc<dyn Sweep> = engine.clone();
        let checks: Arc<dyn PaymentCheck> = engine.clone();
        let webhooks = crate::workers::webhooks::Webhooks {
            durable: engine.durable().clone(),
            http: engine.http().clone(),
            cfg: cfg.webhooks.clone(),
            metrics: metrics.clone(),
        };
        let mut tasks = vec![
            tokio::spawn(crate::workers::timeouts(
                sweep,
                engine.durable().clone(),
                cfg.workers.clone(),
                cfg.orders.idempotency_ttl_s * 1000,
                cfg.events.cancel_resume_ms,
                metrics.clone(),
                shutdown.clone(),
            )),
            self.outbox_monitor(shutdown.clone()),
            tokio::spawn(crate::workers::payments::payments(
                checks,
                engine.durable().clone(),
                cfg.payments.clone(),
                metrics.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(webhooks.run(shutdown.clone())),
            tokio::spawn(engine.clone().admit_loop(shutdown.clone())),
        ];
        if let Some(guard) = &self.guard {
            let engine = engine.clone();
            let reset = move || engine.reset_actors();
            tasks.push(tokio::spawn(crate::workers::watch_hot_store(guard.clone(), reset, shutdown.clone())));
        }
        match &cfg.kafka.brokers {
            None => tasks.push(tokio::spawn(crate::workers::persist_loop(
                engine.log(),
                engine.durable().clone(),
                cfg.workers.clone(),
                metrics,
                None,
                self.take_outbox_lease(),
                shutdown,
            ))),
            Some(brokers) if cfg.kafka.relay_in_serve => {
                let relay = relay(cfg, brokers, engine.log(), self.take_outbox_lease(), metrics)?;
                tasks.push(tokio::spawn(relay.run(shutdown)));
            }
            Some(_) => {}
        }
        Ok(tasks)
    }

    /// The outbox monitor alone (the other workers not started): the
    /// outbox's length for the metric, readiness and the write bound.
    pub fn outbox_monitor(&self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let cfg = self.engine.config();
        tokio::spawn(crate::workers::outbox_monitor(
            self.engine.log(),
            self.engine.outbox_consumer(),
            self.outbox_len.clone(),
            self.engine.metrics.clone(),
            cfg.outbox.check_every_ms,
            shutdown,
        ))
    }

    /// The outbox-reader lease (Redis mode), once.
    fn take_outbox_lease(&self) -> Option<Box<dyn Lease>> {
        self.outbox_lease.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}
