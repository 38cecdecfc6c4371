use std::collections::HashSet;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;

use super::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_buyers_for_a_hundred_seats_get_exactly_a_hundred_distinct_holds() {
    three_hundred_buyers(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_three_hundred_buyers_for_a_hundred_seats_get_exactly_a_hundred_distinct_holds() {
    three_hundred_buyers(Mode::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mode_three_hundred_buyers_for_a_hundred_seats_get_exactly_a_hundred_distinct_holds() {
    three_hundred_buyers(Mode::Full).await;
}

async fn three_hundred_buyers(mode: Mode) {
    let app = Arc::new(spawn_in(mode, |_| {}).await);
    let event = app.event(10, 10, json!({})).await;
    let mut tokens = Vec::new();
    for i in 0..300 {
        tokens.push(app.token(&format!("buyer{i}"), "user").await);
    }
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|t| {
            let app = app.clone();
            let body = json!({"event_id": event, "category": "std", "quantity": 1});
            tokio::spawn(async move { app.post("/v1/orders", Some(&t), body).await })
        })
        .collect();
    let mut seats = HashSet::new();
    let (mut held, mut sold_out) = (0, 0);
    for t in tasks {
        let (s, v) = t.await.expect("task");
        match s {
            StatusCode::CREATED => {
                held += 1;
                let seat = v["seats"][0]["seat_id"].as_str().expect("seat").to_string();
                assert!(seats.insert(seat), "seat held twice: {v}");
            }
            StatusCode::CONFLICT => {
                assert_eq!(code(&v), "sold_out", "{v}");
                sold_out += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!((held, sold_out), (100, 200));
    let (_, v) = app.get(&format!("/v1/events/{event}/seats"), Some(&app.admin)).await;
    let statuses: Vec<&str> =
        v["seats"].as_array().expect("seats").iter().map(|s| s["status"].as_str().unwrap_or("")).collect();
    assert_eq!(statuses.iter().filter(|s| **s == "held").count(), 100);
    let (_, v) = app.get(&format!("/v1/events/{event}"), Some(&app.admin)).await;
    assert_eq!(v["categories"][0]["remaining"], 0);
    // The durable store agrees once the workers catch up.
    app.settle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_buyers_for_one_named_seat_get_exactly_one_hold() {
    fifty_buyers(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_fifty_buyers_for_one_named_seat_get_exactly_one_hold() {
    fifty_buyers(Mode::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mode_fifty_buyers_for_one_named_seat_get_exactly_one_hold() {
    fifty_buyers(Mode::Full).await;
}

async fn fifty_buyers(mode: Mode) {
    let app = Arc::new(spawn_in(mode, |_| {}).await);
    let event = app.event(2, 5, json!({})).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let t = app.token(&format!("fan{i}"), "user").await;
        let app = app.clone();
        let body = json!({"event_id": event, "seats": ["A-1-3"]});
        tasks.push(tokio::spawn(async move { app.post("/v1/orders", Some(&t), body).await }));
    }
    let (mut won, mut lost) = (0, 0);
    for t in tasks {
        let (s, v) = t.await.expect("task");
        match s {
            StatusCode::CREATED => won += 1,
            StatusCode::CONFLICT => {
                assert_eq!(code(&v), "seat_unavailable", "{v}");
                assert_eq!(v["error"]["seats"], json!(["A-1-3"]));
                lost += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!((won, lost), (1, 49));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adjacent_seats_are_central_cancel_frees_them_and_limits_apply() {
    let app = spawn_app().await;
    let event = app.event(1, 10, json!({"limits": {"per_order": 4, "per_user": 5}})).await;
    let u = app.token("pair", "user").await;
    let (s, v) = app.post("/v1/orders", Some(&u), json!({"event_id": event, "category": "std", "quantity": 2})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let seats: Vec<&str> =
        v["seats"].as_array().expect("seats").iter().map(|s| s["seat_id"].as_str().unwrap_or("")).collect();
    assert_eq!(seats, vec!["A-1-5", "A-1-6"]);
    assert_eq!(v["amount"], 200);
    let order = v["order_id"].as_str().expect("id").to_string();

    let (s, v) = app.post("/v1/orders", Some(&u), json!({"event_id": event, "category": "std", "quantity": 5})).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded"), "{v}");
    let (s, v) = app.post("/v1/orders", Some(&u), json!({"event_id": event, "category": "std", "quantity": 4})).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded"), "per user: {v}");

    let (s, v) = app.post(&format!("/v1/orders/{order}/cancel"), Some(&u), json!({})).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("cancelled")), "{v}");
    let (s, v) = app.post(&format!("/v1/orders/{order}/cancel"), Some(&u), json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (_, v) = app.get(&format!("/v1/events/{event}"), Some(&u)).await;
    assert_eq!(v["categories"][0]["remaining"], 10);

    app.settle().await;
    let (s, v) = app.get("/v1/orders?limit=10", Some(&u)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["orders"][0]["status"], "cancelled", "{v}");
}
