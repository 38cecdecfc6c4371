use reqwest::StatusCode;
use serde_json::json;

use super::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_hold_expires_and_its_seats_go_back_on_sale() {
    hold_expires(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_an_unpaid_hold_expires_and_its_seats_go_back_on_sale() {
    hold_expires(Mode::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mode_an_unpaid_hold_expires_and_its_seats_go_back_on_sale() {
    hold_expires(Mode::Full).await;
}

async fn hold_expires(mode: Mode) {
    let app = spawn_in(mode, |_| {}).await;
    let event = app.event(1, 4, json!({"hold_ttl_s": 1})).await;
    let u = app.token("late", "user").await;
    let (s, v) = app.post("/v1/orders", Some(&u), json!({"event_id": event, "seats": ["A-1-1", "A-1-2"]})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let order = v["order_id"].as_str().expect("id").to_string();
    let expired = eventually(10, || async {
        let (_, v) = app.get(&format!("/v1/orders/{order}"), Some(&u)).await;
        v["status"] == "expired"
    })
    .await;
    assert!(expired, "hold did not expire");
    let (_, v) = app.get(&format!("/v1/events/{event}/seats"), Some(&u)).await;
    assert!(v["seats"].as_array().expect("seats").iter().all(|s| s["status"] == "available"), "{v}");
    // The seats can be held again, and paying for the dead order is refused.
    let other = app.token("next", "user").await;
    let (s, _) = app.post("/v1/orders", Some(&other), json!({"event_id": event, "seats": ["A-1-1"]})).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = app.post(&format!("/v1/orders/{order}/cancel"), Some(&u), json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "order_not_pending"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_packet_returns_its_remainder_to_the_sender() {
    packet_expires(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_an_expired_packet_returns_its_remainder_to_the_sender() {
    packet_expires(Mode::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mode_an_expired_packet_returns_its_remainder_to_the_sender() {
    packet_expires(Mode::Full).await;
}

async fn packet_expires(mode: Mode) {
    let app = spawn_in(mode, |_| {}).await;
    app.credit("s", 900).await;
    let s_tok = app.token("s", "user").await;
    let (s, v) = app
        .post(
            "/v1/packets",
            Some(&s_tok),
            json!({"kind": "normal", "total_amount": 900, "count": 3, "expires_in_s": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let packet = v["packet_id"].as_str().expect("id").to_string();
    let g = app.token("g", "user").await;
    let (s, _) = app.post(&format!("/v1/packets/{packet}/grab"), Some(&g), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let returned = eventually(10, || async {
        app.settle().await;
        app.wallet(&s_tok).await == (600, 0)
    })
    .await;
    assert!(returned, "remainder not unfrozen: {:?}", app.wallet(&s_tok).await);
    let late = app.token("late", "user").await;
    let (s, v) = app.post(&format!("/v1/packets/{packet}/grab"), Some(&late), json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::GONE, "packet_expired"));
    let (_, v) = app.get(&format!("/v1/packets/{packet}"), Some(&late)).await;
    assert_eq!(v["status"], "expired");
    assert_eq!(app.wallet(&g).await, (300, 0));
    app.assert_ledger_balances().await;
}
