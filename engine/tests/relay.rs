//! The relay against librdkafka's mock cluster (in-process brokers with
//! fault injection): what it acknowledges is in Kafka, a failed round
//! acknowledges nothing and is sent again, and one entity's events stay in
//! order. The end-to-end tests (real broker, kill -9) are in the gateway's
//! `full` tests.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message};
use rush_engine::config::{KafkaConfig, WorkerConfig};
use rush_engine::domain::{Fen, Id, IdGen};
use rush_engine::events::{kafka, DomainEvent, Envelope, EventLog, LogError};
use rush_engine::telemetry::Metrics;
use rush_engine::workers::relay::Relay;

/// An outbox in memory: positions are index + 1; `rewind` goes back to
/// the last commit, as the Redis stream log does.
struct FakeLog {
    events: Vec<Envelope>,
    /// (next to deliver, committed count)
    state: Mutex<(usize, usize)>,
}

#[async_trait]
impl EventLog for FakeLog {
    async fn poll(&self, _c: &str, max: usize, _wait: Duration) -> Result<Vec<Envelope>, LogError> {
        let mut st = self.state.lock().expect("lock");
        let end = (st.0 + max).min(self.events.len());
        let out = self.events[st.0..end].to_vec();
        st.0 = end;
        Ok(out)
    }
    async fn commit(&self, _c: &str, position: u64) -> Result<(), LogError> {
        self.state.lock().expect("lock").1 = position as usize;
        Ok(())
    }
    async fn lag(&self, _c: &str) -> Result<u64, LogError> {
        Ok((self.events.len() - self.state.lock().expect("lock").1) as u64)
    }
    async fn rewind(&self, _c: &str) {
        let mut st = self.state.lock().expect("lock");
        st.0 = st.1;
    }
}

/// `n` events over 12 entities (6 events' orders, 6 packets' grabs; an
/// entity's events are all of one family, as in rush), positions 1..=n.
fn outbox(n: usize) -> Arc<FakeLog> {
    let ids = IdGen::new(3).expect("ids");
    let packets: Vec<Id> = (0..12).map(|i| ids.next(i as u8 % 16)).collect();
    let events = (0..n)
        .map(|i| {
            let packet_id = packets[i % packets.len()];
            let event = if i % packets.len() < 6 {
                DomainEvent::OrderConfirmed {
                    order_id: ids.next(0),
                    event_id: packet_id,
                    user_id: "u".into(),
                    at_ms: 1,
                }
            } else {
                DomainEvent::PacketGrabbed {
                    grab_id: ids.next(0),
                    packet_id,
                    sender: "s".into(),
                    user_id: format!("u{i}"),
                    amount: Fen::new(1),
                    at_ms: rush_engine::domain::now_unix_ms(),
                }
            };
            Envelope { position: i as u64 + 1, event_id: ids.next(0), partition: packet_id.partition(), event }
        })
        .collect();
    Arc::new(FakeLog { events, state: Mutex::new((0, 0)) })
}

fn kafka_cfg(brokers: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: Some(brokers.into()),
        topic_prefix: "t".into(),
        partitions: 4,
        relay_batch_len_max: 64,
        delivery_timeout_ms: 5_000,
        request_timeout_ms: 1_000,
        ..KafkaConfig::default()
    }
}

fn relay(log: Arc<FakeLog>, cfg: &KafkaConfig) -> Relay {
    let brokers = cfg.brokers.clone().expect("brokers");
    Relay {
        log,
        lease: None,
        producer: kafka::producer(cfg, &brokers).expect("producer"),
        kafka: cfg.clone(),
        workers: WorkerConfig::default(),
        metrics: Metrics::new(),
        poll_wait: Duration::from_millis(1),
    }
}

fn mock() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    for t in kafka::topics("t") {
        mock.create_topic(&t, 4, 1).expect("topic");
    }
    mock
}

/// Everything in both topics: (topic, partition, key, envelope).
async fn read_all(brokers: &str, expect_at_least: usize) -> Vec<(String, i32, String, Envelope)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let topics = kafka::topics("t");
    consumer.subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>()).expect("subscribe");
    let mut out = Vec::new();
    while out.len() < expect_at_least {
        let m = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("messages stopped coming")
            .expect("message");
        let env: Envelope = serde_json::from_slice(m.payload().unwrap_or_default()).expect("envelope");
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
        out.push((m.topic().to_string(), m.partition(), key, env));
    }
    // Anything beyond (duplicates) that is already there.
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
        let env: Envelope = serde_json::from_slice(m.payload().unwrap_or_default()).expect("envelope");
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
        out.push((m.topic().to_string(), m.partition(), key, env));
    }
    out
}

/// Per entity, the order of first appearance in Kafka equals the outbox order.
fn assert_entity_order(log: &FakeLog, got: &[(String, i32, String, Envelope)]) {
    let mut seen = HashSet::new();
    let mut firsts: HashMap<Id, Vec<Id>> = HashMap::new();
    for (_, _, _, env) in got {
        if seen.insert(env.event_id) {
            firsts.entry(env.event.entity_id()).or_default().push(env.event_id);
        }
    }
    let mut want: HashMap<Id, Vec<Id>> = HashMap::new();
    for env in &log.events {
        want.entry(env.event.entity_id()).or_default().push(env.event_id);
    }
    assert_eq!(firsts.len(), want.len(), "every entity arrives");
    for (entity, events) in &want {
        assert!(firsts.get(entity) == Some(events), "entity {entity}: events missing or out of order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_events_land_once_keyed_and_partitioned_then_are_acknowledged() {
    let mock = mock();
    let cfg = kafka_cfg(&mock.bootstrap_servers());
    let log = outbox(500);
    let r = relay(log.clone(), &cfg);
    while log.lag("relay").await.expect("lag") > 0 {
        r.round().await.expect("round");
    }
    let got = read_all(&mock.bootstrap_servers(), 500).await;
    assert_eq!(got.len(), 500, "no duplicates without faults");
    for (topic, partition, key, env) in &got {
        assert_eq!(*topic, kafka::topic("t", &env.event));
        assert_eq!(*partition, i32::from(env.partition) % 4);
        assert_eq!(*key, env.event.entity_id().to_string());
    }
    assert_entity_order(&log, &got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_kafka_refuses_is_not_acknowledged_and_is_sent_again() {
    let mock = mock();
    let cfg = KafkaConfig { delivery_timeout_ms: 2_000, ..kafka_cfg(&mock.bootstrap_servers()) };
    let log = outbox(300);
    let r = relay(log.clone(), &cfg);
    // The first round also waits for the producer's id; retry it if slow.
    let mut tries = 0;
    while let Err(e) = r.round().await {
        tries += 1;
        assert!(tries < 10, "first round: {e}");
    }
    let committed = log.lag("relay").await.expect("lag");
    assert_eq!(committed, 300 - 64);

    // The broker goes away: the round times out and acknowledges nothing.
    mock.broker_down(1).expect("down");
    let err = r.round().await.expect_err("Kafka is down");
    assert!(err.to_string().contains("refused"), "{err}");
    assert_eq!(log.lag("relay").await.expect("lag"), committed, "nothing acknowledged while Kafka is down");

    // Back: the same entries go again and the rest follow.
    mock.broker_up(1).expect("up");
    let mut rounds = 0;
    while log.lag("relay").await.expect("lag") > 0 {
        rounds += 1;
        assert!(rounds < 100, "the relay never caught up");
        if let Err(e) = r.round().await {
            eprintln!("retrying: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let got = read_all(&mock.bootstrap_servers(), 300).await;
    assert_entity_order(&log, &got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_produce_errors_are_retried_by_the_idempotent_producer_without_duplicates() {
    let mock = mock();
    let cfg = kafka_cfg(&mock.bootstrap_servers());
    let log = outbox(200);
    let r = relay(log.clone(), &cfg);
    // Retriable errors on the next produce requests: librdkafka retries them
    // itself; idempotence keeps the retries from writing twice.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    while log.lag("relay").await.expect("lag") > 0 {
        r.round().await.expect("retriable errors never fail a round");
    }
    let got = read_all(&mock.bootstrap_servers(), 200).await;
    let ids: HashSet<Id> = got.iter().map(|(_, _, _, e)| e.event_id).collect();
    assert_eq!((got.len(), ids.len()), (200, 200), "each event exactly once");
    assert_entity_order(&log, &got);
}

/// Leadership on a real Redis (`RUSH_TEST_REDIS_URL`, default database 15):
/// while another relay holds the lease this one sends nothing; when the
/// holder dies (stops renewing) with entries read and not acknowledged,
/// this one takes the lease, takes over those entries, and sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_relay_takes_over_the_lease_and_the_dead_relays_pending_entries() {
    use rush_engine::events::redis_stream::RedisStreamLog;
    use rush_engine::store::redis::RedisStore;
    use rush_engine::store::Lease;

    let url = std::env::var("RUSH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/15".into());
    let prefix = format!("rushtest-relay-{}", std::process::id());
    let ids = Arc::new(IdGen::new(5).expect("ids"));
    let store = RedisStore::connect(&url, None, &prefix, ids, 1000, Duration::from_secs(2)).await.expect("redis");
    let fake = outbox(100);
    let mut conn = store.connection();
    for env in &fake.events {
        let key = format!("{prefix}:{{p{}}}:outbox", env.partition);
        let body = serde_json::to_string(env).expect("json");
        let _: String =
            redis::cmd("XADD").arg(&key).arg("*").arg("body").arg(body).query_async(&mut conn).await.expect("xadd");
    }
    let log = |who: &str| Arc::new(RedisStreamLog::new(store.connection(), &prefix, who, store.appended()));
    // Relay A takes the lease, reads everything, and dies before sending.
    let lease_a = store.lease("outbox-reader", "a", 2_000);
    assert!(lease_a.hold().await.expect("lease"));
    let log_a = log("node-a");
    let mut read = 0;
    while read < 100 {
        read += log_a.poll("relay", 1000, Duration::from_millis(10)).await.expect("poll").len();
    }
    // Relay B stands by until A's lease runs out.
    let mock = mock();
    let cfg = kafka_cfg(&mock.bootstrap_servers());
    let log_b = log("node-b");
    let b = Relay {
        log: log_b.clone(),
        lease: Some(Box::new(store.lease("outbox-reader", "b", 2_000))),
        producer: kafka::producer(&cfg, &mock.bootstrap_servers()).expect("producer"),
        kafka: cfg.clone(),
        workers: WorkerConfig::default(),
        metrics: Metrics::new(),
        poll_wait: Duration::from_millis(5),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(b.run(stopped));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(log_b.lag("relay").await.expect("lag"), 100, "a standby relay sends nothing");
    let mut drained = false;
    for _ in 0..200 {
        if log_b.lag("relay").await.expect("lag") == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    let _ = task.await;
    assert!(drained, "the new lease holder sent the dead relay's entries");
    let got = read_all(&mock.bootstrap_servers(), 100).await;
    assert_entity_order(&fake, &got);
    // Clean up this test's keys.
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await.unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}
