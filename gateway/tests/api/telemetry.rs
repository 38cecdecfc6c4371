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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_logs_are_json_with_span_ids_and_traces_reach_the_otlp_collector() {
    let (otlp, bodies) = collector().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rush"))
        .arg("serve")
        .env("RUSH__PROFILE", "production")
        .env("RUSH__AUTH__JWT_SECRET", SECRET)
        .env("RUSH__PAYMENTS__WECHAT_SECRET", "wechat-test-secret-0123456789")
        .env("RUSH__PAYMENTS__ALIPAY_SECRET", "alipay-test-secret-0123456789")
        .env("RUSH__PAYMENTS__ECARD_SECRET", "ecard-test-secret-0123456789")
        .env("RUSH__HTTP__ADDR", "127.0.0.1:0")
        .env("RUSH__DATA_DIR", dir.path())
        .env("RUSH__SHUTDOWN__TIMEOUT_MS", "3000")
        .env("RUST_LOG", "info,rush_gateway=debug")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rush");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("banner");
    let banner: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("no banner: {line:?}"));
    let stderr = child.stderr.take().expect("stderr");
    let logs = std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());

    let c = Client::new(banner["url"].as_str().expect("url"));
    let event = c.create_event(&token("ops", "admin"), 2, 2).await;
    let (s, v) = c
        .call(
            "POST",
            "/v1/orders",
            &token("alice", "user"),
            json!({"event_id": event, "category": "std", "quantity": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let order = v["order_id"].as_str().expect("order").to_string();
    // A development route is off in production.
    let (s, _) = c.call("POST", "/v1/auth/dev-token", "", json!({"user_id": "x", "role": "user"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The trace of the hold reaches the collector (batched every 100 ms).
    let mut exported = false;
    for _ in 0..100 {
        let got = bodies.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let hay: Vec<u8> = got.iter().filter(|(p, _)| p == "/v1/traces").flat_map(|(_, b)| b.clone()).collect();
        let has = |needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        if has(order.as_bytes()) && has(b"order_id") && has(b"/v1/orders") && has(b"rush-serve") {
            exported = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(exported, "no trace with the order's span reached the collector");

    let st = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(st.success());
    assert!(child.wait().expect("wait").success());
    let logs = logs.join().expect("logs");
    let lines: Vec<Value> =
        logs.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"))).collect();
    let hold = lines
        .iter()
        .find(|v| v["span"]["route"] == "/v1/orders" && v["span"]["method"] == "POST")
        .unwrap_or_else(|| panic!("no log line of the hold: {logs:?}"));
    assert_eq!(hold["span"]["order_id"], order.as_str(), "{hold}");
    assert_eq!(hold["span"]["event_id"], event.as_str(), "{hold}");
    assert_eq!(hold["span"]["status"], 201, "{hold}");
    assert_eq!(hold["level"], "DEBUG");
    assert!(lines.iter().any(|v| v["message"] == "rush stopped" && v["clean"] == true), "{logs:?}");
}
