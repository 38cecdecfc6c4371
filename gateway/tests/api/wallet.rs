//! Wallet recharge through a channel, withdrawals under the risk rules and
//! their approval, and `rush reconcile` over the result.

use reqwest::StatusCode;
use serde_json::json;

use super::helpers::*;

async fn recharge(app: &TestApp, u: &str, amount: i64, channel: &str) -> String {
    let (s, v) = app.post("/v1/wallet/recharge", Some(u), json!({"amount": amount, "channel": channel})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!((v["purpose"].as_str(), v["amount"].as_i64()), (Some("recharge"), Some(amount)));
    v["payment_id"].as_str().expect("payment").to_string()
}

async fn succeeded(app: &TestApp, payment: &str) -> bool {
    let (_, v) = app.get(&format!("/v1/payments/{payment}"), Some(&app.admin)).await;
    v["status"] == "succeeded"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recharge_credits_the_wallet_once() {
    let app = spawn_app().await;
    let u = app.token("saver", "user").await;
    let payment = recharge(&app, &u, 5_000, "ecard").await;
    assert_eq!(app.wallet(&u).await, (0, 0), "nothing before the money arrives");
    let (s, _) =
        app.post(&format!("/v1/sandbox/ecard/payments/{payment}/complete"), None, json!({"duplicates": 3})).await;
    assert_eq!(s, StatusCode::OK);
    assert!(eventually(10, || succeeded(&app, &payment)).await);
    // Let every duplicate arrive, then count.
    let all_in = eventually(10, || async {
        let (_, v) = app.get("/v1/admin/callbacks", Some(&app.admin)).await;
        v["callbacks"].as_array().map(|c| c.len()) == Some(4)
    })
    .await;
    assert!(all_in);
    assert_eq!(app.wallet(&u).await, (5_000, 0));
    let (_, v) = app.get("/v1/wallet/ledger", Some(&u)).await;
    let kinds: Vec<&str> =
        v["entries"].as_array().expect("entries").iter().map(|e| e["kind"].as_str().unwrap_or("")).collect();
    assert_eq!(kinds, vec!["recharge"]);
    // Bad input.
    for (body, why) in [
        (json!({"amount": 0, "channel": "ecard"}), "zero"),
        (json!({"amount": -5, "channel": "ecard"}), "negative"),
        (json!({"amount": 1_000_000_000, "channel": "ecard"}), "over the bound"),
        (json!({"amount": 100, "channel": "bank"}), "unknown channel"),
        (json!({"amount": 100}), "no channel"),
    ] {
        let (s, v) = app.post("/v1/wallet/recharge", Some(&u), body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{why}: {v}");
    }
    app.assert_ledger_balances().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawals_keep_the_daily_count_and_amount_and_wait_for_an_admin() {
    let app = spawn_app().await;
    let u = app.token("spender", "user").await;
    app.credit("spender", 3_000_000).await;
    // Ten at once: three a day.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (client, base, u) = (app.client.clone(), app.base.clone(), u.clone());
        tasks.push(tokio::spawn(async move {
            let r = client.post(format!("{base}/v1/wallet/withdraw")).bearer_auth(u).json(&json!({"amount": 10_000}));
            let r = r.send().await.expect("send");
            (r.status(), r.json::<serde_json::Value>().await.expect("json"))
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let (s, v) = t.await.expect("task");
        match s {
            StatusCode::CREATED => ids.push(v["withdrawal_id"].as_str().expect("id").to_string()),
            StatusCode::UNPROCESSABLE_ENTITY => assert_eq!(code(&v), "risk_refused", "{v}"),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(ids.len(), 3);
    assert_eq!(app.wallet(&u).await, (3_000_000 - 30_000, 30_000), "frozen until decided");
    // The admin's queue; users cannot decide.
    let (s, v) = app.get("/v1/admin/withdrawals", Some(&app.admin)).await;
    assert_eq!((s, v["withdrawals"].as_array().map(|w| w.len())), (StatusCode::OK, Some(3)));
    let (s, _) = app.post(&format!("/v1/admin/withdrawals/{}/approve", ids[0]), Some(&u), json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = app.post(&format!("/v1/admin/withdrawals/{}/approve", ids[0]), Some(&app.admin), json!({})).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("approved")), "{v}");
    let (s, v) =
        app.post(&format!("/v1/admin/withdrawals/{}/reject", ids[1]), Some(&app.admin), json!({"reason": "kyc"})).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("rejected")), "{v}");
    let (s, v) = app.post(&format!("/v1/admin/withdrawals/{}/reject", ids[0]), Some(&app.admin), json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "withdrawal_not_pending"));
    let (s, v) = app.post("/v1/admin/withdrawals/42/approve", Some(&app.admin), json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "withdrawal_not_found"));
    assert_eq!(app.wallet(&u).await, (3_000_000 - 20_000, 10_000));
    // The rejected one freed a place; the amount rule still holds.
    let (s, v) = app.post("/v1/wallet/withdraw", Some(&u), json!({"amount": 990_001})).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "risk_refused"), "over 10 000.00 today");
    let (s, v) = app.post("/v1/wallet/withdraw", Some(&u), json!({"amount": 980_000})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app.post("/v1/wallet/withdraw", Some(&u), json!({"amount": 100})).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "risk_refused"), "a fourth today");
    // Nobody withdraws what they do not have; bad amounts are 400.
    let poor = app.token("poor", "user").await;
    let (s, v) = app.post("/v1/wallet/withdraw", Some(&poor), json!({"amount": 500})).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds"));
    for amount in [0, -1, 99] {
        let (s, _) = app.post("/v1/wallet/withdraw", Some(&u), json!({"amount": amount})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{amount}");
    }
    app.assert_ledger_balances().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_limits_are_configurable() {
    let app = spawn_with(|c| {
        c.wallet.withdraw_count_per_day_max = 1;
        c.wallet.withdraw_fen_per_day_max = 500;
    })
    .await;
    let u = app.token("limited", "user").await;
    app.credit("limited", 10_000).await;
    let (s, v) = app.post("/v1/wallet/withdraw", Some(&u), json!({"amount": 600})).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "risk_refused"));
    let (s, _) = app.post("/v1/wallet/withdraw", Some(&u), json!({"amount": 500})).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = app.post("/v1/wallet/withdraw", Some(&u), json!({"amount": 100})).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "risk_refused"));
}

fn reconcile(app: &TestApp) -> (i32, serde_json::Value) {
    rush_reconcile(&[("RUSH__DATA_DIR", app.dir().as_os_str())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rush_reconcile_passes_a_clean_ledger_and_reports_every_mismatch() {
    let app = spawn_app().await;
    let u = app.token("audited", "user").await;
    app.credit("audited", 10_000).await;
    let paid = recharge(&app, &u, 2_500, "wechat").await;
    app.post(&format!("/v1/sandbox/wechat/payments/{paid}/complete"), None, json!({})).await;
    assert!(eventually(10, || succeeded(&app, &paid)).await);
    let (s, v) = app.post("/v1/wallet/withdraw", Some(&u), json!({"amount": 1_000})).await;
    assert_eq!(s, StatusCode::CREATED);
    let w = v["withdrawal_id"].as_str().expect("id").to_string();
    app.post(&format!("/v1/admin/withdrawals/{w}/approve"), Some(&app.admin), json!({})).await;
    let (status, report) = reconcile(&app);
    assert_eq!(status, 0, "{report:#}");
    assert_eq!((report["deposits"].as_i64(), report["withdrawals"].as_i64()), (Some(12_500), Some(1_000)));
    assert_eq!(report["user_balances"].as_i64(), Some(11_500));
    assert_eq!(report["bill_lines"].as_i64(), Some(1));

    // The channel took money rush never heard of (callback dropped, not
    // queried yet), and someone edited a balance by hand.
    let lost = recharge(&app, &u, 700, "alipay").await;
    app.post(&format!("/v1/sandbox/alipay/payments/{lost}/complete"), None, json!({"callback": "drop"})).await;
    let db = &app.engine.durable().db().write;
    sqlx::query("UPDATE accounts SET available = available + 1 WHERE user_id = 'audited'")
        .execute(db)
        .await
        .expect("edit");
    let (status, report) = reconcile(&app);
    assert_eq!(status, 1, "{report:#}");
    let mut kinds: Vec<&str> =
        report["mismatches"].as_array().expect("mismatches").iter().map(|m| m["kind"].as_str().unwrap_or("")).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec!["account_vs_journal", "deposits_vs_balances", "missing_in_rush", "world_balance"],
        "{report:#}"
    );
}

/// Sold seats against the money (issue 13): a paid order whose payment is
/// refunded, and revenue that does not match the paid orders, are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rush_reconcile_reports_paid_orders_without_their_money() {
    let app = spawn_app().await;
    let event = app.event(1, 4, json!({})).await;
    let mut paid = Vec::new();
    for user in ["ra", "rb"] {
        let t = app.token(user, "user").await;
        let (s, v) =
            app.post("/v1/orders", Some(&t), json!({"event_id": event, "category": "std", "quantity": 1})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let order = v["order_id"].as_str().expect("order").to_string();
        let (_, v) = app.post(&format!("/v1/orders/{order}/payments"), Some(&t), json!({"channel": "ecard"})).await;
        let payment = v["payment_id"].as_str().expect("payment").to_string();
        app.post(&format!("/v1/sandbox/ecard/payments/{payment}/complete"), None, json!({})).await;
        assert!(eventually(10, || succeeded(&app, &payment)).await);
        paid.push((order, payment));
    }
    app.settle().await;
    let (status, report) = reconcile(&app);
    assert_eq!(status, 0, "{report:#}");
    // One payment marked refunded behind the order's back; another order's
    // record no longer paid while its money stays booked as sales.
    let db = &app.engine.durable().db().write;
    sqlx::query("UPDATE payments SET status = 'refunded', refund = 'done' WHERE payment_id = $1")
        .bind(paid[0].1.parse::<i64>().expect("id"))
        .execute(db)
        .await
        .expect("edit");
    let order: i64 = paid[1].0.parse().expect("id");
    for gene in 0..16 {
        sqlx::query(&format!("UPDATE orders_{gene} SET status = 'expired' WHERE order_id = $1"))
            .bind(order)
            .execute(db)
            .await
            .expect("edit");
    }
    let (status, report) = reconcile(&app);
    assert_eq!(status, 1, "{report:#}");
    let mut kinds: Vec<&str> =
        report["mismatches"].as_array().expect("mismatches").iter().map(|m| m["kind"].as_str().unwrap_or("")).collect();
    kinds.sort();
    // (and the bill, which has the payment as paid, disagrees with it too)
    assert_eq!(kinds, vec!["paid_order_unpaid", "revenue_vs_sold", "status"], "{report:#}");
}
