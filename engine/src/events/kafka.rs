//! Kafka: the relay's idempotent producer and the workers' event log.
//!
//! Topics are one per event family (`<prefix>.orders`, `<prefix>.packets`),
//! the message key is the entity id (event or packet) and the Kafka
//! partition is the event's logical partition (modulo the topic's partition
//! count), so one entity's events stay in order. Consumers commit offsets
//! only after the durable transaction of the events they cover.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{DomainEvent, Envelope, EventLog, LogError};
use crate::config::KafkaConfig;

/// The two families: seats/orders and red packets.
pub const FAMILIES: [&str; 2] = ["orders", "packets"];

pub fn topic(prefix: &str, event: &DomainEvent) -> String {
    let family = match event {
        DomainEvent::OrderHeld { .. } | DomainEvent::OrderReleased { .. } | DomainEvent::OrderConfirmed { .. } => {
            FAMILIES[0]
        }
        DomainEvent::PacketCreated { .. } | DomainEvent::PacketGrabbed { .. } | DomainEvent::PacketExpired { .. } => {
            FAMILIES[1]
        }
    };
    format!("{prefix}.{family}")
}

pub fn topics(prefix: &str) -> Vec<String> {
    FAMILIES.iter().map(|f| format!("{prefix}.{f}")).collect()
}

fn unavailable(e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("kafka: {e}"))
}

/// Fails naming the setting when a TLS file it names cannot be read
/// (librdkafka's own message names neither).
fn base_config(cfg: &KafkaConfig, brokers: &str) -> Result<ClientConfig, LogError> {
    for (setting, path) in
        [("ssl_ca_file", &cfg.ssl_ca_file), ("ssl_cert_file", &cfg.ssl_cert_file), ("ssl_key_file", &cfg.ssl_key_file)]
    {
        if let Some(path) = path {
            std::fs::File::open(path)
                .map_err(|e| LogError::Unavailable(format!("kafka.{setting} {}: cannot read: {e}", path.display())))?;
        }
    }
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("socket.timeout.ms", cfg.request_timeout_ms.max(10).to_string())
        .set("log_level", "4");
    security(&mut c, cfg);
    Ok(c)
}

/// TLS and SASL, the same for every client (config.rs checks the
/// combinations). librdkafka checks a broker's name against its
/// certificate (`ssl.endpoint.identification.algorithm=https`, its default).
fn security(c: &mut ClientConfig, cfg: &KafkaConfig) {
    let sp = cfg.security_protocol;
    c.set("security.protocol", sp.as_str());
    let path = |p: &std::path::Path| p.display().to_string();
    if sp.tls() {
        c.set("ssl.endpoint.identification.algorithm", "https");
        if let Some(ca) = &cfg.ssl_ca_file {
            c.set("ssl.ca.location", path(ca));
        }
        if let (Some(cert), Some(key)) = (&cfg.ssl_cert_file, &cfg.ssl_key_file) {
            c.set("ssl.certificate.location", path(cert)).set("ssl.key.location", path(key));
        }
    }
    if sp.sasl() {
        c.set("sasl.mechanism", cfg.sasl_mechanism.as_str())
            .set("sasl.username", cfg.sasl_username.clone().unwrap_or_default())
            .set("sasl.password", cfg.sasl_password.clone().unwrap_or_default());
    }
}

/// The relay's producer: idempotent (no duplicates or reordering from its
/// own retries), `acks=all`, lingering a little so a burst travels in few
/// requests.
pub fn producer(cfg: &KafkaConfig, brokers: &str) -> Result<FutureProducer, LogError> {
    base_config(cfg, brokers)?
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", cfg.linger_ms.to_string())
        .set("message.timeout.ms", cfg.delivery_timeout_ms.to_string())
        .set("queue.buffering.max.messages", (cfg.relay_batch_len_max * 4).max(100_000).to_string())
        .create()
        .map_err(unavailable)
}

/// Fails with a message naming the brokers when none answers within
/// `request_timeout_ms` (metadata request), with librdkafka's reason (a
/// refused TLS handshake, failed SASL authentication, an unknown host).
pub async fn check_reachable(cfg: &KafkaConfig, brokers: &str) -> Result<(), LogError> {
    let consumer: BaseConsumer<Reasons> =
        base_config(cfg, brokers)?.create_with_context(Reasons::default()).map_err(unavailable)?;
    let timeout = Duration::from_millis(cfg.request_timeout_ms);
    let (consumer, fetched) = tokio::task::spawn_blocking(move || {
        let fetched = consumer.fetch_metadata(None, timeout).map(|_| ());
        if fetched.is_err() {
            // The reasons wait on the client's queue until it is polled.
            let _ = consumer.poll(Duration::ZERO);
        }
        (consumer, fetched)
    })
    .await
    .map_err(unavailable)?;
    fetched.map_err(|e| {
        let why = consumer.context().0.lock().map(|r| r.join("; ")).unwrap_or_default();
        LogError::Unavailable(format!("Kafka at {brokers} is unreachable: {e}; librdkafka: {why}"))
    })
}

/// What librdkafka reported while `check_reachable` waited: its errors
/// and its warnings, the last few.
#[derive(Default)]
struct Reasons(Mutex<Vec<String>>);

impl Reasons {
    const KEPT: usize = 4;

    fn keep(&self, line: String) {
        if let Ok(mut r) = self.0.lock() {
            if !r.contains(&line) {
                if r.len() == Self::KEPT {
                    r.remove(0);
                }
                r.push(line);
            }
        }
    }
}

impl rdkafka::ClientContext for Reasons {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, line: &str) {
        use rdkafka::config::RDKafkaLogLevel::*;
        if matches!(level, Emerg | Alert | Critical | Error | Warning) {
            self.keep(format!("{fac} {line}"));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.keep(format!("{error}: {reason}"));
    }
}

impl rdkafka::consumer::ConsumerContext for Reasons {}

/// Creates the topics with `cfg.partitions` partitions where missing.
pub async fn ensure_topics(cfg: &KafkaConfig, brokers: &str) -> Result<(), LogError> {
    let admin: AdminClient<DefaultClientContext> = base_config(cfg, brokers)?.create().map_err(unavailable)?;
    let names = topics(&cfg.topic_prefix);
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, cfg.partitions, TopicReplication::Fixed(cfg.replication_factor)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_millis(cfg.request_timeout_ms)));
    let results = admin.create_topics(&new, &opts).await.map_err(unavailable)?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(unavailable(format!("creating topic {topic}: {code}"))),
        }
    }
    Ok(())
}

/// Where a delivered message sits, for committing it.
type Spot = (String, i32, i64);

/// The workers' event log: a consumer group over both topics. Offsets are
/// stored by `commit` only, after the durable transaction.
pub struct KafkaLog {
    consumer: Arc<StreamConsumer>,
    cfg: KafkaConfig,
    probe: LagProbe,
    next_position: AtomicU64,
    pending: Mutex<BTreeMap<u64, Spot>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KafkaLog {
    /// Joins `cfg.group` on the topics (which must exist: the relay or
    /// `ensure_topics` creates them).
    pub fn new(cfg: &KafkaConfig, brokers: &str) -> Result<KafkaLog, LogError> {
        let consumer: StreamConsumer = base_config(cfg, brokers)?
            .set("group.id", &cfg.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
            .set("enable.partition.eof", "false")
            .create()
            .map_err(unavailable)?;
        let names = topics(&cfg.topic_prefix);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&refs).map_err(unavailable)?;
        Ok(KafkaLog {
            consumer: Arc::new(consumer),
            cfg: cfg.clone(),
            probe: LagProbe::new(cfg, brokers)?,
            next_position: AtomicU64::new(1),
            pending: Mutex::new(BTreeMap::new()),
        })
    }

    fn take(&self, msg: &rdkafka::message::BorrowedMessage<'_>, out: &mut Vec<Envelope>) -> Result<(), LogError> {
        let position = self.next_position.fetch_add(1, Ordering::Relaxed);
        let payload = msg.payload().unwrap_or_default();
        let mut env: Envelope = serde_json::from_slice(payload).map_err(|e| LogError::Corrupt {
            position,
            reason: format!("{}[{}]@{}: {e}", msg.topic(), msg.partition(), msg.offset()),
        })?;
        env.position = position;
        lock(&self.pending).insert(position, (msg.topic().to_string(), msg.partition(), msg.offset()));
        out.push(env);
        Ok(())
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    async fn poll(&self, _consumer: &str, max: usize, wait: Duration) -> Result<Vec<Envelope>, LogError> {
        let mut out = Vec::new();
        match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_) => return Ok(out),
            Ok(msg) => self.take(&msg.map_err(unavailable)?, &mut out)?,
        }
        // More for up to `consumer_linger_ms`: one durable transaction per
        // batch, so fuller batches cost the database far less per event.
        let until = tokio::time::Instant::now() + Duration::from_millis(self.cfg.consumer_linger_ms);
        while out.len() < max {
            match tokio::time::timeout_at(until, self.consumer.recv()).await {
                Ok(msg) => self.take(&msg.map_err(unavailable)?, &mut out)?,
                Err(_) => break,
            }
        }
        Ok(out)
    }

    async fn commit(&self, _consumer: &str, position: u64) -> Result<(), LogError> {
        let done = {
            let mut pending = lock(&self.pending);
            let keep = pending.split_off(&(position + 1));
            std::mem::replace(&mut *pending, keep)
        };
        let mut next: HashMap<(String, i32), i64> = HashMap::new();
        for (_, (topic, partition, offset)) in done {
            let e = next.entry((topic, partition)).or_insert(offset + 1);
            *e = (*e).max(offset + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        // Only partitions still ours: after a rebalance the new owner
        // re-reads from the last commit (and skips what is applied).
        let assigned = self.consumer.assignment().map_err(unavailable)?;
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            if assigned.find_partition(&topic, partition).is_some() {
                tpl.add_partition_offset(&topic, partition, Offset::Offset(offset)).map_err(unavailable)?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)
    }

    async fn rewind(&self, _consumer: &str) {
        // Seek each partition back to its first uncommitted message.
        let firsts: HashMap<(String, i32), i64> = {
            let mut pending = lock(&self.pending);
            let mut firsts = HashMap::new();
            for (_, (t, p, o)) in std::mem::take(&mut *pending) {
                firsts.entry((t, p)).or_insert(o);
            }
            firsts
        };
        for ((t, p), o) in firsts {
            if let Err(e) =
                self.consumer.seek(&t, p, Offset::Offset(o), Duration::from_millis(self.cfg.request_timeout_ms))
            {
                tracing::warn!(error = %e, topic = %t, partition = p, "seek back failed");
            }
        }
    }

    async fn lag(&self, _consumer: &str) -> Result<u64, LogError> {
        self.probe.lag().await
    }
}

/// Reads the worker group's lag from outside the group (a client that does
/// not join it), so tests, `settle` and the worker's metric can ask. One
/// client, kept: creating a librdkafka client per question would open new
/// connections each time.
pub struct LagProbe {
    consumer: Arc<BaseConsumer>,
    topics: Vec<String>,
    timeout: Duration,
}

impl LagProbe {
    pub fn new(cfg: &KafkaConfig, brokers: &str) -> Result<LagProbe, LogError> {
        let consumer: BaseConsumer = base_config(cfg, brokers)?
            .set("group.id", &cfg.group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(unavailable)?;
        Ok(LagProbe {
            consumer: Arc::new(consumer),
            topics: topics(&cfg.topic_prefix),
            timeout: Duration::from_millis(cfg.request_timeout_ms),
        })
    }

    /// Messages not yet committed by the group: Σ over partitions of
    /// (high watermark − committed offset).
    pub async fn lag(&self) -> Result<u64, LogError> {
        let (consumer, names, timeout) = (self.consumer.clone(), self.topics.clone(), self.timeout);
        tokio::task::spawn_blocking(move || -> Result<u64, KafkaError> {
            let mut tpl = TopicPartitionList::new();
            for topic in &names {
                let meta = consumer.fetch_metadata(Some(topic), timeout)?;
                for t in meta.topics() {
                    for p in t.partitions() {
                        tpl.add_partition(topic, p.id());
                    }
                }
            }
            let committed = consumer.committed_offsets(tpl, timeout)?;
            let mut lag = 0u64;
            for e in committed.elements() {
                let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
                let from = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => low,
                };
                lag += u64::try_from(high - from.max(low)).unwrap_or(0);
            }
            Ok(lag)
        })
        .await
        .map_err(unavailable)?
        .map_err(unavailable)
    }
}
