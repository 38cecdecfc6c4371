//! SIGTERM under load: the real binary stops by the protocol in
//! `gateway/src/serve.rs`. Every acknowledged hold and grab is in the
//! durable store when the process has exited; every other request got an
//! answer (a clean 503 `shutting_down`, or sold out) or was refused at
//! connect; readiness failed while requests were still served; the process
//! exited 0 within `shutdown.timeout_ms`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rush_engine::domain::Id;
use rush_engine::durable::{Durable, Pools};
use serde_json::{json, Value};

use super::helpers::{spawn_rush, Client};

const SECRET: &str = "shutdown-test-secret-0123456789";
const TIMEOUT_MS: u64 = 8_000;
const DRAIN_DELAY_MS: u64 = 400;
const CLIENTS: usize = 32;

fn token(user: &str, role: &str) -> String {
    super::helpers::signed_token(SECRET, user, role)
}

/// What one request came to.
#[derive(Debug)]
enum Outcome {
    Held {
        user: String,
        order: String,
    },
    Grabbed {
        user: String,
        amount: i64,
    },
    /// Answered without effect: sold out, packet empty.
    NoStock,
    /// 503 `shutting_down` (or `overloaded`): nothing done, retry elsewhere.
    Refused {
        code: String,
        closes: bool,
    },
    /// The connection was refused: the listener was closed.
    ConnectRefused,
    /// Anything else: a failure of the protocol.
    Broken(String),
}

async fn call(
    http: &reqwest::Client,
    url: String,
    token: &str,
    body: Value,
) -> Result<(StatusCode, bool, Value), reqwest::Error> {
    let resp = http.post(url).bearer_auth(token).json(&body).send().await?;
    let status = resp.status();
    let closes = resp.headers().get("connection").and_then(|v| v.to_str().ok()) == Some("close");
    let v = resp.json().await.unwrap_or(Value::Null);
    Ok((status, closes, v))
}

fn classify(kind: &str, user: String, r: Result<(StatusCode, bool, Value), reqwest::Error>) -> Outcome {
    let (s, closes, v) = match r {
        Ok(x) => x,
        Err(e) if e.is_connect() => return Outcome::ConnectRefused,
        Err(e) => return Outcome::Broken(format!("{kind}: transport error {e:?}")),
    };
    let code = v["error"]["code"].as_str().unwrap_or("").to_string();
    match (kind, s.as_u16(), code.as_str()) {
        ("hold", 201, _) => match v["order_id"].as_str() {
            Some(order) => Outcome::Held { user, order: order.to_string() },
            None => Outcome::Broken(format!("hold 201 without order id: {v}")),
        },
        ("grab", 200, _) => match v["amount"].as_i64() {
            Some(amount) => Outcome::Grabbed { user, amount },
            None => Outcome::Broken(format!("grab 200 without amount: {v}")),
        },
        ("hold", 409, "sold_out") | ("grab", 410, "packet_empty") => Outcome::NoStock,
        (_, 503, "shutting_down" | "overloaded") => Outcome::Refused { code, closes },
        _ => Outcome::Broken(format!("{kind}: {s} {v}")),
    }
}

struct Setup {
    base: String,
    event: String,
    packet: String,
}

async fn setup(base: &str) -> Setup {
    let c = Client::new(base);
    let admin = token("ops", "admin");
    let event = c.create_event(&admin, 50, 100).await;
    let total = 10_000_000;
    let (s, v) =
        c.call("POST", "/v1/admin/wallet/sender/credit", &admin, json!({"amount": total, "reason": "t"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = c
        .call(
            "POST",
            "/v1/packets",
            &token("sender", "user"),
            json!({"kind": "lucky", "total_amount": total, "count": 10_000}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let packet = v["packet_id"].as_str().expect("packet id").to_string();
    Setup { base: base.to_string(), event, packet }
}

/// One client: holds and grabs, a fresh user each, until it is told to go
/// elsewhere (503 `shutting_down`) or cannot connect.
async fn client(i: usize, s: Arc<Setup>, out: Arc<Mutex<Vec<(Instant, Outcome)>>>) {
    let http = reqwest::Client::new();
    for n in 0.. {
        let user = format!("c{i}-{n}");
        let t = token(&user, "user");
        let (kind, r) = if n % 2 == 0 {
            let body = json!({"event_id": s.event, "category": "std", "quantity": 1});
            ("hold", call(&http, format!("{}/v1/orders", s.base), &t, body).await)
        } else {
            ("grab", call(&http, format!("{}/v1/packets/{}/grab", s.base, s.packet), &t, json!({})).await)
        };
        let outcome = classify(kind, user, r);
        let stop = matches!(&outcome, Outcome::ConnectRefused | Outcome::Broken(_) | Outcome::Refused { .. })
            && !matches!(&outcome, Outcome::Refused { code, .. } if code == "overloaded");
        out.lock().unwrap_or_else(|p| p.into_inner()).push((Instant::now(), outcome));
        if stop {
            return;
        }
    }
}

/// Where the stopped node's writes must be found.
enum Mode {
    Embedded,
    /// Redis hot store with this key prefix; durable store SQLite.
    Redis(String),
    /// Redis + Kafka (relay in serve) + Postgres, applied by a `rush
    /// worker` that serves its metrics.
    Full {
        prefix: String,
        pg_url: String,
    },
}

fn envs(dir: &std::path::Path, mode: &Mode) -> Vec<(String, String)> {
    let mut envs = vec![
        ("RUSH__HTTP__ADDR".to_string(), "127.0.0.1:0".to_string()),
        ("RUSH__DATA_DIR".to_string(), dir.display().to_string()),
        ("RUSH__AUTH__JWT_SECRET".to_string(), SECRET.to_string()),
        ("RUSH__SHUTDOWN__TIMEOUT_MS".to_string(), TIMEOUT_MS.to_string()),
        ("RUSH__SHUTDOWN__DRAIN_DELAY_MS".to_string(), DRAIN_DELAY_MS.to_string()),
        ("RUSH__TELEMETRY__METRICS_ADDR".to_string(), "127.0.0.1:0".to_string()),
    ];
    let (Mode::Redis(prefix) | Mode::Full { prefix, .. }) = mode else { return envs };
    envs.push(("RUSH__REDIS__URL".to_string(), super::helpers::test_redis_url()));
    envs.push(("RUSH__REDIS__KEY_PREFIX".to_string(), prefix.clone()));
    if let Mode::Full { prefix, pg_url } = mode {
        for (k, v) in [
            ("RUSH__KAFKA__BROKERS", rush_engine::testkit::test_kafka_brokers()),
            ("RUSH__KAFKA__TOPIC_PREFIX", prefix.clone()),
            ("RUSH__KAFKA__GROUP", format!("{prefix}-persist")),
            ("RUSH__KAFKA__PARTITIONS", "4".into()),
            ("RUSH__POSTGRES__URL", pg_url.clone()),
        ] {
            envs.push((k.to_string(), v));
        }
    }
    envs
}

/// Entries left in the 128 outbox streams (the relay deletes what Kafka has).
fn outbox_len(prefix: &str) -> usize {
    let mut conn =
        redis::Client::open(super::helpers::test_redis_url().as_str()).and_then(|c| c.get_connection()).expect("redis");
    (0..128)
        .map(|p| redis::cmd("XLEN").arg(format!("{prefix}:{{p{p}}}:outbox")).query::<usize>(&mut conn).unwrap_or(0))
        .sum()
}

async fn sigterm_under_load(mode: Mode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let envs = envs(dir.path(), &mode);
    let mut worker = match &mode {
        Mode::Full { .. } => Some(spawn_rush("worker", &envs)),
        _ => None,
    };
    let (mut child, banner) = spawn_rush("serve", &envs);
    let base = banner["url"].as_str().expect("url").to_string();
    let s = Arc::new(setup(&base).await);

    let out = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..CLIENTS).map(|i| tokio::spawn(client(i, s.clone(), out.clone()))).collect();
    // Load, then SIGTERM while it goes on.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let status =
        std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill -TERM");
    assert!(status.success());
    let signalled = Instant::now();

    // Readiness fails at once, while requests are still served.
    let unready_at = Arc::new(Mutex::new(None));
    let probe = {
        let (base, unready_at) = (base.clone(), unready_at.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while signalled.elapsed() < Duration::from_millis(DRAIN_DELAY_MS) {
                if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
                    if r.status() == StatusCode::SERVICE_UNAVAILABLE {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        assert!(v["failing"].to_string().contains("shutting_down"), "{v}");
                        *unready_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let code = tokio::task::spawn_blocking(move || child.wait().expect("wait")).await.expect("join");
    let took = signalled.elapsed();
    assert!(code.success(), "rush exited with {code:?}");
    assert!(took < Duration::from_millis(TIMEOUT_MS + 1_500), "took {took:?}, budget {TIMEOUT_MS} ms");
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t).await.expect("client finished").expect("client task");
    }
    probe.await.expect("probe");
    let unready_at =
        unready_at.lock().unwrap_or_else(|p| p.into_inner()).expect("readiness never failed after SIGTERM");

    let outcomes = std::mem::take(&mut *out.lock().unwrap_or_else(|p| p.into_inner()));
    let broken: Vec<&String> =
        outcomes.iter().filter_map(|(_, o)| if let Outcome::Broken(e) = o { Some(e) } else { None }).collect();
    assert!(broken.is_empty(), "requests neither finished nor got a clean 503: {broken:?}");
    let mut holds = Vec::new();
    let mut grabs = Vec::new();
    let (mut refused, mut acked_while_unready) = (0, 0);
    for (at, o) in &outcomes {
        match o {
            Outcome::Held { user, order } => holds.push((user.clone(), order.clone())),
            Outcome::Grabbed { user, amount } => grabs.push((user.clone(), *amount)),
            Outcome::Refused { code, closes } if code == "shutting_down" => {
                assert!(closes, "a shutting_down answer must close the connection");
                refused += 1;
            }
            _ => {}
        }
        if matches!(o, Outcome::Held { .. } | Outcome::Grabbed { .. }) && *at > unready_at {
            acked_while_unready += 1;
        }
    }
    let connect_refused = outcomes.iter().filter(|(_, o)| matches!(o, Outcome::ConnectRefused)).count();
    eprintln!(
        "holds {} grabs {} refused {refused} connect_refused {connect_refused} acked_while_unready {acked_while_unready} took {took:?}",
        holds.len(),
        grabs.len()
    );
    assert!(holds.len() > 50 && grabs.len() > 50, "too little load: {} holds, {} grabs", holds.len(), grabs.len());
    assert!(refused > 0, "no client was told the node is shutting down");
    assert!(acked_while_unready > 0, "nothing was served after readiness failed (drain delay)");

    // The process is gone: what it acknowledged is in the durable store
    // (the persist worker flushed the outbox before exiting; in full mode
    // the relay flushed it to Kafka, and the worker applies it).
    let durable = match &mode {
        Mode::Full { prefix, pg_url } => {
            assert_eq!(outbox_len(prefix), 0, "the relay left entries in the outbox");
            let pools = Pools::postgres(pg_url, &rush_engine::config::PostgresConfig::default()).await.expect("pg");
            let durable = Durable::new(pools);
            let last = holds.last().map(|(_, o)| o.parse::<Id>().expect("id"));
            let d = durable.clone();
            let applied = super::helpers::eventually(30, || {
                let d = d.clone();
                async move {
                    match last {
                        Some(id) => matches!(d.order(id).await, Ok(Some(_))),
                        None => true,
                    }
                }
            })
            .await;
            assert!(applied, "the worker did not apply the relayed events");
            durable
        }
        _ => {
            let pools = Pools::sqlite(dir.path(), &rush_engine::config::SqliteConfig::default()).await.expect("sqlite");
            Durable::new(pools)
        }
    };
    for (user, order) in &holds {
        let id: Id = order.parse().expect("order id");
        let rec = durable
            .order(id)
            .await
            .expect("read order")
            .unwrap_or_else(|| panic!("acknowledged order {order} not durable"));
        assert_eq!(&rec.user_id, user);
        assert_eq!(rec.status.as_str(), "pending_payment");
    }
    for (user, amount) in &grabs {
        let b = durable.balance(user).await.expect("balance");
        assert_eq!(b.available.get(), *amount, "acknowledged grab of {user} not durable");
    }
    if let Some((mut w, banner)) = worker.take() {
        // The worker serves its metrics, and stops on SIGTERM too.
        let url = banner["metrics_url"].as_str().expect("metrics_url in the worker banner").to_string();
        let text = reqwest::get(&url).await.expect("worker /metrics").text().await.expect("text");
        assert!(text.contains("rush_worker_events_total"), "{text}");
        let ready = reqwest::get(url.replace("/metrics", "/readyz")).await.expect("worker /readyz");
        assert_eq!(ready.status(), StatusCode::OK);
        let st = std::process::Command::new("kill").args(["-TERM", &w.id().to_string()]).status().expect("kill");
        assert!(st.success());
        let t = Instant::now();
        let code = tokio::task::spawn_blocking(move || w.wait().expect("wait")).await.expect("join");
        assert!(code.success() && t.elapsed() < Duration::from_millis(TIMEOUT_MS + 1_500), "{code:?}");
    }
    if let Mode::Redis(prefix) | Mode::Full { prefix, .. } = &mode {
        super::helpers::delete_prefix(&super::helpers::test_redis_url(), prefix);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_keeps_every_acknowledged_write_and_answers_the_rest() {
    sigterm_under_load(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_mode_sigterm_under_load_keeps_every_acknowledged_write() {
    sigterm_under_load(Mode::Redis(format!("rushtest-stop-{}", std::process::id()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_mode_sigterm_under_load_flushes_the_relay_and_the_worker_applies_everything() {
    let pg = rush_engine::testkit::ScratchDb::create().await.expect("Postgres (RUSH_TEST_POSTGRES_URL)");
    let prefix = format!("rushtest-stopfull-{}", std::process::id());
    sigterm_under_load(Mode::Full { prefix, pg_url: pg.url.clone() }).await;
}
