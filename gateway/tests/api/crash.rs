//! Kill -9 the real binary after acknowledged writes, restart it on the same
//! file, and check that nothing acknowledged was lost or resold.

use std::collections::{HashMap, HashSet};
use std::process::Child;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::helpers::{spawn_rush, Client};

struct Proc {
    child: Child,
    base: String,
}

/// Starts the real binary; with `redis = Some((url, prefix))`, in Redis mode.
fn start(dir: &std::path::Path, redis: Option<&(String, String)>) -> Proc {
    start_node(dir, redis, 0)
}

fn start_node(dir: &std::path::Path, redis: Option<&(String, String)>, node_id: u16) -> Proc {
    let mut envs = vec![
        ("RUSH__NODE_ID".to_string(), node_id.to_string()),
        ("RUSH__HTTP__ADDR".to_string(), "127.0.0.1:0".to_string()),
        ("RUSH__DATA_DIR".to_string(), dir.display().to_string()),
        ("RUSH__WORKERS__TIMEOUT_POLL_MS".to_string(), "50".to_string()),
    ];
    if let Some((url, prefix)) = redis {
        envs.push(("RUSH__REDIS__URL".to_string(), url.clone()));
        envs.push(("RUSH__REDIS__KEY_PREFIX".to_string(), prefix.clone()));
    }
    let (child, banner) = spawn_rush("serve", &envs);
    let base = banner["url"].as_str().expect("url").to_string();
    Proc { child, base }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_loses_no_acknowledged_hold_or_grab() {
    kill_and_restart(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_kill_minus_nine_loses_no_acknowledged_hold_or_grab() {
    let prefix = format!("rushtest-crash-{}", std::process::id());
    let redis = (super::helpers::test_redis_url(), prefix);
    kill_and_restart(Some(&redis)).await;
    if let Ok(mut conn) = redis::Client::open(redis.0.as_str()).and_then(|c| c.get_connection()) {
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{}:*", redis.1)).query(&mut conn).unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

async fn kill_and_restart(redis: Option<&(String, String)>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut proc = start(dir.path(), redis);
    let c = Arc::new(Client::new(&proc.base));
    let admin = c.token("ops", "admin").await;
    let event = c.create_event(&admin, 5, 10).await;
    let total = 50_000;
    c.call("POST", "/v1/admin/wallet/sender/credit", &admin, json!({"amount": total, "reason": "t"})).await;
    let sender = c.token("sender", "user").await;
    let (s, v) =
        c.call("POST", "/v1/packets", &sender, json!({"kind": "lucky", "total_amount": total, "count": 100})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let packet = v["packet_id"].as_str().expect("id").to_string();

    // A burst of holds and grabs; remember every acknowledged one.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let c = c.clone();
        let event = event.clone();
        tasks.push(tokio::spawn(async move {
            let t = c.token(&format!("h{i}"), "user").await;
            let (s, v) =
                c.call("POST", "/v1/orders", &t, json!({"event_id": event, "category": "std", "quantity": 1})).await;
            ("hold", t, s, v)
        }));
    }
    for i in 0..60 {
        let c = c.clone();
        let path = format!("/v1/packets/{packet}/grab");
        tasks.push(tokio::spawn(async move {
            let t = c.token(&format!("g{i}"), "user").await;
            let (s, v) = c.call("POST", &path, &t, json!({})).await;
            ("grab", t, s, v)
        }));
    }
    let mut holds: Vec<(String, String, String)> = Vec::new();
    let mut grabs: Vec<(String, i64)> = Vec::new();
    for t in tasks {
        let (kind, token, s, v) = t.await.expect("task");
        match (kind, s) {
            ("hold", StatusCode::CREATED) => holds.push((
                token,
                v["order_id"].as_str().expect("order").to_string(),
                v["seats"][0]["seat_id"].as_str().expect("seat").to_string(),
            )),
            ("grab", StatusCode::OK) => grabs.push((token, v["amount"].as_i64().expect("amount"))),
            other => panic!("unexpected {other:?}: {v}"),
        }
    }
    assert_eq!((holds.len(), grabs.len()), (40, 60));

    // No graceful anything: SIGKILL.
    proc.child.kill().expect("kill");
    proc.child.wait().expect("wait");

    let mut proc = start(dir.path(), redis);
    let c = Client::new(&proc.base);

    for (token, order, seat) in &holds {
        let (s, v) = c.call("GET", &format!("/v1/orders/{order}"), token, Value::Null).await;
        assert_eq!(s, StatusCode::OK, "lost order {order}: {v}");
        assert_eq!(v["status"], "pending_payment");
        assert_eq!(v["seats"][0]["seat_id"].as_str(), Some(seat.as_str()));
    }
    let granted: i64 = grabs.iter().map(|(_, a)| a).sum();
    for (token, amount) in &grabs {
        let (s, v) = c.call("POST", &format!("/v1/packets/{packet}/grab"), token, json!({})).await;
        assert_eq!(s, StatusCode::CONFLICT, "grab lost: {v}");
        assert_eq!(v["error"]["amount"], *amount);
    }
    let (_, v) = c.call("GET", &format!("/v1/packets/{packet}"), &sender, Value::Null).await;
    assert_eq!(v["remaining_count"], 40, "{v}");
    assert_eq!(v["remaining_amount"].as_i64(), Some(total - granted));

    // No seat resold: buying out the rest yields exactly the free seats.
    let held: HashSet<String> = holds.iter().map(|(_, _, s)| s.clone()).collect();
    let mut sold_after = HashSet::new();
    for i in 0..20 {
        let t = c.token(&format!("late{i}"), "user").await;
        loop {
            let (s, v) =
                c.call("POST", "/v1/orders", &t, json!({"event_id": event, "category": "std", "quantity": 1})).await;
            if s != StatusCode::CREATED {
                break;
            }
            let seat = v["seats"][0]["seat_id"].as_str().expect("seat").to_string();
            assert!(!held.contains(&seat), "seat {seat} resold after restart");
            assert!(sold_after.insert(seat));
        }
    }
    assert_eq!(sold_after.len(), 10);

    // Balances add up once the restarted workers replay the outbox.
    let mut settled = false;
    for _ in 0..100 {
        let mut balances = HashMap::new();
        for (token, _) in &grabs {
            let (_, v) = c.call("GET", "/v1/wallet", token, Value::Null).await;
            balances.insert(token.clone(), v["available"].as_i64().unwrap_or(-1));
        }
        let (_, s) = c.call("GET", "/v1/wallet", &sender, Value::Null).await;
        if grabs.iter().all(|(t, a)| balances.get(t) == Some(a)) && s["frozen"].as_i64() == Some(total - granted) {
            assert_eq!(s["available"], 0);
            settled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(settled, "balances did not add up after restart");
    let _ = proc.child.kill();
    let _ = proc.child.wait();
}

/// Two rush processes on one Redis (and one durable file) race for one
/// packet; 30 users grab through both at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rush_processes_grant_each_part_and_each_user_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = (super::helpers::test_redis_url(), format!("rushtest-2proc-{}", std::process::id()));
    let mut procs = [start_node(dir.path(), Some(&redis), 1), start_node(dir.path(), Some(&redis), 2)];
    let nodes: Vec<Arc<Client>> = procs.iter().map(|p| Arc::new(Client::new(&p.base))).collect();
    let admin = nodes[0].token("ops", "admin").await;
    let total = 60_000;
    nodes[0].call("POST", "/v1/admin/wallet/sender/credit", &admin, json!({"amount": total, "reason": "t"})).await;
    let sender = nodes[0].token("sender", "user").await;
    let (s, v) = nodes[1]
        .call("POST", "/v1/packets", &sender, json!({"kind": "lucky", "total_amount": total, "count": 60}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let packet = v["packet_id"].as_str().expect("id").to_string();
    let mut tasks = Vec::new();
    for i in 0..150 {
        let token = nodes[0].token(&format!("p{i}"), "user").await;
        let targets: Vec<Arc<Client>> = if i < 30 { nodes.clone() } else { vec![nodes[i % 2].clone()] };
        for node in targets {
            let (token, path) = (token.clone(), format!("/v1/packets/{packet}/grab"));
            tasks.push(tokio::spawn(async move {
                // A client honours 503 + Retry-After (contention), a bounded number of times.
                for _ in 0..20 {
                    let (s, v) = node.call("POST", &path, &token, json!({})).await;
                    if s != StatusCode::SERVICE_UNAVAILABLE {
                        return (token, s, v);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                panic!("still 503 after 20 tries");
            }));
        }
    }
    let mut granted: HashMap<String, i64> = HashMap::new();
    for t in tasks {
        let (token, s, v) = t.await.expect("task");
        match s {
            StatusCode::OK => {
                assert!(granted.insert(token, v["amount"].as_i64().expect("amount")).is_none(), "granted twice")
            }
            StatusCode::CONFLICT => assert_eq!(v["error"]["code"], "already_grabbed", "{v}"),
            StatusCode::GONE => assert_eq!(v["error"]["code"], "packet_empty", "{v}"),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(granted.len(), 60);
    assert_eq!(granted.values().sum::<i64>(), total);
    let mut settled = false;
    for _ in 0..100 {
        let mut ok = nodes[1].call("GET", "/v1/wallet", &sender, Value::Null).await.1["frozen"] == 0;
        for (token, amount) in &granted {
            ok &= nodes[(amount % 2) as usize].call("GET", "/v1/wallet", token, Value::Null).await.1["available"]
                == *amount;
        }
        if ok {
            settled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(settled, "balances did not add up");
    for p in &mut procs {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    if let Ok(mut conn) = redis::Client::open(redis.0.as_str()).and_then(|c| c.get_connection()) {
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{}:*", redis.1)).query(&mut conn).unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}
