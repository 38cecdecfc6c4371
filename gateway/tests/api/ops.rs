use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;

use super::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_openapi_answer() {
    let app = spawn_app().await;
    let (s, _) = app.get("/healthz", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = app.get("/readyz", None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ready")));

    let event = app.event(1, 2, json!({})).await;
    let u = app.token("m", "user").await;
    app.post("/v1/orders", Some(&u), json!({"event_id": event, "category": "std", "quantity": 1})).await;
    let text =
        app.client.get(format!("{}/metrics", app.base)).send().await.expect("metrics").text().await.expect("text");
    for needle in [
        "rush_http_requests_total{method=\"POST\",route=\"/v1/orders\",status=\"201\"} 1",
        "rush_http_request_duration_seconds_bucket{route=\"/v1/orders\"",
        "rush_holds_total{outcome=\"held\"} 1",
        "rush_actor_mailbox_depth{kind=\"event\"} 0",
        "rush_actor_batch_len_count{kind=\"event\"}",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    // The hold reached rush.db through the writer's group commit.
    app.settle().await;
    let text =
        app.client.get(format!("{}/metrics", app.base)).send().await.expect("metrics").text().await.expect("text");
    let value = |name: &str| -> i64 {
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default();
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(-1)
    };
    let (units, commits) = (value("rush_durable_writer_units_total"), value("rush_durable_writer_commits_total"));
    assert!(units > 0 && commits > 0 && commits <= units, "writer units {units}, commits {commits}:\n{text}");

    let (s, v) = app.get("/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    for path in
        ["/v1/orders", "/v1/packets/{id}/grab", "/v1/admin/events", "/v1/wallet/ledger", "/v1/orders/{id}/cancel"]
    {
        assert!(v["paths"][path].is_object(), "openapi lacks {path}");
    }
    assert!(v["components"]["schemas"]["OrderView"].is_object());
    // Generated from the code: path parameters, open ops routes, limits from the config.
    let cancel = &v["paths"]["/v1/orders/{id}/cancel"]["post"];
    assert_eq!(cancel["parameters"][0]["name"], "id");
    assert_eq!(cancel["parameters"][0]["in"], "path");
    assert!(cancel["responses"]["401"].is_object() && cancel["responses"]["404"].is_object());
    assert_eq!(v["paths"]["/healthz"]["get"]["security"], json!([{}]));
    let packet = &v["components"]["schemas"]["CreatePacketReq"]["properties"];
    assert_eq!(packet["count"]["maximum"], app.engine.config().packets.count_max);
    assert_eq!(packet["kind"]["enum"], json!(["normal", "lucky"]));

    // A path of the contract asked with a method it does not have: 405 with Allow.
    let resp = app.client.delete(format!("{}/v1/orders", app.base)).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "GET, POST");
    let resp = app.client.delete(format!("{}/v1/nowhere", app.base)).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_answers_503_with_retry_after_and_nothing_is_lost() {
    let app = Arc::new(spawn_with(|c| c.actors.mailbox_len_max = 1).await);
    app.credit("s", 10_000).await;
    let s_tok = app.token("s", "user").await;
    let (_, v) =
        app.post("/v1/packets", Some(&s_tok), json!({"kind": "normal", "total_amount": 10_000, "count": 100})).await;
    let packet = v["packet_id"].as_str().expect("id").to_string();
    let mut tokens = Vec::new();
    for i in 0..300 {
        tokens.push(app.token(&format!("u{i}"), "user").await);
    }
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|t| {
            let app = app.clone();
            let url = format!("{}/v1/packets/{packet}/grab", app.base);
            tokio::spawn(async move {
                let r = app.client.post(url).bearer_auth(&t).send().await.expect("send");
                let retry = r.headers().get("retry-after").map(|h| h.to_str().unwrap_or("").to_string());
                let s = r.status();
                let v: serde_json::Value = r.json().await.expect("json");
                (s, retry, v)
            })
        })
        .collect();
    let (mut ok, mut overloaded, mut empty) = (0, 0, 0);
    for t in tasks {
        let (s, retry, v) = t.await.expect("task");
        match s {
            StatusCode::OK => ok += 1,
            StatusCode::GONE => empty += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(code(&v), "overloaded");
                assert_eq!(retry.as_deref(), Some("1"));
                overloaded += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert!(overloaded > 0, "a one-slot mailbox under 300 concurrent grabs never filled");
    assert_eq!(ok + empty + overloaded, 300);
    assert!(ok <= 100);
    let (_, v) = app.get(&format!("/v1/packets/{packet}"), Some(&s_tok)).await;
    assert_eq!(v["remaining_count"].as_i64(), Some(100 - ok), "{v}");
    app.settle().await;
    assert_eq!(app.wallet(&s_tok).await, (0, 10_000 - 100 * ok));
    app.assert_ledger_balances().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_actor_stops_and_comes_back_with_its_state() {
    let app = spawn_with(|c| c.actors.idle_ms = 100).await;
    let event = app.event(1, 3, json!({})).await;
    let u = app.token("idle", "user").await;
    let (s, _) = app.post("/v1/orders", Some(&u), json!({"event_id": event, "seats": ["A-1-1"]})).await;
    assert_eq!(s, StatusCode::CREATED);
    let stopped =
        eventually(5, || async { app.engine.metrics.actors_live.with_label_values(&["event"]).get() == 0 }).await;
    assert!(stopped, "idle actor did not stop");
    // A new actor rebuilt from the store still knows the seat is held.
    let (s, v) = app.post("/v1/orders", Some(&u), json!({"event_id": event, "seats": ["A-1-1"]})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "seat_unavailable"));
    assert_eq!(app.engine.metrics.actors_live.with_label_values(&["event"]).get(), 1);
}

fn check_config(envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rush"));
    cmd.args(["serve", "--check-config"]).env("RUST_LOG", "error");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("rush serve --check-config");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn serve_check_config_validates_and_exits_without_serving() {
    // Port 1 cannot be bound by a test: a server would fail; the check does not bind.
    let (code, out, _) = check_config(&[("RUSH__HTTP__ADDR", "127.0.0.1:1")]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        (v["config"].as_str(), v["profile"].as_str(), v["dev_tokens"].as_bool()),
        (Some("ok"), Some("development"), Some(true))
    );
    let (code, _, err) = check_config(&[("RUSH__PROFILE", "production")]);
    assert_eq!(code, 1);
    assert!(err.contains("development default"), "{err}");
    let prod = [
        ("RUSH__PROFILE", "production"),
        ("RUSH__AUTH__JWT_SECRET", "prod-jwt-secret-0123456789"),
        ("RUSH__PAYMENTS__WECHAT_SECRET", "prod-wechat-secret-0123"),
        ("RUSH__PAYMENTS__ALIPAY_SECRET", "prod-alipay-secret-0123"),
        ("RUSH__PAYMENTS__ECARD_SECRET", "prod-ecard-secret-01234"),
        ("RUSH__POSTGRES__URL", "postgres://rush:hunter2@db/rush"),
    ];
    let (code, out, err) = check_config(&prod);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!((v["dev_tokens"].as_bool(), v["sandbox"].as_bool()), (Some(false), Some(false)));
    assert!(!out.contains("hunter2") && !out.contains("prod-jwt"), "no secret printed: {out}");
    let (code, _, err) = check_config(&[("RUSH__HTTP__NOPE", "1")]);
    assert_eq!(code, 1, "unknown keys fail the check: {err}");
}
