//! The sale window (issue 18): holds are taken from `on_sale_at` until
//! `sale_ends_at`, not one before, in every mode and across nodes; the
//! event shows where its sale stands.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::helpers::*;

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `ms` from now, to the millisecond (as the API states times).
fn in_ms(ms: i64) -> DateTime<Utc> {
    let t = Utc::now() + chrono::Duration::milliseconds(ms);
    DateTime::from_timestamp_millis(t.timestamp_millis()).expect("a time")
}

async fn status_of(app: &TestApp, event: &str, token: &str) -> Value {
    let (s, v) = app.get(&format!("/v1/events/{event}"), Some(token)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn sleep_until(t: DateTime<Utc>) {
    let left = (t - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left).await;
}

/// Before the opening: 409 `not_on_sale` with the instant; after it the
/// hold is taken; after the end: 409 `sale_ended`.
async fn opens_and_ends(app: &TestApp) {
    let tok = app.token("early-bird", "user").await;
    let opens = in_ms(1500);
    let ends = opens + chrono::Duration::milliseconds(1500);
    let event = app.event(1, 4, json!({"on_sale_at": stamp(opens), "sale_ends_at": stamp(ends)})).await;
    let v = status_of(app, &event, &tok).await;
    assert_eq!(v["status"], "scheduled", "{v}");
    assert_eq!(v["on_sale_at"].as_str().map(|s| s.parse::<DateTime<Utc>>().ok()), Some(Some(opens)), "{v}");
    let hold = json!({"event_id": event, "category": "std", "quantity": 1});
    let (s, v) = app.post("/v1/orders", Some(&tok), hold.clone()).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "not_on_sale"), "{v}");
    assert_eq!(v["error"]["on_sale_at"].as_str().map(|s| s.parse::<DateTime<Utc>>().ok()), Some(Some(opens)));

    sleep_until(opens).await;
    assert_eq!(status_of(app, &event, &tok).await["status"], "on_sale");
    let (s, v) = app.post("/v1/orders", Some(&tok), hold.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let created: DateTime<Utc> = v["created_at"].as_str().and_then(|c| c.parse().ok()).expect("created_at");
    assert!(created >= opens, "held at {created}, before the opening {opens}");

    sleep_until(ends).await;
    let (s, v) = app.post("/v1/orders", Some(&tok), hold).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "sale_ended"), "{v}");
    assert_eq!(status_of(app, &event, &tok).await["status"], "ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_are_taken_only_in_the_sale_window_embedded_and_redis_mode() {
    opens_and_ends(&spawn_app().await).await;
    opens_and_ends(&spawn_in(Mode::Redis, |_| {}).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_is_over_or_inverted_is_refused() {
    let app = spawn_app().await;
    let now = Utc::now();
    let body = |extra: Value| {
        let mut b = json!({
            "name": "W", "venue": "V", "starts_at": stamp(now + chrono::Duration::days(1)),
            "categories": [{"id": "std", "name": "S", "price": 100}],
            "layout": {"sections": [{"name": "A", "rows": 1, "cols": 2, "category": "std"}]}});
        if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        b
    };
    let inverted = json!({"on_sale_at": stamp(now + chrono::Duration::hours(2)),
                          "sale_ends_at": stamp(now + chrono::Duration::hours(1))});
    let past = json!({"sale_ends_at": stamp(now - chrono::Duration::hours(1))});
    let started = json!({"starts_at": stamp(now - chrono::Duration::hours(1))});
    for extra in [inverted, past, started] {
        let (s, v) = app.post("/v1/admin/events", Some(&app.admin), body(extra.clone())).await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{extra}: {v}");
    }
    // Defaults: on sale from now until the event starts.
    let (s, v) = app.post("/v1/admin/events", Some(&app.admin), body(json!({}))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let event = v["event_id"].as_str().expect("id").to_string();
    let v = status_of(&app, &event, &app.admin).await;
    assert_eq!(v["status"], "on_sale", "{v}");
    assert_eq!(v["sale_ends_at"], v["starts_at"], "{v}");
}

/// Two nodes on one Redis, 400 holds sent from 300 ms before the opening
/// until after it, alternating nodes: not one is taken before the instant
/// (by the answers and by each order's creation time), and the sale does
/// open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_at_the_opening_take_no_hold_before_it() {
    let (a, b) = super::multinode::two_nodes().await;
    let opens = in_ms(1200);
    let event = a.event(20, 20, json!({"on_sale_at": stamp(opens), "limits": {"per_order": 1, "per_user": 1}})).await;
    // Both nodes' actors have the event loaded before the race.
    for node in [&a, &b] {
        assert_eq!(status_of(node, &event, &node.admin).await["status"], "scheduled");
    }
    sleep_until(opens - chrono::Duration::milliseconds(300)).await;
    let mut tasks = Vec::new();
    for i in 0..400 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let token = node.token(&format!("racer{i}"), "user").await;
        let event = event.clone();
        tasks.push(tokio::spawn(async move {
            // Spread over about 600 ms around the opening.
            tokio::time::sleep(Duration::from_micros(1_500 * (i as u64))).await;
            let sent = Utc::now();
            let body = json!({"event_id": event, "category": "std", "quantity": 1});
            let (s, v) = node.post("/v1/orders", Some(&token), body).await;
            (sent, Utc::now(), s, v)
        }));
    }
    let (mut taken, mut early) = (0, 0);
    for t in tasks {
        let (sent, answered, s, v) = t.await.expect("task");
        match s {
            StatusCode::CREATED => {
                taken += 1;
                let created: DateTime<Utc> = v["created_at"].as_str().and_then(|c| c.parse().ok()).expect("created");
                assert!(created >= opens, "a hold created at {created}, before the opening {opens}");
                assert!(answered >= opens, "a hold answered at {answered}, before the opening {opens}");
            }
            StatusCode::CONFLICT if code(&v) == "not_on_sale" => {
                early += 1;
                assert!(sent <= opens + chrono::Duration::milliseconds(50), "refused long after the opening: {v}");
            }
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("hold answered {other}: {v}"),
        }
    }
    assert!(taken > 0 && early > 0, "both sides of the instant were reached: {taken} taken, {early} early");
}
