//! The Redis event log: the 128 partition outbox streams the scripts append
//! to, read with consumer groups. An entry stays pending until the worker
//! commits it (XACK), then it is deleted (XDEL), so a stream holds only what
//! is not yet applied. A node that restarts first re-reads the entries it
//! had been given and not committed, then new ones. Several nodes in one
//! group share the work; effects are idempotent by event id anyway.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::streams::StreamReadReply;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::{Envelope, EventLog, LogError};
use crate::config::Replication;
use crate::domain::id::PARTITION_COUNT;

/// Entries asked of one partition per poll: the hot partition of a flash
/// sale can fill a batch on its own.
const PER_PARTITION_COUNT_MIN: usize = 64;

/// Generic over the connection (single server or cluster); each command
/// touches one partition's stream, so it runs on Redis Cluster too.
pub struct RedisStreamLog<C = ConnectionManager> {
    conn: C,
    prefix: String,
    /// This node's name inside each consumer group.
    consumer: String,
    appended: Arc<Notify>,
    /// Groups created (per consumer group name).
    ready: Mutex<HashSet<String>>,
    /// Groups whose own pending entries have all been re-read.
    recovered: Mutex<HashSet<String>>,
    next_position: AtomicU64,
    /// Delivered, not committed: position → (group, partition, stream id).
    pending: Mutex<BTreeMap<u64, (String, u16, String)>>,
    /// Partitions whose last read filled its count: they are asked for the
    /// bulk of the next batch (a flash sale's hot packet sits in one stream).
    hot: Mutex<HashSet<u16>>,
    /// `replicas` durability: what is read is on the replicas before it is
    /// handed on (see [`RedisStreamLog::replicated`]).
    replication: Option<Replication>,
}

fn unavailable(e: redis::RedisError) -> LogError {
    LogError::Unavailable(e.to_string())
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<C> RedisStreamLog<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    pub fn new(conn: C, prefix: &str, consumer: &str, appended: Arc<Notify>) -> Self {
        RedisStreamLog {
            conn,
            prefix: prefix.to_string(),
            consumer: consumer.to_string(),
            appended,
            ready: Mutex::new(HashSet::new()),
            recovered: Mutex::new(HashSet::new()),
            next_position: AtomicU64::new(1),
            pending: Mutex::new(BTreeMap::new()),
            hot: Mutex::new(HashSet::new()),
            replication: None,
        }
    }

    pub fn with_replication(mut self, replication: Option<Replication>) -> Self {
        self.replication = replication;
        self
    }

    /// With `replicas` durability, entries just read reach the replicas
    /// before anyone applies or relays them, so the durable store never
    /// holds an effect that a failover to a replica takes back (a script
    /// whose WAIT timed out was answered 503, yet its entry is in the
    /// primary's stream). A write first (a re-read of pending entries is
    /// none), then WAIT for its offset, which is past every entry read. Not
    /// there in time: the entries are read again on the next poll.
    async fn replicated(&self, group: &str) -> Result<(), LogError> {
        let Some(r) = self.replication else { return Ok(()) };
        let mut pipe = redis::pipe();
        pipe.cmd("INCR").arg(format!("{}:log-sync", self.prefix)).ignore();
        pipe.cmd("WAIT").arg(r.replicas).arg(r.timeout_ms);
        let acked: Result<(u32,), _> = pipe.query_async(&mut self.conn.clone()).await;
        let why = match acked {
            Ok((n,)) if n >= r.replicas => return Ok(()),
            Ok((n,)) => format!("outbox entries reached {n} of {} replicas within {} ms", r.replicas, r.timeout_ms),
            Err(e) => e.to_string(),
        };
        self.forget_delivered(group);
        Err(LogError::Unavailable(why))
    }

    /// Drops what was delivered to `group` and not committed: the next read
    /// starts again from its pending entries.
    fn forget_delivered(&self, group: &str) {
        lock(&self.pending).retain(|_, (g, _, _)| g != group);
        lock(&self.recovered).remove(group);
    }

    fn stream(&self, partition: u16) -> String {
        format!("{}:{{p{partition}}}:outbox", self.prefix)
    }

    async fn ensure_group(&self, group: &str) -> Result<(), LogError> {
        if lock(&self.ready).contains(group) {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        for p in 0..PARTITION_COUNT {
            let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(self.stream(p))
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Ok(()) => {}
                Err(e) if e.to_string().contains("BUSYGROUP") => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        lock(&self.ready).insert(group.to_string());
        Ok(())
    }

    /// A failed read or acknowledgement. `NOGROUP`: Redis lost the group
    /// (it restarted empty, or failed over to a replica without it): it is
    /// forgotten here so the next poll creates it again from the start of
    /// each stream (`XGROUP CREATE … 0 MKSTREAM`), where everything not yet
    /// applied is; never a silent stall.
    fn failed(&self, group: &str, e: redis::RedisError) -> LogError {
        if is_nogroup(&e) {
            tracing::warn!(group, "the outbox's consumer group is gone (Redis lost its data): creating it again");
            lock(&self.ready).remove(group);
            lock(&self.recovered).remove(group);
            lock(&self.pending).retain(|_, (g, _, _)| g != group);
        }
        unavailable(e)
    }

    async fn read(&self, group: &str, max: usize) -> Result<Vec<Envelope>, LogError> {
        let recovering = !lock(&self.recovered).contains(group);
        // "0": this consumer's delivered-but-uncommitted entries; ">": new ones.
        let from = if recovering { "0" } else { ">" };
        // Every partition gets a small share; those that filled theirs last
        // time share `max`. A read returns at most about max + 128 × 64.
        let base = max.div_ceil(usize::from(PARTITION_COUNT)).max(PER_PARTITION_COUNT_MIN);
        let hot = lock(&self.hot).clone();
        let hot_count = (max / hot.len().max(1)).max(base);
        let count_of = |p: u16| if hot.contains(&p) { hot_count } else { base };
        let cmds = (0..PARTITION_COUNT)
            .map(|p| {
                let mut cmd = redis::cmd("XREADGROUP");
                cmd.arg("GROUP").arg(group).arg(&self.consumer).arg("COUNT").arg(count_of(p)).arg("STREAMS");
                cmd.arg(self.stream(p)).arg(from);
                cmd
            })
            .collect();
        let replies: Vec<Option<StreamReadReply>> = match crate::redis_io::concurrently(&self.conn, cmds).await {
            Ok(r) => r,
            Err(e) => return Err(self.failed(group, e)),
        };
        let mut out = Vec::new();
        let mut now_hot = HashSet::new();
        let mut pending = lock(&self.pending);
        for (p, reply) in replies.into_iter().enumerate() {
            let keys = reply.map(|r| r.keys).unwrap_or_default();
            if keys.iter().map(|k| k.ids.len()).sum::<usize>() >= count_of(p as u16) {
                now_hot.insert(p as u16);
            }
            for key in keys {
                for entry in key.ids {
                    let position = self.next_position.fetch_add(1, Ordering::Relaxed);
                    let body: String = entry.get("body").ok_or_else(|| LogError::Corrupt {
                        position,
                        reason: format!("stream entry {} has no body", entry.id),
                    })?;
                    let mut env: Envelope = serde_json::from_str(&body)
                        .map_err(|e| LogError::Corrupt { position, reason: e.to_string() })?;
                    env.position = position;
                    pending.insert(position, (group.to_string(), p as u16, entry.id));
                    out.push(env);
                }
            }
        }
        drop(pending);
        *lock(&self.hot) = now_hot;
        if recovering && out.is_empty() {
            lock(&self.recovered).insert(group.to_string());
        }
        Ok(out)
    }
}

#[async_trait]
impl<C> EventLog for RedisStreamLog<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn poll(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Envelope>, LogError> {
        self.ensure_group(consumer).await?;
        let notified = self.appended.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut batch = self.read(consumer, max).await?;
        if batch.is_empty() {
            // Woken by this node's appends; other nodes' are seen on the
            // next poll, at most `wait` later.
            let _ = tokio::time::timeout(wait, notified).await;
            batch = self.read(consumer, max).await?;
        }
        if !batch.is_empty() {
            self.replicated(consumer).await?;
        }
        Ok(batch)
    }

    async fn commit(&self, consumer: &str, position: u64) -> Result<(), LogError> {
        let done: Vec<(u64, (String, u16, String))> = {
            let mut pending = lock(&self.pending);
            let keep = pending.split_off(&(position + 1));
            let done = std::mem::replace(&mut *pending, keep);
            done.into_iter().filter(|(_, (g, _, _))| g == consumer).collect()
        };
        let mut by_partition: HashMap<u16, Vec<String>> = HashMap::new();
        for (_, (_, p, id)) in done {
            by_partition.entry(p).or_default().push(id);
        }
        // Per partition: acknowledge, then delete (one slot per pipeline).
        let mut set = JoinSet::new();
        for (p, ids) in by_partition {
            let (stream, group, mut conn) = (self.stream(p), consumer.to_string(), self.conn.clone());
            set.spawn(async move {
                let mut pipe = redis::pipe();
                pipe.cmd("XACK").arg(&stream).arg(group).arg(&ids).ignore();
                pipe.cmd("XDEL").arg(&stream).arg(&ids).ignore();
                pipe.query_async::<()>(&mut conn).await
            });
        }
        while let Some(joined) = set.join_next().await {
            match joined.map_err(|e| LogError::Unavailable(e.to_string()))? {
                Ok(()) => {}
                // The group went with Redis's data: so did these entries,
                // whose effects are durable already. Nothing to acknowledge.
                Err(e) if is_nogroup(&e) => {
                    self.failed(consumer, e);
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(())
    }

    async fn rewind(&self, consumer: &str) {
        self.forget_delivered(consumer);
    }

    async fn take_over(&self, consumer: &str) -> Result<(), LogError> {
        self.ensure_group(consumer).await?;
        for p in 0..PARTITION_COUNT {
            let stream = self.stream(p);
            let mut cursor = "0-0".to_string();
            loop {
                // JUSTID: claim without delivering; the re-read below delivers.
                // Reply: [next cursor, claimed ids, deleted ids (Redis 7)].
                let reply: Vec<redis::Value> = redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(consumer)
                    .arg(&self.consumer)
                    .arg(0)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(1000)
                    .arg("JUSTID")
                    .query_async(&mut self.conn.clone())
                    .await
                    .map_err(unavailable)?;
                cursor = match reply.first() {
                    Some(v) => redis::from_redis_value_ref::<String>(v).map_err(|e| unavailable(e.into()))?,
                    None => "0-0".to_string(),
                };
                if cursor == "0-0" {
                    break;
                }
            }
        }
        self.rewind(consumer).await;
        Ok(())
    }

    async fn lag(&self, _consumer: &str) -> Result<u64, LogError> {
        // Committed entries are deleted, so what is left is the lag.
        let cmds = (0..PARTITION_COUNT).map(|p| redis::Cmd::xlen(self.stream(p))).collect();
        let lens: Vec<u64> = crate::redis_io::concurrently(&self.conn, cmds).await.map_err(unavailable)?;
        Ok(lens.iter().sum())
    }
}
