//! Full mode end to end (Redis + Kafka + Postgres) with faults: kill -9 of
//! the relay and of the worker in the middle of a burst, and Kafka stopped
//! while the hot path keeps serving.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use rush_engine::config::PostgresConfig;
use rush_engine::durable::{Durable, Pools};
use rush_engine::testkit::{test_kafka_brokers, ScratchDb};
use serde_json::json;

use super::helpers::*;

/// Kills the processes it holds, then deletes the test's Redis keys, when
/// dropped: a failing test leaves nothing behind.
struct Procs(Vec<Child>, String);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            kill9(c);
        }
        delete_prefix(&test_redis_url(), &self.1);
    }
}

async fn count(d: &Durable, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql).fetch_one(&d.db().read).await.unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mode_kill_minus_nine_of_relay_then_worker_mid_burst_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = ScratchDb::create().await.expect("Postgres (RUSH_TEST_POSTGRES_URL)");
    let prefix = format!("rushtest-fullcrash-{}", std::process::id());
    let envs = env_vars([
        ("RUSH__REDIS__URL", test_redis_url()),
        ("RUSH__REDIS__KEY_PREFIX", prefix.clone()),
        ("RUSH__KAFKA__BROKERS", test_kafka_brokers()),
        ("RUSH__KAFKA__TOPIC_PREFIX", prefix.clone()),
        ("RUSH__KAFKA__GROUP", format!("{prefix}-persist")),
        ("RUSH__KAFKA__PARTITIONS", "4".into()),
        ("RUSH__KAFKA__SESSION_TIMEOUT_MS", "6000".into()),
        ("RUSH__KAFKA__RELAY_IN_SERVE", "false".into()),
        ("RUSH__POSTGRES__URL", pg.url.clone()),
        ("RUSH__DATA_DIR", dir.path().display().to_string()),
        ("RUSH__HTTP__ADDR", "127.0.0.1:0".into()),
    ]);
    let (serve, banner) = spawn_rush("serve", &envs);
    assert_eq!(banner["mode"], "full", "{banner}");
    assert_eq!(banner["durable"], "postgres", "{banner}");
    let base = banner["url"].as_str().expect("url").to_string();
    let (relay, _) = spawn_rush("relay", &envs);
    let (worker, _) = spawn_rush("worker", &envs);
    // [serve, relay, worker]
    let mut procs = Procs(vec![serve, relay, worker], prefix.clone());

    let c = Arc::new(Client::new(&base));
    let admin = c.token("ops", "admin").await;
    let event = c.create_event(&admin, 100, 50).await;
    let total = 5_000_000;
    let (s, v) =
        c.call("POST", "/v1/admin/wallet/sender/credit", &admin, json!({"amount": total, "reason": "t"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let sender = c.token("sender", "user").await;
    let (s, v) =
        c.call("POST", "/v1/packets", &sender, json!({"kind": "lucky", "total_amount": total, "count": 5000})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let packet = v["packet_id"].as_str().expect("id").to_string();

    // The burst: 8 tasks alternate holds and grabs with fresh users until
    // told to stop, remembering every acknowledged write.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (c, event, packet, stop) = (c.clone(), event.clone(), packet.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut holds, mut grabs) = (Vec::new(), Vec::new());
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let user = format!("u{t}-{n}");
                let tok = c.token(&user, "user").await;
                if n % 2 == 0 {
                    let body = json!({"event_id": event, "category": "std", "quantity": 1});
                    let (s, v) = c.call("POST", "/v1/orders", &tok, body).await;
                    match s {
                        StatusCode::CREATED => holds.push(v["order_id"].as_str().expect("order").to_string()),
                        StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE => {}
                        other => panic!("hold: {other} {v}"),
                    }
                } else {
                    let (s, v) = c.call("POST", &format!("/v1/packets/{packet}/grab"), &tok, json!({})).await;
                    match s {
                        StatusCode::OK => grabs.push((user, v["amount"].as_i64().expect("amount"))),
                        StatusCode::GONE | StatusCode::SERVICE_UNAVAILABLE => {}
                        other => panic!("grab: {other} {v}"),
                    }
                }
            }
            (holds, grabs)
        }));
    }
    // The restarted relay serves its metrics.
    let mut envs2 = envs.clone();
    envs2.push(("RUSH__TELEMETRY__METRICS_ADDR".into(), "127.0.0.1:0".into()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    kill9(&mut procs.0[1]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (relay, relay_banner) = tokio::task::spawn_blocking(move || spawn_rush("relay", &envs2)).await.expect("relay");
    procs.0[1] = relay;
    tokio::time::sleep(Duration::from_millis(400)).await;
    kill9(&mut procs.0[2]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let envs3 = envs.clone();
    procs.0[2] = tokio::task::spawn_blocking(move || spawn_rush("worker", &envs3)).await.expect("worker").0;
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut holds, mut grabs) = (Vec::new(), Vec::new());
    for t in tasks {
        let (h, g) = t.await.expect("task");
        holds.extend(h);
        grabs.extend(g);
    }
    eprintln!("burst: {} holds, {} grabs acknowledged", holds.len(), grabs.len());
    // Neither ran out: the burst was still going when it was stopped, after
    // both kills and restarts.
    assert!(holds.len() >= 20 && grabs.len() >= 20, "burst too small");
    assert!(holds.len() < 5000 && grabs.len() < 5000, "the burst ended before the kills");

    // Everything acknowledged reaches Postgres, exactly once.
    let durable = Durable::new(Pools::postgres(&pg.url, &PostgresConfig::default()).await.expect("pg"));
    let orders_sql = all_orders_sql();
    let mut settled = false;
    for _ in 0..300 {
        let n_orders = count(&durable, &format!("SELECT COUNT(*) FROM ({orders_sql}) o")).await;
        let n_grabs = count(&durable, "SELECT COUNT(*) FROM grabs").await;
        if n_orders == holds.len() as i64 && n_grabs == grabs.len() as i64 {
            settled = true;
            break;
        }
        assert!(n_orders <= holds.len() as i64 && n_grabs <= grabs.len() as i64, "more rows than acknowledged writes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(settled, "not every acknowledged write reached Postgres");
    let stored: HashSet<i64> = sqlx::query_scalar::<_, i64>(&orders_sql)
        .fetch_all(&durable.db().read)
        .await
        .expect("orders")
        .into_iter()
        .collect();
    let acked: HashSet<i64> =
        holds.iter().map(|o| o.parse::<rush_engine::domain::Id>().expect("order id").raw()).collect();
    assert_eq!(stored, acked, "the stored orders are exactly the acknowledged holds");
    let mut granted: HashMap<&str, i64> = HashMap::new();
    for (user, amount) in &grabs {
        granted.insert(user, *amount);
        let b = durable.balance(user).await.expect("balance");
        assert_eq!(b.available.get(), *amount, "{user}'s wallet");
    }
    let sum: i64 = granted.values().sum();
    let s = durable.balance("sender").await.expect("sender");
    assert_eq!((s.available.get(), s.frozen.get()), (0, total - sum));
    let audit = durable.audit().await.expect("audit");
    assert_eq!(audit.sum_all_accounts, 0, "money created or destroyed");
    assert!(audit.lopsided_transfers.is_empty(), "{:?}", audit.lopsided_transfers);
    let metrics_url = relay_banner["metrics_url"].as_str().expect("metrics_url in the relay banner");
    let text = reqwest::get(metrics_url).await.expect("relay /metrics").text().await.expect("text");
    let relayed = text
        .lines()
        .find(|l| l.starts_with("rush_worker_events_total{worker=\"relay\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(relayed > 0.0, "the relay's metrics show nothing relayed: {text}");
    drop(procs);
}

/// A private tansu broker this test may stop and resume.
struct Broker {
    child: Child,
    addr: String,
}

impl Broker {
    fn start() -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let addr = format!("127.0.0.1:{port}");
        let bin = std::env::var("RUSH_TEST_TANSU").unwrap_or_else(|_| "tansu".into());
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &format!("tcp://{addr}"), "--advertised-listener-url"])
            .arg(format!("tcp://{addr}"))
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin} (RUSH_TEST_TANSU; .ci/run installs it): {e}"));
        for _ in 0..100 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child, addr }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().expect("kill");
        assert!(ok.success());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.signal("-CONT");
        kill9(&mut self.child);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mode_kafka_stopped_hot_path_serves_outbox_bounded_then_drains() {
    let broker = Broker::start();
    let brokers = broker.addr.clone();
    let app = spawn_in(Mode::Full, move |c| {
        c.kafka.brokers = Some(brokers);
        c.kafka.delivery_timeout_ms = 1_000;
        c.kafka.request_timeout_ms = 1_000;
        c.outbox.len_max = 120;
        c.outbox.ready_pct = 50;
        c.outbox.check_every_ms = 20;
    })
    .await;
    let total = 300_000;
    app.credit("sender", total).await;
    let sender = app.token("sender", "user").await;
    let (s, v) =
        app.post("/v1/packets", Some(&sender), json!({"kind": "normal", "total_amount": total, "count": 300})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let packet = v["packet_id"].as_str().expect("id").to_string();
    app.settle().await;
    assert_eq!(app.get("/readyz", None).await.0, StatusCode::OK);

    // Kafka stops answering (the process is frozen, its sockets stay open).
    broker.signal("-STOP");
    let mut granted = Vec::new();
    let mut full = 0;
    for i in 0..200 {
        let t = app.token(&format!("g{i}"), "user").await;
        let (s, v) = app.post(&format!("/v1/packets/{packet}/grab"), Some(&t), json!({})).await;
        match s {
            StatusCode::OK => granted.push((t, v["amount"].as_i64().expect("amount"))),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(code(&v), "outbox_full", "{v}");
                full += 1;
            }
            other => panic!("{other}: {v}"),
        }
        if granted.len() == 70 {
            // Past half the bound: not ready, still serving.
            assert!(
                eventually(5, || async {
                    let (s, v) = app.get("/readyz", None).await;
                    s == StatusCode::SERVICE_UNAVAILABLE && v["failing"] == json!(["outbox"])
                })
                .await,
                "readiness did not fail near the outbox bound"
            );
        }
        if full == 0 && granted.len() >= 121 {
            // The monitor samples every 20 ms; give it the time to see the bound.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(granted.len() >= 70, "the hot path kept serving while Kafka was down: {} grants", granted.len());
    assert!(full > 0, "writes were refused once the outbox was full");
    let (_, metrics) = app.get("/metrics", None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    let line = metrics.lines().find(|l| l.starts_with("rush_outbox_lag_events ")).expect("outbox metric").to_string();
    let len: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("value");
    assert!(len >= 120.0, "the outbox metric shows the backlog: {line}");

    // Kafka returns: the outbox drains, every grant lands once, ready again.
    broker.signal("-CONT");
    app.settle().await;
    assert!(eventually(10, || async { app.get("/readyz", None).await.0 == StatusCode::OK }).await);
    for (t, amount) in &granted {
        assert_eq!(app.wallet(t).await.0, *amount);
    }
    let sum: i64 = granted.iter().map(|(_, a)| a).sum();
    assert_eq!(app.wallet(&sender).await, (0, total - sum));
    app.assert_ledger_balances().await;
    let (s, v) =
        app.post(&format!("/v1/packets/{packet}/grab"), Some(&app.token("late", "user").await), json!({})).await;
    assert_eq!(s, StatusCode::OK, "writes accepted again: {v}");
}

/// A missing dependency at start is an error naming it, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_postgres_or_kafka_at_start_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    cfg.postgres.url = Some("postgres://rush:secret@127.0.0.1:1/rush".into());
    cfg.postgres.connect_timeout_ms = 2_000;
    let err = rush_engine::Node::open(cfg, rush_engine::telemetry::Metrics::new()).await.err().expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("Postgres at postgres://rush:***@127.0.0.1:1/rush is unreachable"), "{msg}");
    assert!(!msg.contains("secret"), "the password stays out of messages: {msg}");

    let mut cfg = test_config(dir.path());
    cfg.redis.url = Some(test_redis_url());
    cfg.redis.key_prefix = format!("rushtest-nokafka-{}", std::process::id());
    cfg.kafka.brokers = Some("127.0.0.1:1".into());
    cfg.kafka.request_timeout_ms = 1_000;
    let err = rush_engine::Node::open(cfg, rush_engine::telemetry::Metrics::new()).await.err().expect("refused");
    assert!(err.to_string().contains("Kafka at 127.0.0.1:1 is unreachable"), "{err}");
}
