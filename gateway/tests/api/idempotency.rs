use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::helpers::*;

pub async fn post_with_key(
    app: &TestApp,
    path: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> (StatusCode, bool, Value) {
    let r = app
        .client
        .post(format!("{}{path}", app.base))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("send");
    let replayed = r.headers().get("idempotent-replayed").is_some();
    let s = r.status();
    (s, replayed, r.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_key_replays_the_first_answer_and_moves_money_once() {
    repeated_key(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_a_repeated_key_replays_the_first_answer_and_moves_money_once() {
    repeated_key(Mode::Redis).await;
}

async fn repeated_key(mode: Mode) {
    let app = spawn_in(mode, |_| {}).await;
    let credit = json!({"amount": 5000, "reason": "top up"});
    for _ in 0..2 {
        let (s, _, _) = post_with_key(&app, "/v1/admin/wallet/k/credit", &app.admin, "credit-1", &credit).await;
        assert_eq!(s, StatusCode::OK);
    }
    let k = app.token("k", "user").await;
    assert_eq!(app.wallet(&k).await, (5000, 0), "credited twice");

    let body = json!({"kind": "normal", "total_amount": 1000, "count": 2});
    let (s1, r1, v1) = post_with_key(&app, "/v1/packets", &k, "pk-1", &body).await;
    let (s2, r2, v2) = post_with_key(&app, "/v1/packets", &k, "pk-1", &body).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert!(!r1 && r2, "only the repeat is marked replayed");
    assert_eq!(v1["packet_id"], v2["packet_id"]);
    assert_eq!(app.wallet(&k).await, (4000, 1000), "frozen twice");

    let other = json!({"kind": "normal", "total_amount": 2000, "count": 2});
    let (s, _, v) = post_with_key(&app, "/v1/packets", &k, "pk-1", &other).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"));

    // A refusal is replayed too: the same request is not run again.
    let big = json!({"kind": "normal", "total_amount": 9000, "count": 1});
    let (s, _, v) = post_with_key(&app, "/v1/packets", &k, "pk-2", &big).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds"));
    let (s, replayed, _) = post_with_key(&app, "/v1/packets", &k, "pk-2", &big).await;
    assert_eq!((s, replayed), (StatusCode::UNPROCESSABLE_ENTITY, true));

    let long = "x".repeat(300);
    let (s, _, v) = post_with_key(&app, "/v1/packets", &k, &long, &body).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_run_once() {
    one_key_concurrently(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_concurrent_requests_with_one_key_run_once() {
    one_key_concurrently(Mode::Redis).await;
}

async fn one_key_concurrently(mode: Mode) {
    let app = Arc::new(spawn_in(mode, |_| {}).await);
    let event = app.event(2, 10, json!({})).await;
    let u = app.token("dup", "user").await;
    let body = json!({"event_id": event, "category": "std", "quantity": 2});
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (app, u, body) = (app.clone(), u.clone(), body.clone());
            tokio::spawn(async move { post_with_key(&app, "/v1/orders", &u, "order-1", &body).await })
        })
        .collect();
    let mut order_ids = std::collections::HashSet::new();
    for t in tasks {
        let (s, _, v) = t.await.expect("task");
        match s {
            StatusCode::CREATED => {
                order_ids.insert(v["order_id"].as_str().expect("id").to_string());
            }
            StatusCode::CONFLICT => assert_eq!(code(&v), "idempotency_in_progress", "{v}"),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(order_ids.len(), 1, "one key made several orders: {order_ids:?}");
    let (_, v) = app.get(&format!("/v1/events/{event}"), Some(&u)).await;
    assert_eq!(v["categories"][0]["remaining"], 18);
}
