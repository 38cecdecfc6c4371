//! Webhooks: registration, signed deliveries of order and payment events,
//! retries with backoff, the delivery log, and 410 disabling an endpoint.

use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use reqwest::StatusCode;
use rush_engine::pay::wire::{hex, hmac};
use serde_json::{json, Value};

use super::helpers::*;

/// What the receiver saw: signature header and body of each request.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A receiver on port 0 answering the statuses in `script` in turn (the
/// last one repeats).
fn receiver(script: Vec<u16>) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let calls = Arc::new(Mutex::new(0usize));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (seen2, script) = (seen.clone(), Arc::new(script));
    let server = HttpServer::new(move || {
        let (seen, calls, script) = (seen2.clone(), calls.clone(), script.clone());
        App::new().route(
            "/hook",
            web::post().to(move |req: HttpRequest, body: web::Bytes| {
                let (seen, calls, script) = (seen.clone(), calls.clone(), script.clone());
                async move {
                    let sig =
                        req.headers().get("rush-signature").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    seen.lock().expect("lock").push((sig, String::from_utf8_lossy(&body).into_owned()));
                    let mut n = calls.lock().expect("lock");
                    let status = script[(*n).min(script.len() - 1)];
                    *n += 1;
                    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("status")).finish()
                }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .expect("listen")
    .run();
    tokio::spawn(server);
    (url, seen)
}

fn verify(secret: &str, header: &str, body: &str) -> bool {
    let mut t = "";
    let mut v1 = "";
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = x,
            Some(("v1", x)) => v1 = x,
            _ => {}
        }
    }
    !t.is_empty() && hex(&hmac(secret.as_bytes(), &[t.as_bytes(), b".", body.as_bytes()])) == v1
}

async fn register(app: &TestApp, url: &str, events: Value) -> String {
    let (s, v) =
        app.post("/v1/admin/webhooks", Some(&app.admin), json!({"url": url, "events": events, "secret": SECRET})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["webhook_id"].as_str().expect("id").to_string()
}

const SECRET: &str = "whsec-test-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_and_retried_until_acknowledged() {
    let app = spawn_with(|c| {
        c.webhooks.poll_ms = 50;
        c.webhooks.backoff_first_ms = 100;
    })
    .await;
    let (url, seen) = receiver(vec![500, 503, 200]);
    let hook = register(&app, &url, json!(["payment.succeeded"])).await;
    let u = app.token("hooked", "user").await;
    let (_, v) = app.post("/v1/wallet/recharge", Some(&u), json!({"amount": 900, "channel": "wechat"})).await;
    let payment = v["payment_id"].as_str().expect("payment").to_string();
    app.post(&format!("/v1/sandbox/wechat/payments/{payment}/complete"), None, json!({})).await;
    let delivered = eventually(15, || async {
        let (_, v) = app.get(&format!("/v1/admin/webhooks/{hook}/deliveries"), Some(&app.admin)).await;
        v["deliveries"][0]["status"] == "delivered"
    })
    .await;
    assert!(delivered, "delivered after two failures");
    let (_, v) = app.get(&format!("/v1/admin/webhooks/{hook}/deliveries"), Some(&app.admin)).await;
    let d = &v["deliveries"][0];
    assert_eq!((d["event_type"].as_str(), d["attempts"].as_u64()), (Some("payment.succeeded"), Some(3)));
    let codes: Vec<u64> =
        d["attempt_log"].as_array().expect("log").iter().filter_map(|a| a["status_code"].as_u64()).collect();
    assert_eq!(codes, vec![500, 503, 200]);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3);
    for (sig, body) in &seen {
        assert!(verify(SECRET, sig, body), "signature {sig} does not verify");
        assert!(!verify("another-secret-000000", sig, body));
        let b: Value = serde_json::from_str(body).expect("json");
        assert_eq!(
            (b["type"].as_str(), b["data"]["payment_id"].as_str()),
            (Some("payment.succeeded"), Some(payment.as_str()))
        );
    }
    assert_eq!(seen[0].1, seen[2].1, "every attempt carries the same event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_events_reach_subscribers_and_a_410_disables_the_endpoint() {
    let app = spawn_with(|c| c.webhooks.poll_ms = 50).await;
    let (ok_url, ok_seen) = receiver(vec![200]);
    let (gone_url, gone_seen) = receiver(vec![410]);
    register(&app, &ok_url, json!(["*"])).await;
    let gone = register(&app, &gone_url, json!(["order.created", "order.cancelled"])).await;
    let event = app.event(1, 4, json!({})).await;
    let u = app.token("subscriber", "user").await;
    let (_, v) = app.post("/v1/orders", Some(&u), json!({"event_id": event, "seats": ["A-1-1"]})).await;
    let order = v["order_id"].as_str().expect("order").to_string();
    app.post(&format!("/v1/orders/{order}/cancel"), Some(&u), json!({})).await;
    let types = || {
        let seen = ok_seen.lock().expect("lock");
        let mut t: Vec<String> = seen
            .iter()
            .map(|(_, b)| serde_json::from_str::<Value>(b).expect("json")["type"].as_str().unwrap_or("").to_string())
            .collect();
        t.sort();
        t
    };
    assert!(eventually(15, || async { types().len() >= 2 }).await, "order events delivered");
    assert_eq!(types(), vec!["order.cancelled", "order.created"]);
    let disabled = eventually(15, || async {
        let (_, v) = app.get(&format!("/v1/admin/webhooks/{gone}/deliveries"), Some(&app.admin)).await;
        v["enabled"] == false
    })
    .await;
    assert!(disabled, "410 disables the webhook");
    let (_, v) = app.get(&format!("/v1/admin/webhooks/{gone}/deliveries"), Some(&app.admin)).await;
    let statuses: Vec<&str> =
        v["deliveries"].as_array().expect("d").iter().map(|d| d["status"].as_str().unwrap_or("")).collect();
    assert!(statuses.iter().all(|s| *s == "disabled"), "{statuses:?}");
    assert_eq!(gone_seen.lock().expect("lock").len(), 1, "nothing more is sent to a gone endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_are_refused() {
    let app = spawn_app().await;
    for (body, why) in [
        (json!({"url": "ftp://x", "events": ["*"], "secret": SECRET}), "scheme"),
        (json!({"url": "http://127.0.0.1:1/h", "events": [], "secret": SECRET}), "no events"),
        (json!({"url": "http://127.0.0.1:1/h", "events": ["order.shipped"], "secret": SECRET}), "unknown event"),
        (json!({"url": "http://127.0.0.1:1/h", "events": ["*"], "secret": "short"}), "short secret"),
        (json!({"url": "http://127.0.0.1:1/h", "events": ["*"]}), "no secret"),
    ] {
        let (s, v) = app.post("/v1/admin/webhooks", Some(&app.admin), body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{why}: {v}");
    }
    let u = app.token("nobody", "user").await;
    let (s, _) =
        app.post("/v1/admin/webhooks", Some(&u), json!({"url": "http://a/b", "events": ["*"], "secret": SECRET})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = app.get("/v1/admin/webhooks/77/deliveries", Some(&app.admin)).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "webhook_not_found"));
}
