use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;

use super::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_grabs_of_a_hundred_part_lucky_packet() {
    three_hundred_grabs(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_three_hundred_grabs_of_a_hundred_part_lucky_packet() {
    three_hundred_grabs(Mode::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mode_three_hundred_grabs_of_a_hundred_part_lucky_packet() {
    three_hundred_grabs(Mode::Full).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_direct_mode_three_hundred_grabs_of_a_hundred_part_lucky_packet() {
    three_hundred_grabs_with(Mode::Redis, |c| c.actors.mode = rush_engine::config::EngineMode::Direct).await;
}

async fn three_hundred_grabs(mode: Mode) {
    three_hundred_grabs_with(mode, |_| {}).await;
}

async fn three_hundred_grabs_with(mode: Mode, tune: fn(&mut rush_engine::Config)) {
    let app = Arc::new(spawn_in(mode, tune).await);
    let total = 100_000;
    app.credit("sender", total).await;
    let sender = app.token("sender", "user").await;
    let (s, v) =
        app.post("/v1/packets", Some(&sender), json!({"kind": "lucky", "total_amount": total, "count": 100})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let packet = v["packet_id"].as_str().expect("id").to_string();
    assert_eq!(app.wallet(&sender).await, (0, total));

    let mut tokens = Vec::new();
    for i in 0..300 {
        tokens.push(app.token(&format!("g{i}"), "user").await);
    }
    let tasks: Vec<_> = tokens
        .iter()
        .cloned()
        .map(|t| {
            let app = app.clone();
            let path = format!("/v1/packets/{packet}/grab");
            tokio::spawn(async move { (t.clone(), app.post(&path, Some(&t), json!({})).await) })
        })
        .collect();
    let mut winners = Vec::new();
    let mut empty = 0;
    let mut granted = 0;
    for t in tasks {
        let (token, (s, v)) = t.await.expect("task");
        match s {
            StatusCode::OK => {
                let amount = v["amount"].as_i64().expect("amount");
                assert!(amount >= 1);
                granted += amount;
                winners.push((token, amount));
            }
            StatusCode::GONE => {
                assert_eq!(code(&v), "packet_empty", "{v}");
                empty += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!((winners.len(), empty), (100, 200));
    assert_eq!(granted, total);

    let (token, amount) = &winners[0];
    let (s, v) = app.post(&format!("/v1/packets/{packet}/grab"), Some(token), json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "already_grabbed"));
    assert_eq!(v["error"]["amount"], *amount);

    let (_, v) = app.get(&format!("/v1/packets/{packet}"), Some(&sender)).await;
    assert_eq!((v["remaining_count"].as_i64(), v["remaining_amount"].as_i64()), (Some(0), Some(0)), "{v}");
    assert_eq!(v["status"], "empty");

    app.settle().await;
    assert_eq!(app.wallet(&sender).await, (0, 0));
    let mut sum = 0;
    for (token, amount) in &winners {
        let (available, frozen) = app.wallet(token).await;
        assert_eq!((available, frozen), (*amount, 0));
        sum += available;
    }
    assert_eq!(sum, total);
    app.assert_ledger_balances().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_beyond_the_wallet_is_refused_and_a_normal_packet_splits_evenly() {
    let app = spawn_app().await;
    app.credit("s", 1000).await;
    let s_tok = app.token("s", "user").await;
    let (s, v) =
        app.post("/v1/packets", Some(&s_tok), json!({"kind": "normal", "total_amount": 1001, "count": 1})).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds"), "{v}");
    let (s, v) =
        app.post("/v1/packets", Some(&s_tok), json!({"kind": "normal", "total_amount": 1000, "count": 3})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "uneven normal split: {v}");
    assert_eq!(app.wallet(&s_tok).await, (1000, 0), "a refused packet freezes nothing");
    let (s, v) =
        app.post("/v1/packets", Some(&s_tok), json!({"kind": "normal", "total_amount": 1000, "count": 4})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let packet = v["packet_id"].as_str().expect("id").to_string();
    let g = app.token("g", "user").await;
    let (s, v) = app.post(&format!("/v1/packets/{packet}/grab"), Some(&g), json!({})).await;
    assert_eq!((s, v["amount"].as_i64()), (StatusCode::OK, Some(250)));
    app.settle().await;
    let (s, v) = app.get("/v1/wallet/ledger", Some(&g)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["entries"][0]["amount"], 250, "{v}");
    assert_eq!(v["entries"][0]["kind"], "packet_grab");
    app.assert_ledger_balances().await;
}
