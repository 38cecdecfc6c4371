//! Payments over HTTP against the sandbox channels: callbacks duplicated,
//! late, dropped, forged and concurrent; closing at expiry; late money;
//! refunds.

use std::sync::Arc;

use reqwest::StatusCode;
use rush_engine::config::Config;
use rush_engine::domain::{Fen, Id};
use rush_engine::pay::{ChannelKind, Notification, Paid};
use serde_json::{json, Value};

use super::helpers::*;

/// A held order of `seats` seats (100 fen each) for a new user.
async fn held_order(app: &TestApp, user: &str, seats: u32, extra: Value) -> (String, String, String) {
    let event = app.event(1, 8, extra).await;
    let u = app.token(user, "user").await;
    let (s, v) =
        app.post("/v1/orders", Some(&u), json!({"event_id": event, "category": "std", "quantity": seats})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (event, v["order_id"].as_str().expect("order").to_string(), u)
}

async fn open_payment(app: &TestApp, order: &str, u: &str, channel: &str) -> String {
    let (s, v) = app.post(&format!("/v1/orders/{order}/payments"), Some(u), json!({"channel": channel})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["status"], "pending");
    v["payment_id"].as_str().expect("payment").to_string()
}

async fn complete(app: &TestApp, channel: &str, payment: &str, plan: Value) -> (StatusCode, Value) {
    app.post(&format!("/v1/sandbox/{channel}/payments/{payment}/complete"), None, plan).await
}

async fn payment_status(app: &TestApp, payment: &str) -> String {
    let (s, v) = app.get(&format!("/v1/payments/{payment}"), Some(&app.admin)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["status"].as_str().unwrap_or_default().to_string()
}

async fn wait_payment(app: &TestApp, payment: &str, want: &str) {
    let ok = eventually(15, || async { payment_status(app, payment).await == want }).await;
    assert!(ok, "payment {payment} never became {want} (is {})", payment_status(app, payment).await);
}

async fn seat_statuses(app: &TestApp, event: &str) -> Vec<String> {
    let (_, v) = app.get(&format!("/v1/events/{event}/seats"), Some(&app.admin)).await;
    v["seats"].as_array().expect("seats").iter().map(|s| s["status"].as_str().unwrap_or_default().to_string()).collect()
}

/// The callback log's outcomes for one payment.
async fn outcomes(app: &TestApp, payment: &str) -> Vec<String> {
    let (s, v) = app.get("/v1/admin/callbacks?limit=100", Some(&app.admin)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["callbacks"]
        .as_array()
        .expect("callbacks")
        .iter()
        .filter(|c| c["payment_id"] == payment)
        .map(|c| c["outcome"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn balance(app: &TestApp, account: &str) -> i64 {
    app.engine.durable().balance(account).await.expect("balance").available.get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_order_sells_its_seats_once_on_every_channel() {
    let app = spawn_app().await;
    for channel in ["wechat", "alipay", "ecard"] {
        pays_once(&app, channel).await;
    }
    assert_eq!(balance(&app, "@sales").await, 3 * 200);
    app.assert_ledger_balances().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_a_paid_order_sells_its_seats_once() {
    let app = spawn_in(Mode::Redis, |_| {}).await;
    pays_once(&app, "wechat").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mode_a_paid_order_sells_its_seats_once() {
    let app = spawn_in(Mode::Full, |_| {}).await;
    let order: Id = pays_once(&app, "alipay").await.parse().expect("id");
    app.settle().await;
    let persisted = app.engine.durable().order(order).await.expect("read").expect("persisted");
    assert_eq!(persisted.status, rush_engine::domain::OrderStatus::Paid, "Postgres has the order paid");
    assert_eq!(balance(&app, "@sales").await, 200);
    app.assert_ledger_balances().await;
}

/// Three copies of the callback: one applies, the others are duplicates.
/// Returns the order.
async fn pays_once(app: &TestApp, channel: &str) -> String {
    let (event, order, u) = held_order(app, &format!("buyer-{channel}"), 2, json!({})).await;
    let payment = open_payment(app, &order, &u, channel).await;
    // Asking again on the same channel gives the same open payment.
    let (s, v) = app.post(&format!("/v1/orders/{order}/payments"), Some(&u), json!({"channel": channel})).await;
    assert_eq!((s, v["payment_id"].as_str()), (StatusCode::OK, Some(payment.as_str())));
    assert_eq!(v["amount"], 200, "the amount is the order's");
    let (s, v) = complete(app, channel, &payment, json!({"duplicates": 2})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    wait_payment(app, &payment, "succeeded").await;
    assert_eq!(order_status(app, &order).await, "paid");
    assert_eq!(seat_statuses(app, &event).await.iter().filter(|s| *s == "sold").count(), 2);
    let ok = eventually(10, || async { outcomes(app, &payment).await.len() == 3 }).await;
    assert!(ok, "three callbacks arrive");
    let mut seen = outcomes(app, &payment).await;
    seen.sort();
    assert_eq!(seen, vec!["applied", "duplicate", "duplicate"], "{channel}");
    // Paying again is refused by the channel; the order cannot be cancelled.
    let (s, v) = complete(app, channel, &payment, json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "not_payable"));
    let (s, v) = app.post(&format!("/v1/orders/{order}/cancel"), Some(&u), json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "order_not_pending"));
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_pays_only_a_pending_order_on_a_known_channel() {
    let app = spawn_app().await;
    let (_, order, u) = held_order(&app, "owner", 1, json!({})).await;
    let other = app.token("stranger", "user").await;
    let (s, v) = app.post(&format!("/v1/orders/{order}/payments"), Some(&other), json!({"channel": "wechat"})).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "order_not_found"));
    let (s, v) = app.post(&format!("/v1/orders/{order}/payments"), Some(&u), json!({"channel": "paypal"})).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"));
    let (s, v) =
        app.post(&format!("/v1/orders/{order}/payments"), Some(&u), json!({"channel": "wechat", "amount": 1})).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_json"), "the amount never comes from the request");
    let (s, _) = app.post(&format!("/v1/orders/{order}/cancel"), Some(&u), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = app.post(&format!("/v1/orders/{order}/payments"), Some(&u), json!({"channel": "wechat"})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "order_not_pending"));
    let (s, v) = app.get("/v1/payments/123", Some(&u)).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "payment_not_found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_mismatched_callbacks_change_nothing_and_are_logged() {
    let app = spawn_app().await;
    let (event, order, u) = held_order(&app, "victim", 1, json!({})).await;
    let payment = open_payment(&app, &order, &u, "wechat").await;
    let pid: Id = payment.parse().expect("id");
    let note = |amount: i64| Notification {
        payment_id: pid,
        paid: Paid {
            txn_id: "FORGED".into(),
            amount: Fen::new(amount),
            paid_at_ms: rush_engine::domain::now_unix_ms(),
        },
    };
    let send = |cb: rush_engine::pay::wire::Callback, channel: &'static str| {
        let mut req = app.client.post(format!("{}/v1/channels/{channel}/notify", app.base)).body(cb.body);
        req = req.header("content-type", cb.content_type);
        for (k, v) in cb.headers {
            req = req.header(k, v);
        }
        async move {
            let r = req.send().await.expect("send");
            (r.status(), r.text().await.expect("body"))
        }
    };
    use rush_engine::pay::wire::{Alipay, Ecard, Wechat, Wire};
    let age_ms_max = 300_000;
    // Signed with somebody else's key.
    let forger = Wechat { secret: "not-the-real-secret!".into(), age_ms_max };
    let (s, body) = send(forger.callback(&note(100), rush_engine::domain::now_unix_ms()), "wechat").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("FAIL"), "wechat's failure shape: {body}");
    // Signed right, wrong amount.
    let real = Wechat { secret: Config::default().payments.wechat_secret, age_ms_max };
    let (s, _) = send(real.callback(&note(1), rush_engine::domain::now_unix_ms()), "wechat").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Signed right for another channel's key and shape: unknown there.
    let alipay = Alipay { secret: Config::default().payments.alipay_secret, age_ms_max };
    let (s, body) = send(alipay.callback(&note(100), rush_engine::domain::now_unix_ms()), "alipay").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "failure"), "alipay answers failure in text");
    // Old: a replay from long ago.
    let (s, _) = send(real.callback(&note(100), rush_engine::domain::now_unix_ms() - 3_600_000), "wechat").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Garbage.
    let ecard = Ecard { secret: "x".repeat(20), age_ms_max };
    let mut cb = ecard.callback(&note(100), rush_engine::domain::now_unix_ms());
    cb.headers.retain(|(k, _)| k != "x-ecard-signature");
    let (_, body) = send(cb, "ecard").await;
    assert!(body.contains("\"retcode\":1"), "{body}");

    assert_eq!(payment_status(&app, &payment).await, "pending");
    assert_eq!(order_status(&app, &order).await, "pending_payment");
    assert!(seat_statuses(&app, &event).await.iter().all(|s| s != "sold"));
    let (_, v) = app.get("/v1/admin/callbacks?limit=100", Some(&app.admin)).await;
    let mut seen: Vec<&str> =
        v["callbacks"].as_array().expect("log").iter().map(|c| c["outcome"].as_str().unwrap_or("")).collect();
    seen.sort();
    assert_eq!(seen, vec!["amount_mismatch", "bad_signature", "bad_signature", "stale", "unknown_payment"]);
    assert_eq!(journal_rows(&app, "order_payment").await, 0);
    let (s, _) = app.get("/v1/admin/callbacks", Some(&u)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_callback_is_completed_by_the_active_query() {
    let app = spawn_with(|c| c.payments.query_after_ms = 200).await;
    let (event, order, u) = held_order(&app, "patient", 1, json!({})).await;
    let payment = open_payment(&app, &order, &u, "ecard").await;
    let (s, v) = complete(&app, "ecard", &payment, json!({"callback": "drop"})).await;
    assert_eq!((s, v["callback"].as_str()), (StatusCode::OK, Some("dropped")));
    wait_payment(&app, &payment, "succeeded").await;
    assert_eq!(order_status(&app, &order).await, "paid");
    assert_eq!(seat_statuses(&app, &event).await.iter().filter(|s| *s == "sold").count(), 1);
    assert!(outcomes(&app, &payment).await.is_empty(), "no callback ever came");
    assert!(app.engine.metrics.render().contains("rush_payments_total{outcome=\"found_by_query\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_callbacks_after_the_query_settled_change_nothing() {
    let app = spawn_with(|c| c.payments.query_after_ms = 200).await;
    let (_, order, u) = held_order(&app, "slowcb", 1, json!({})).await;
    let payment = open_payment(&app, &order, &u, "alipay").await;
    complete(&app, "alipay", &payment, json!({"delay_ms": 1500, "duplicates": 1})).await;
    wait_payment(&app, &payment, "succeeded").await;
    assert!(outcomes(&app, &payment).await.is_empty(), "the query settled it before any callback");
    let ok = eventually(10, || async { outcomes(&app, &payment).await.len() == 2 }).await;
    assert!(ok, "the late callbacks arrive");
    assert_eq!(outcomes(&app, &payment).await, vec!["duplicate", "duplicate"]);
    assert_eq!(journal_rows(&app, "order_payment").await, 2, "one transfer, two legs");
    assert_eq!(balance(&app, "@sales").await, 100);
}

/// Many concurrent requests to pay one order, on two channels: one
/// payment per channel is opened (201) and every other request gets it
/// back (200), so nobody is sent to pay twice.
async fn concurrent_pay_requests_open_one_payment_per_channel(mode: Mode) {
    let app = Arc::new(spawn_in(mode, |_| {}).await);
    let (_, order, u) = held_order(&app, "eager", 1, json!({})).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (app, order, u) = (app.clone(), order.clone(), u.clone());
        let channel = if i % 2 == 0 { "wechat" } else { "alipay" };
        tasks.push(tokio::spawn(async move {
            let (s, v) = app.post(&format!("/v1/orders/{order}/payments"), Some(&u), json!({"channel": channel})).await;
            (channel, s, v["payment_id"].as_str().unwrap_or_default().to_string())
        }));
    }
    let mut by_channel: std::collections::BTreeMap<&str, (Vec<String>, usize)> = Default::default();
    for t in tasks {
        let (channel, s, id) = t.await.expect("task");
        assert!(s == StatusCode::CREATED || s == StatusCode::OK, "{channel}: {s}");
        let e = by_channel.entry(channel).or_default();
        e.0.push(id);
        e.1 += usize::from(s == StatusCode::CREATED);
    }
    for (channel, (mut ids, created)) in by_channel {
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 1, "{channel}: one payment, not {ids:?}");
        assert_eq!(created, 1, "{channel}: opened once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pay_requests_open_one_payment_per_channel_embedded() {
    concurrent_pay_requests_open_one_payment_per_channel(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mode_concurrent_pay_requests_open_one_payment_per_channel() {
    concurrent_pay_requests_open_one_payment_per_channel(Mode::Full).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callbacks_for_one_payment_make_one_transition() {
    let app = spawn_app().await;
    let (event, order, u) = held_order(&app, "crowd", 3, json!({})).await;
    let payment = open_payment(&app, &order, &u, "wechat").await;
    let (_, v) = complete(&app, "wechat", &payment, json!({"callback": "drop"})).await;
    let paid = Paid {
        txn_id: v["txn_id"].as_str().expect("txn").into(),
        amount: Fen::new(300),
        paid_at_ms: rush_engine::domain::now_unix_ms(),
    };
    let sandbox = app.engine.sandbox(ChannelKind::Wechat).expect("sandbox");
    let n = Notification { payment_id: payment.parse().expect("id"), paid };
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let cb = sandbox.signed_callback(&n);
        let mut req = app.client.post(format!("{}/v1/channels/wechat/notify", app.base)).body(cb.body);
        for (k, v) in cb.headers {
            req = req.header(k, v);
        }
        tasks.push(tokio::spawn(async move { req.send().await.expect("send").status() }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::OK, "every copy is acknowledged");
    }
    let mut seen = outcomes(&app, &payment).await;
    seen.sort();
    seen.dedup();
    assert_eq!(seen, vec!["applied", "duplicate"]);
    assert_eq!(outcomes(&app, &payment).await.iter().filter(|o| *o == "applied").count(), 1);
    assert_eq!(payment_status(&app, &payment).await, "succeeded");
    assert_eq!(journal_rows(&app, "order_payment").await, 2);
    assert_eq!(balance(&app, "@sales").await, 300);
    assert_eq!(seat_statuses(&app, &event).await.iter().filter(|s| *s == "sold").count(), 3);
    assert_eq!(order_status(&app, &order).await, "paid");
    app.assert_ledger_balances().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_that_arrives_after_the_order_expired_is_refunded() {
    // The channel lets the buyer pay until rush closes the trade, which the
    // sweeper does just before it releases the expired hold: money taken
    // in between is late (the race a real channel allows). The sweeper
    // runs every 3 s here, so the buyer pays in that gap.
    let app = spawn_with(|c| {
        c.payments.close_grace_ms = 60_000;
        c.payments.query_after_ms = 60_000;
        c.workers.timeout_poll_ms = 3_000;
    })
    .await;
    let (event, order, u) = held_order(&app, "tardy", 2, json!({"hold_ttl_s": 1})).await;
    let payment = open_payment(&app, &order, &u, "wechat").await;
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let (s, v) = complete(&app, "wechat", &payment, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    wait_payment(&app, &payment, "refunded").await;
    assert_eq!(outcomes(&app, &payment).await, vec!["late_refunded"]);
    let expired = eventually(10, || async { order_status(&app, &order).await == "expired" }).await;
    assert!(expired, "the hold expires");
    assert!(seat_statuses(&app, &event).await.iter().all(|s| s == "available"));
    let trade = app.engine.sandbox(ChannelKind::Wechat).expect("sandbox");
    use rush_engine::pay::PaymentChannel;
    assert!(matches!(
        trade.query(payment.parse().expect("id")).await.expect("query"),
        rush_engine::pay::TradeState::Refunded(_)
    ));
    assert_eq!(journal_rows(&app, "late_payment").await, 2);
    assert_eq!(journal_rows(&app, "late_refund").await, 2);
    assert_eq!(balance(&app, "@suspense").await, 0, "nothing still owed");
    assert_eq!(balance(&app, "@sales").await, 0, "nothing sold");
    app.assert_ledger_balances().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_payment_is_closed_at_expiry_and_cannot_be_paid_after() {
    let app = spawn_with(|c| {
        c.payments.close_grace_ms = 100;
        c.payments.query_after_ms = 200;
    })
    .await;
    let (event, order, u) = held_order(&app, "absent", 1, json!({"hold_ttl_s": 1})).await;
    let payment = open_payment(&app, &order, &u, "alipay").await;
    wait_payment(&app, &payment, "closed").await;
    let (s, v) = complete(&app, "alipay", &payment, json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "not_payable"));
    let expired = eventually(10, || async { order_status(&app, &order).await == "expired" }).await;
    assert!(expired);
    assert!(seat_statuses(&app, &event).await.iter().all(|s| s == "available"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_payment_of_one_order_is_refunded() {
    let app = spawn_app().await;
    let (_, order, u) = held_order(&app, "twice", 1, json!({})).await;
    let first = open_payment(&app, &order, &u, "wechat").await;
    let second = open_payment(&app, &order, &u, "ecard").await;
    complete(&app, "wechat", &first, json!({})).await;
    wait_payment(&app, &first, "succeeded").await;
    complete(&app, "ecard", &second, json!({})).await;
    wait_payment(&app, &second, "refunded").await;
    assert_eq!(payment_status(&app, &first).await, "succeeded");
    assert_eq!(balance(&app, "@sales").await, 100);
    assert_eq!(balance(&app, "@suspense").await, 0);
    app.assert_ledger_balances().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_returns_the_money_and_puts_the_seats_back_on_sale() {
    refund(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_a_refund_returns_the_money_and_puts_the_seats_back_on_sale() {
    refund(Mode::Redis).await;
}

async fn refund(mode: Mode) {
    let app = spawn_in(mode, |_| {}).await;
    let (event, order, u) = held_order(&app, "regret", 2, json!({})).await;
    let (s, v) = app.post(&format!("/v1/orders/{order}/refund"), Some(&u), json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "order_not_paid"));
    let payment = open_payment(&app, &order, &u, "ecard").await;
    complete(&app, "ecard", &payment, json!({})).await;
    wait_payment(&app, &payment, "succeeded").await;
    let stranger = app.token("stranger", "user").await;
    let (s, v) = app.post(&format!("/v1/orders/{order}/refund"), Some(&stranger), json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "order_not_found"));
    let (s, v) = app.post(&format!("/v1/orders/{order}/refund"), Some(&u), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["status"].as_str(), v["amount"].as_i64()), (Some("refunded"), Some(200)));
    assert!(seat_statuses(&app, &event).await.iter().all(|s| s == "available"));
    let ok = eventually(10, || async { order_status(&app, &order).await == "refunded" }).await;
    assert!(ok, "the order shows refunded");
    let (s, v) = app.post(&format!("/v1/orders/{order}/refund"), Some(&u), json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "already_refunded"));
    assert_eq!(balance(&app, "@sales").await, 0);
    assert_eq!(journal_rows(&app, "order_refund").await, 2);
    // The seats sell again; the buyer's allowance came back too.
    let (s, _) = app.post("/v1/orders", Some(&u), json!({"event_id": event, "category": "std", "quantity": 6})).await;
    assert_eq!(s, StatusCode::CREATED);
    app.assert_ledger_balances().await;
}
