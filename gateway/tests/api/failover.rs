//! Issue 15, item 4: the Redis primary dies in the middle of a burst of
//! holds and grabs through two real `rush serve` processes; its replica is
//! promoted (`REPLICAOF NO ONE`, what Sentinel does) and rush reaches it at
//! the address it was configured with (a TCP proxy in front of "the Redis"
//! moves new connections to the new primary, as a Sentinel-aware address
//! or a DNS name would).
//!
//! - `replicas` durability: every batch waited for the replica before
//!   anyone was answered, so every acknowledged hold and grab is in the
//!   durable store exactly once, no seat is sold twice, nobody grabbed
//!   twice, the ledger balances.
//! - `none`: the promoted replica may miss the last acknowledged writes.
//!   The nodes see the new replication id, refuse work, rebuild from the
//!   durable store and serve again; the durable store's constraints keep
//!   any double sale the lost window allows out (each parked and counted),
//!   and the projection goes on.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::helpers::{code, eventually, kill9, Client};
use super::nodes::{event, taken_seats, user, Cluster, Kind};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port()
}

/// A redis-server keeping nothing on disk, a replica of `primary` if given.
fn redis_server(port: u16, primary: Option<u16>) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    // A replica's full sync goes through an RDB file: not in the checkout.
    cmd.arg("--dir").arg(std::env::temp_dir()).args(["--dbfilename", &format!("rush-failover-{port}.rdb")]);
    if let Some(p) = primary {
        cmd.args(["--replicaof", "127.0.0.1", &p.to_string()]);
    }
    let mut child =
        cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("redis-server must be installed (see .ci/run)");
    let up = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if !up {
        kill9(&mut child);
        panic!("redis-server did not listen on {port}");
    }
    child
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn wait_linked(replica: u16) {
    let up = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        redis_cli(replica, &["INFO", "replication"]).contains("master_link_status:up")
    });
    assert!(up, "the replica on {replica} did not link to its primary");
}

/// Forwards every new connection to the port it currently points at;
/// while frozen, what the target sends is dropped (a replication link that
/// stalls: the primary has written what its replica never gets).
struct Proxy {
    port: u16,
    target: Arc<AtomicU16>,
    frozen: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let target = Arc::new(AtomicU16::new(target));
        let frozen = Arc::new(AtomicBool::new(false));
        let (to, freeze) = (target.clone(), frozen.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (port, frozen) = (to.load(Ordering::SeqCst), freeze.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return };
                    let (mut in_read, mut in_write) = inbound.into_split();
                    let (mut out_read, mut out_write) = outbound.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut in_read, &mut out_write).await;
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match out_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if !frozen.load(Ordering::SeqCst) && in_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        Proxy { port, target, frozen, task }
    }

    fn point_at(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sum of every sample of `name` in the `/metrics` of every node.
async fn metric(nodes: &[Arc<Client>], name: &str) -> f64 {
    let mut sum = 0.0;
    for c in nodes {
        let text = match c.http.get(format!("{}/metrics", c.base)).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        sum += text
            .lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    sum
}

/// What a client was told: acknowledged holds (user → order id) and grabs
/// (user → amount), and anything unexpected.
#[derive(Default)]
struct Acks {
    holds: HashMap<String, String>,
    grabs: HashMap<String, i64>,
    /// Refusals by code (sold out, or a node's actor still counting a
    /// hold that only the dead primary had, until the rebuild resets it).
    refused: HashMap<String, usize>,
    odd: Vec<String>,
}

/// One buyer: a hold of one seat, then a grab, each retried while rush
/// answers 503 (Redis down, promoting, rebuilding).
async fn buyer(c: Arc<Client>, name: String, event: String, packet: String, acks: Arc<Mutex<Acks>>) {
    let t = user(&name);
    let deadline = Instant::now() + Duration::from_secs(40);
    let body = json!({"event_id": event, "category": "std", "quantity": 1});
    while Instant::now() < deadline {
        let (s, v) = c.call("POST", "/v1/orders", &t, body.clone()).await;
        match s {
            StatusCode::CREATED => {
                let id = v["order_id"].as_str().unwrap_or_default().to_string();
                acks.lock().expect("acks").holds.insert(name.clone(), id);
                break;
            }
            StatusCode::SERVICE_UNAVAILABLE => tokio::time::sleep(Duration::from_millis(50)).await,
            // Sold out, or an earlier attempt that answered 503 did hold
            // (the per-user limit is far): either way no acknowledgement.
            StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY => {
                *acks.lock().expect("acks").refused.entry(code(&v).to_string()).or_default() += 1;
                break;
            }
            other => {
                acks.lock().expect("acks").odd.push(format!("hold {name}: {other} {v}"));
                break;
            }
        }
    }
    while Instant::now() < deadline {
        let (s, v) = c.call("POST", &format!("/v1/packets/{packet}/grab"), &t, json!({})).await;
        match (s, code(&v)) {
            (StatusCode::OK, _) => {
                acks.lock().expect("acks").grabs.insert(name.clone(), v["amount"].as_i64().unwrap_or(-1));
                break;
            }
            // An earlier attempt answered 503 but granted: this says so.
            (StatusCode::CONFLICT, "already_grabbed") => {
                let amount = v["error"]["amount"].as_i64().unwrap_or(-1);
                acks.lock().expect("acks").grabs.insert(name.clone(), amount);
                break;
            }
            (StatusCode::SERVICE_UNAVAILABLE, _) => tokio::time::sleep(Duration::from_millis(50)).await,
            (StatusCode::GONE, "packet_empty") => break,
            _ => {
                acks.lock().expect("acks").odd.push(format!("grab {name}: {s} {v}"));
                break;
            }
        }
    }
}

/// order id → (status, live seats), and (user → grabbed amount) per packet,
/// as the durable store holds them.
async fn durable_view(pg: &str, packet: &str) -> (HashMap<String, (String, Vec<String>)>, HashMap<String, Vec<i64>>) {
    let mut conn: sqlx::PgConnection = sqlx::Connection::connect(pg).await.expect("postgres");
    let union =
        (0..16).map(|i| format!("SELECT order_id, status FROM orders_{i}")).collect::<Vec<_>>().join(" UNION ALL ");
    let mut orders: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for r in sqlx::query(&union).fetch_all(&mut conn).await.expect("orders") {
        let id: i64 = r.get(0);
        orders.insert(id.to_string(), (r.get(1), Vec::new()));
    }
    for r in sqlx::query("SELECT order_id, seat_id FROM order_seats WHERE live = 1")
        .fetch_all(&mut conn)
        .await
        .expect("seats")
    {
        let id: i64 = r.get(0);
        if let Some(o) = orders.get_mut(&id.to_string()) {
            o.1.push(r.get(1));
        }
    }
    let packet_id: i64 = packet.parse().unwrap_or_default();
    let mut grabs: HashMap<String, Vec<i64>> = HashMap::new();
    for r in sqlx::query("SELECT user_id, amount FROM grabs WHERE packet_id = $1")
        .bind(packet_id)
        .fetch_all(&mut conn)
        .await
        .expect("grabs")
    {
        grabs.entry(r.get(0)).or_default().push(r.get(1));
    }
    (orders, grabs)
}

async fn parked_rows(pg: &str) -> i64 {
    let mut conn: sqlx::PgConnection = sqlx::Connection::connect(pg).await.expect("postgres");
    sqlx::query_scalar("SELECT COUNT(*) FROM parked_events").fetch_one(&mut conn).await.expect("parked")
}

const SEATS: u32 = 60;
const PARTS: u32 = 40;
const BUYERS: usize = 80;

async fn failover(kind: Kind, durability: &str) {
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let mut primary = redis_server(p1, None);
    // The replica reaches its primary through a link that can stall.
    let link = Proxy::start(p1).await;
    let mut replica = redis_server(p2, Some(link.port));
    wait_linked(p2);
    let proxy = Proxy::start(p1).await;
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let mut cl = Cluster::start(
        kind,
        2,
        &[
            ("RUSH__REDIS__URL", url.as_str()),
            ("RUSH__REDIS__DURABILITY", durability),
            ("RUSH__REDIS__REPLICAS_MIN", "1"),
            ("RUSH__REDIS__WAIT_TIMEOUT_MS", "500"),
            ("RUSH__REDIS__TIMEOUT_MS", "500"),
            ("RUSH__REDIS__MARKER_CHECK_MS", "200"),
        ],
    )
    .await;
    let admin = cl.admin();
    let ev = event(&cl.nodes[0], &admin, SEATS, json!({"limits": {"per_order": 1, "per_user": 4}})).await;
    let (s, v) = cl.nodes[1]
        .call("POST", "/v1/admin/wallet/fo-sender/credit", &admin, json!({"amount": 4_000, "reason": "t"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = cl.nodes[0]
        .call(
            "POST",
            "/v1/packets",
            &user("fo-sender"),
            json!({"kind": "lucky", "total_amount": 4_000, "count": PARTS}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let packet = v["packet_id"].as_str().expect("id").to_string();

    let acks = Arc::new(Mutex::new(Acks::default()));
    let mut tasks = Vec::new();
    for i in 0..BUYERS {
        let c = cl.nodes[i % 2].clone();
        let (ev, packet, acks) = (ev.clone(), packet.clone(), acks.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i as u64 * 8)).await;
            buyer(c, format!("fo{i}"), ev, packet, acks).await;
        }));
    }
    // Mid-burst: replication stalls, then the primary dies; what Sentinel
    // does follows. What the primary wrote in the last 300 ms is not on
    // the replica: with `replicas` none of it was acknowledged (WAIT timed
    // out, 503) nor handed to the durable store; with `none` it was.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let before = { acks.lock().expect("acks").holds.len() };
    link.freeze();
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill9(&mut primary);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(redis_cli(p2, &["REPLICAOF", "NO", "ONE"]).contains("OK"), "promotion");
    proxy.point_at(p2);
    let mut new_replica = redis_server(p3, Some(p2));
    wait_linked(p3);
    for t in tasks {
        t.await.expect("buyer");
    }
    let acks = std::mem::take(&mut *acks.lock().expect("acks"));
    eprintln!(
        "failover ({kind:?}, {durability}): {before} holds acknowledged before the kill, {} holds and {} grabs in all; holds refused: {:?}",
        acks.holds.len(),
        acks.grabs.len(),
        acks.refused
    );
    assert!(acks.odd.is_empty(), "unexpected answers: {:#?}", acks.odd);
    assert!(
        before > 0 && acks.holds.len() > before,
        "the kill did not fall mid-burst ({before} of {})",
        acks.holds.len()
    );

    // Both nodes noticed, and serve again without a restart.
    for c in &cl.nodes {
        let ready =
            eventually(30, || async { c.call("GET", "/readyz", "", Value::Null).await.0 == StatusCode::OK }).await;
        assert!(ready, "{} is not ready after the failover", c.base);
    }
    let losses = metric(&cl.nodes, "rush_hot_store_losses_total").await;
    assert!(losses >= 1.0, "no node counted the failover as a possible loss");

    // The projection goes on: a hold made now reaches the durable store.
    let late = user("fo-late");
    let (s, v) =
        cl.nodes[1].call("POST", "/v1/orders", &late, json!({"event_id": ev, "category": "std", "quantity": 1})).await;
    let late_order = if s == StatusCode::CREATED { v["order_id"].as_str().map(str::to_string) } else { None };
    assert!(s == StatusCode::CREATED || s == StatusCode::CONFLICT, "{s} {v}");

    let pg = cl.pg.url.clone();
    let want_orders: HashSet<String> = acks.holds.values().cloned().chain(late_order).collect();
    let arrived = eventually(30, || async {
        let (orders, grabs) = durable_view(&pg, &packet).await;
        let seen = want_orders.iter().filter(|o| orders.contains_key(*o)).count();
        let grabbed = acks.grabs.keys().filter(|u| grabs.contains_key(*u)).count();
        seen == want_orders.len() && grabbed == acks.grabs.len()
    })
    .await;
    let (orders, grabs) = durable_view(&pg, &packet).await;

    // Never two live orders on one seat, never two grabs by one user.
    let mut owner: HashMap<&str, &str> = HashMap::new();
    for (order, (_, seats)) in &orders {
        for seat in seats {
            assert!(owner.insert(seat, order).is_none(), "seat {seat} is in two live orders");
        }
    }
    for (u, amounts) in &grabs {
        assert_eq!(amounts.len(), 1, "{u} grabbed twice: {amounts:?}");
    }
    let granted: i64 = grabs.values().flatten().sum();
    let (_, pv) = cl.nodes[0].call("GET", &format!("/v1/packets/{packet}"), &admin, Value::Null).await;
    let parked = parked_rows(&pg).await;
    let parked_metric = metric(&cl.nodes, "rush_parked_events_total").await;
    if kind == Kind::Redis {
        // (In full mode the worker, its own process, does the parking.)
        assert_eq!(parked as f64, parked_metric, "every parked event is counted");
    }

    if durability == "replicas" {
        assert!(arrived, "an acknowledged hold or grab never reached the durable store");
        for (u, order) in &acks.holds {
            let (status, seats) = &orders[order];
            assert_eq!((status.as_str(), seats.len()), ("pending_payment", 1), "{u}'s order {order}");
        }
        for (u, amount) in &acks.grabs {
            assert_eq!(grabs[u], vec![*amount], "{u}'s grab");
        }
        assert_eq!(parked, 0, "nothing acknowledged conflicts with anything else acknowledged");
        assert_eq!(pv["remaining_amount"].as_i64(), Some(4_000 - granted), "{pv}");
        // Each node's seat map is the durable store's live orders.
        let live: HashSet<String> = owner.keys().map(|s| s.to_string()).collect();
        for c in &cl.nodes {
            assert_eq!(taken_seats(c, &ev, &admin).await, live, "{}'s seat map differs from the durable store", c.base);
        }
    } else {
        let lost_holds = acks.holds.values().filter(|o| !orders.contains_key(*o)).count();
        let lost_grabs = acks.grabs.keys().filter(|u| !grabs.contains_key(*u)).count();
        eprintln!("with durability none: {lost_holds} holds and {lost_grabs} grabs lost, {parked} events parked");
    }
    let clean = eventually(30, || async { cl.reconcile().0 == 0 }).await;
    assert!(clean, "{:#}", cl.reconcile().1);
    for i in 0..2 {
        cl.kill(i);
    }
    kill9(&mut replica);
    kill9(&mut new_replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_failover_with_replicas_durability_loses_no_acknowledged_hold_or_grab() {
    failover(Kind::Redis, "replicas").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mode_failover_with_replicas_durability_loses_no_acknowledged_hold_or_grab() {
    failover(Kind::Full, "replicas").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_failover_without_durability_is_detected_rebuilt_and_sells_no_seat_twice() {
    failover(Kind::Redis, "none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mode_failover_without_durability_is_detected_rebuilt_and_sells_no_seat_twice() {
    failover(Kind::Full, "none").await;
}
