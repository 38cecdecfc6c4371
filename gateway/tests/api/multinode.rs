//! Two rush nodes on one Redis race for the same seats and the same packet.
//! Each node's actors decide on their own view; the scripts arbitrate; a
//! stale decision is decided again after a reload. Both nodes share the
//! durable store, and the stream consumer group gives each event to one
//! node's workers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;

use super::helpers::*;

/// A client's POST that honours 503 + Retry-After (contention), a bounded
/// number of times.
async fn post_retrying(
    node: &TestApp,
    path: &str,
    token: &str,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    for _ in 0..20 {
        let (s, v) = node.post(path, Some(token), body.clone()).await;
        if s != StatusCode::SERVICE_UNAVAILABLE {
            return (s, v);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("still 503 after 20 tries");
}

pub async fn two_nodes() -> (Arc<TestApp>, Arc<TestApp>) {
    let a = spawn_in(Mode::Redis, |c| {
        c.node_id = 1;
        c.actors.idle_ms = 300;
    })
    .await;
    let (prefix, dir) = (a.engine.config().redis.key_prefix.clone(), a.engine.config().data_dir.clone());
    let b = spawn_in(Mode::Redis, |c| {
        c.node_id = 2;
        c.actors.idle_ms = 300;
        c.redis.key_prefix = prefix;
        c.data_dir = dir;
    })
    .await;
    (Arc::new(a), Arc::new(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_never_oversell_seats() {
    let (a, b) = two_nodes().await;
    let event = a.event(10, 10, json!({})).await;
    let mut tasks = Vec::new();
    for i in 0..300 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let token = node.token(&format!("buyer{i}"), "user").await;
        let body = json!({"event_id": event, "category": "std", "quantity": 1});
        tasks.push(tokio::spawn(async move { post_retrying(&node, "/v1/orders", &token, body).await }));
    }
    let mut seats = HashSet::new();
    let mut sold_out = 0;
    for t in tasks {
        let (s, v) = t.await.expect("task");
        match s {
            StatusCode::CREATED => assert!(seats.insert(v["seats"][0]["seat_id"].to_string()), "seat held twice: {v}"),
            StatusCode::CONFLICT => {
                assert_eq!(code(&v), "sold_out", "{v}");
                sold_out += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!((seats.len(), sold_out), (100, 200));
    // Fresh actors read the store: every seat is held, on both nodes.
    for node in [&a, &b] {
        let stopped =
            eventually(5, || async { node.engine.metrics.actors_live.with_label_values(&["event"]).get() == 0 }).await;
        assert!(stopped);
        let (_, v) = node.get(&format!("/v1/events/{event}"), Some(&node.admin)).await;
        assert_eq!(v["categories"][0]["remaining"], 0, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_grant_each_part_once_and_each_user_once() {
    let (a, b) = two_nodes().await;
    let total = 100_000;
    a.credit("sender", total).await;
    let sender = a.token("sender", "user").await;
    let (s, v) =
        a.post("/v1/packets", Some(&sender), json!({"kind": "lucky", "total_amount": total, "count": 100})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let packet = v["packet_id"].as_str().expect("id").to_string();
    // 300 users; the first 40 grab through both nodes at once.
    let mut tasks = Vec::new();
    for i in 0..300 {
        let user = format!("g{i}");
        let token = a.token(&user, "user").await;
        let nodes = if i < 40 {
            vec![a.clone(), b.clone()]
        } else if i % 2 == 0 {
            vec![a.clone()]
        } else {
            vec![b.clone()]
        };
        for node in nodes {
            let (token, user, path) = (token.clone(), user.clone(), format!("/v1/packets/{packet}/grab"));
            tasks.push(tokio::spawn(
                async move { (user, token.clone(), node.post(&path, Some(&token), json!({})).await) },
            ));
        }
    }
    let mut granted: HashMap<String, (String, i64)> = HashMap::new();
    for t in tasks {
        let (user, token, (s, v)) = t.await.expect("task");
        match s {
            StatusCode::OK => {
                let amount = v["amount"].as_i64().expect("amount");
                assert!(granted.insert(user.clone(), (token, amount)).is_none(), "{user} granted twice");
            }
            StatusCode::CONFLICT => assert_eq!(code(&v), "already_grabbed", "{v}"),
            StatusCode::GONE => assert_eq!(code(&v), "packet_empty", "{v}"),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(granted.len(), 100);
    assert_eq!(granted.values().map(|(_, a)| a).sum::<i64>(), total);
    // Both nodes' workers share the events; each applied once.
    for node in [&a, &b] {
        node.settle().await;
    }
    let settled = eventually(10, || async {
        let mut ok = a.wallet(&sender).await == (0, 0);
        for (token, amount) in granted.values() {
            ok &= b.wallet(token).await == (*amount, 0);
        }
        ok
    })
    .await;
    assert!(settled, "balances did not add up");
    a.assert_ledger_balances().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_honoured_across_nodes() {
    let (a, b) = two_nodes().await;
    a.credit("k", 5000).await;
    let k = a.token("k", "user").await;
    let body = json!({"kind": "normal", "total_amount": 1000, "count": 2});
    let (s1, r1, v1) = super::idempotency::post_with_key(&a, "/v1/packets", &k, "across", &body).await;
    let (s2, r2, v2) = super::idempotency::post_with_key(&b, "/v1/packets", &k, "across", &body).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert!(!r1 && r2, "node b replays node a's answer");
    assert_eq!(v1["packet_id"], v2["packet_id"]);
    assert_eq!(b.wallet(&k).await, (4000, 1000), "frozen once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_live_node_with_the_same_node_id_is_refused() {
    use rush_engine::node::StartError;
    let a = spawn_in(Mode::Redis, |c| {
        c.node_id = 7;
        c.redis.node_lease_ms = 600;
    })
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = test_config(dir.path());
    cfg.redis = a.engine.config().redis.clone();
    cfg.node_id = 7;
    let started = std::time::Instant::now();
    match rush_engine::Node::open(cfg.clone(), rush_engine::telemetry::Metrics::new()).await {
        Err(StartError::NodeIdTaken(7)) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("two live nodes share node id 7"),
    }
    assert!(started.elapsed() >= std::time::Duration::from_millis(600), "it waited for a lease that could be stale");
    cfg.node_id = 8;
    assert!(rush_engine::Node::open(cfg, rush_engine::telemetry::Metrics::new()).await.is_ok());
    // The first node is still serving.
    let (s, _) = a.get("/healthz", None).await;
    assert_eq!(s, StatusCode::OK);
}

/// `node_id_auto` (Kubernetes Deployments): three nodes on one Redis lease
/// three different ids, and mint ids carrying them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_node_ids_are_leased_distinct() {
    let a = spawn_in(Mode::Redis, |c| c.node_id_auto = true).await;
    let (prefix, dir) = (a.engine.config().redis.key_prefix.clone(), a.engine.config().data_dir.clone());
    let mut nodes = vec![a.engine.node_id()];
    let mut others = Vec::new();
    for _ in 0..2 {
        let (prefix, dir) = (prefix.clone(), dir.clone());
        let n = spawn_in(Mode::Redis, |c| {
            c.node_id_auto = true;
            c.redis.key_prefix = prefix;
            c.data_dir = dir;
        })
        .await;
        nodes.push(n.engine.node_id());
        others.push(n);
    }
    let distinct: std::collections::HashSet<u16> = nodes.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "{nodes:?}");
    // Ids minted by a node carry its leased id.
    let event = others[1].event(2, 2, json!({})).await;
    let id: rush_engine::domain::Id = event.parse().expect("id");
    assert_eq!(id.node(), nodes[2]);
}
