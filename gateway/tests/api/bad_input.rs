use reqwest::StatusCode;
use rush_gateway::auth::{now_s, Claims, Keys};
use serde_json::{json, Value};

use super::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_status_and_the_error_shape() {
    let app = spawn_app().await;
    let event = app.event(1, 5, json!({})).await;
    app.credit("rich", 10_000).await;
    let user = app.token("rich", "user").await;
    let other = app.token("other", "user").await;
    let (_, v) = app.post("/v1/orders", Some(&other), json!({"event_id": event, "seats": ["A-1-1"]})).await;
    let others_order = v["order_id"].as_str().expect("order").to_string();
    let forged = Keys::new("not-the-server-secret")
        .sign(&Claims { sub: "rich".into(), role: "admin".into(), exp: now_s() + 60 })
        .expect("an HS256 key signs");
    let unknown_id = "123456789";

    struct Case {
        name: &'static str,
        method: &'static str,
        path: String,
        token: Option<String>,
        body: Option<Value>,
        raw: Option<&'static str>,
        status: StatusCode,
        code: &'static str,
    }
    let case = |name, method, path: String, token: Option<&String>, body: Option<Value>, status, code| Case {
        name,
        method,
        path,
        token: token.cloned(),
        body,
        raw: None,
        status,
        code,
    };
    let hold = |body: Value| Some(body);
    let mut cases = vec![
        case(
            "no token",
            "POST",
            "/v1/orders".into(),
            None,
            hold(json!({"event_id": event, "seats": ["A-1-2"]})),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        case(
            "forged token",
            "POST",
            "/v1/orders".into(),
            Some(&forged),
            hold(json!({"event_id": event, "seats": ["A-1-2"]})),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        case(
            "garbage token",
            "GET",
            "/v1/wallet".into(),
            Some(&"abc.def".to_string()),
            None,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        case(
            "unknown field",
            "POST",
            "/v1/orders".into(),
            Some(&user),
            hold(json!({"event_id": event, "seats": ["A-1-2"], "colour": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        case(
            "zero quantity",
            "POST",
            "/v1/orders".into(),
            Some(&user),
            hold(json!({"event_id": event, "category": "std", "quantity": 0})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        case(
            "negative quantity",
            "POST",
            "/v1/orders".into(),
            Some(&user),
            hold(json!({"event_id": event, "category": "std", "quantity": -1})),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        case(
            "seats and category",
            "POST",
            "/v1/orders".into(),
            Some(&user),
            hold(json!({"event_id": event, "seats": ["A-1-2"], "category": "std", "quantity": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        case(
            "unknown seat",
            "POST",
            "/v1/orders".into(),
            Some(&user),
            hold(json!({"event_id": event, "seats": ["Z-9-9"]})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        case(
            "unknown category",
            "POST",
            "/v1/orders".into(),
            Some(&user),
            hold(json!({"event_id": event, "category": "vip", "quantity": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        case(
            "unknown event",
            "POST",
            "/v1/orders".into(),
            Some(&user),
            hold(json!({"event_id": unknown_id, "seats": ["A-1-2"]})),
            StatusCode::NOT_FOUND,
            "event_not_found",
        ),
        case(
            "malformed event id",
            "GET",
            "/v1/events/not-an-id".into(),
            Some(&user),
            None,
            StatusCode::NOT_FOUND,
            "event_not_found",
        ),
        case(
            "unknown event read",
            "GET",
            format!("/v1/events/{unknown_id}"),
            Some(&user),
            None,
            StatusCode::NOT_FOUND,
            "event_not_found",
        ),
        case(
            "zero packet amount",
            "POST",
            "/v1/packets".into(),
            Some(&user),
            Some(json!({"kind": "lucky", "total_amount": 0, "count": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        case(
            "negative packet amount",
            "POST",
            "/v1/packets".into(),
            Some(&user),
            Some(json!({"kind": "lucky", "total_amount": -5, "count": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        case(
            "zero count",
            "POST",
            "/v1/packets".into(),
            Some(&user),
            Some(json!({"kind": "lucky", "total_amount": 100, "count": 0})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        case(
            "count above total",
            "POST",
            "/v1/packets".into(),
            Some(&user),
            Some(json!({"kind": "lucky", "total_amount": 5, "count": 6})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        case(
            "bad kind",
            "POST",
            "/v1/packets".into(),
            Some(&user),
            Some(json!({"kind": "huge", "total_amount": 5, "count": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        case(
            "unknown packet",
            "POST",
            format!("/v1/packets/{unknown_id}/grab"),
            Some(&user),
            Some(json!({})),
            StatusCode::NOT_FOUND,
            "packet_not_found",
        ),
        case(
            "unknown packet read",
            "GET",
            format!("/v1/packets/{unknown_id}"),
            Some(&user),
            None,
            StatusCode::NOT_FOUND,
            "packet_not_found",
        ),
        case(
            "user creates event",
            "POST",
            "/v1/admin/events".into(),
            Some(&user),
            Some(json!({})),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        case(
            "user credits",
            "POST",
            "/v1/admin/wallet/rich/credit".into(),
            Some(&user),
            Some(json!({"amount": 5, "reason": "x"})),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        case(
            "zero credit",
            "POST",
            "/v1/admin/wallet/rich/credit".into(),
            Some(&app.admin),
            Some(json!({"amount": 0, "reason": "x"})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        case(
            "negative credit",
            "POST",
            "/v1/admin/wallet/rich/credit".into(),
            Some(&app.admin),
            Some(json!({"amount": -1, "reason": "x"})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        case(
            "another user's order",
            "GET",
            format!("/v1/orders/{others_order}"),
            Some(&user),
            None,
            StatusCode::NOT_FOUND,
            "order_not_found",
        ),
        case(
            "cancel another user's order",
            "POST",
            format!("/v1/orders/{others_order}/cancel"),
            Some(&user),
            Some(json!({})),
            StatusCode::NOT_FOUND,
            "order_not_found",
        ),
        case(
            "event with layout and seats",
            "POST",
            "/v1/admin/events".into(),
            Some(&app.admin),
            Some(json!({
            "name": "x", "venue": "y", "starts_at": "2030-12-31T20:00:00Z",
            "categories": [{"id": "a", "name": "A", "price": 1}],
            "layout": {"sections": [{"name": "A", "rows": 1, "cols": 1, "category": "a"}]},
            "seats": [{"section": "B", "row": 1, "col": 1, "category": "a"}]})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        case(
            "event without categories",
            "POST",
            "/v1/admin/events".into(),
            Some(&app.admin),
            Some(json!({
            "name": "x", "venue": "y", "starts_at": "2030-12-31T20:00:00Z", "categories": [],
            "layout": {"sections": [{"name": "A", "rows": 1, "cols": 1, "category": "a"}]}})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        case(
            "bad page limit",
            "GET",
            "/v1/orders?limit=100000".into(),
            Some(&user),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        case("unknown route", "GET", "/v1/nothing".into(), Some(&user), None, StatusCode::NOT_FOUND, "not_found"),
    ];
    cases.push(Case {
        name: "bad json",
        method: "POST",
        path: "/v1/orders".into(),
        token: Some(user.clone()),
        body: None,
        raw: Some("{\"event_id\": "),
        status: StatusCode::BAD_REQUEST,
        code: "invalid_json",
    });

    for c in cases {
        let url = format!("{}{}", app.base, c.path);
        let mut req = match c.method {
            "POST" => app.client.post(url),
            _ => app.client.get(url),
        };
        if let Some(t) = &c.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = &c.body {
            req = req.json(b);
        }
        if let Some(raw) = c.raw {
            req = req.header("content-type", "application/json").body(raw);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, c.status, "{}: {v}", c.name);
        assert_eq!(code(&v), c.code, "{}: {v}", c.name);
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}: no message in {v}", c.name);
    }
    // Nothing above changed any balance.
    assert_eq!(app.wallet(&user).await, (10_000, 0));
}
