//! The sale's lifecycle (issue 18): pause, resume, edits, cancellation
//! with its refund fan-out, the public catalogue, an event's stats and the
//! admin order search, over HTTP in embedded and Redis mode. Across real
//! processes (and the fan-out in full mode, with kill -9): `nodes.rs`.

use std::collections::HashSet;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::helpers::*;

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn in_ms(ms: i64) -> DateTime<Utc> {
    let t = Utc::now() + chrono::Duration::milliseconds(ms);
    DateTime::from_timestamp_millis(t.timestamp_millis()).expect("a time")
}

async fn hold(app: &TestApp, tok: &str, event: &str, quantity: u32) -> (StatusCode, Value) {
    app.post("/v1/orders", Some(tok), json!({"event_id": event, "category": "std", "quantity": quantity})).await
}

async fn event_of(app: &TestApp, event: &str) -> Value {
    let (s, v) = app.get(&format!("/v1/events/{event}"), Some(&app.admin)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn admin_post(app: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
    app.post(path, Some(&app.admin), body).await
}

async fn payment_status(app: &TestApp, payment: &str) -> String {
    let (_, v) = app.get(&format!("/v1/payments/{payment}"), Some(&app.admin)).await;
    v["status"].as_str().unwrap_or_default().to_string()
}

/// A held order paid at the sandbox through `channel`: (order, payment).
async fn paid_order(app: &TestApp, tok: &str, event: &str, channel: &str) -> (String, String) {
    let (s, v) = hold(app, tok, event, 1).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let order = v["order_id"].as_str().expect("order").to_string();
    let (s, v) = app.post(&format!("/v1/orders/{order}/payments"), Some(tok), json!({"channel": channel})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let payment = v["payment_id"].as_str().expect("payment").to_string();
    let (s, v) = app.post(&format!("/v1/sandbox/{channel}/payments/{payment}/complete"), None, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ok = eventually(15, || async { payment_status(app, &payment).await == "succeeded" }).await;
    assert!(ok, "payment {payment} never succeeded");
    (order, payment)
}

/// Pause, resume, the edit rules and cancel, through one node.
async fn operator_actions(app: &TestApp) {
    let fan = app.token("fan", "user").await;
    let event = app.event(1, 6, json!({})).await;
    let base = format!("/v1/admin/events/{event}");

    let (s, v) = app.post(&format!("{base}/pause"), Some(&fan), json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a buyer cannot pause: {v}");
    let (s, v) = admin_post(app, &format!("{base}/pause"), json!({})).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("paused")), "{v}");
    let (s, v) = hold(app, &fan, &event, 1).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "sale_paused"), "{v}");
    let (s, v) = admin_post(app, &format!("{base}/pause"), json!({})).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("paused")), "pausing again changes nothing: {v}");

    let (s, v) = admin_post(app, &format!("{base}/resume"), json!({})).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("on_sale")), "{v}");
    let (s, v) = hold(app, &fan, &event, 1).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let pending = v["order_id"].as_str().expect("order").to_string();

    // Edits: what buyers see changes at once; the new limit applies to the next hold.
    let patch = json!({"name": "Renamed", "venue": "Stadium", "limits": {"per_user": 1}, "hold_ttl_s": 60});
    let (s, v) = app.patch(&base, Some(&app.admin), patch).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["name"].as_str(), v["venue"].as_str()), (Some("Renamed"), Some("Stadium")), "{v}");
    assert_eq!((v["limits"]["per_user"].as_u64(), v["hold_ttl_s"].as_u64()), (Some(1), Some(60)), "{v}");
    let (s, v) = hold(app, &fan, &event, 1).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded"), "{v}");
    let one_seat = json!({"seats": [{"section": "A", "row": 1, "col": 1, "category": "std"}]});
    for fixed in [json!({"categories": [{"id": "std", "price": 500}]}), one_seat] {
        let (s, v) = app.patch(&base, Some(&app.admin), fixed.clone()).await;
        assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "event_on_sale"), "fixed once on sale: {fixed} {v}");
    }
    for bad in [
        json!({"hold_ttl_s": 0}),
        json!({"name": ""}),
        json!({"limits": {"per_order": 0}}),
        json!({"sale_ends_at": stamp(Utc::now() - chrono::Duration::hours(1))}),
        json!({"on_sale_at": "2031-01-01T00:00:00Z", "sale_ends_at": "2030-06-01T00:00:00Z"}),
        json!({"color": "red"}),
    ] {
        let (s, v) = app.patch(&base, Some(&app.admin), bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let (s, _) = app.patch("/v1/admin/events/123456789", Some(&app.admin), json!({"name": "x"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(event_of(app, &event).await["name"], "Renamed", "a refused edit changed nothing");

    // Moved back to scheduled, a price still cannot change while a seat is held.
    let later = stamp(Utc::now() + chrono::Duration::hours(1));
    let (s, v) = app.patch(&base, Some(&app.admin), json!({"on_sale_at": later})).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("scheduled")), "{v}");
    let (s, v) = app.patch(&base, Some(&app.admin), json!({"categories": [{"id": "std", "price": 500}]})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "event_on_sale"), "a seat is held: {v}");
    let now = stamp(Utc::now());
    assert_eq!(app.patch(&base, Some(&app.admin), json!({"on_sale_at": now})).await.0, StatusCode::OK);

    // Cancel: final, idempotent, the first reason stays.
    let (s, v) = admin_post(app, &format!("{base}/cancel"), json!({"reason": "storm"})).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::ACCEPTED, Some("cancelled")), "{v}");
    assert_eq!(v["cancellation"]["reason"], "storm", "{v}");
    let (s, v) = hold(app, &app.token("late", "user").await, &event, 1).await;
    assert_eq!((s, code(&v)), (StatusCode::GONE, "event_cancelled"), "{v}");
    // No payment opens for an order of a cancelled event.
    let (s, v) = app.post(&format!("/v1/orders/{pending}/payments"), Some(&fan), json!({"channel": "wechat"})).await;
    assert!(matches!(code(&v), "event_cancelled" | "order_not_pending"), "{s}: {v}");
    let (s, v) = admin_post(app, &format!("{base}/cancel"), json!({"reason": "other"})).await;
    assert_eq!((s, v["cancellation"]["reason"].as_str()), (StatusCode::ACCEPTED, Some("storm")), "{v}");
    for action in ["pause", "resume"] {
        let (s, v) = admin_post(app, &format!("{base}/{action}"), json!({})).await;
        assert_eq!((s, code(&v)), (StatusCode::GONE, "event_cancelled"), "{action}: {v}");
    }
    let (s, v) = app.patch(&base, Some(&app.admin), json!({"name": "again"})).await;
    assert_eq!((s, code(&v)), (StatusCode::GONE, "event_cancelled"), "{v}");
    // A malformed change is 400 whatever the state (the contract's order).
    let too_many: Vec<Value> = (0..33).map(|_| json!({"id": "std", "price": 1})).collect();
    let bad_map = json!({"layout": {"sections": [{"name": "A", "rows": 1, "cols": 1, "category": "nope"}]}});
    for bad in [
        json!({"categories": [{"id": "std", "price": 0}]}),
        json!({"categories": too_many}),
        json!({"categories": []}),
        json!({"categories": [{"id": " ", "price": 5}]}),
        bad_map,
        json!({"hold_ttl_s": 0}),
        json!({"name": " "}),
    ] {
        let (s, v) = app.patch(&base, Some(&app.admin), bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    // The fan-out closed the pending hold and freed its seat.
    let closed = eventually(15, || async {
        order_status(app, &pending).await == "cancelled"
            && event_of(app, &event).await["categories"][0]["remaining"] == 6
    })
    .await;
    assert!(closed, "the hold was not closed: {}", order_status(app, &pending).await);
    let v = event_of(app, &event).await;
    assert_eq!(
        (v["cancellation"]["refunds_total"].as_u64(), v["cancellation"]["refunds_done"].as_u64()),
        (Some(0), Some(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_edit_and_cancel_embedded_and_redis_mode() {
    operator_actions(&spawn_app().await).await;
    operator_actions(&spawn_in(Mode::Redis, |_| {}).await).await;
}

/// A price and a seat map changed before the opening are what buyers get
/// after it; neither changes once on sale.
async fn price_before_the_opening(app: &TestApp) {
    let opens = in_ms(1500);
    let event = app.event(1, 4, json!({"on_sale_at": stamp(opens)})).await;
    let base = format!("/v1/admin/events/{event}");
    let (s, v) = app.patch(&base, Some(&app.admin), json!({"categories": [{"id": "nope", "price": 5}]})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "unknown category: {v}");
    let (s, v) = app.patch(&base, Some(&app.admin), json!({"categories": [{"id": "std", "price": 250}]})).await;
    assert_eq!((s, v["categories"][0]["price"].as_i64()), (StatusCode::OK, Some(250)), "{v}");
    assert_eq!(v["status"], "scheduled");
    // The seat map too, while scheduled: 1×4 becomes 2×3.
    let layout = json!({"layout": {"sections": [{"name": "B", "rows": 2, "cols": 3, "category": "std"}]}});
    let (s, v) = app.patch(&base, Some(&app.admin), layout.clone()).await;
    assert_eq!((s, v["categories"][0]["remaining"].as_u64()), (StatusCode::OK, Some(6)), "{v}");
    assert_eq!(v["categories"][0]["price"], 250, "the price stays");
    let (_, seats) = app.get(&format!("/v1/events/{event}/seats"), Some(&app.admin)).await;
    let labels: Vec<&str> =
        seats["seats"].as_array().expect("seats").iter().filter_map(|s| s["seat_id"].as_str()).collect();
    assert_eq!(labels, ["B-1-1", "B-1-2", "B-1-3", "B-2-1", "B-2-2", "B-2-3"]);
    for bad in [
        json!({"layout": {"sections": [{"name": "B", "rows": 1, "cols": 2, "category": "nope"}]}}),
        json!({"layout": {"sections": []}}),
        json!({"seats": [{"section": "C", "row": 1, "col": 1, "category": "std"}], "layout": layout["layout"]}),
    ] {
        let (s, v) = app.patch(&base, Some(&app.admin), bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let left = (opens - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left).await;
    let (s, v) = hold(app, &app.token("buyer", "user").await, &event, 2).await;
    assert_eq!((s, v["amount"].as_i64()), (StatusCode::CREATED, Some(500)), "{v}");
    assert_eq!(v["seats"][0]["section"], "B", "{v}");
    for late in [json!({"categories": [{"id": "std", "price": 100}]}), layout] {
        let (s, v) = app.patch(&base, Some(&app.admin), late.clone()).await;
        assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "event_on_sale"), "{late}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_and_seats_set_before_the_opening_are_what_buyers_get_embedded_and_redis_mode() {
    price_before_the_opening(&spawn_app().await).await;
    price_before_the_opening(&spawn_in(Mode::Redis, |_| {}).await).await;
}

/// Price changes sent through two nodes from just before the opening to
/// just after it, while holds race for the first seats: every answered
/// change came before every hold (one price among all orders, and it is
/// the price the last accepted change set), every other change is 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_price_changes_once_the_first_hold_is_taken_across_two_nodes() {
    let (a, b) = super::multinode::two_nodes().await;
    let opens = in_ms(1200);
    let event = a.event(10, 10, json!({"on_sale_at": stamp(opens), "limits": {"per_order": 1, "per_user": 1}})).await;
    let path = format!("/v1/admin/events/{event}");
    tokio::time::sleep((opens - Utc::now() - chrono::Duration::milliseconds(150)).to_std().unwrap_or_default()).await;
    let mut tasks = Vec::new();
    for i in 0..60u64 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (event, path) = (event.clone(), path.clone());
        let token = node.token(&format!("p{i}"), "user").await;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(5 * i)).await;
            if i % 3 == 0 {
                let price = 1000 + i as i64;
                let (s, v) =
                    node.patch(&path, Some(&node.admin), json!({"categories": [{"id": "std", "price": price}]})).await;
                (true, price, s, v)
            } else {
                let (s, v) = hold(&node, &token, &event, 1).await;
                (false, 0, s, v)
            }
        }));
    }
    let (mut amounts, mut accepted, mut taken) = (HashSet::new(), Vec::new(), 0);
    for t in tasks {
        match t.await.expect("task") {
            (true, price, StatusCode::OK, _) => accepted.push(price),
            (true, _, s, v) => assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "event_on_sale"), "{v}"),
            (false, _, StatusCode::CREATED, v) => {
                taken += 1;
                amounts.insert(v["amount"].as_i64().expect("amount"));
            }
            (false, _, s, v) => assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "not_on_sale"), "{v}"),
        }
    }
    assert!(taken > 0, "the sale opened");
    assert_eq!(amounts.len(), 1, "one price among all orders: {amounts:?}");
    let price = event_of(&a, &event).await["categories"][0]["price"].as_i64().expect("price");
    assert_eq!(amounts.into_iter().next(), Some(price), "the orders' price is the event's; accepted {accepted:?}");
}

/// Payments of an order held before the sale ended complete after it,
/// within the hold's expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_held_before_the_end_is_paid_after_it() {
    let app = spawn_app().await;
    let ends = in_ms(1500);
    let event = app.event(1, 4, json!({"sale_ends_at": stamp(ends)})).await;
    let tok = app.token("closing", "user").await;
    let (s, v) = hold(&app, &tok, &event, 1).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let order = v["order_id"].as_str().expect("order").to_string();
    tokio::time::sleep((ends - Utc::now()).to_std().unwrap_or_default()).await;
    assert_eq!(event_of(&app, &event).await["status"], "ended");
    let (s, v) = app.post(&format!("/v1/orders/{order}/payments"), Some(&tok), json!({"channel": "alipay"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let payment = v["payment_id"].as_str().expect("payment").to_string();
    let (s, v) = app.post(&format!("/v1/sandbox/alipay/payments/{payment}/complete"), None, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(eventually(15, || async { order_status(&app, &order).await == "paid" }).await, "the order was not paid");
}

fn names(v: &Value) -> Vec<String> {
    v["events"].as_array().expect("events").iter().map(|e| e["name"].as_str().unwrap_or_default().to_string()).collect()
}

async fn catalogue(app: &TestApp, query: &str) -> Value {
    // Public: no token.
    let (s, v) = app.get(&format!("/v1/events{query}"), None).await;
    assert_eq!(s, StatusCode::OK, "{query}: {v}");
    v
}

async fn catalogue_pages_and_filters(app: &TestApp) {
    let ev = |name: &str, venue: &str, starts: &str, extra: Value| {
        let mut body = json!({"name": name, "venue": venue, "starts_at": starts});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        body
    };
    let mut ids = Vec::new();
    for body in [
        ev("Spring Gala", "Hall 1", "2030-03-01T19:00:00Z", json!({})),
        ev("Summer Jazz", "Riverside", "2030-06-01T19:00:00Z", json!({"on_sale_at": "2029-01-01T00:00:00Z"})),
        ev("Autumn Opera", "Grand Hall", "2030-09-01T19:00:00Z", json!({})),
        ev("Winter Gala", "Arena", "2030-12-01T19:00:00Z", json!({})),
        ev("Spring Rock", "Park 50%", "2030-04-01T19:00:00Z", json!({})),
    ] {
        ids.push(app.event(1, 6, body).await);
    }
    admin_post(app, &format!("/v1/admin/events/{}/pause", ids[2]), json!({})).await;
    admin_post(app, &format!("/v1/admin/events/{}/cancel", ids[3]), json!({"reason": "venue closed"})).await;

    let all = catalogue(app, "").await;
    assert_eq!(names(&all), ["Spring Rock", "Winter Gala", "Autumn Opera", "Summer Jazz", "Spring Gala"], "{all}");
    assert_eq!(all["events"][0]["categories"][0]["remaining"], 6, "{all}");
    // Pages of two, by the cursor, cover everything once.
    let (mut seen, mut cursor) = (Vec::new(), String::new());
    for _ in 0..5 {
        let v = catalogue(app, &format!("?limit=2{cursor}")).await;
        seen.extend(names(&v));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, names(&all));
    for (status, want) in [
        ("on_sale", vec!["Spring Rock", "Spring Gala"]),
        ("scheduled", vec!["Summer Jazz"]),
        ("paused", vec!["Autumn Opera"]),
        ("cancelled", vec!["Winter Gala"]),
        ("ended", vec![]),
    ] {
        let v = catalogue(app, &format!("?status={status}")).await;
        assert_eq!(names(&v), want, "{status}: {v}");
        assert!(v["events"].as_array().expect("events").iter().all(|e| e["status"] == status), "{v}");
    }
    for (q, want) in [
        ("gala", vec!["Winter Gala", "Spring Gala"]),
        ("HALL", vec!["Autumn Opera", "Spring Gala"]),
        ("50%25", vec!["Spring Rock"]),
        ("%25", vec!["Spring Rock"]),
        ("_", vec![]),
    ] {
        assert_eq!(names(&catalogue(app, &format!("?q={q}")).await), want, "q={q}");
    }
    assert_eq!(
        names(&catalogue(app, "?from=2030-05-01T00:00:00Z").await),
        ["Winter Gala", "Autumn Opera", "Summer Jazz"]
    );
    assert_eq!(names(&catalogue(app, "?to=2030-05-01T00:00:00Z").await), ["Spring Rock", "Spring Gala"]);
    assert_eq!(
        names(&catalogue(app, "?from=2030-04-01T19:00:00Z&to=2030-09-01T19:00:00Z&q=s").await),
        ["Spring Rock", "Summer Jazz"],
        "from is inclusive, to exclusive"
    );
    // A hold through this node shows at once (the actor refreshes the cache).
    let (s, v) = hold(app, &app.token("browser", "user").await, &ids[0], 2).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let v = catalogue(app, "?q=spring%20gala").await;
    assert_eq!(v["events"][0]["categories"][0]["remaining"], 4, "{v}");
    for bad in ["?status=open", "?cursor=abc", "?limit=0", "?limit=100000", "?from=yesterday", "?colour=red"] {
        let (s, v) = app.get(&format!("/v1/events{bad}"), None).await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad}: {v}");
    }
    let metrics = app.engine.metrics.render();
    let hits = metrics
        .lines()
        .find(|l| l.starts_with("rush_catalogue_cache_total{result=\"hit\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(hits > 0, "the catalogue's cache was never hit:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_pages_and_filters_embedded_and_redis_mode() {
    catalogue_pages_and_filters(&spawn_app().await).await;
    catalogue_pages_and_filters(&spawn_in(Mode::Redis, |_| {}).await).await;
}

/// Stats add up to the seat map; the order search filters, pages and masks.
async fn stats_and_search(app: &TestApp) {
    let body = json!({
        "name": "Stats", "venue": "Lab", "starts_at": "2030-12-31T20:00:00Z",
        "categories": [{"id": "vip", "name": "VIP", "price": 300}, {"id": "std", "name": "Std", "price": 100}],
        "layout": {"sections": [{"name": "V", "rows": 1, "cols": 4, "category": "vip"},
                                {"name": "S", "rows": 2, "cols": 4, "category": "std"}]}});
    let (s, v) = admin_post(app, "/v1/admin/events", body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let event = v["event_id"].as_str().expect("event").to_string();
    let (alice, bob, carol) =
        (app.token("alice", "user").await, app.token("bob", "user").await, app.token("carol", "user").await);
    let (s, v) = app
        .post(
            "/v1/orders",
            Some(&alice),
            json!({"event_id": event, "category": "vip", "quantity": 2,
                   "attendees": [{"name": "Zhang San", "id_number": "110101199003071234"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let paid = v["order_id"].as_str().expect("order").to_string();
    let (s, v) = app.post(&format!("/v1/orders/{paid}/payments"), Some(&alice), json!({"channel": "ecard"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let payment = v["payment_id"].as_str().expect("payment").to_string();
    app.post(&format!("/v1/sandbox/ecard/payments/{payment}/complete"), None, json!({})).await;
    assert!(eventually(15, || async { order_status(app, &paid).await == "paid" }).await);
    assert_eq!(hold(app, &bob, &event, 1).await.0, StatusCode::CREATED);
    let (_, v) = hold(app, &carol, &event, 1).await;
    let cancelled = v["order_id"].as_str().expect("order").to_string();
    let (s, v) = app.post(&format!("/v1/orders/{cancelled}/cancel"), Some(&carol), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    app.settle().await;

    let (s, st) = app.get(&format!("/v1/admin/events/{event}/stats"), Some(&app.admin)).await;
    assert_eq!(s, StatusCode::OK, "{st}");
    let cat = |id: &str| st["categories"].as_array().expect("cats").iter().find(|c| c["id"] == id).cloned();
    let (vip, std) = (cat("vip").expect("vip"), cat("std").expect("std"));
    assert_eq!((vip["available"].as_u64(), vip["held"].as_u64(), vip["sold"].as_u64()), (Some(2), Some(0), Some(2)));
    assert_eq!((std["available"].as_u64(), std["held"].as_u64(), std["sold"].as_u64()), (Some(7), Some(1), Some(0)));
    // They add up to the seat map, category by category.
    let (_, seats) = app.get(&format!("/v1/events/{event}/seats"), Some(&app.admin)).await;
    for c in [&vip, &std] {
        let on_map = seats["seats"].as_array().expect("seats").iter().filter(|s| s["category"] == c["id"]).count();
        let sum = ["available", "held", "sold"].iter().map(|k| c[k].as_u64().unwrap_or(0)).sum::<u64>();
        assert_eq!(sum as usize, on_map, "{c}");
    }
    assert_eq!(
        st["orders"],
        json!({"pending_payment": 1, "paid": 1, "cancelled": 1, "expired": 0, "refunded": 0}),
        "{st}"
    );
    assert_eq!((st["revenue"].as_i64(), st["refunded"].as_i64()), (Some(600), Some(0)), "{st}");
    assert_eq!((st["last_minute"]["holds"].as_u64(), st["last_minute"]["payments"].as_u64()), (Some(3), Some(1)));

    let search = |q: String| async move {
        let (s, v) = app.get(&format!("/v1/admin/orders?{q}"), Some(&app.admin)).await;
        assert_eq!(s, StatusCode::OK, "{q}: {v}");
        v
    };
    let all = search(format!("event_id={event}")).await;
    assert_eq!(all["orders"].as_array().map(Vec::len), Some(3), "{all}");
    let v = search(format!("event_id={event}&status=paid")).await;
    assert_eq!(v["orders"][0]["order_id"], paid.as_str(), "{v}");
    assert_eq!(v["orders"][0]["attendees"][0], json!({"name": "Z********", "id_number": "**************1234"}));
    let v = search(format!("event_id={event}&user_id=carol")).await;
    assert_eq!((v["orders"][0]["status"].as_str(), v["orders"].as_array().map(Vec::len)), (Some("cancelled"), Some(1)));
    let (mut pages, mut cursor, mut ids) = (0, String::new(), HashSet::new());
    loop {
        let v = search(format!("event_id={event}&limit=1{cursor}")).await;
        pages += 1;
        for o in v["orders"].as_array().expect("orders") {
            assert!(ids.insert(o["order_id"].to_string()), "listed twice: {o}");
        }
        match v["next_cursor"].as_str() {
            Some(c) if pages < 10 => cursor = format!("&cursor={c}"),
            _ => break,
        }
    }
    assert_eq!(ids.len(), 3);
    let (s, _) = app.get("/v1/admin/orders", Some(&alice)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = app.get("/v1/admin/orders?status=lost", Some(&app.admin)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_add_up_to_the_seat_map_and_orders_are_searchable_embedded_and_redis_mode() {
    stats_and_search(&spawn_app().await).await;
    stats_and_search(&spawn_in(Mode::Redis, |_| {}).await).await;
}

async fn deliveries_of(app: &TestApp, event_type: &str) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM webhook_deliveries WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(&app.engine.durable().db().read)
        .await
        .expect("deliveries")
}

/// Cancelling an event with paid orders on all three channels, pending
/// orders (one with an open payment) and an expired one: every paid order
/// is refunded once through its channel, every pending one closed, the
/// ledger balanced; running the fan-out again refunds nothing more.
async fn cancel_fans_out(app: &TestApp) {
    let (s, v) = admin_post(
        app,
        "/v1/admin/webhooks",
        json!({"url": "http://127.0.0.1:9/hook", "events": ["event.cancelled", "order.refunded"],
               "secret": "0123456789abcdef"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let event = app.event(1, 10, json!({"hold_ttl_s": 1})).await;
    let base = format!("/v1/admin/events/{event}");
    let (_, v) = hold(app, &app.token("sleeper", "user").await, &event, 1).await;
    let expired = v["order_id"].as_str().expect("order").to_string();
    assert!(eventually(15, || async { order_status(app, &expired).await == "expired" }).await);
    app.patch(&base, Some(&app.admin), json!({"hold_ttl_s": 600})).await;

    let mut paid = Vec::new();
    for (i, channel) in ["wechat", "alipay", "ecard"].into_iter().enumerate() {
        paid.push(paid_order(app, &app.token(&format!("payer{i}"), "user").await, &event, channel).await);
    }
    let pender = app.token("pender", "user").await;
    let (_, v) = hold(app, &pender, &event, 1).await;
    let pending = v["order_id"].as_str().expect("order").to_string();
    let (s, v) = app.post(&format!("/v1/orders/{pending}/payments"), Some(&pender), json!({"channel": "wechat"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let open_payment = v["payment_id"].as_str().expect("payment").to_string();
    let (_, v) = hold(app, &app.token("pender2", "user").await, &event, 2).await;
    let pending2 = v["order_id"].as_str().expect("order").to_string();
    assert_eq!(event_of(app, &event).await["categories"][0]["remaining"], 4);

    let (s, v) = admin_post(app, &format!("{base}/cancel"), json!({"reason": "artist ill"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let done = eventually(30, || async {
        let c = &event_of(app, &event).await["cancellation"];
        c["refunds_total"] == 3 && c["refunds_done"] == 3
    })
    .await;
    assert!(done, "{}", event_of(app, &event).await);
    for (order, payment) in &paid {
        assert_eq!(payment_status(app, payment).await, "refunded", "{payment}");
        assert!(eventually(10, || async { order_status(app, order).await == "refunded" }).await, "{order}");
    }
    for order in [&pending, &pending2] {
        assert_eq!(order_status(app, order).await, "cancelled", "{order}");
    }
    assert_eq!(order_status(app, &expired).await, "expired");
    assert_ne!(payment_status(app, &open_payment).await, "pending", "the open payment was closed");
    assert_eq!(event_of(app, &event).await["categories"][0]["remaining"], 10);

    // Again: by the API and by the fan-out itself; nothing more moves.
    app.settle().await;
    let refunds = journal_rows(app, "order_refund").await;
    assert_eq!(refunds, 6, "three refunds, two legs each");
    admin_post(app, &format!("{base}/cancel"), json!({"reason": "again"})).await;
    let id = event.parse().expect("id");
    assert!(app.engine.run_cancellation(id).await.expect("fan-out"), "finished");
    app.settle().await;
    assert_eq!(journal_rows(app, "order_refund").await, refunds, "refunded once");
    app.assert_ledger_balances().await;
    assert_eq!(app.engine.durable().balance("@sales").await.expect("sales").available.get(), 0);
    assert_eq!(deliveries_of(app, "event.cancelled").await, 1);
    assert_eq!(deliveries_of(app, "order.refunded").await, 3);
    let (s, st) = app.get(&format!("/v1/admin/events/{event}/stats"), Some(&app.admin)).await;
    assert_eq!(s, StatusCode::OK, "{st}");
    assert_eq!(
        st["orders"],
        json!({"pending_payment": 0, "paid": 0, "cancelled": 2, "expired": 1, "refunded": 3}),
        "{st}"
    );
    assert_eq!((st["revenue"].as_i64(), st["refunded"].as_i64()), (Some(0), Some(300)), "{st}");
    assert_eq!(st["categories"][0], json!({"id": "std", "available": 10, "held": 0, "sold": 0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_refunds_every_paid_order_once_embedded_and_redis_mode() {
    cancel_fans_out(&spawn_app().await).await;
    cancel_fans_out(&spawn_in(Mode::Redis, |_| {}).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_refunds_every_paid_order_once_full_mode() {
    cancel_fans_out(&spawn_in(Mode::Full, |_| {}).await).await;
}
