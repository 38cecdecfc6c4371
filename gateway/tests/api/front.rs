//! The front door (issue 19) over HTTP, embedded and Redis mode: the
//! waiting room (random order at the opening, FIFO after, admission tokens
//! bound to user and event and expiring, holds refused without one), rate
//! limits (429 with headers, recovery), live updates over SSE (snapshot,
//! coalesced changes, subscriber bound). Two nodes on one Redis: the
//! shared queue, cross-node streams and limits.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::helpers::*;

fn in_ms(ms: i64) -> String {
    (Utc::now() + chrono::Duration::milliseconds(ms)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An event opening in `opens_in_ms` with a waiting room.
async fn queued_event(app: &TestApp, opens_in_ms: i64, room: Value) -> String {
    app.event(4, 10, json!({"on_sale_at": in_ms(opens_in_ms), "waiting_room": room})).await
}

async fn join(app: &TestApp, tok: &str, event: &str) -> (StatusCode, Value) {
    app.post(&format!("/v1/events/{event}/queue"), Some(tok), json!({})).await
}

async fn me(app: &TestApp, tok: &str, event: &str) -> Value {
    let (s, v) = app.get(&format!("/v1/events/{event}/queue/me"), Some(tok)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn hold_with(app: &TestApp, tok: &str, event: &str, admission: Option<&str>) -> (StatusCode, Value) {
    let mut req = app
        .client
        .post(format!("{}/v1/orders", app.base))
        .bearer_auth(tok)
        .json(&json!({"event_id": event, "category": "std", "quantity": 1}));
    if let Some(a) = admission {
        req = req.header("Rush-Admission", a);
    }
    let resp = req.send().await.expect("send");
    let s = resp.status();
    (s, resp.json().await.unwrap_or(Value::Null))
}

/// Polls every user until each is admitted: (user, admission_no, token).
async fn admitted_all(app: &TestApp, toks: &[(String, String)], event: &str) -> Vec<(String, u64, String)> {
    let mut out: HashMap<String, (u64, String)> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < toks.len() {
        assert!(tokio::time::Instant::now() < deadline, "only {} of {} admitted", out.len(), toks.len());
        for (user, tok) in toks {
            if out.contains_key(user) {
                continue;
            }
            let v = me(app, tok, event).await;
            if v["status"] == "admitted" {
                let no = v["admission_no"].as_u64().expect("admission_no");
                out.insert(user.clone(), (no, v["admission_token"].as_str().expect("token").to_string()));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut v: Vec<_> = out.into_iter().map(|(u, (n, t))| (u, n, t)).collect();
    v.sort_by_key(|x| x.1);
    v
}

async fn waiting_room(app: &TestApp) {
    let room = json!({"admit_per_s": 20, "pre_queue_s": 60, "admission_ttl_s": 2});
    let event = queued_event(app, 1_500, room.clone()).await;
    let (s, v) = app.get(&format!("/v1/events/{event}"), Some(&app.admin)).await;
    assert_eq!((s, v["waiting_room"]["admit_per_s"].as_u64()), (StatusCode::OK, Some(20)), "{v}");
    // Bad settings are 400; joining a room that does not open yet is 409.
    for bad in
        [json!({"admit_per_s": 0}), json!({"admit_per_s": 1, "active_max": 0}), json!({"admit_per_s": 1, "x": 1})]
    {
        let body = json!({"name": "x", "venue": "v", "starts_at": "2030-01-01T00:00:00Z",
            "categories": [{"id": "std", "name": "S", "price": 1}],
            "layout": {"sections": [{"name": "A", "rows": 1, "cols": 1, "category": "std"}]}, "waiting_room": bad});
        let (s, v) = app.post("/v1/admin/events", Some(&app.admin), body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    }
    let later = queued_event(app, 3_600_000, json!({"admit_per_s": 1, "pre_queue_s": 60})).await;
    let u0 = app.token("early-bird", "user").await;
    let (s, v) = join(app, &u0, &later).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "queue_not_open"), "{v}");
    assert!(v["error"]["opens_at"].is_string(), "{v}");
    let plain = app.event(1, 2, json!({})).await;
    let (s, v) = join(app, &u0, &plain).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "no_waiting_room"), "{v}");

    // Twelve join before the opening: waiting, no position yet; joining
    // again is the same ticket.
    let mut toks = vec![];
    for i in 0..12 {
        let user = format!("pre{i}");
        toks.push((user.clone(), app.token(&user, "user").await));
    }
    let mut tickets = HashMap::new();
    for (user, tok) in &toks {
        let (s, v) = join(app, tok, &event).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!((v["status"].as_str(), v["position"].as_u64()), (Some("waiting"), None), "{v}");
        assert!(v["eta_s"].as_u64().is_some_and(|e| e <= 2), "{v}");
        tickets.insert(user.clone(), v["ticket_id"].clone());
    }
    let (_, again) = join(app, &toks[0].1, &event).await;
    assert_eq!(again["ticket_id"], tickets["pre0"]);
    // No hold without an admission, before or after the opening.
    let (s, v) = hold_with(app, &toks[0].1, &event, None).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "admission_required"), "{v}");

    tokio::time::sleep(Duration::from_millis(1_600)).await;
    // Three join after the opening, in this order.
    let mut late = vec![];
    for i in 0..3 {
        let user = format!("late{i}");
        let tok = app.token(&user, "user").await;
        let (s, v) = join(app, &tok, &event).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        late.push((user, tok));
    }
    let mut all = toks.clone();
    all.extend(late.clone());
    let order = admitted_all(app, &all, &event).await;
    let nos: Vec<u64> = order.iter().map(|x| x.1).collect();
    assert_eq!(nos, (1..=15).collect::<Vec<_>>(), "one admission number each");
    let names: Vec<&str> = order.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(&names[12..], ["late0", "late1", "late2"], "FIFO after the pre-queue: {names:?}");
    assert!(names[..12].iter().all(|n| n.starts_with("pre")), "{names:?}");

    // Tokens: one's own holds; another user's, another event's, a forged
    // one are refused.
    let (pre_user, _, pre_token) = &order[0];
    let pre_tok = &all.iter().find(|(u, _)| u == pre_user).expect("user").1;
    let other_tok = &all.iter().find(|(u, _)| u == &order[1].0).expect("user").1;
    let (s, v) = hold_with(app, other_tok, &event, Some(pre_token)).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "admission_invalid"), "{v}");
    let (s, v) = hold_with(app, pre_tok, &event, Some(&format!("{pre_token}x"))).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "admission_invalid"), "{v}");
    let other_event = queued_event(app, 0, json!({"admit_per_s": 1})).await;
    let (s, v) = hold_with(app, pre_tok, &other_event, Some(pre_token)).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "admission_invalid"), "{v}");
    let (s, v) = hold_with(app, pre_tok, &event, Some(pre_token)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Expiry: 2 s after admission the token is refused and the ticket says so.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let (s, v) = hold_with(app, pre_tok, &event, Some(pre_token)).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "admission_invalid"), "{v}");
    assert_eq!(me(app, pre_tok, &event).await["status"], "expired");
    // Leaving: 204, then the ticket is gone.
    let resp = app
        .client
        .delete(format!("{}/v1/events/{event}/queue/me", app.base))
        .bearer_auth(pre_tok)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (s, v) = app.get(&format!("/v1/events/{event}/queue/me"), Some(pre_tok)).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "ticket_not_found"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_room_embedded() {
    waiting_room(&spawn_app().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_room_redis() {
    waiting_room(&spawn_in(Mode::Redis, |_| {}).await).await;
}

/// `active_max` holds admissions back until one expires or leaves; the
/// rate holds per second.
async fn admission_pace(app: &TestApp) {
    let event = queued_event(app, 0, json!({"admit_per_s": 1000, "active_max": 2, "admission_ttl_s": 60})).await;
    let mut toks = vec![];
    for i in 0..4 {
        let tok = app.token(&format!("a{i}"), "user").await;
        let (s, v) = join(app, &tok, &event).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        toks.push(tok);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut states = vec![];
    for t in &toks {
        states.push(me(app, t, &event).await["status"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(states.iter().filter(|s| *s == "admitted").count(), 2, "{states:?}");
    let first = states.iter().position(|s| s == "admitted").expect("one admitted");
    let resp = app
        .client
        .delete(format!("{}/v1/events/{event}/queue/me", app.base))
        .bearer_auth(&toks[first])
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut admitted = 0;
    for (i, t) in toks.iter().enumerate() {
        if i != first && me(app, t, &event).await["status"] == "admitted" {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 2, "the slot freed by leaving went to the next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_max_embedded_and_redis() {
    admission_pace(&spawn_app().await).await;
    admission_pace(&spawn_in(Mode::Redis, |_| {}).await).await;
}

/// 429 with Retry-After and the RateLimit headers; allowed again after.
async fn rate_limited(app: &TestApp) {
    let event = app.event(2, 10, json!({})).await;
    let tok = app.token("hammer", "user").await;
    let mut seen = vec![];
    for _ in 0..6 {
        let resp =
            app.client.get(format!("{}/v1/events/{event}", app.base)).bearer_auth(&tok).send().await.expect("send");
        let h = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        seen.push((resp.status(), h("retry-after"), h("ratelimit-policy"), h("ratelimit")));
    }
    assert!(seen[..3].iter().all(|s| s.0 == StatusCode::OK), "{seen:?}");
    assert_eq!(seen[0].2.as_deref(), Some("\"reads-user\";q=3;w=2"), "{seen:?}");
    let refused = &seen[3];
    assert_eq!(refused.0, StatusCode::TOO_MANY_REQUESTS, "{seen:?}");
    assert_eq!(refused.1.as_deref(), Some("1"));
    assert!(refused.3.as_deref().is_some_and(|v| v.starts_with("\"reads-user\";r=0;t=")), "{seen:?}");
    let (s, v) = app.get(&format!("/v1/events/{event}"), Some(&tok)).await;
    assert_eq!((s, code(&v)), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"), "{v}");
    // Another user is not limited by this one; after the window, allowed again.
    let other = app.token("calm", "user").await;
    assert_eq!(app.get(&format!("/v1/events/{event}"), Some(&other)).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(app.get(&format!("/v1/events/{event}"), Some(&tok)).await.0, StatusCode::OK);
    // The address bucket: every user from this address shares it.
    let m = app.get("/metrics", None).await.1;
    assert!(m.as_str().is_some_and(|t| t.contains("rush_rate_limited_total{class=\"reads\",key=\"user\"}")), "{m}");
}

fn tight_reads(cfg: &mut rush_engine::Config) {
    cfg.rate_limits.enabled = true;
    cfg.rate_limits.reads.user_per_s = 2;
    cfg.rate_limits.reads.user_burst = 3;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_embedded_and_redis() {
    rate_limited(&spawn_with(tight_reads).await).await;
    rate_limited(&spawn_in(Mode::Redis, tight_reads).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_addresses_share_a_bucket_behind_a_trusted_proxy() {
    let app = spawn_with(|c| {
        c.rate_limits.enabled = true;
        c.rate_limits.queue.addr_per_s = 1;
        c.rate_limits.queue.addr_burst = 2;
        c.rate_limits.client_addr_header = Some("x-forwarded-for".into());
    })
    .await;
    let event = queued_event(&app, 0, json!({"admit_per_s": 5})).await;
    let mut answers = vec![];
    for i in 0..3 {
        let tok = app.token(&format!("nat{i}"), "user").await;
        let resp = app
            .client
            .post(format!("{}/v1/events/{event}/queue", app.base))
            .bearer_auth(&tok)
            .header("x-forwarded-for", "10.0.0.1, 203.0.113.9")
            .send()
            .await
            .expect("send");
        answers.push(resp.status());
    }
    assert_eq!(answers, [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS], "one address, three users");
    let tok = app.token("elsewhere", "user").await;
    let resp = app
        .client
        .post(format!("{}/v1/events/{event}/queue", app.base))
        .bearer_auth(&tok)
        .header("x-forwarded-for", "203.0.113.10")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK, "another address has its own bucket");
}

/// Reads SSE messages (event name, data) from a stream until `until` says
/// stop or `secs` pass.
async fn read_sse(
    mut resp: reqwest::Response,
    secs: u64,
    mut until: impl FnMut(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let mut out = vec![];
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !until(&out) {
        let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, resp.chunk()).await else { break };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let msg: String = buf.drain(..end + 2).collect();
            let mut event = String::new();
            let mut data = Value::Null;
            for line in msg.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap_or(Value::Null);
                }
            }
            if !event.is_empty() {
                out.push((event, data));
            }
        }
    }
    out
}

async fn stream(base: &str, client: &reqwest::Client, path: &str, tok: &str) -> reqwest::Response {
    let resp = client.get(format!("{base}{path}")).bearer_auth(tok).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
    resp
}

/// Snapshot, then coalesced changes: ten holds in a burst reach a
/// subscriber in at most a few messages that add up to them.
async fn live_updates(app: &TestApp) {
    let event = app.event(2, 10, json!({})).await;
    let tok = app.token("watcher", "user").await;
    let resp = stream(&app.base, &app.client, &format!("/v1/events/{event}/stream"), &tok).await;
    let reader = tokio::spawn(read_sse(resp, 15, |m| {
        m.iter()
            .filter(|(e, _)| e == "changes")
            .flat_map(|(_, d)| d["seats"].as_array().cloned().unwrap_or_default())
            .count()
            >= 10
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = tokio::time::Instant::now();
    for i in 0..10 {
        let t = app.token(&format!("buyer{i}"), "user").await;
        let (s, v) =
            app.post("/v1/orders", Some(&t), json!({"event_id": event, "category": "std", "quantity": 1})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let burst_ms = started.elapsed().as_millis() as u64;
    let msgs = reader.await.expect("reader");
    assert_eq!(msgs[0].0, "snapshot", "{msgs:?}");
    assert_eq!(msgs[0].1["seats"].as_array().map(Vec::len), Some(20));
    assert_eq!(msgs[0].1["categories"], json!([{"id": "std", "remaining": 20}]));
    let changes: Vec<&Value> = msgs.iter().filter(|(e, _)| e == "changes").map(|(_, d)| d).collect();
    let held: usize = changes.iter().map(|c| c["seats"].as_array().map(Vec::len).unwrap_or(0)).sum();
    assert_eq!(held, 10, "{msgs:?}");
    assert!(changes.len() as u64 <= burst_ms / 250 + 2, "coalesced: {} messages over {burst_ms} ms", changes.len());
    assert_eq!(changes.last().map(|c| c["categories"].clone()), Some(json!([{"id": "std", "remaining": 10}])));

    // A packet's stream.
    app.credit("sender", 10_000).await;
    let sender = app.token("sender", "user").await;
    let (s, p) =
        app.post("/v1/packets", Some(&sender), json!({"kind": "normal", "total_amount": 300, "count": 3})).await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let packet = p["packet_id"].as_str().expect("packet").to_string();
    let resp = stream(&app.base, &app.client, &format!("/v1/packets/{packet}/stream"), &tok).await;
    let reader =
        tokio::spawn(read_sse(resp, 10, |m| m.iter().any(|(e, d)| e == "changes" && d["remaining_count"] == 2)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grabber = app.token("grabber", "user").await;
    let (s, v) = app.post(&format!("/v1/packets/{packet}/grab"), Some(&grabber), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let msgs = reader.await.expect("reader");
    assert_eq!(
        msgs[0],
        ("snapshot".to_string(), json!({"remaining_count": 3, "remaining_amount": 300, "status": "active"}))
    );
    assert!(msgs.iter().any(|(e, d)| e == "changes" && d["remaining_amount"] == 200), "{msgs:?}");
    // Unknown ids: 404 before any stream.
    let (s, v) = app.get("/v1/events/123/stream", Some(&tok)).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "event_not_found"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_updates_embedded() {
    live_updates(&spawn_app().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_updates_redis() {
    live_updates(&spawn_in(Mode::Redis, |_| {}).await).await;
}

/// A round's messages go out paced at `push.fanout_per_s_max`, not in one
/// burst, also below one message per 10 ms slice: twenty subscribers at 50
/// messages a second get one change over about 380 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_is_paced_through_the_fan_out_budget() {
    let app = spawn_with(|c| {
        c.push.fanout_per_s_max = 50;
        c.push.interval_ms = 50;
    })
    .await;
    let event = app.event(2, 10, json!({})).await;
    let tok = app.token("watcher", "user").await;
    let path = format!("/v1/events/{event}/stream");
    let mut readers = vec![];
    for _ in 0..20 {
        let resp = stream(&app.base, &app.client, &path, &tok).await;
        readers.push(tokio::spawn(async move {
            let msgs = read_sse(resp, 10, |m| m.iter().any(|(e, _)| e == "changes")).await;
            (tokio::time::Instant::now(), msgs)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let buyer = app.token("buyer", "user").await;
    let (s, v) =
        app.post("/v1/orders", Some(&buyer), json!({"event_id": event, "category": "std", "quantity": 1})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let mut arrived = vec![];
    for r in readers {
        let (at, msgs) = r.await.expect("reader");
        assert!(msgs.iter().any(|(e, _)| e == "changes"), "every subscriber gets the change: {msgs:?}");
        arrived.push(at);
    }
    let (first, last) = (arrived.iter().min().expect("first"), arrived.iter().max().expect("last"));
    let spread = last.duration_since(*first);
    assert!(spread >= Duration::from_millis(300), "paced at 50 a second, not a burst: {spread:?}");
}

/// A client that asks for a stream and never reads, through a receive
/// window of 4 KiB: the node's socket buffer fills with the snapshot.
async fn stalled_stream(app: &TestApp, path: &str, tok: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr: std::net::SocketAddr = app.base.trim_start_matches("http://").parse().expect("addr");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut conn = socket.connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("write");
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_bounded_and_slow_clients_dropped() {
    let app = spawn_with(|c| {
        c.push.subscribers_max = 2;
        c.push.buffer_msgs = 2;
        c.push.interval_ms = 20;
    })
    .await;
    // Scheduled, so its seat map may be replaced: each replacement is a
    // whole new map in one message (about 800 KB: loopback's socket
    // buffers take megabytes).
    let event = app.event(100, 200, json!({"on_sale_at": in_ms(3_600_000)})).await;
    let tok = app.token("w", "user").await;
    let path = format!("/v1/events/{event}/stream");
    let _a = stalled_stream(&app, &path, &tok).await;
    let _b = stalled_stream(&app, &path, &tok).await;
    let open = || async {
        let m = app.get("/metrics", None).await.1;
        m.as_str().is_some_and(|t| t.contains("rush_push_subscribers{stream=\"event\"} 2"))
    };
    assert!(eventually(10, open).await, "two streams open");
    let (s, v) = app.get(&path, Some(&tok)).await;
    assert_eq!((s, code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "too_many_streams"), "{v}");
    // Neither reads: every hold is a change queued for them until the node
    // drops both (their queues full), and their slots free.
    let dropped = || async {
        let m = app.get("/metrics", None).await.1;
        m.as_str().is_some_and(|t| t.contains("rush_push_dropped_total{reason=\"slow\"} 2"))
    };
    for k in 0..12 {
        let cols = 200 - (k % 2);
        let layout = json!({"sections": [{"name": "A", "rows": 100, "cols": cols, "category": "std"}]});
        let (s, v) = app.patch(&format!("/v1/admin/events/{event}"), Some(&app.admin), json!({"layout": layout})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let ok = eventually(10, dropped).await;
    let m = app.get("/metrics", None).await.1;
    let push: Vec<&str> = m.as_str().unwrap_or_default().lines().filter(|l| l.contains("push_")).collect();
    assert!(ok, "slow subscribers were never dropped: {push:?}");
    // A reader is served again while the stalled clients still hold their
    // connections (and the bytes already written): a dropped stream's slot
    // is freed at once, so clients that never read cannot keep others out.
    let served = || async {
        let r = app.client.get(format!("{}{path}", app.base)).bearer_auth(&tok).send().await;
        r.map(|r| r.status() == StatusCode::OK).unwrap_or(false)
    };
    assert!(eventually(10, served).await, "no stream served after the slow ones were dropped");
    drop((_a, _b));
}

/// Two engines on one Redis: one order of admission, streams and limits
/// across nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_queue_streams_and_limits() {
    let a = spawn_in(Mode::Redis, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.holds.user_per_s = 1;
        c.rate_limits.holds.user_burst = 4;
        c.rate_limits.nodes_check_ms = 100;
    })
    .await;
    let prefix = a.engine.config().redis.key_prefix.clone();
    let b = spawn_in(Mode::Redis, |c| {
        c.redis.key_prefix = prefix.clone();
        c.node_id = 1;
        c.rate_limits.enabled = true;
        c.rate_limits.holds.user_per_s = 1;
        c.rate_limits.holds.user_burst = 4;
        c.rate_limits.nodes_check_ms = 100;
    })
    .await;
    let event = queued_event(&a, 1_000, json!({"admit_per_s": 10, "admission_ttl_s": 60})).await;
    // Joins alternate between the nodes; admissions are one sequence.
    let mut toks = vec![];
    for i in 0..10 {
        let node = if i % 2 == 0 { &a } else { &b };
        let user = format!("n{i}");
        let tok = node.token(&user, "user").await;
        let (s, v) = join(node, &tok, &event).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        toks.push((user, tok));
    }
    // A stream on node a sees holds made through node b.
    let w = a.token("watch", "user").await;
    let resp = stream(&a.base, &a.client, &format!("/v1/events/{event}/stream"), &w).await;
    let reader = tokio::spawn(read_sse(resp, 20, |m| {
        m.iter()
            .filter(|(e, _)| e == "changes")
            .flat_map(|(_, d)| d["seats"].as_array().cloned().unwrap_or_default())
            .count()
            >= 3
    }));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let order_a = admitted_all(&a, &toks, &event).await;
    let nos: Vec<u64> = order_a.iter().map(|x| x.1).collect();
    assert_eq!(nos, (1..=10).collect::<Vec<_>>());
    for (user, no, token) in &order_a {
        let tok = &toks.iter().find(|(u, _)| u == user).expect("user").1;
        let v = me(&b, tok, &event).await;
        assert_eq!(
            (v["admission_no"].as_u64(), v["admission_token"].as_str()),
            (Some(*no), Some(token.as_str())),
            "node b agrees"
        );
    }
    for (user, _, token) in order_a.iter().take(3) {
        let tok = &toks.iter().find(|(u, _)| u == user).expect("user").1;
        let (s, v) = hold_with(&b, tok, &event, Some(token)).await;
        assert_eq!(s, StatusCode::CREATED, "a token from node a holds on node b: {v}");
    }
    let msgs = reader.await.expect("reader");
    let held: usize = msgs
        .iter()
        .filter(|(e, _)| e == "changes")
        .map(|(_, d)| d["seats"].as_array().map(Vec::len).unwrap_or(0))
        .sum();
    assert_eq!(held, 3, "{msgs:?}");

    // Limits: burst 4 shared by two live nodes is 2 per node; a user
    // spreading requests over both gets at most 4 in the burst.
    let plain = a.event(1, 20, json!({})).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let tok = a.token("spread", "user").await;
    let mut ok = 0;
    for i in 0..8 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (s, _) =
            node.post("/v1/orders", Some(&tok), json!({"event_id": plain, "category": "std", "quantity": 1})).await;
        if s != StatusCode::TOO_MANY_REQUESTS {
            ok += 1;
        }
    }
    assert_eq!(ok, 4, "the burst holds across the two nodes");
}

/// The queue's stream: the ticket at once, then on every change (admitted
/// at the opening); heartbeats in silence.
async fn queue_stream_and_heartbeats(app: &TestApp) {
    let event = queued_event(app, 1_200, json!({"admit_per_s": 50})).await;
    let tok = app.token("streamer", "user").await;
    let (s, v) = join(app, &tok, &event).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let resp = stream(&app.base, &app.client, &format!("/v1/events/{event}/queue/me/stream"), &tok).await;
    let msgs = read_sse(resp, 10, |m| m.iter().any(|(e, d)| e == "ticket" && d["status"] == "admitted")).await;
    assert_eq!((msgs[0].0.as_str(), msgs[0].1["status"].as_str()), ("ticket", Some("waiting")), "{msgs:?}");
    assert_eq!(msgs[0].1["ticket_id"], v["ticket_id"]);
    let admitted = msgs.iter().find(|(_, d)| d["status"] == "admitted").expect("admitted over the stream");
    assert!(admitted.1["admission_token"].is_string(), "{msgs:?}");
    // Not queued: 404 before any stream.
    let other = app.token("not-queued", "user").await;
    let (s, v) = app.get(&format!("/v1/events/{event}/queue/me/stream"), Some(&other)).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "ticket_not_found"), "{v}");
    // An idle event stream gets heartbeats (push.heartbeat_ms = 300 here).
    let quiet = app.event(1, 2, json!({})).await;
    let mut resp = stream(&app.base, &app.client, &format!("/v1/events/{quiet}/stream"), &tok).await;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !text.contains(": heartbeat") {
        let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, resp.chunk()).await else { break };
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("event: snapshot") && text.contains(": heartbeat"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_stream_and_heartbeats_embedded_and_redis() {
    let tune = |c: &mut rush_engine::Config| {
        c.push.heartbeat_ms = 300;
        c.push.queue_poll_ms = 100;
    };
    queue_stream_and_heartbeats(&spawn_with(tune).await).await;
    queue_stream_and_heartbeats(&spawn_in(Mode::Redis, tune).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_refuses_money_posts_without_an_idempotency_key() {
    const SECRET: &str = "production-secret-0123456789";
    let app = spawn_with(|c| {
        c.profile = rush_engine::config::Profile::Production;
        c.auth.jwt_secret = SECRET.into();
        c.payments.wechat_secret = "wechat-production-secret".into();
        c.payments.alipay_secret = "alipay-production-secret".into();
        c.payments.ecard_secret = "ecard-production-secret".into();
    })
    .await;
    let tok = signed_token(SECRET, "payer", "user");
    let body = json!({"kind": "normal", "total_amount": 100, "count": 1});
    let (s, v) = app.post("/v1/packets", Some(&tok), body.clone()).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "idempotency_key_required"), "{v}");
    let resp = app
        .client
        .post(format!("{}/v1/packets", app.base))
        .bearer_auth(&tok)
        .header("Idempotency-Key", "k1")
        .json(&body)
        .send()
        .await
        .expect("send");
    let s = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds"),
        "with a key it goes through: {v}"
    );
    // Holds are not money-moving: no key needed (404: no such event).
    let (s, v) = app.post("/v1/orders", Some(&tok), json!({"event_id": "1", "category": "std", "quantity": 1})).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "event_not_found"), "{v}");
}

/// Embedded: the queue is rebuilt from hot.db after kill -9 (same order,
/// same admissions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_queue_survives_kill_minus_nine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let envs = vec![
        ("RUSH__HTTP__ADDR".to_string(), "127.0.0.1:0".to_string()),
        ("RUSH__DATA_DIR".to_string(), dir.path().display().to_string()),
    ];
    let (mut child, banner) = spawn_rush("serve", &envs);
    let c = Client::new(banner["url"].as_str().expect("url"));
    let admin = c.token("ops", "admin").await;
    let body = json!({"name": "Q", "venue": "V", "starts_at": "2030-12-31T20:00:00Z", "on_sale_at": in_ms(1_500),
        "categories": [{"id": "std", "name": "Std", "price": 100}],
        "layout": {"sections": [{"name": "A", "rows": 1, "cols": 10, "category": "std"}]},
        "waiting_room": {"admit_per_s": 2}});
    let (s, v) = c.call("POST", "/v1/admin/events", &admin, body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let event = v["event_id"].as_str().expect("event").to_string();
    let mut toks = vec![];
    for i in 0..6 {
        let tok = c.token(&format!("q{i}"), "user").await;
        let (s, v) = c.call("POST", &format!("/v1/events/{event}/queue"), &tok, json!({})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        toks.push((tok, v["ticket_id"].clone()));
    }
    // Two admitted (one a second, a 100 ms bank), four waiting with positions.
    tokio::time::sleep(Duration::from_millis(2_700)).await;
    let mut before = vec![];
    for (tok, _) in &toks {
        before.push(c.call("GET", &format!("/v1/events/{event}/queue/me"), tok, json!({})).await.1);
    }
    kill9(&mut child);
    let (mut child, banner) = spawn_rush("serve", &envs);
    let c = Client::new(banner["url"].as_str().expect("url"));
    for (i, (tok, ticket)) in toks.iter().enumerate() {
        let (s, v) = c.call("GET", &format!("/v1/events/{event}/queue/me"), tok, json!({})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(&v["ticket_id"], ticket);
        let b = &before[i];
        if b["status"] == "admitted" {
            assert_eq!(
                (&v["status"], &v["admission_no"], &v["admission_token"]),
                (&b["status"], &b["admission_no"], &b["admission_token"])
            );
        } else {
            // Still waiting, or admitted since; never behind where it was.
            assert!(v["status"] == "admitted" || v["position"].as_u64() <= b["position"].as_u64(), "{b} then {v}");
        }
    }
    assert!(before.iter().filter(|b| b["status"] == "admitted").count() >= 2, "{before:?}");
    kill9(&mut child);
}

/// An opening moved later stops admissions until it comes (the ticker
/// reads the event as it stands, on every node).
async fn opening_moved_later(app: &TestApp) {
    let event = queued_event(app, 300, json!({"admit_per_s": 2, "admission_ttl_s": 120})).await;
    let mut toks = vec![];
    for i in 0..4 {
        let tok = app.token(&format!("m{i}"), "user").await;
        assert_eq!(join(app, &tok, &event).await.0, StatusCode::OK);
        toks.push(tok);
    }
    let first = eventually(5, || async {
        let mut any = false;
        for t in &toks {
            any |= me(app, t, &event).await["status"] == "admitted";
        }
        any
    })
    .await;
    assert!(first, "nobody admitted after the opening");
    let mut before = 0;
    for t in &toks {
        before += usize::from(me(app, t, &event).await["status"] == "admitted");
    }
    let (s, v) =
        app.patch(&format!("/v1/admin/events/{event}"), Some(&app.admin), json!({"on_sale_at": in_ms(60_000)})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Nobody asks for two seconds: only the node's own ticker runs.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let mut after = 0;
    for t in &toks {
        after += usize::from(me(app, t, &event).await["status"] == "admitted");
    }
    assert!(before < toks.len(), "all admitted before the change: the test shows nothing");
    assert_eq!(after, before, "admitted before the new opening");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opening_moved_later_stops_admissions_embedded_and_redis() {
    opening_moved_later(&spawn_app().await).await;
    opening_moved_later(&spawn_in(Mode::Redis, |_| {}).await).await;
}
