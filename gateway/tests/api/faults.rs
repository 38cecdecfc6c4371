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
    let app = spawn_in(Mode::Redis, |c| {
        c.redis.url = Some(format!("redis://127.0.0.1:{port}"));
        c.redis.timeout_ms = 300;
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
