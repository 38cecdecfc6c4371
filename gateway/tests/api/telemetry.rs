//! Production logs are JSON lines whose spans carry the ids and status of
//! the request; traces go to an OTLP collector named by the environment.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::helpers::Client;

const SECRET: &str = "telemetry-test-secret-0123456789";

fn token(user: &str, role: &str) -> String {
    super::helpers::signed_token(SECRET, user, role)
}

/// A stand-in OTLP/HTTP collector: keeps the body of every POST.
async fn collector() -> (String, Arc<Mutex<Vec<(String, Vec<u8>)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    keep.lock().unwrap_or_else(|p| p.into_inner()).push((path, buf[end + 4..end + 4 + len].to_vec()));
                    buf.drain(..end + 4 + len);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if sock.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, got)
}

/// A production rush exporting traces to `otlp`, with `extra` env; its
/// stderr lines are collected until it exits.
struct Node {
    child: std::process::Child,
    base: String,
    logs: std::thread::JoinHandle<Vec<String>>,
    _dir: tempfile::TempDir,
}

fn start(otlp: &str, extra: &[(&str, &str)]) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rush"));
    cmd.arg("serve")
        .env("RUSH__PROFILE", "production")
        .env("RUSH__AUTH__JWT_SECRET", SECRET)
        .env("RUSH__PAYMENTS__WECHAT_SECRET", "wechat-test-secret-0123456789")
        .env("RUSH__PAYMENTS__ALIPAY_SECRET", "alipay-test-secret-0123456789")
        .env("RUSH__PAYMENTS__ECARD_SECRET", "ecard-test-secret-0123456789")
        .env("RUSH__HTTP__ADDR", "127.0.0.1:0")
        .env("RUSH__DATA_DIR", dir.path())
        .env("RUSH__SHUTDOWN__TIMEOUT_MS", "3000")
        .env("RUST_LOG", "info,rush_gateway=debug")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn rush");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("banner");
    let banner: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("no banner: {line:?}"));
    let stderr = child.stderr.take().expect("stderr");
    let logs = std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
    Node { child, base: banner["url"].as_str().expect("url").to_string(), logs, _dir: dir }
}

impl Node {
    /// Creates an event and holds a seat; returns (event id, order id).
    async fn hold(&self) -> (String, String) {
        let c = Client::new(&self.base);
        let event = c.create_event(&token("ops", "admin"), 2, 2).await;
        let body = json!({"event_id": event, "category": "std", "quantity": 1});
        let (s, v) = c.call("POST", "/v1/orders", &token("alice", "user"), body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        (event, v["order_id"].as_str().expect("order").to_string())
    }

    /// SIGTERM; waits for exit 0; returns the log lines, each parsed as JSON.
    fn stop(mut self) -> Vec<Value> {
        let st = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(st.success());
        assert!(self.child.wait().expect("wait").success());
        let logs = self.logs.join().expect("logs");
        logs.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"))).collect()
    }
}

/// Whether a trace export mentioning every needle has arrived, waiting up to `ms`.
async fn exported(bodies: &Mutex<Vec<(String, Vec<u8>)>>, needles: &[&[u8]], ms: u64) -> bool {
    for _ in 0..ms / 50 {
        let got = bodies.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let hay: Vec<u8> = got.iter().filter(|(p, _)| p == "/v1/traces").flat_map(|(_, b)| b.clone()).collect();
        if needles.iter().all(|n| hay.windows(n.len()).any(|w| w == *n)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The log line of the hold request (its span's fields under `span`).
fn hold_line(lines: &[Value]) -> &Value {
    lines
        .iter()
        .find(|v| v["span"]["route"] == "/v1/orders" && v["span"]["method"] == "POST")
        .unwrap_or_else(|| panic!("no log line of the hold: {lines:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_logs_are_json_with_span_ids_and_traces_reach_the_otlp_collector() {
    let (otlp, bodies) = collector().await;
    let node = start(&otlp, &[]);
    let (event, order) = node.hold().await;
    // A development route is off in production.
    let c = Client::new(&node.base);
    let (s, _) = c.call("POST", "/v1/auth/dev-token", "", json!({"user_id": "x", "role": "user"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The trace of the hold reaches the collector (batched every 100 ms).
    let needles: [&[u8]; 4] = [order.as_bytes(), b"order_id", b"/v1/orders", b"rush-serve"];
    assert!(exported(&bodies, &needles, 5_000).await, "no trace with the order's span reached the collector");

    let lines = node.stop();
    let hold = hold_line(&lines);
    assert_eq!(hold["span"]["order_id"], order.as_str(), "{hold}");
    assert_eq!(hold["span"]["event_id"], event.as_str(), "{hold}");
    assert_eq!(hold["span"]["status"], 201, "{hold}");
    assert_eq!(hold["level"], "DEBUG");
    assert!(lines.iter().any(|v| v["message"] == "rush stopped" && v["clean"] == true), "{lines:?}");
}

/// A request the sampler drops is not exported, yet its span still
/// reaches the logs when they ask for debug.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_requests_are_not_exported_but_still_logged_at_debug() {
    let (otlp, bodies) = collector().await;
    let node = start(&otlp, &[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0")]);
    let (_, order) = node.hold().await;
    // Give the exporter the time it took above (and more).
    assert!(!exported(&bodies, &[order.as_bytes()], 1_000).await, "an unsampled request was exported");
    let lines = node.stop();
    assert!(!exported(&bodies, &[order.as_bytes()], 100).await, "an unsampled request was exported at exit");
    assert_eq!(hold_line(&lines)["span"]["order_id"], order.as_str());
}
