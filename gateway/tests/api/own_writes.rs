//! A client reads its own writes whatever the lag of the durable side: in
//! full mode with the relay stopped, nothing reaches Kafka or Postgres, yet
//! the order just held is in the caller's list, the order just cancelled
//! reads as cancelled and a grab's money is in the grabber's wallet as
//! `pending` (the hot store remembers them for `orders.recent_keep_s`).
//! Once the workers have applied a grab, its credit counts once, in
//! `available`.

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

/// Two packets of one part each, grabbed by one user: their wallet holds
/// both amounts at once. Returns the grabber's token and the total.
async fn grabs_are_in_the_wallet_at_once(app: &TestApp, who: &str) -> (String, i64) {
    app.credit(&format!("{who}-sender"), 1000).await;
    let sender = app.token(&format!("{who}-sender"), "user").await;
    let grabber = app.token(who, "user").await;
    let mut total = 0;
    for amount in [300, 200] {
        let body = json!({"kind": "normal", "total_amount": amount, "count": 1});
        let (s, v) = app.post("/v1/packets", Some(&sender), body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let packet = v["packet_id"].as_str().expect("packet id").to_string();
        let (s, v) = app.post(&format!("/v1/packets/{packet}/grab"), Some(&grabber), json!({})).await;
        assert_eq!((s, v["amount"].as_i64()), (StatusCode::OK, Some(amount)), "{v}");
        total += amount;
        let (available, _, pending) = wallet_of(app, &grabber).await;
        assert_eq!(available + pending, total, "the grab's money is in the wallet at once");
    }
    (grabber, total)
}

/// (available, frozen, pending) of the token's user.
async fn wallet_of(app: &TestApp, token: &str) -> (i64, i64, i64) {
    let (s, v) = app.get("/v1/wallet", Some(token)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let field = |f: &str| v[f].as_i64().unwrap_or_else(|| panic!("{f} in {v}"));
    (field("available"), field("frozen"), field("pending"))
}

/// A sender grabs their own packet while nothing is persisted: the money
/// leaves `frozen` for `pending`, nothing is counted twice.
async fn own_packet_grabbed_by_its_sender(app: &TestApp) {
    app.credit("self-sender", 900).await;
    let me = app.token("self-sender", "user").await;
    let body = json!({"kind": "normal", "total_amount": 600, "count": 2});
    let (s, v) = app.post("/v1/packets", Some(&me), body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let packet = v["packet_id"].as_str().expect("packet id").to_string();
    assert_eq!(wallet_of(app, &me).await, (300, 600, 0));
    let (s, v) = app.post(&format!("/v1/packets/{packet}/grab"), Some(&me), json!({})).await;
    assert_eq!((s, v["amount"].as_i64()), (StatusCode::OK, Some(300)), "{v}");
    assert_eq!(wallet_of(app, &me).await, (300, 300, 300), "900 in all, the grab on its way");
}

/// The workers apply the grabs: the ledger lists them, the wallet counts
/// each once.
async fn applied_grabs_count_once(app: &TestApp, grabber: &str, total: i64) {
    let listed = eventually(30, || async {
        let (_, v) = app.get("/v1/wallet/ledger", Some(grabber)).await;
        v["entries"].as_array().is_some_and(|e| e.len() == 2)
    })
    .await;
    assert!(listed, "the workers applied both grabs");
    assert_eq!(wallet_of(app, grabber).await, (total, 0, 0), "applied grabs are not counted twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_grabs_are_in_the_wallet_every_mode() {
    let app = spawn_in(Mode::Full, |c| c.kafka.relay_in_serve = false).await;
    let (grabber, total) = grabs_are_in_the_wallet_at_once(&app, "grabber").await;
    let (_, v) = app.get("/v1/wallet/ledger", Some(&grabber)).await;
    assert_eq!(v["entries"], json!([]), "nothing persisted: {v}");
    assert_eq!(wallet_of(&app, &grabber).await, (0, 0, total), "pending until the workers apply it");
    // Spending the pending money waits for the ledger.
    let (s, v) = app.post("/v1/wallet/withdraw", Some(&grabber), json!({"amount": total})).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds"), "{v}");
    own_packet_grabbed_by_its_sender(&app).await;

    for app in [spawn_app().await, spawn_in(Mode::Redis, |_| {}).await, spawn_in(Mode::Full, |_| {}).await] {
        let (grabber, total) = grabs_are_in_the_wallet_at_once(&app, "grabber").await;
        applied_grabs_count_once(&app, &grabber, total).await;
        app.settle().await;
        app.assert_ledger_balances().await;
    }
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
