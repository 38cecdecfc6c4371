//! A client reads its own writes whatever the lag of the durable side: in
//! full mode with the relay stopped, nothing reaches Kafka or Postgres, yet
//! the order just held is in the caller's list and the order just
//! cancelled reads as cancelled (the hot store remembers both for
//! `orders.recent_keep_s`).

use reqwest::StatusCode;
use serde_json::json;

use super::helpers::*;

async fn own_orders_are_read_back(app: &TestApp) {
    let event = app.event(1, 4, json!({})).await;
    let tok = app.token("ryw", "user").await;
    let (s, held) = app.post("/v1/orders", Some(&tok), json!({"event_id": event, "seats": ["A-1-1"]})).await;
    assert_eq!(s, StatusCode::CREATED, "{held}");
    let id = held["order_id"].as_str().expect("order id").to_string();
    let (s, list) = app.get("/v1/orders", Some(&tok)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["orders"][0]["order_id"], id, "the hold is listed at once: {list}");
    assert_eq!(list["orders"][0]["status"], "pending_payment");

    let (s, v) = app.post(&format!("/v1/orders/{id}/cancel"), Some(&tok), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app.get(&format!("/v1/orders/{id}"), Some(&tok)).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("cancelled")), "{v}");
    let (_, list) = app.get("/v1/orders", Some(&tok)).await;
    assert_eq!(list["orders"][0]["status"], "cancelled", "{list}");
    // Another user sees neither.
    let other = app.token("someone-else", "user").await;
    assert_eq!(app.get(&format!("/v1/orders/{id}"), Some(&other)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(app.get("/v1/orders", Some(&other)).await.1["orders"], json!([]));
}

/// More orders than a page, each held and cancelled: every page is newest
/// first and together they hold every order once.
async fn every_order_is_paged_once(app: &TestApp, n: usize) {
    let event = app.event(1, 2, json!({})).await;
    let tok = app.token("pager", "user").await;
    let mut made = Vec::new();
    for _ in 0..n {
        let (s, v) = app.post("/v1/orders", Some(&tok), json!({"event_id": event, "seats": ["A-1-1"]})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let id = v["order_id"].as_str().expect("id").to_string();
        let (s, v) = app.post(&format!("/v1/orders/{id}/cancel"), Some(&tok), json!({})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        made.push(id);
    }
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/orders?limit=50&cursor={c}"),
            None => "/v1/orders?limit=50".to_string(),
        };
        let (s, page) = app.get(&path, Some(&tok)).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        for o in page["orders"].as_array().expect("orders") {
            assert_eq!(o["status"], "cancelled", "{o}");
            seen.push(o["order_id"].as_str().expect("id").to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    made.reverse();
    assert_eq!(seen, made, "every order once, newest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_orders_are_read_back_while_nothing_is_persisted_full_mode() {
    // No relay: the events stay in Redis' outbox, the durable store has none.
    let app = spawn_in(Mode::Full, |c| c.kafka.relay_in_serve = false).await;
    own_orders_are_read_back(&app).await;
    // Past the first page and past the old cap of 128 recent orders.
    every_order_is_paged_once(&app, 140).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_orders_are_read_back_embedded_and_redis_mode() {
    own_orders_are_read_back(&spawn_app().await).await;
    own_orders_are_read_back(&spawn_in(Mode::Redis, |_| {}).await).await;
}
