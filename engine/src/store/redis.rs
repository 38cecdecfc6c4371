//! The Redis hot store: every decision is re-checked and applied by a Lua
//! script (`lua/`), atomically with its outbox entry on the partition's
//! stream. Every key of an entity carries its partition's hash tag
//! (`{p17}`), shared by that partition's due queue and outbox, so each
//! script touches one slot and runs on Redis Cluster.
//!
//! Keys, under the configured prefix `P`:
//! - `P:{pN}:ev:<id>:def` (event JSON), `:n` (seat count), `:seats`,
//!   `:holds`, `:paid`, `:users` (seats per user) (hashes), `:ver` (the
//!   event's version, bumped by every script call that writes it)
//! - `P:{pN}:pk:<id>:def` (packet JSON, or `void`: a tombstone left by
//!   `void_packet`), `:parts` (list), `:state`, `:grabs`
//! - `P:{pN}:due` (zset of deadlines), `P:{pN}:outbox` (stream)
//! - `P:{pO}:ord:<order>` → event id: an index for reading an order by id,
//!   written before the hold script (it asserts nothing on its own).
//!
//! Why one file of ~1 150 lines: the key layout above, the call of every Lua
//! script (one method each) and the single-server/cluster connection are one
//! type, `RedisStore`; split, the key layout would sit apart from the code
//! that uses it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::AsyncCommands;
use redis::{ClientTlsConfig, TlsCertificates};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::queue::{Joined, QueueRules, Ticket};
use super::recent::RecentGrab;
use super::restore::{self, AppliedOrder, AppliedPacket, HotRecovery, Markers, Restored};
use super::{
    Changed, DirectGrab, DueItem, EventSnapshot, Grab, HotOrder, HotStore, OpOutcome, PacketDef, PacketSnapshot,
    PaidOrder, SeatOp, SeatState, SeatsApplied, StoreError, Voided,
};
use crate::config::Replication;
use crate::domain::id::PARTITION_COUNT;
use crate::domain::{DomainEvent, Envelope};
use crate::domain::{EventDef, EventInfo, EventSettings, Fen, Id, IdGen, OrderStatus, PacketStatus};
use crate::store::scripts::{self, Scripts};

/// Generic over the connection: a `ConnectionManager` for one server, a
/// cluster connection for Redis Cluster. No call spans two slots: every
/// script's keys share one hash tag, and per-partition reads are separate
/// commands run concurrently, never a cross-slot pipeline.
pub struct RedisStore<C = ConnectionManager> {
    conn: C,
    prefix: String,
    ids: Arc<IdGen>,
    seats_max: u32,
    scripts: Scripts,
    /// Packet definitions never change: read once. An event's changes
    /// (its `:sale` settings) are applied to the cached one when a load or
    /// a read of its definition finds a newer revision.
    events: DashMap<Id, Arc<EventInfo>>,
    packets: DashMap<Id, Arc<PacketDef>>,
    /// Woken after every script that appended to an outbox.
    appended: Arc<Notify>,
    /// `replicas` durability: every write waits for its replicas.
    replication: Option<Replication>,
    /// A Redis Cluster (no single replication id to watch).
    cluster: bool,
    /// How long recent and closed orders are kept (`orders.recent_keep_s`),
    /// and how many recent orders per user (`orders.recent_per_user_max`).
    recent_keep_ms: u64,
    recent_per_user_max: usize,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    if e.code() == Some(LOST_CODE) {
        return StoreError::Lost;
    }
    StoreError::Unavailable(e.to_string())
}

/// The error code a writing script answers when its partition's marker is
/// gone (`lua/*.lua`: `RUSHLOST`).
const LOST_CODE: &str = "RUSHLOST";

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// The placeholder the scripts replace with an amount only they know
/// (`expire_packet.lua`: the remainder; `grab_direct.lua`: the part).
const REMAINING_PLACEHOLDER: i64 = i64::MIN;

/// The `def` of a packet whose creation was voided (see `void_packet`).
const VOID_PACKET: &str = "void";

/// The version argument of the seat scripts: empty means unchecked.
fn version_arg(version: Option<u64>) -> String {
    version.map(|v| v.to_string()).unwrap_or_default()
}

/// The CA and client certificate of `redis.tls_*`, read from their files;
/// `None` when none is set (a `rediss://` url then trusts the system's
/// roots).
pub fn tls_certificates(cfg: &crate::config::RedisConfig) -> Result<Option<TlsCertificates>, StoreError> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| StoreError::Unavailable(format!("redis.{what} {}: cannot read: {e}", path.display())))
    };
    let root_cert = cfg.tls_ca_file.as_deref().map(|p| read("tls_ca_file", p)).transpose()?;
    let client_tls = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => {
            Some(ClientTlsConfig { client_cert: read("tls_cert_file", cert)?, client_key: read("tls_key_file", key)? })
        }
        _ => None,
    };
    Ok((root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates { client_tls, root_cert }))
}

impl RedisStore<ConnectionManager> {
    /// Connects, with every call bounded by `timeout` so a dead Redis is an
    /// error within that time, never a hang, and loads the scripts. `tls`:
    /// see [`tls_certificates`].
    pub async fn connect(
        url: &str,
        tls: Option<TlsCertificates>,
        prefix: &str,
        ids: Arc<IdGen>,
        seats_max: u32,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let client = match tls {
            Some(certs) => redis::Client::build_with_tls(url, certs),
            None => redis::Client::open(url),
        }
        .map_err(|e| StoreError::Unavailable(format!("redis url: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, config).await.map_err(unavailable)?;
        Self::with_connection(conn, prefix, ids, seats_max).await
    }
}

impl RedisStore<super::redis_cluster::ReopeningCluster> {
    /// Connects to a Redis Cluster through one of its nodes, every call
    /// bounded by `timeout`, and loads the scripts on every node.
    pub async fn connect_cluster(
        url: &str,
        tls: Option<TlsCertificates>,
        prefix: &str,
        ids: Arc<IdGen>,
        seats_max: u32,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let mut builder =
            ClusterClientBuilder::new(vec![url]).connection_timeout(timeout).response_timeout(timeout).retries(1);
        if let Some(certs) = tls {
            builder = builder.certs(certs);
        }
        let client = builder.build().map_err(|e| StoreError::Unavailable(format!("redis cluster url: {e}")))?;
        let conn = super::redis_cluster::ReopeningCluster::open(client).await.map_err(unavailable)?;
        let mut store = Self::with_connection(conn, prefix, ids, seats_max).await?;
        store.cluster = true;
        Ok(store)
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Uses `conn` (single server or cluster) and loads the scripts.
    pub async fn with_connection(
        mut conn: C,
        prefix: &str,
        ids: Arc<IdGen>,
        seats_max: u32,
    ) -> Result<Self, StoreError> {
        let scripts = Scripts::new();
        scripts.load(&mut conn).await?;
        // Whatever built the connection: a cluster node says so (pipelines
        // of keys in different slots are then sent key by key).
        let info: redis::Value = redis::cmd("INFO").arg("cluster").query_async(&mut conn).await.map_err(unavailable)?;
        let cluster = match info {
            // A cluster connection asks every node: one answer per node.
            redis::Value::Map(_) => true,
            redis::Value::BulkString(b) => info_field(&String::from_utf8_lossy(&b), "cluster_enabled") == Some("1"),
            redis::Value::VerbatimString { text, .. } => info_field(&text, "cluster_enabled") == Some("1"),
            _ => false,
        };
        Ok(RedisStore {
            conn,
            prefix: prefix.to_string(),
            ids,
            seats_max,
            scripts,
            events: DashMap::new(),
            packets: DashMap::new(),
            appended: Arc::new(Notify::new()),
            replication: None,
            cluster,
            recent_keep_ms: super::recent::RECENT_KEEP_MS_DEFAULT,
            recent_per_user_max: super::recent::RECENT_PER_USER_MAX_DEFAULT,
        })
    }

    /// `replicas` durability: from now on every write is followed by
    /// `WAIT replicas timeout`, and one that too few replicas acknowledged
    /// in time answers an error, not an acknowledgement. One server only
    /// (`WAIT` covers the writes of its own connection, which every call
    /// shares here).
    pub fn with_replication(mut self, replication: Option<Replication>) -> Self {
        self.replication = replication;
        self
    }

    /// Runs a writing script with its partition's marker as its last key
    /// (the script refuses to write without it: `StoreError::Lost`), then,
    /// with `replicas` durability, waits until the replicas have the write.
    async fn queue_call(
        &self,
        event_id: Id,
        op: &str,
        user_id: &str,
        r: &QueueRules,
        (ticket_id, key): (Id, f64),
    ) -> Result<scripts::QueueReply, StoreError> {
        let mut inv = self.scripts.queue.prepare_invoke();
        for what in ["q:wait", "q:tk", "q:adm", "q:st"] {
            inv.key(self.ev(event_id, what));
        }
        inv.arg(op)
            .arg(user_id)
            .arg(r.opens_ms)
            .arg(r.keep_until_ms)
            .arg(r.pre_queue_ms)
            .arg(r.admit_per_s)
            .arg(r.active_max)
            .arg(r.admission_ttl_ms)
            .arg(r.burst.to_string())
            .arg(ticket_id.raw())
            .arg(key.to_string());
        self.run_write(inv, event_id.partition()).await
    }

    async fn run_write<T: redis::FromRedisValue>(
        &self,
        mut inv: redis::ScriptInvocation<'_>,
        partition: u16,
    ) -> Result<T, StoreError> {
        inv.key(self.part(partition, "marker"));
        let mut conn = self.conn.clone();
        let reply = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        self.replicated(&mut conn).await?;
        Ok(reply)
    }

    async fn replicated(&self, conn: &mut C) -> Result<(), StoreError> {
        let Some(r) = self.replication else { return Ok(()) };
        let acked: u32 =
            redis::cmd("WAIT").arg(r.replicas).arg(r.timeout_ms).query_async(conn).await.map_err(unavailable)?;
        if acked < r.replicas {
            return Err(StoreError::Unavailable(format!(
                "a write reached {acked} of the {} replicas durability requires within {} ms: not acknowledged",
                r.replicas, r.timeout_ms
            )));
        }
        Ok(())
    }

    /// Whether this Redis keeps the promise `durability` makes: `fsync`
    /// needs `appendonly yes` and `appendfsync always` on every primary,
    /// `replicas` needs that many connected replicas. The reason when not.
    pub async fn check_durability(
        &self,
        durability: crate::config::Durability,
        replicas: u32,
    ) -> Result<String, String> {
        use crate::config::Durability;
        let mut conn = self.conn.clone();
        match durability {
            Durability::None => Ok("none: a lost or failed-over Redis loses what it had not handed on".into()),
            Durability::Fsync => {
                let get = |name: &'static str| redis::cmd("CONFIG").arg("GET").arg(name).clone();
                let aof: HashMap<String, String> = get("appendonly")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| format!("CONFIG GET appendonly: {e}"))?;
                let fsync: HashMap<String, String> = get("appendfsync")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| format!("CONFIG GET appendfsync: {e}"))?;
                let (aof, fsync) = (
                    aof.get("appendonly").cloned().unwrap_or_default(),
                    fsync.get("appendfsync").cloned().unwrap_or_default(),
                );
                if aof != "yes" || fsync != "always" {
                    return Err(format!(
                        "redis.durability = \"fsync\" needs appendonly yes and appendfsync always; this Redis has appendonly {aof}, appendfsync {fsync}"
                    ));
                }
                Ok("fsync: every write is on disk before it is acknowledged".into())
            }
            Durability::Replicas => {
                if self.cluster {
                    return Err("redis.durability = \"replicas\" is not supported on Redis Cluster yet (WAIT would have to follow each slot's primary): use fsync".into());
                }
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| format!("INFO replication: {e}"))?;
                let connected = info_field(&info, "connected_slaves").and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
                if connected < replicas {
                    return Err(format!(
                        "redis.durability = \"replicas\" needs {replicas} connected replica(s); this Redis has {connected}"
                    ));
                }
                Ok(format!("replicas: every write is on {replicas} replica(s) before it is acknowledged ({connected} connected)"))
            }
        }
    }

    /// Takes this node's id for `lease_ms`, waiting up to `wait` for a
    /// previous holder's lease to run out (a node restarted after kill -9
    /// finds its own old lease), then renews it every third of the lease
    /// until the process ends. Another live node on the id → `false`.
    pub async fn lease_node_id(&self, node_id: u16, lease_ms: u64, wait: Duration) -> Result<bool, StoreError> {
        let token = format!(
            "{:016x}",
            crate::domain::id::stable_hash(format!("{:?}{node_id}", std::time::SystemTime::now()).as_bytes())
        );
        let lease = self.lease_at(format!("{}:node:{node_id}", self.prefix), &token, lease_ms);
        let deadline = tokio::time::Instant::now() + wait;
        while !lease.take().await.map_err(unavailable)? {
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis((lease_ms / 3).max(1)));
            loop {
                tick.tick().await;
                match lease.take().await {
                    Ok(true) => {}
                    Ok(false) => tracing::error!(node_id, "another live node holds this node id: ids may collide"),
                    Err(e) => tracing::warn!(node_id, error = %e, "renewing the node id lease failed"),
                }
            }
        });
        Ok(true)
    }

    /// A lease named `name` for the holder `token` (see `lua/lease_node.lua`),
    /// for one-at-a-time roles such as the relay.
    pub fn lease(&self, name: &str, token: &str, lease_ms: u64) -> RedisLease<C> {
        self.lease_at(format!("{}:lease:{name}", self.prefix), token, lease_ms)
    }

    fn lease_at(&self, key: String, token: &str, lease_ms: u64) -> RedisLease<C> {
        RedisLease {
            script: self.scripts.lease_node.clone(),
            conn: self.conn.clone(),
            key,
            token: token.to_string(),
            lease_ms,
        }
    }

    /// The connection, shared with the stream event log.
    pub fn connection(&self) -> C {
        self.conn.clone()
    }

    pub fn appended(&self) -> Arc<Notify> {
        self.appended.clone()
    }

    fn appended_if(&self, outcomes: Vec<OpOutcome>) -> Vec<OpOutcome> {
        if outcomes.contains(&OpOutcome::Applied) {
            self.appended.notify_one();
        }
        outcomes
    }

    fn ev(&self, e: Id, what: &str) -> String {
        format!("{}:{{p{}}}:ev:{e}:{what}", self.prefix, e.partition())
    }

    fn pk(&self, p: Id, what: &str) -> String {
        format!("{}:{{p{}}}:pk:{p}:{what}", self.prefix, p.partition())
    }

    fn part(&self, partition: u16, what: &str) -> String {
        format!("{}:{{p{partition}}}:{what}", self.prefix)
    }

    /// An Idempotency-Key record: tagged by the user's own slot.
    fn idem(&self, user_id: &str, key: &str) -> String {
        let tag = crate::domain::id::stable_hash(user_id.as_bytes()) % u64::from(PARTITION_COUNT);
        format!("{}:{{p{tag}}}:idem:{user_id}:{key}", self.prefix)
    }

    fn ord(&self, order: Id) -> String {
        format!("{}:{{p{}}}:ord:{order}", self.prefix, order.partition())
    }

    /// A closed order and its final status (`recent::Closed` JSON), kept
    /// `recent_keep_ms` after it closed.
    fn closed(&self, order: Id) -> String {
        format!("{}:{{p{}}}:closed:{order}", self.prefix, order.partition())
    }

    /// A user's recent orders (zset: order id by hold time), in the user's
    /// own slot; it expires `recent_keep_ms` after the user's last hold.
    fn recent(&self, user_id: &str) -> String {
        format!("{}:{{u:{user_id}}}:recent", self.prefix)
    }

    /// A user's recent grabs (zset: `RecentGrab::member` by grab time), in
    /// the user's own slot; it expires `recent_keep_ms` after the last.
    fn recent_grabs_key(&self, user_id: &str) -> String {
        format!("{}:{{u:{user_id}}}:grabs", self.prefix)
    }

    /// Remembers granted grabs for their users' wallet reads. Best effort:
    /// the grabs are committed whatever happens here; unremembered, a
    /// credit shows once the workers have applied it.
    async fn remember_grabs<'a>(&self, granted: impl Iterator<Item = (&'a str, RecentGrab, u64)>) {
        let keep_ms = i64::try_from(self.recent_keep_ms).unwrap_or(i64::MAX);
        let cmds = granted
            .flat_map(|(user_id, grab, at_ms)| {
                [
                    redis::Cmd::zadd(self.recent_grabs_key(user_id), grab.member(), at_ms),
                    redis::Cmd::pexpire(self.recent_grabs_key(user_id), keep_ms),
                ]
            })
            .collect();
        if let Err(e) = self.write_all(cmds).await {
            tracing::warn!(error = %e, "granted grabs not remembered: their credits show once the workers apply them");
        }
    }

    /// The members of a user's recent zset scored since `recent_keep_ms`
    /// ago, oldest first, after trimming it to that time and to
    /// `recent_per_user_max` members.
    async fn recent_members(&self, key: &str, now_ms: u64) -> Result<Vec<String>, StoreError> {
        let cutoff = now_ms.saturating_sub(self.recent_keep_ms);
        let keep = i64::try_from(self.recent_per_user_max).unwrap_or(i64::MAX);
        let (members,): (Vec<String>,) = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(key)
            .arg("-inf")
            .arg(format!("({cutoff}"))
            .ignore()
            .cmd("ZREMRANGEBYRANK")
            .arg(key)
            .arg(0)
            .arg(-keep - 1)
            .ignore()
            .cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(members)
    }

    /// Commands whose keys live in different slots: on one server, one
    /// pipeline (one round trip); on a cluster, each to its own node, at once.
    async fn write_all(&self, cmds: Vec<redis::Cmd>) -> Result<(), StoreError> {
        if cmds.is_empty() {
            return Ok(());
        }
        if self.cluster {
            return crate::redis_io::concurrently::<_, ()>(&self.conn, cmds).await.map(|_| ()).map_err(unavailable);
        }
        let mut pipe = redis::pipe();
        for cmd in cmds {
            pipe.add_command(cmd).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await.map_err(unavailable)
    }

    /// How long, and how many per user, recent and closed orders are
    /// remembered (`orders.recent_keep_s`, `orders.recent_per_user_max`).
    pub fn remember_recent(mut self, keep_ms: u64, per_user_max: usize) -> Self {
        self.recent_keep_ms = keep_ms;
        self.recent_per_user_max = per_user_max;
        self
    }

    fn envelope(&self, event: DomainEvent) -> Result<String, StoreError> {
        let env = Envelope { position: 0, event_id: self.ids.next(0), partition: event.entity_id().partition(), event };
        serde_json::to_string(&env).map_err(corrupt)
    }

    /// The cached definition with `sale` (the `:sale` hash's rev and
    /// body) applied when newer; read again first if its seat map changed.
    async fn with_sale(
        &self,
        info: Arc<EventInfo>,
        sale: (Option<u64>, Option<String>),
    ) -> Result<Arc<EventInfo>, StoreError> {
        let (Some(rev), Some(body)) = sale else { return Ok(info) };
        if rev <= info.def.rev {
            return Ok(info);
        }
        let settings: EventSettings = serde_json::from_str(&body).map_err(corrupt)?;
        let base = if settings.map_rev == info.def.map_rev {
            info
        } else {
            let e = info.def.event_id;
            let def: Option<String> = self.conn.clone().get(self.ev(e, "def")).await.map_err(unavailable)?;
            let def: EventDef = serde_json::from_str(&def.ok_or_else(|| corrupt("an event without its definition"))?)
                .map_err(corrupt)?;
            EventInfo::build(def, self.seats_max).map_err(corrupt)?
        };
        let info = base.with_settings(&settings);
        self.events.insert(info.def.event_id, info.clone());
        Ok(info)
    }

    async fn sale(&self, event_id: Id) -> Result<(Option<u64>, Option<String>), StoreError> {
        let key = self.ev(event_id, "sale");
        redis::cmd("HMGET")
            .arg(key)
            .arg("rev")
            .arg("body")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn info(&self, event_id: Id) -> Result<Option<Arc<EventInfo>>, StoreError> {
        if let Some(i) = self.events.get(&event_id) {
            return Ok(Some(i.clone()));
        }
        let def: Option<String> = self.conn.clone().get(self.ev(event_id, "def")).await.map_err(unavailable)?;
        let Some(def) = def else { return self.absent(event_id.partition()).await };
        let def: EventDef = serde_json::from_str(&def).map_err(corrupt)?;
        let info = EventInfo::build(def, self.seats_max).map_err(corrupt)?;
        self.events.insert(event_id, info.clone());
        Ok(Some(info))
    }

    async fn packet_def(&self, packet_id: Id) -> Result<Option<Arc<PacketDef>>, StoreError> {
        if let Some(d) = self.packets.get(&packet_id) {
            return Ok(Some(d.clone()));
        }
        let def: Option<String> = self.conn.clone().get(self.pk(packet_id, "def")).await.map_err(unavailable)?;
        let Some(def) = def else { return self.absent(packet_id.partition()).await };
        if def == VOID_PACKET {
            return Ok(None);
        }
        let def: Arc<PacketDef> = Arc::new(serde_json::from_str(&def).map_err(corrupt)?);
        self.packets.insert(packet_id, def.clone());
        Ok(Some(def))
    }

    /// Something asked for is not in Redis: `Ok(None)`, unless its
    /// partition lost its marker (then Redis lost it: `StoreError::Lost`).
    async fn absent<T>(&self, partition: u16) -> Result<Option<T>, StoreError> {
        let marked: bool = self.conn.clone().exists(self.part(partition, "marker")).await.map_err(unavailable)?;
        if marked {
            Ok(None)
        } else {
            Err(StoreError::Lost)
        }
    }

    async fn holds(
        &self,
        info: &EventInfo,
        version: Option<u64>,
        group: &[SeatOp],
    ) -> Result<(Option<u64>, Vec<OpOutcome>), StoreError> {
        let e = info.def.event_id;
        // The order index first: alone it asserts nothing. Each order's key
        // is in its own slot, so one command each.
        // With it, the user's recent orders (for their list before the
        // workers have the order).
        let keep_ms = i64::try_from(self.recent_keep_ms).unwrap_or(i64::MAX);
        let index = group
            .iter()
            .filter_map(|op| match op {
                SeatOp::Hold(o) => Some([
                    redis::Cmd::set(self.ord(o.order_id), e.to_string()),
                    redis::Cmd::zadd(self.recent(&o.user_id), o.order_id.to_string(), o.created_at_ms),
                    redis::Cmd::pexpire(self.recent(&o.user_id), keep_ms),
                ]),
                _ => None,
            })
            .flatten()
            .collect();
        self.write_all(index).await?;
        let mut inv = self.scripts.hold.prepare_invoke();
        inv.key(self.ev(e, "seats"))
            .key(self.ev(e, "holds"))
            .key(self.ev(e, "n"))
            .key(self.part(e.partition(), "due"))
            .key(self.part(e.partition(), "outbox"))
            .key(self.ev(e, "ver"))
            .key(self.ev(e, "users"))
            .arg(e.to_string())
            .arg(version_arg(version))
            .arg(info.def.limits.per_user)
            .arg(group.len());
        for op in group {
            let SeatOp::Hold(o) = op else { return Err(corrupt("mixed seat group")) };
            let csv = o.seats.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",");
            let env = self.envelope(DomainEvent::OrderHeld {
                order_id: o.order_id,
                event_id: e,
                user_id: o.user_id.clone(),
                amount: o.amount,
                created_at_ms: o.created_at_ms,
                expires_at_ms: o.expires_at_ms,
                seats: super::order_seats(info, &o.seats),
                attendees: o.attendees.clone(),
            })?;
            inv.arg(o.order_id.to_string())
                .arg(csv)
                .arg(o.expires_at_ms)
                .arg(serde_json::to_string(o).map_err(corrupt)?)
                .arg(env)
                .arg(&o.user_id);
        }
        let (on_ms, ends_ms) = info.def.sale_window_ms();
        inv.arg(on_ms).arg(ends_ms);
        let (after, outcomes) = self.versioned(self.run_write(inv, e.partition()).await?, group.len())?;
        // A hold the script refused leaves the user's recent orders (best
        // effort: a leftover id reads as no order and is skipped).
        let refused: Vec<redis::Cmd> = group
            .iter()
            .zip(&outcomes)
            .filter_map(|(op, outcome)| match (op, outcome) {
                (SeatOp::Hold(o), OpOutcome::Rejected | OpOutcome::OffSale) => {
                    Some(redis::Cmd::zrem(self.recent(&o.user_id), o.order_id.to_string()))
                }
                _ => None,
            })
            .collect();
        if let Err(e) = self.write_all(refused).await {
            tracing::debug!(error = %e, "refused holds stay in their users' recent orders");
        }
        Ok((after, outcomes))
    }

    /// The script of a settle group (its first op's kind) with its keys.
    fn settle_script(&self, e: Id, first: Option<&SeatOp>) -> redis::ScriptInvocation<'_> {
        match first {
            Some(SeatOp::Confirm { .. }) => {
                let mut inv = self.scripts.confirm.prepare_invoke();
                inv.key(self.ev(e, "seats")).key(self.ev(e, "holds")).key(self.ev(e, "paid"));
                inv.key(self.part(e.partition(), "due")).key(self.part(e.partition(), "outbox"));
                inv.key(self.ev(e, "ver"));
                inv
            }
            Some(SeatOp::Refund { .. }) => {
                let mut inv = self.scripts.refund.prepare_invoke();
                inv.key(self.ev(e, "seats")).key(self.ev(e, "paid")).key(self.part(e.partition(), "outbox"));
                inv.key(self.ev(e, "ver")).key(self.ev(e, "users"));
                inv
            }
            _ => {
                let mut inv = self.scripts.release.prepare_invoke();
                inv.key(self.ev(e, "seats")).key(self.ev(e, "holds"));
                inv.key(self.part(e.partition(), "due")).key(self.part(e.partition(), "outbox"));
                inv.key(self.ev(e, "ver")).key(self.ev(e, "users"));
                inv
            }
        }
    }

    fn versioned(&self, reply: Vec<i64>, ops: usize) -> Result<(Option<u64>, Vec<OpOutcome>), StoreError> {
        let (version, outcomes) = scripts::versioned(reply, ops)?;
        Ok((version, self.appended_if(outcomes)))
    }

    /// Release, confirm or refund: the orders are read first to build
    /// their events; the script re-checks that each is still held (paid,
    /// for a refund).
    async fn settle(
        &self,
        e: Id,
        version: Option<u64>,
        group: &[SeatOp],
        now_ms: u64,
    ) -> Result<(Option<u64>, Vec<OpOutcome>), StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<Id> = group
            .iter()
            .map(|op| match op {
                SeatOp::Release { order_id, .. } | SeatOp::Confirm { order_id } | SeatOp::Refund { order_id } => {
                    *order_id
                }
                SeatOp::Hold(o) => o.order_id,
            })
            .collect();
        let refund = matches!(group.first(), Some(SeatOp::Refund { .. }));
        let fields: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        let bodies: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.ev(e, if refund { "paid" } else { "holds" }))
            .arg(&fields)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let orders: Vec<Option<HotOrder>> = bodies
            .into_iter()
            .map(|b| b.map(|b| serde_json::from_str::<HotOrder>(&b).map_err(corrupt)).transpose())
            .collect::<Result<_, _>>()?;
        let mut inv = self.settle_script(e, group.first());
        inv.arg(e.to_string()).arg(version_arg(version)).arg(group.len());
        for ((op, id), order) in group.iter().zip(&ids).zip(&orders) {
            // Not held (paid): the script will reject it; no event is written.
            let user_id = order.as_ref().map(|o| o.user_id.clone()).unwrap_or_default();
            let event = match op {
                SeatOp::Release { status, .. } => {
                    DomainEvent::OrderReleased { order_id: *id, event_id: e, user_id, status: *status, at_ms: now_ms }
                }
                SeatOp::Refund { .. } => DomainEvent::OrderReleased {
                    order_id: *id,
                    event_id: e,
                    user_id,
                    status: OrderStatus::Refunded,
                    at_ms: now_ms,
                },
                _ => DomainEvent::OrderConfirmed { order_id: *id, event_id: e, user_id, at_ms: now_ms },
            };
            inv.arg(id.to_string()).arg(self.envelope(event)?);
        }
        let (after, outcomes) = self.versioned(self.run_write(inv, e.partition()).await?, group.len())?;
        // The ops are committed: a failure to remember them is not theirs
        // (reads fall back to the durable store, as before this record).
        if let Err(e) = self.remember_closed(group, orders, &outcomes).await {
            tracing::warn!(error = %e, "closed orders not remembered; reads wait for the durable store");
        }
        Ok((after, outcomes))
    }

    /// Released and refunded orders, kept with their final status for
    /// `recent_keep_ms`: the scripts dropped them, the durable store may
    /// not have them yet. Written before the caller is answered.
    async fn remember_closed(
        &self,
        group: &[SeatOp],
        orders: Vec<Option<HotOrder>>,
        outcomes: &[OpOutcome],
    ) -> Result<(), StoreError> {
        let mut cmds = Vec::new();
        for ((op, order), outcome) in group.iter().zip(orders).zip(outcomes) {
            let status = match op {
                SeatOp::Release { status, .. } => *status,
                SeatOp::Refund { .. } => OrderStatus::Refunded,
                _ => continue,
            };
            let (Some(order), OpOutcome::Applied) = (order, outcome) else { continue };
            let key = self.closed(order.order_id);
            let body = serde_json::to_string(&super::recent::Closed { order, status }).map_err(corrupt)?;
            cmds.push(redis::Cmd::set_options(
                key,
                body,
                redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(self.recent_keep_ms)),
            ));
        }
        self.write_all(cmds).await
    }
}

/// A field of an `INFO` reply (`name:value` lines).
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(':'))
}

/// The restore script's arguments for the merged state: holds, paid
/// orders, seats, closed orders and seats per user, each list after its length.
fn merged_args(inv: &mut redis::ScriptInvocation<'_>, merged: &restore::MergedEvent) -> Result<(), StoreError> {
    inv.arg(merged.holds.len());
    for o in merged.holds.values() {
        inv.arg(o.order_id.to_string())
            .arg(serde_json::to_string(o).map_err(corrupt)?)
            .arg(o.expires_at_ms)
            .arg(&o.user_id);
    }
    inv.arg(merged.paid.len());
    for o in merged.paid.values() {
        inv.arg(o.order_id.to_string()).arg(serde_json::to_string(o).map_err(corrupt)?).arg(&o.user_id);
    }
    let seats = merged.seats();
    inv.arg(seats.len());
    for (idx, v) in &seats {
        inv.arg(*idx).arg(v);
    }
    inv.arg(merged.closed.len());
    for id in &merged.closed {
        inv.arg(id.to_string());
    }
    let users = merged.users();
    inv.arg(users.len());
    for (u, n) in &users {
        inv.arg(u).arg(*n);
    }
    Ok(())
}

fn seat_state(v: &str) -> Result<SeatState, StoreError> {
    let (kind, order) = v.split_once(':').ok_or_else(|| corrupt(format!("seat value {v}")))?;
    let order: Id = order.parse().map_err(corrupt)?;
    match kind {
        "h" => Ok(SeatState::Held(order)),
        "s" => Ok(SeatState::Sold(order)),
        _ => Err(corrupt(format!("seat value {v}"))),
    }
}

#[async_trait]
impl<C> HotStore for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn queue_join(
        &self,
        event_id: Id,
        user_id: &str,
        rules: &QueueRules,
        (ticket_id, key): (Id, u64),
    ) -> Result<Joined, StoreError> {
        // Below 1 and above 0, exactly (52 bits): every score after the
        // opening (the counter) is above it.
        let key = (key & (super::queue::FIFO_BASE - 1)) as f64 / super::queue::FIFO_BASE as f64;
        let r = self.queue_call(event_id, "join", user_id, rules, (ticket_id, key)).await?;
        if r.0 == 4 {
            return Ok(Joined::NotOpen { now_ms: r.5.max(0) as u64 });
        }
        match scripts::queue_ticket(&r)? {
            Some(t) => Ok(Joined::Ticket(t)),
            None => Err(StoreError::Corrupt("queue.lua lost a ticket it just wrote".into())),
        }
    }

    async fn queue_ticket(
        &self,
        event_id: Id,
        user_id: &str,
        rules: &QueueRules,
    ) -> Result<Option<Ticket>, StoreError> {
        let r = self.queue_call(event_id, "ticket", user_id, rules, (event_id, 0.0)).await?;
        scripts::queue_ticket(&r)
    }

    async fn queue_leave(&self, event_id: Id, user_id: &str, rules: &QueueRules) -> Result<bool, StoreError> {
        let r = self.queue_call(event_id, "leave", user_id, rules, (event_id, 0.0)).await?;
        Ok(r.0 == 1)
    }

    async fn live_nodes(&self, node_id: u16, ttl_ms: u64) -> Result<u32, StoreError> {
        let key = format!("{}:{{nodes}}:live", self.prefix);
        let now = crate::domain::now_unix_ms();
        let (_, _, n): (i64, i64, u32) = redis::pipe()
            .zadd(&key, node_id, now + ttl_ms)
            .zrembyscore(&key, "-inf", now)
            .zcard(&key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(n.max(1))
    }

    async fn queue_advance(&self, event_id: Id, rules: &QueueRules) -> Result<u64, StoreError> {
        let r = self.queue_call(event_id, "advance", "", rules, (event_id, 0.0)).await?;
        Ok(r.6.max(0) as u64)
    }

    async fn create_event(&self, def: &EventDef) -> Result<(), StoreError> {
        let info = EventInfo::build(def.clone(), self.seats_max).map_err(corrupt)?;
        let body = serde_json::to_string(def).map_err(corrupt)?;
        let e = def.event_id;
        let mut inv = self.scripts.create_event.prepare_invoke();
        inv.key(self.ev(e, "def")).key(self.ev(e, "n")).arg(body).arg(info.map.len());
        let _: i64 = self.run_write(inv, e.partition()).await?;
        self.events.insert(e, info);
        Ok(())
    }

    async fn event_info(&self, event_id: Id) -> Result<Option<Arc<EventInfo>>, StoreError> {
        let Some(info) = self.info(event_id).await? else { return Ok(None) };
        let sale = self.sale(event_id).await?;
        self.with_sale(info, sale).await.map(Some)
    }

    async fn update_event(
        &self,
        event_id: Id,
        expected_rev: u64,
        settings: &EventSettings,
        opens_ms: Option<u64>,
    ) -> Result<Changed, StoreError> {
        let Some(info) = self.info(event_id).await? else { return Ok(Changed::Stale) };
        let body = serde_json::to_string(settings).map_err(corrupt)?;
        let mut inv = self.scripts.update_event.prepare_invoke();
        for what in ["sale", "ver", "def", "holds", "paid"] {
            inv.key(self.ev(event_id, what));
        }
        let opens = opens_ms.map(|o| o.to_string()).unwrap_or_default();
        inv.arg(expected_rev).arg(settings.rev).arg(&body).arg(info.def.rev).arg(opens);
        let applied: i64 = self.run_write(inv, event_id.partition()).await?;
        Ok(match applied {
            1 => {
                self.with_sale(info, (Some(settings.rev), Some(body))).await?;
                Changed::Done
            }
            2 => Changed::OnSale,
            _ => Changed::Stale,
        })
    }

    async fn replace_seats(&self, expected_rev: u64, def: &EventDef, opens_ms: u64) -> Result<Changed, StoreError> {
        let e = def.event_id;
        let Some(cur) = self.info(e).await? else { return Ok(Changed::Stale) };
        let info = EventInfo::build(def.clone(), self.seats_max).map_err(corrupt)?;
        let settings = serde_json::to_string(&def.settings()).map_err(corrupt)?;
        let body = serde_json::to_string(def).map_err(corrupt)?;
        let mut inv = self.scripts.replace_seats.prepare_invoke();
        for what in ["sale", "ver", "def", "n", "seats", "holds", "paid"] {
            inv.key(self.ev(e, what));
        }
        inv.arg(expected_rev).arg(def.rev).arg(settings).arg(cur.def.rev).arg(body).arg(info.map.len()).arg(opens_ms);
        let done: i64 = self.run_write(inv, e.partition()).await?;
        Ok(match done {
            1 => {
                self.events.insert(e, info);
                Changed::Done
            }
            2 => Changed::OnSale,
            _ => Changed::Stale,
        })
    }

    async fn load_event(&self, event_id: Id) -> Result<Option<EventSnapshot>, StoreError> {
        let Some(info) = self.info(event_id).await? else { return Ok(None) };
        let mut conn = self.conn.clone();
        type Snapshot = (
            HashMap<String, String>,
            HashMap<String, String>,
            HashMap<String, String>,
            Option<u64>,
            bool,
            (Option<u64>, Option<String>),
        );
        let (seats, holds, paid, version, marked, sale): Snapshot =
            // MULTI: one consistent snapshot, no other client's write between.
            redis::pipe()
                .atomic()
                .hgetall(self.ev(event_id, "seats"))
                .hgetall(self.ev(event_id, "holds"))
                .hgetall(self.ev(event_id, "paid"))
                .get(self.ev(event_id, "ver"))
                .exists(self.part(event_id.partition(), "marker"))
                .cmd("HMGET")
                .arg(self.ev(event_id, "sale"))
                .arg("rev")
                .arg("body")
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
        let info = self.with_sale(info, sale).await?;
        if !marked {
            // The definition is cached here, but Redis lost the state.
            return Err(StoreError::Lost);
        }
        let mut states = vec![SeatState::Available; info.map.len()];
        for (k, v) in seats {
            let idx: usize = k.parse().map_err(corrupt)?;
            *states.get_mut(idx).ok_or_else(|| corrupt(format!("seat {idx} outside event {event_id}")))? =
                seat_state(&v)?;
        }
        let holds = holds
            .into_values()
            .map(|b| serde_json::from_str::<HotOrder>(&b).map(|o| (o.order_id, o)))
            .collect::<Result<HashMap<_, _>, _>>()
            .map_err(corrupt)?;
        let paid = paid
            .into_values()
            .map(|b| {
                serde_json::from_str::<HotOrder>(&b)
                    .map(|o| (o.order_id, PaidOrder { user_id: o.user_id, seats: o.seats }))
            })
            .collect::<Result<HashMap<_, _>, _>>()
            .map_err(corrupt)?;
        Ok(Some(EventSnapshot { info, seats: states, holds, paid, version: version.unwrap_or(0) }))
    }

    async fn apply_seats_at(
        &self,
        event_id: Id,
        version: Option<u64>,
        ops: &[SeatOp],
        now_ms: u64,
    ) -> Result<SeatsApplied, StoreError> {
        let Some(info) = self.info(event_id).await? else {
            return Ok(SeatsApplied { outcomes: vec![OpOutcome::Rejected; ops.len()], version: None });
        };
        let kind = |op: &SeatOp| std::mem::discriminant(op);
        let mut out = Vec::with_capacity(ops.len());
        // Consecutive ops of one kind go to their script in one call; the
        // calls run in order, so a release then a hold of a seat works.
        // Each call expects the version the one before left: the batch
        // applies as decided, or stops where another node came between.
        let mut latest = None;
        let mut start = 0;
        while start < ops.len() {
            let end = start + ops[start..].iter().take_while(|op| kind(op) == kind(&ops[start])).count();
            let group = &ops[start..end];
            let at = version.map(|first| latest.unwrap_or(first));
            let (after, outcomes) = match group[0] {
                SeatOp::Hold(_) => self.holds(&info, at, group).await?,
                _ => self.settle(event_id, at, group, now_ms).await?,
            };
            out.extend(outcomes);
            start = end;
            match after {
                Some(v) => latest = Some(v),
                None => {
                    out.resize(ops.len(), OpOutcome::Rejected);
                    return Ok(SeatsApplied { outcomes: out, version: None });
                }
            }
        }
        let version = match latest {
            Some(v) => Some(v),
            // No ops: nothing was called that could say.
            None => self.event_version(event_id).await?,
        };
        Ok(SeatsApplied { outcomes: out, version })
    }

    async fn event_version(&self, event_id: Id) -> Result<Option<u64>, StoreError> {
        if self.info(event_id).await?.is_none() {
            return Ok(None);
        }
        let v: Option<u64> = self.conn.clone().get(self.ev(event_id, "ver")).await.map_err(unavailable)?;
        Ok(Some(v.unwrap_or(0)))
    }

    async fn order(&self, order_id: Id) -> Result<Option<(HotOrder, OrderStatus)>, StoreError> {
        let mut conn = self.conn.clone();
        let event: Option<String> = conn.get(self.ord(order_id)).await.map_err(unavailable)?;
        let Some(event) = event else { return self.absent(order_id.partition()).await };
        let e: Id = event.parse().map_err(corrupt)?;
        let (held, paid): (Option<String>, Option<String>) = redis::pipe()
            .atomic()
            .hget(self.ev(e, "holds"), order_id.to_string())
            .hget(self.ev(e, "paid"), order_id.to_string())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let found = match (held, paid) {
            (Some(b), _) => Some((b, OrderStatus::PendingPayment)),
            (None, Some(b)) => Some((b, OrderStatus::Paid)),
            (None, None) => {
                let closed: Option<String> = conn.get(self.closed(order_id)).await.map_err(unavailable)?;
                return closed
                    .map(|b| serde_json::from_str::<super::recent::Closed>(&b).map(|c| (c.order, c.status)))
                    .transpose()
                    .map_err(corrupt);
            }
        };
        found.map(|(b, s)| serde_json::from_str::<HotOrder>(&b).map(|o| (o, s)).map_err(corrupt)).transpose()
    }

    async fn recent_orders(
        &self,
        user_id: &str,
        before: Option<Id>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<(HotOrder, OrderStatus)>, StoreError> {
        let ids = self.recent_members(&self.recent(user_id), now_ms).await?;
        let ids = ids.iter().map(|i| i.parse::<Id>().map_err(corrupt)).collect::<Result<Vec<_>, _>>()?;
        super::recent::page_of(ids, before, limit, |id| self.order(id)).await
    }

    async fn recent_grabs(&self, user_id: &str, now_ms: u64) -> Result<Vec<RecentGrab>, StoreError> {
        let members = self.recent_members(&self.recent_grabs_key(user_id), now_ms).await?;
        members.iter().rev().map(|m| RecentGrab::parse(m).ok_or_else(|| corrupt(format!("recent grab {m}")))).collect()
    }

    async fn create_packet(&self, def: &PacketDef) -> Result<(), StoreError> {
        let p = def.packet_id;
        let env = self.envelope(DomainEvent::PacketCreated {
            packet_id: p,
            sender: def.sender.clone(),
            kind: def.kind,
            total: def.total,
            count: def.count,
            expires_at_ms: def.expires_at_ms,
            at_ms: def.created_at_ms,
        })?;
        let mut inv = self.scripts.create_packet.prepare_invoke();
        inv.key(self.pk(p, "def"))
            .key(self.pk(p, "parts"))
            .key(self.pk(p, "state"))
            .key(self.part(p.partition(), "due"))
            .key(self.part(p.partition(), "outbox"))
            .arg(p.to_string())
            .arg(serde_json::to_string(def).map_err(corrupt)?)
            .arg(def.expires_at_ms)
            .arg(env);
        for part in &def.parts {
            inv.arg(part.get());
        }
        let reply: i64 = self.run_write(inv, p.partition()).await?;
        match scripts::created(reply)? {
            scripts::Created::Created => {
                self.packets.insert(p, Arc::new(def.clone()));
                self.appended.notify_one();
                Ok(())
            }
            scripts::Created::Exists => Err(corrupt(format!("packet {p} exists"))),
        }
    }

    async fn void_packet(&self, packet_id: Id) -> Result<Voided, StoreError> {
        let mut conn = self.conn.clone();
        // SET NX first: if the create script has not run yet, it never
        // will (it refuses an existing def); if it has, the def is there.
        let set: Option<String> = redis::cmd("SET")
            .arg(self.pk(packet_id, "def"))
            .arg(VOID_PACKET)
            .arg("NX")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if set.is_some() {
            return Ok(Voided::Voided);
        }
        let def: Option<String> = conn.get(self.pk(packet_id, "def")).await.map_err(unavailable)?;
        Ok(match def.as_deref() {
            Some(VOID_PACKET) | None => Voided::Voided,
            Some(_) => Voided::Exists,
        })
    }

    async fn load_packet(&self, packet_id: Id) -> Result<Option<PacketSnapshot>, StoreError> {
        let Some(def) = self.packet_def(packet_id).await? else { return Ok(None) };
        let mut conn = self.conn.clone();
        let (status, grabs): (Option<String>, HashMap<String, String>) = redis::pipe()
            .atomic()
            .hget(self.pk(packet_id, "state"), "status")
            .hgetall(self.pk(packet_id, "grabs"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let Some(status) = status.as_deref().and_then(PacketStatus::parse) else {
            // Known here (its definition is cached) but gone from Redis.
            self.absent::<()>(packet_id.partition()).await?;
            return Err(corrupt("packet status"));
        };
        let mut grabs = grabs
            .into_values()
            .map(|b| serde_json::from_str::<Grab>(&b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(corrupt)?;
        grabs.sort_by_key(|g| g.part);
        Ok(Some(PacketSnapshot { def, status, grabs }))
    }

    async fn packet_progress(&self, packet_id: Id) -> Result<Option<(u32, PacketStatus)>, StoreError> {
        if self.packet_def(packet_id).await?.is_none() {
            return Ok(None);
        }
        let (next, status): (Option<u32>, Option<String>) = redis::cmd("HMGET")
            .arg(self.pk(packet_id, "state"))
            .arg("next")
            .arg("status")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let Some(status) = status.as_deref().and_then(PacketStatus::parse) else {
            self.absent::<()>(packet_id.partition()).await?;
            return Err(corrupt("packet status"));
        };
        Ok(Some((next.unwrap_or(0), status)))
    }

    async fn grab_batch(&self, packet_id: Id, grabs: &[Grab], now_ms: u64) -> Result<Vec<OpOutcome>, StoreError> {
        let Some(def) = self.packet_def(packet_id).await? else {
            return Ok(vec![OpOutcome::Rejected; grabs.len()]);
        };
        let mut inv = self.scripts.grab.prepare_invoke();
        inv.key(self.pk(packet_id, "parts"))
            .key(self.pk(packet_id, "state"))
            .key(self.pk(packet_id, "grabs"))
            .key(self.part(packet_id.partition(), "outbox"))
            .arg(now_ms)
            .arg(grabs.len());
        // One Redis: the script remembers the granted grabs for their
        // users' wallet reads; a cluster (keys in other slots) after it.
        let in_script = !self.cluster;
        for g in grabs.iter().filter(|_| in_script) {
            inv.key(self.recent_grabs_key(&g.user_id));
        }
        for g in grabs {
            let env = self.envelope(DomainEvent::PacketGrabbed {
                grab_id: g.grab_id,
                packet_id,
                sender: def.sender.clone(),
                user_id: g.user_id.clone(),
                amount: g.amount,
                at_ms: g.at_ms,
            })?;
            inv.arg(&g.user_id)
                .arg(g.part)
                .arg(g.amount.get())
                .arg(serde_json::to_string(g).map_err(corrupt)?)
                .arg(env);
        }
        if in_script {
            inv.arg(self.recent_keep_ms);
            for g in grabs {
                inv.arg(RecentGrab::of(g, &def.sender).member());
            }
        } else {
            inv.arg("");
        }
        let outcomes = scripts::outcomes(self.run_write(inv, packet_id.partition()).await?, grabs.len())?;
        if !in_script {
            let granted = grabs.iter().zip(&outcomes).filter(|(_, o)| **o == OpOutcome::Applied);
            self.remember_grabs(granted.map(|(g, _)| (g.user_id.as_str(), RecentGrab::of(g, &def.sender), g.at_ms)))
                .await;
        }
        Ok(self.appended_if(outcomes))
    }

    async fn expire_packet(&self, packet_id: Id, now_ms: u64) -> Result<Option<Fen>, StoreError> {
        let Some(def) = self.packet_def(packet_id).await? else { return Ok(None) };
        let env = self.envelope(DomainEvent::PacketExpired {
            packet_id,
            sender: def.sender.clone(),
            remaining: Fen::new(REMAINING_PLACEHOLDER),
            at_ms: now_ms,
        })?;
        let mut inv = self.scripts.expire_packet.prepare_invoke();
        inv.key(self.pk(packet_id, "parts"))
            .key(self.pk(packet_id, "state"))
            .key(self.part(packet_id.partition(), "due"))
            .key(self.part(packet_id.partition(), "outbox"))
            .arg(now_ms)
            .arg(packet_id.to_string())
            .arg(env);
        let remaining = scripts::expired(self.run_write(inv, packet_id.partition()).await?)?;
        if remaining.is_some() {
            self.appended.notify_one();
        }
        Ok(remaining)
    }

    async fn grab_direct(
        &self,
        packet_id: Id,
        user_id: &str,
        grab_id: Id,
        now_ms: u64,
    ) -> Result<DirectGrab, StoreError> {
        let Some(def) = self.packet_def(packet_id).await? else { return Ok(DirectGrab::Unknown) };
        let env = self.envelope(DomainEvent::PacketGrabbed {
            grab_id,
            packet_id,
            sender: def.sender.clone(),
            user_id: user_id.to_string(),
            amount: Fen::new(REMAINING_PLACEHOLDER),
            at_ms: now_ms,
        })?;
        let mut inv = self.scripts.grab_direct.prepare_invoke();
        inv.key(self.pk(packet_id, "parts"))
            .key(self.pk(packet_id, "state"))
            .key(self.pk(packet_id, "grabs"))
            .key(self.part(packet_id.partition(), "outbox"))
            .arg(now_ms)
            .arg(user_id)
            .arg(grab_id.to_string())
            .arg(env);
        // As in `grab_batch`: remembered by the script on one Redis.
        if self.cluster {
            inv.arg("");
        } else {
            let own = if user_id == def.sender { super::recent::OWN_SUFFIX } else { "" };
            inv.key(self.recent_grabs_key(user_id)).arg(self.recent_keep_ms).arg(own);
        }
        let reply: Vec<i64> = self.run_write(inv, packet_id.partition()).await?;
        let verdict = scripts::direct_grab(&reply, grab_id, user_id, now_ms)?;
        if let DirectGrab::Granted(g) = &verdict {
            self.appended.notify_one();
            if self.cluster {
                self.remember_grabs(std::iter::once((user_id, RecentGrab::of(g, &def.sender), g.at_ms))).await;
            }
        }
        Ok(verdict)
    }

    async fn ready(&self) -> bool {
        redis::cmd("PING").query_async::<String>(&mut self.conn.clone()).await.is_ok()
    }

    async fn claim_due(&self, now_ms: u64, limit: usize, lease_ms: u64) -> Result<Vec<DueItem>, StoreError> {
        // Every partition's queue (each in its own slot), then oldest first.
        let mut set = JoinSet::new();
        for p in 0..PARTITION_COUNT {
            let (script, key, mut conn) = (self.scripts.claim_due.clone(), self.part(p, "due"), self.conn.clone());
            set.spawn(async move {
                script.key(key).arg(now_ms).arg(limit).arg(lease_ms).invoke_async::<Vec<(String, u64)>>(&mut conn).await
            });
        }
        let mut per_partition = Vec::with_capacity(usize::from(PARTITION_COUNT));
        while let Some(joined) = set.join_next().await {
            per_partition.push(joined.map_err(|e| StoreError::Unavailable(e.to_string()))?.map_err(unavailable)?);
        }
        let mut all = Vec::new();
        for (member, at) in per_partition.into_iter().flatten() {
            let item = match member.split(':').collect::<Vec<_>>().as_slice() {
                ["h", event, order] => DueItem::Hold {
                    event_id: event.parse().map_err(corrupt)?,
                    order_id: order.parse().map_err(corrupt)?,
                },
                ["p", packet] => DueItem::Packet { packet_id: packet.parse().map_err(corrupt)? },
                _ => return Err(corrupt(format!("due member {member}"))),
            };
            all.push((at, item));
        }
        all.sort();
        Ok(all.into_iter().map(|(_, i)| i).collect())
    }
}

#[async_trait]
impl<C> crate::idempotency::IdempotencyStore for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn begin(
        &self,
        user_id: &str,
        key: &str,
        hash: &str,
        now_ms: u64,
        ttl: crate::idempotency::Ttl,
    ) -> Result<crate::idempotency::Begin, crate::EngineError> {
        use crate::idempotency::Begin;
        let reply: redis::Value = self
            .scripts
            .idempotency
            .key(self.idem(user_id, key))
            .arg("begin")
            .arg(hash)
            .arg(ttl.ttl_ms)
            .arg(ttl.stale_ms)
            .arg(now_ms)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let parts: Vec<redis::Value> = redis::from_redis_value(reply).map_err(|e| corrupt(e.to_string()))?;
        let code: i64 = parts.first().cloned().map(redis::from_redis_value).transpose().map_err(corrupt)?.unwrap_or(-1);
        Ok(match code {
            1 => Begin::New,
            2 => {
                let status: i64 =
                    parts.get(1).cloned().map(redis::from_redis_value).transpose().map_err(corrupt)?.unwrap_or(0);
                let body: String = parts
                    .get(2)
                    .cloned()
                    .map(redis::from_redis_value)
                    .transpose()
                    .map_err(corrupt)?
                    .unwrap_or_default();
                Begin::Replay { status: u16::try_from(status).map_err(corrupt)?, body }
            }
            3 => Begin::Mismatch,
            4 => Begin::InProgress,
            other => return Err(corrupt(format!("idempotency answered {other}")).into()),
        })
    }

    async fn finish(&self, user_id: &str, key: &str, status: u16, body: &str) -> Result<(), crate::EngineError> {
        self.idem_step(user_id, key, &["finish", &status.to_string(), body]).await
    }

    async fn forget(&self, user_id: &str, key: &str, status: u16) -> Result<(), crate::EngineError> {
        self.idem_step(user_id, key, &["forget", &status.to_string()]).await
    }

    async fn abandon(&self, user_id: &str, key: &str) -> Result<(), crate::EngineError> {
        self.idem_step(user_id, key, &["abandon"]).await
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// One step of `lua/idempotency.lua` that answers 1: `args` are its ARGV.
    async fn idem_step(&self, user_id: &str, key: &str, args: &[&str]) -> Result<(), crate::EngineError> {
        let mut inv = self.scripts.idempotency.prepare_invoke();
        inv.key(self.idem(user_id, key));
        for a in args {
            inv.arg(*a);
        }
        let _: i64 = inv.invoke_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        Ok(())
    }
}

/// A named lease in Redis: `hold` takes it when free or renews it when ours.
pub struct RedisLease<C> {
    script: redis::Script,
    conn: C,
    key: String,
    token: String,
    lease_ms: u64,
}

impl<C: ConnectionLike + Clone + Send + Sync> RedisLease<C> {
    /// Takes the lease if free, renews it if ours (`lua/lease_node.lua`).
    async fn take(&self) -> Result<bool, redis::RedisError> {
        let held: i64 =
            self.script.key(&self.key).arg(&self.token).arg(self.lease_ms).invoke_async(&mut self.conn.clone()).await?;
        Ok(held == 1)
    }
}

#[async_trait::async_trait]
impl<C> crate::store::Lease for RedisLease<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn hold(&self) -> Result<bool, String> {
        self.take().await.map_err(|e| e.to_string())
    }

    fn lease_ms(&self) -> u64 {
        self.lease_ms
    }
}

#[async_trait]
impl<C> HotRecovery for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn markers(&self) -> Result<Markers, StoreError> {
        let cmds = (0..PARTITION_COUNT).map(|p| redis::Cmd::get(self.part(p, "marker"))).collect();
        let found: Vec<Option<String>> = crate::redis_io::concurrently(&self.conn, cmds).await.map_err(unavailable)?;
        let missing = found.iter().filter(|m| m.is_none()).count();
        let epochs: std::collections::HashSet<&String> = found.iter().flatten().collect();
        Ok(match (missing, epochs.len()) {
            (0, 1) => Markers::Intact(epochs.into_iter().next().cloned().unwrap_or_default()),
            (m, 0) if m == found.len() => Markers::None,
            (missing, epochs) => Markers::Broken { missing, epochs },
        })
    }

    async fn set_markers(&self, epoch: &str) -> Result<(), StoreError> {
        let cmds = (0..PARTITION_COUNT).map(|p| redis::Cmd::set(self.part(p, "marker"), epoch)).collect();
        crate::redis_io::concurrently::<_, ()>(&self.conn, cmds).await.map_err(unavailable)?;
        let mut conn = self.conn.clone();
        self.replicated(&mut conn).await
    }

    async fn clear_markers(&self) -> Result<(), StoreError> {
        let cmds = (0..PARTITION_COUNT).map(|p| redis::Cmd::del(self.part(p, "marker"))).collect();
        crate::redis_io::concurrently::<_, ()>(&self.conn, cmds).await.map(|_| ()).map_err(unavailable)
    }

    async fn replication_id(&self) -> Result<Option<String>, StoreError> {
        if self.cluster {
            return Ok(None);
        }
        let info: String =
            redis::cmd("INFO").arg("replication").query_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        Ok(info_field(&info, "master_replid").map(str::to_string))
    }

    async fn recorded_replication_id(&self) -> Result<Option<String>, StoreError> {
        self.conn.clone().get(format!("{}:replid", self.prefix)).await.map_err(unavailable)
    }

    async fn record_replication_id(&self, id: &str) -> Result<(), StoreError> {
        self.conn.clone().set(format!("{}:replid", self.prefix), id).await.map_err(unavailable)
    }

    async fn rebuild_lease(&self, token: &str, lease_ms: u64) -> Result<bool, StoreError> {
        self.lease("rebuild", token, lease_ms).take().await.map_err(unavailable)
    }

    async fn restore_event(
        &self,
        def: &EventDef,
        applied: &[AppliedOrder],
        now_ms: u64,
    ) -> Result<Restored, StoreError> {
        let info = EventInfo::build(def.clone(), self.seats_max).map_err(corrupt)?;
        let e = def.event_id;
        let parse = |m: HashMap<String, String>| {
            m.into_values()
                .map(|b| serde_json::from_str::<HotOrder>(&b).map(|o| (o.order_id, o)))
                .collect::<Result<HashMap<_, _>, _>>()
                .map_err(corrupt)
        };
        for _ in 0..RESTORE_TRIES_MAX {
            let mut conn = self.conn.clone();
            let (holds, paid, ver): (HashMap<String, String>, HashMap<String, String>, Option<String>) = redis::pipe()
                .atomic()
                .hgetall(self.ev(e, "holds"))
                .hgetall(self.ev(e, "paid"))
                .get(self.ev(e, "ver"))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let merged = restore::merge_event(&info, parse(holds)?, parse(paid)?, applied);
            // Above any version an actor can remember (versions count
            // writes; this is the clock in ms), so none mistakes the
            // rebuilt state for the one it knew.
            let old: u64 = ver.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
            let new_ver = (old + 1).max(now_ms);
            let mut inv = self.scripts.restore_event.prepare_invoke();
            for what in ["def", "n", "seats", "holds", "paid", "users", "ver"] {
                inv.key(self.ev(e, what));
            }
            inv.key(self.part(e.partition(), "due"));
            inv.arg(e.to_string())
                .arg(ver.unwrap_or_default())
                .arg(new_ver)
                .arg(serde_json::to_string(def).map_err(corrupt)?)
                .arg(info.map.len());
            merged_args(&mut inv, &merged)?;
            let done: i64 = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
            if done != 1 {
                continue;
            }
            // The order index (each key in its own slot), then the replicas.
            let index = merged
                .holds
                .keys()
                .chain(merged.paid.keys())
                .map(|o| redis::Cmd::set(self.ord(*o), e.to_string()))
                .collect();
            crate::redis_io::concurrently::<_, ()>(&self.conn, index).await.map_err(unavailable)?;
            self.replicated(&mut conn).await?;
            self.events.insert(e, info);
            return Ok(Restored { restored: merged.restored, conflicts: merged.conflicts });
        }
        Err(StoreError::Unavailable(format!("event {e} kept changing while it was restored")))
    }

    async fn restore_packet(&self, applied: &AppliedPacket, _now_ms: u64) -> Result<Restored, StoreError> {
        let def = &applied.def;
        let p = def.packet_id;
        let mut conn = self.conn.clone();
        let (status, grabs): (Option<String>, HashMap<String, String>) = redis::pipe()
            .atomic()
            .hget(self.pk(p, "state"), "status")
            .hgetall(self.pk(p, "grabs"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let hot_grabs = grabs
            .into_values()
            .map(|b| serde_json::from_str::<Grab>(&b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(corrupt)?;
        let merged = restore::merge_packet(hot_grabs, status.as_deref() == Some("expired"), applied);
        // Parts are taken by index: the definition lists them in the order
        // the merge put them (grabbed ones first).
        let def = &PacketDef { parts: merged.parts.clone(), ..def.clone() };
        let mut inv = self.scripts.restore_packet.prepare_invoke();
        for what in ["def", "parts", "state", "grabs"] {
            inv.key(self.pk(p, what));
        }
        inv.key(self.part(p.partition(), "due"));
        inv.arg(p.to_string())
            .arg(serde_json::to_string(def).map_err(corrupt)?)
            .arg(def.expires_at_ms)
            .arg(merged.status.as_str())
            .arg(merged.grabs.len())
            .arg(def.count);
        inv.arg(merged.parts.len());
        for part in &merged.parts {
            inv.arg(part.get());
        }
        inv.arg(merged.grabs.len());
        for g in &merged.grabs {
            inv.arg(&g.user_id).arg(serde_json::to_string(g).map_err(corrupt)?);
        }
        let _: i64 = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        self.replicated(&mut conn).await?;
        self.packets.insert(p, Arc::new(def.clone()));
        Ok(Restored { restored: merged.restored, conflicts: merged.conflicts })
    }
}

/// Attempts of one event's restore when its version moves meanwhile (a
/// second rebuilder): past them the recovery round fails and is retried.
const RESTORE_TRIES_MAX: usize = 5;
