//! Redis goes away and comes back: requests fail fast and cleanly (503
//! `store_unavailable`, no hang, no panic), readiness reports it, nothing
//! acknowledged is lost, and service resumes without restarting rush.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use super::helpers::*;

/// A private redis-server with an append-only file, so a killed server
/// comes back with its data.
fn redis_server(port: u16, dir: &std::path::Path) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
        .args(["--appendfsync", "always", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (see .ci/run)")
}

fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("redis-server did not listen on {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_503_fast_and_service_resumes_when_it_is_back() {
    let port = TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let data = tempfile::tempdir().expect("dir");
    let mut server = redis_server(port, data.path());
    wait_for_port(port);
    // The server fsyncs every write, and rush is told so: a restart gives
    // Redis a new replication id but loses nothing, so no rebuild follows.
    let app = spawn_in(Mode::Redis, |c| {
        c.redis.url = Some(format!("redis://127.0.0.1:{port}"));
        c.redis.timeout_ms = 300;
        c.redis.durability = rush_engine::config::Durability::Fsync;
    })
    .await;
    let event = app.event(1, 4, json!({})).await;
    let u = app.token("f", "user").await;
    let hold = |seat: &str| json!({"event_id": event, "seats": [seat]});
    let (s, _) = app.post("/v1/orders", Some(&u), hold("A-1-1")).await;
    assert_eq!(s, StatusCode::CREATED);

    server.kill().expect("kill");
    server.wait().expect("wait");
    for seat in ["A-1-2", "A-1-3"] {
        let started = Instant::now();
        let (s, v) = app.post("/v1/orders", Some(&u), hold(seat)).await;
        assert_eq!((s, code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"), "{v}");
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    }
    let (s, _) = app.get("/readyz", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);

    let mut server = redis_server(port, data.path());
    wait_for_port(port);
    let resumed =
        eventually(10, || async { app.post("/v1/orders", Some(&u), hold("A-1-2")).await.0 == StatusCode::CREATED })
            .await;
    assert!(resumed, "service did not resume");
    let (s, v) = app.post("/v1/orders", Some(&u), hold("A-1-1")).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "seat_unavailable"), "the acknowledged hold survived");
    let (s, _) = app.get("/readyz", None).await;
    assert_eq!(s, StatusCode::OK);
    app.settle().await;
    let (_, v) = app.get("/v1/orders?limit=10", Some(&u)).await;
    assert_eq!(v["orders"].as_array().map(Vec::len), Some(2), "{v}");
    server.kill().expect("kill");
    let _ = server.wait();
}

/// Issue 15, the loss scenario: Redis restarts empty (it keeps nothing on
/// disk). rush finds out (no write lands on the empty server: every script
/// checks its partition's marker), answers 503 `hot_store_recovering` and
/// `/readyz` `hot_store_lost` while it rebuilds, then serves again without
/// a restart: the old hold still holds its seat, the old grab is still
/// the user's, and what is acknowledged after the loss reaches the durable
/// store (the consumer groups are created again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_is_found_rebuilt_from_the_durable_store_and_serves_again() {
    let port = TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let volatile = |port: u16| {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (see .ci/run)")
    };
    let mut server = volatile(port);
    wait_for_port(port);
    let app = spawn_in(Mode::Redis, |c| {
        c.redis.url = Some(format!("redis://127.0.0.1:{port}"));
        c.redis.timeout_ms = 300;
        c.redis.marker_check_ms = 100;
        c.actors.idle_ms = 600_000;
    })
    .await;
    let event = app.event(1, 4, json!({})).await;
    let u = app.token("f", "user").await;
    let hold = |seat: &str| json!({"event_id": event, "seats": [seat]});
    let (s, held) = app.post("/v1/orders", Some(&u), hold("A-1-1")).await;
    assert_eq!(s, StatusCode::CREATED, "{held}");
    app.credit("sender", 1_000).await;
    let sender = app.token("sender", "user").await;
    let (s, p) =
        app.post("/v1/packets", Some(&sender), json!({"kind": "normal", "total_amount": 1000, "count": 4})).await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let packet = p["packet_id"].as_str().expect("id").to_string();
    let g1 = app.token("g1", "user").await;
    let (s, first) = app.post(&format!("/v1/packets/{packet}/grab"), Some(&g1), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    app.settle().await;

    server.kill().expect("kill");
    server.wait().expect("wait");
    let mut server = volatile(port);
    wait_for_port(port);
    // Never acknowledged on the empty server: refused until rebuilt, or
    // (if the rebuild was quicker than this request) taken by the hold
    // the rebuild put back.
    let (s, v) = app.post("/v1/orders", Some(&u), hold("A-1-1")).await;
    assert!(
        (s == StatusCode::SERVICE_UNAVAILABLE && ["hot_store_recovering", "store_unavailable"].contains(&code(&v)))
            || (s == StatusCode::CONFLICT && code(&v) == "seat_unavailable"),
        "{s} {v}"
    );
    let back = eventually(15, || async {
        app.post("/v1/orders", Some(&u), hold("A-1-1")).await.0 != StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(back, "rush did not rebuild Redis");
    let (s, v) = app.post("/v1/orders", Some(&u), hold("A-1-1")).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "seat_unavailable"), "the hold made before the loss: {v}");
    let (s, v) = app.get("/readyz", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app.get(&format!("/v1/orders/{}", held["order_id"].as_str().expect("id")), Some(&u)).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("pending_payment")), "{v}");
    let (s, v) = app.post(&format!("/v1/packets/{packet}/grab"), Some(&g1), json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "already_grabbed"), "{v}");
    let g2 = app.token("g2", "user").await;
    let (s, v) = app.post(&format!("/v1/packets/{packet}/grab"), Some(&g2), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Acknowledged after the loss: reaches the durable store.
    let (s, after) = app.post("/v1/orders", Some(&u), hold("A-1-2")).await;
    assert_eq!(s, StatusCode::CREATED, "{after}");
    let fresh = app.event(1, 2, json!({})).await;
    let (s, _) = app.post("/v1/orders", Some(&u), json!({"event_id": fresh, "seats": ["A-1-1"]})).await;
    assert_eq!(s, StatusCode::CREATED);
    app.settle().await;
    let (_, v) = app.get("/v1/orders?limit=10", Some(&u)).await;
    assert_eq!(v["orders"].as_array().map(Vec::len), Some(3), "every acknowledged hold is in the durable store: {v}");
    assert_eq!(app.wallet(&g2).await.0, 250, "the post-loss grab reached the ledger");
    app.assert_ledger_balances().await;
    assert_eq!(app.engine.metrics.hot_store_losses.get(), 1, "the loss was counted once");
    assert_eq!(app.engine.metrics.hot_store_lost.get(), 0);
    server.kill().expect("kill");
    let _ = server.wait();
}
