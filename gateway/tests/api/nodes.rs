//! Several real `rush serve` processes on one Redis and one Postgres (Redis
//! mode with a shared durable store, and full mode with Kafka and a `rush
//! worker`): a node whose actor loaded an entity before another node
//! changed it must still answer as the store stands (issue 13). Actors
//! keep their memory for 10 minutes here, so a stale one stays alive
//! through each test unless the version check makes it reload.

use std::collections::{HashMap, HashSet};
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use rush_engine::testkit::{test_kafka_brokers, ScratchDb};
use serde_json::{json, Value};

use super::helpers::{
    code, delete_prefix, eventually, rush_reconcile, signed_token, spawn_rush, test_redis_url, Client,
};

/// Tokens are signed with the default (development) secret, which every
/// node has.
fn sign(user: &str, role: &str) -> String {
    signed_token(&rush_engine::Config::default().auth.jwt_secret, user, role)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Redis hot store, Postgres durable store, persist workers in serve.
    Redis,
    /// Redis, Kafka (relay in serve), Postgres, and a `rush worker`.
    Full,
}

pub struct Cluster {
    pub nodes: Vec<Arc<Client>>,
    procs: Vec<Child>,
    envs: Vec<(String, String)>,
    prefix: String,
    pub pg: ScratchDb,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        delete_prefix(&test_redis_url(), &self.prefix);
    }
}

impl Cluster {
    /// `n` serve nodes (ids 1..=n); `tune` adds settings to every process.
    pub async fn start(kind: Kind, n: usize, tune: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = ScratchDb::create().await.expect("Postgres (RUSH_TEST_POSTGRES_URL)");
        let prefix = rush_engine::testkit::unique_name("rushnodes");
        let mut envs: Vec<(String, String)> = vec![
            ("RUSH__REDIS__URL".into(), test_redis_url()),
            ("RUSH__REDIS__KEY_PREFIX".into(), prefix.clone()),
            ("RUSH__POSTGRES__URL".into(), pg.url.clone()),
            ("RUSH__HTTP__ADDR".into(), "127.0.0.1:0".into()),
            ("RUSH__WORKERS__TIMEOUT_POLL_MS".into(), "50".into()),
            ("RUSH__WORKERS__POLL_WAIT_MS".into(), "50".into()),
            ("RUSH__ACTORS__IDLE_MS".into(), "600000".into()),
        ];
        if kind == Kind::Full {
            envs.extend([
                ("RUSH__KAFKA__BROKERS".into(), test_kafka_brokers()),
                ("RUSH__KAFKA__TOPIC_PREFIX".into(), prefix.clone()),
                ("RUSH__KAFKA__GROUP".into(), format!("{prefix}-persist")),
                ("RUSH__KAFKA__PARTITIONS".into(), "4".into()),
                ("RUSH__KAFKA__SESSION_TIMEOUT_MS".into(), "6000".into()),
            ]);
        }
        for (k, v) in tune {
            envs.push((k.to_string(), v.to_string()));
        }
        let mut cluster = Cluster { nodes: Vec::new(), procs: Vec::new(), envs, prefix, pg, _dir: dir };
        for i in 1..=n {
            cluster.add_node(i as u16).await;
        }
        if kind == Kind::Full {
            let envs = cluster.envs.clone();
            let (worker, _) = tokio::task::spawn_blocking(move || spawn_rush("worker", &envs)).await.expect("worker");
            cluster.procs.push(worker);
        }
        cluster
    }

    async fn spawn_node(&self, node_id: u16) -> (Child, Arc<Client>) {
        let mut envs = self.envs.clone();
        envs.push(("RUSH__NODE_ID".into(), node_id.to_string()));
        envs.push(("RUSH__DATA_DIR".into(), self._dir.path().join(format!("node{node_id}")).display().to_string()));
        let (child, banner) = tokio::task::spawn_blocking(move || spawn_rush("serve", &envs)).await.expect("spawn");
        let base = banner["url"].as_str().expect("url").to_string();
        (child, Arc::new(Client::new(&base)))
    }

    async fn add_node(&mut self, node_id: u16) {
        let (child, client) = self.spawn_node(node_id).await;
        self.procs.push(child);
        self.nodes.push(client);
    }

    /// Starts node `i` (0-based) again, after [`Cluster::kill`].
    pub async fn restart(&mut self, i: usize) {
        let (child, client) = self.spawn_node(i as u16 + 1).await;
        self.procs[i] = child;
        self.nodes[i] = client;
    }

    /// Kills node `i` (0-based) with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        let _ = self.procs[i].kill();
        let _ = self.procs[i].wait();
    }

    pub fn admin(&self) -> String {
        sign("ops", "admin")
    }

    /// `rush reconcile` over the shared Postgres: (exit code, report).
    pub fn reconcile(&self) -> (i32, Value) {
        rush_reconcile(&[
            ("RUSH__POSTGRES__URL", self.pg.url.as_ref()),
            ("RUSH__DATA_DIR", self._dir.path().as_os_str()),
        ])
    }
}

pub fn user(name: &str) -> String {
    sign(name, "user")
}

/// An event of one row of `seats` seats at 1.00, with `extra` fields.
pub async fn event(c: &Client, admin: &str, seats: u32, extra: Value) -> String {
    let mut body = json!({
        "name": "Nodes", "venue": "Lab", "starts_at": "2030-12-31T20:00:00Z",
        "categories": [{"id": "std", "name": "Std", "price": 100}],
        "layout": {"sections": [{"name": "A", "rows": 1, "cols": seats, "category": "std"}]}});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let (s, v) = c.call("POST", "/v1/admin/events", admin, body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["event_id"].as_str().expect("event id").to_string()
}

/// Retries a call answered 503 (contention, a node catching up).
async fn call_retrying(c: &Client, method: &str, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
    for _ in 0..50 {
        let (s, v) = c.call(method, path, token, body.clone()).await;
        if s != StatusCode::SERVICE_UNAVAILABLE {
            return (s, v);
        }
        eprintln!("{method} {path}: 503 {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{method} {path}: still 503");
}

/// The seats of `event` a node does not show as available.
pub async fn taken_seats(c: &Client, event: &str, admin: &str) -> HashSet<String> {
    let (_, v) = c.call("GET", &format!("/v1/events/{event}/seats"), admin, Value::Null).await;
    v["seats"]
        .as_array()
        .expect("seats")
        .iter()
        .filter(|s| s["status"] != "available")
        .filter_map(|s| s["seat_id"].as_str().map(str::to_string))
        .collect()
}

async fn remaining(c: &Client, event: &str, token: &str) -> i64 {
    let (s, v) = c.call("GET", &format!("/v1/events/{event}"), token, Value::Null).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["categories"][0]["remaining"].as_i64().expect("remaining")
}

async fn hold(c: &Client, token: &str, event: &str, quantity: u32) -> (StatusCode, Value) {
    call_retrying(c, "POST", "/v1/orders", token, json!({"event_id": event, "category": "std", "quantity": quantity}))
        .await
}

async fn payment_status(c: &Client, token: &str, payment: &str) -> String {
    let (_, v) = c.call("GET", &format!("/v1/payments/{payment}"), token, Value::Null).await;
    v["status"].as_str().unwrap_or_default().to_string()
}

async fn order_status(c: &Client, token: &str, order: &str) -> String {
    let (_, v) = c.call("GET", &format!("/v1/orders/{order}"), token, Value::Null).await;
    v["status"].as_str().unwrap_or_default().to_string()
}

/// Opens a payment of `order` through `via` and returns its id.
async fn open_payment(via: &Client, token: &str, order: &str, channel: &str) -> String {
    let (s, v) =
        call_retrying(via, "POST", &format!("/v1/orders/{order}/payments"), token, json!({"channel": channel})).await;
    assert!(s.is_success(), "{s} {v}");
    v["payment_id"].as_str().expect("payment id").to_string()
}

/// The buyer pays at the sandbox; its callbacks go to `via`.
async fn pay_at_sandbox(via: &Client, channel: &str, payment: &str, plan: Value) -> Value {
    let (s, v) = via.call("POST", &format!("/v1/sandbox/{channel}/payments/{payment}/complete"), "", plan).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

macro_rules! both_modes {
    ($redis:ident, $full:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $redis() {
            $body(Kind::Redis).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $full() {
            $body(Kind::Full).await;
        }
    };
}

/// Case 1: the per-user limit counts seats held through every node.
async fn per_user_limit_across_nodes(kind: Kind) {
    let cl = Cluster::start(kind, 2, &[]).await;
    let (a, b) = (&cl.nodes[0], &cl.nodes[1]);
    let event = event(a, &cl.admin(), 10, json!({"limits": {"per_order": 2, "per_user": 2}})).await;
    let alice = user("alice");
    assert_eq!(remaining(b, &event, &alice).await, 10, "node 2's actor loads the event");
    assert_eq!(hold(a, &alice, &event, 2).await.0, StatusCode::CREATED);
    let (s, v) = hold(b, &alice, &event, 2).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded"), "{v}");
    let (s, v) = hold(b, &alice, &event, 1).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded"), "{v}");
    assert_eq!(remaining(b, &event, &alice).await, 8);
    assert_eq!(remaining(a, &event, &alice).await, 8);
}
both_modes!(
    per_user_limit_holds_across_two_nodes_redis_mode,
    per_user_limit_holds_across_two_nodes_full_mode,
    per_user_limit_across_nodes
);

/// Case 2: seats freed through one node are on sale at once on the other
/// (after a cancel, after an expiry, after a refund).
async fn freed_seats_everywhere(kind: Kind) {
    let cl = Cluster::start(kind, 2, &[]).await;
    let (a, b) = (&cl.nodes[0], &cl.nodes[1]);
    let admin = cl.admin();
    let (alice, bob) = (user("alice"), user("bob"));

    // Cancel.
    let one = event(a, &admin, 1, json!({})).await;
    let (s, v) = hold(a, &alice, &one, 1).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let order = v["order_id"].as_str().expect("order").to_string();
    assert_eq!(remaining(b, &one, &bob).await, 0);
    let (s, v) = hold(b, &bob, &one, 1).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "sold_out"), "{v}");
    let (s, v) = a.call("POST", &format!("/v1/orders/{order}/cancel"), &alice, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(remaining(b, &one, &bob).await, 1, "node 2 sees the freed seat at once");
    let (s, v) = hold(b, &bob, &one, 1).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(remaining(a, &one, &bob).await, 0);

    // Expiry (swept by whichever node claims it).
    let short = event(a, &admin, 1, json!({"hold_ttl_s": 1})).await;
    assert_eq!(hold(a, &alice, &short, 1).await.0, StatusCode::CREATED);
    assert_eq!(remaining(b, &short, &bob).await, 0);
    assert!(eventually(10, || async { remaining(b, &short, &bob).await == 1 }).await, "expired seat back on node 2");
    assert_eq!(hold(b, &bob, &short, 1).await.0, StatusCode::CREATED);

    // Refund.
    let paid = event(a, &admin, 1, json!({})).await;
    let (_, v) = hold(a, &alice, &paid, 1).await;
    let order = v["order_id"].as_str().expect("order").to_string();
    let payment = open_payment(a, &alice, &order, "ecard").await;
    pay_at_sandbox(a, "ecard", &payment, json!({})).await;
    assert!(eventually(10, || async { payment_status(a, &alice, &payment).await == "succeeded" }).await);
    assert_eq!(remaining(b, &paid, &bob).await, 0);
    let (s, v) = a.call("POST", &format!("/v1/orders/{order}/refund"), &alice, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(remaining(b, &paid, &bob).await, 1, "a refunded seat is on sale on node 2");
    assert_eq!(hold(b, &bob, &paid, 1).await.0, StatusCode::CREATED);
}
both_modes!(
    freed_seats_are_on_sale_on_every_node_redis_mode,
    freed_seats_are_on_sale_on_every_node_full_mode,
    freed_seats_everywhere
);

/// A signed WeChat callback for `payment`, as the channel would send it.
fn wechat_callback(payment: &str, amount: i64, txn: &str) -> rush_engine::pay::wire::Callback {
    use rush_engine::pay::wire::Wire;
    let wire = rush_engine::pay::wire::Wechat { secret: "rush-dev-wechat-secret".into(), age_ms_max: 300_000 };
    let now = rush_engine::domain::now_unix_ms();
    let n = rush_engine::pay::Notification {
        payment_id: payment.parse().expect("id"),
        paid: rush_engine::pay::Paid {
            txn_id: txn.to_string(),
            amount: rush_engine::domain::Fen::new(amount),
            paid_at_ms: now,
        },
    };
    wire.callback(&n, now)
}

async fn send_callback(c: &Client, cb: &rush_engine::pay::wire::Callback) -> StatusCode {
    let mut req = c.http.post(format!("{}/v1/channels/wechat/notify", c.base)).body(cb.body.clone());
    for (k, v) in &cb.headers {
        req = req.header(k, v);
    }
    req.send().await.expect("send").status()
}

/// Case 3: a payment made in time is never refunded because a node's
/// actor had not seen the hold, and duplicate callbacks racing on both
/// nodes change the payment once.
async fn payment_through_a_stale_node(kind: Kind) {
    // The active query stays out of the way: callbacks decide.
    let cl = Cluster::start(kind, 2, &[("RUSH__PAYMENTS__QUERY_AFTER_MS", "600000")]).await;
    let (a, b) = (cl.nodes[0].clone(), cl.nodes[1].clone());
    let event = event(&a, &cl.admin(), 20, json!({})).await;
    let bob = user("bob");
    // Node 2 loads the event before any hold.
    assert_eq!(remaining(&b, &event, &bob).await, 20);

    // One callback, to the node that never saw the hold.
    let alice = user("alice");
    let (_, v) = hold(&a, &alice, &event, 1).await;
    let order = v["order_id"].as_str().expect("order").to_string();
    let payment = open_payment(&a, &alice, &order, "wechat").await;
    let v = pay_at_sandbox(&a, "wechat", &payment, json!({"callback": "drop"})).await;
    let cb = wechat_callback(&payment, 100, v["txn_id"].as_str().expect("txn"));
    assert_eq!(send_callback(&b, &cb).await, StatusCode::OK);
    assert_eq!(payment_status(&a, &alice, &payment).await, "succeeded");
    assert_eq!(order_status(&b, &alice, &order).await, "paid");

    // Five orders, each with duplicate callbacks racing on both nodes.
    let mut orders = Vec::new();
    for i in 0..5 {
        let u = user(&format!("racer{i}"));
        let (_, v) = hold(&a, &u, &event, 1).await;
        let order = v["order_id"].as_str().expect("order").to_string();
        let payment = open_payment(&a, &u, &order, "wechat").await;
        let v = pay_at_sandbox(&a, "wechat", &payment, json!({"callback": "drop"})).await;
        let cb = wechat_callback(&payment, 100, v["txn_id"].as_str().expect("txn"));
        let mut tasks = Vec::new();
        for k in 0..6 {
            let (node, cb) = (if k % 2 == 0 { a.clone() } else { b.clone() }, cb.clone());
            tasks.push(tokio::spawn(async move { send_callback(&node, &cb).await }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task"), StatusCode::OK);
        }
        orders.push((u, order, payment));
    }
    for (u, order, payment) in &orders {
        assert_eq!(payment_status(&b, u, payment).await, "succeeded", "payment {payment}");
        assert_eq!(order_status(&a, u, order).await, "paid");
    }
    assert_eq!(remaining(&b, &event, &bob).await, 14);
    // Every paid order has its money, once.
    assert!(eventually(20, || async { cl.reconcile().0 == 0 }).await, "{:#}", cl.reconcile().1);
}
both_modes!(
    a_payment_reaching_a_stale_node_is_kept_and_racing_callbacks_settle_once_redis_mode,
    a_payment_reaching_a_stale_node_is_kept_and_racing_callbacks_settle_once_full_mode,
    payment_through_a_stale_node
);

/// Case 4: a refund asked through a node whose actor saw the order as
/// held refunds it, records it, and frees the seat.
async fn refund_through_a_stale_node(kind: Kind) {
    let cl = Cluster::start(kind, 2, &[]).await;
    let (a, b) = (&cl.nodes[0], &cl.nodes[1]);
    let event = event(a, &cl.admin(), 5, json!({})).await;
    let alice = user("alice");
    let (_, v) = hold(a, &alice, &event, 1).await;
    let order = v["order_id"].as_str().expect("order").to_string();
    // Node 2 loads the event while the order is held.
    assert_eq!(remaining(b, &event, &alice).await, 4);
    let payment = open_payment(a, &alice, &order, "alipay").await;
    pay_at_sandbox(a, "alipay", &payment, json!({})).await;
    assert!(eventually(10, || async { payment_status(a, &alice, &payment).await == "succeeded" }).await);
    let (s, v) = b.call("POST", &format!("/v1/orders/{order}/refund"), &alice, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "refunded", "{v}");
    assert_eq!(payment_status(a, &alice, &payment).await, "refunded");
    // (In full mode the refunded order is read from Postgres once the
    // worker has it: reading one's own writes there is issue 17.)
    assert!(eventually(10, || async { order_status(a, &alice, &order).await == "refunded" }).await);
    assert_eq!(remaining(a, &event, &alice).await, 5);
    assert_eq!(remaining(b, &event, &alice).await, 5);
    let (s, v) = b.call("POST", &format!("/v1/orders/{order}/refund"), &alice, json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "already_refunded"), "{v}");
    assert!(eventually(20, || async { cl.reconcile().0 == 0 }).await, "{:#}", cl.reconcile().1);
}
both_modes!(
    a_refund_through_a_stale_node_is_made_and_recorded_redis_mode,
    a_refund_through_a_stale_node_is_made_and_recorded_full_mode,
    refund_through_a_stale_node
);

/// Money taken in the hold's last moment buys the seat, whether its
/// callback is lost (the sweeper closes the trade before releasing the hold
/// and finds the money) or arrives after the expiry (what counts is when
/// the channel took the money).
async fn paid_in_the_last_moment(kind: Kind) {
    let cl = Cluster::start(kind, 2, &[("RUSH__PAYMENTS__QUERY_AFTER_MS", "600000")]).await;
    let (a, b) = (&cl.nodes[0], &cl.nodes[1]);
    let event = event(a, &cl.admin(), 4, json!({"hold_ttl_s": 2})).await;
    let mut paid = Vec::new();
    for (i, plan) in [json!({"callback": "drop"}), json!({"delay_ms": 2_500})].into_iter().enumerate() {
        let u = user(&format!("last{i}"));
        assert_eq!(remaining(b, &event, &u).await, 4 - i as i64);
        let (_, v) = hold(a, &u, &event, 1).await;
        let order = v["order_id"].as_str().expect("order").to_string();
        let payment = open_payment(b, &u, &order, ["wechat", "ecard"][i]).await;
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        pay_at_sandbox(if i == 0 { a } else { b }, ["wechat", "ecard"][i], &payment, plan).await;
        paid.push((u, order, payment));
    }
    for (u, order, payment) in &paid {
        assert!(
            eventually(15, || async { payment_status(b, u, payment).await != "pending" }).await,
            "payment {payment} settled"
        );
        assert_eq!(payment_status(a, u, payment).await, "succeeded", "paid in time: never refunded");
        assert_eq!(order_status(b, u, order).await, "paid");
    }
    assert_eq!(remaining(a, &event, &user("x")).await, 2);
    assert!(eventually(20, || async { cl.reconcile().0 == 0 }).await, "{:#}", cl.reconcile().1);
}
both_modes!(
    money_taken_in_the_last_moment_buys_the_seat_redis_mode,
    money_taken_in_the_last_moment_buys_the_seat_full_mode,
    paid_in_the_last_moment
);

/// Case 5: a hold made through a node that then dies expires through the
/// survivor, whose actor loaded the event before the hold.
async fn expiry_on_the_surviving_node(kind: Kind) {
    let mut cl = Cluster::start(kind, 2, &[]).await;
    let (a, b) = (cl.nodes[0].clone(), cl.nodes[1].clone());
    let event = event(&a, &cl.admin(), 3, json!({"hold_ttl_s": 1})).await;
    let alice = user("alice");
    assert_eq!(remaining(&b, &event, &alice).await, 3);
    let (_, v) = hold(&a, &alice, &event, 2).await;
    let order = v["order_id"].as_str().expect("order").to_string();
    cl.kill(0);
    assert!(
        eventually(15, || async { order_status(&b, &alice, &order).await == "expired" }).await,
        "the survivor expires the hold"
    );
    assert_eq!(remaining(&b, &event, &alice).await, 3);
}
both_modes!(
    holds_made_elsewhere_expire_on_a_stale_node_redis_mode,
    holds_made_elsewhere_expire_on_a_stale_node_full_mode,
    expiry_on_the_surviving_node
);

/// Case 7 (issue 17): a client reads its own writes through the other
/// node at once. In full mode the relay is stopped, so nothing reaches
/// Kafka or Postgres; in Redis mode the workers persist meanwhile, and
/// a grab they applied is counted once.
async fn own_writes_on_the_other_node(kind: Kind) {
    let tune: &[(&str, &str)] = match kind {
        Kind::Full => &[("RUSH__KAFKA__RELAY_IN_SERVE", "false")],
        Kind::Redis => &[],
    };
    let cl = Cluster::start(kind, 2, tune).await;
    let (a, b) = (&cl.nodes[0], &cl.nodes[1]);
    let admin = cl.admin();
    let event = event(a, &admin, 4, json!({})).await;
    let alice = user("alice");
    let (s, v) = hold(a, &alice, &event, 1).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let order = v["order_id"].as_str().expect("order").to_string();
    let (_, list) = b.call("GET", "/v1/orders", &alice, Value::Null).await;
    assert_eq!(list["orders"][0]["order_id"], order.as_str(), "the hold is listed by the other node: {list}");
    let (s, v) = call_retrying(b, "POST", &format!("/v1/orders/{order}/cancel"), &alice, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(order_status(a, &alice, &order).await, "cancelled", "the cancel is read back on the first node");

    let (s, v) =
        a.call("POST", "/v1/admin/wallet/own-sender/credit", &admin, json!({"amount": 1000, "reason": "t"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let sender = user("own-sender");
    let mut total = 0;
    for (amount, via, read) in [(300, a, b), (200, b, a)] {
        let body = json!({"kind": "normal", "total_amount": amount, "count": 1});
        let (s, v) = call_retrying(via, "POST", "/v1/packets", &sender, body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let packet = v["packet_id"].as_str().expect("packet").to_string();
        let (s, v) = call_retrying(via, "POST", &format!("/v1/packets/{packet}/grab"), &alice, json!({})).await;
        assert_eq!((s, v["amount"].as_i64()), (StatusCode::OK, Some(amount)), "{v}");
        total += amount;
        let (_, w) = read.call("GET", "/v1/wallet", &alice, Value::Null).await;
        let seen = w["available"].as_i64().zip(w["pending"].as_i64()).map(|(a, p)| a + p);
        assert_eq!(seen, Some(total), "the grab's money on the other node at once: {w}");
    }
    let (_, ledger) = b.call("GET", "/v1/wallet/ledger", &alice, Value::Null).await;
    let persisted = kind == Kind::Redis;
    if persisted {
        let applied = eventually(30, || async {
            let (_, v) = b.call("GET", "/v1/wallet/ledger", &alice, Value::Null).await;
            v["entries"].as_array().is_some_and(|e| e.len() == 2)
        })
        .await;
        assert!(applied, "the workers apply both grabs");
    } else {
        assert_eq!(ledger["entries"], json!([]), "nothing persisted without the relay: {ledger}");
    }
    let (want_available, want_pending) = if persisted { (total, 0) } else { (0, total) };
    for node in [a, b] {
        let (_, w) = node.call("GET", "/v1/wallet", &alice, Value::Null).await;
        assert_eq!(
            (w["available"].as_i64(), w["pending"].as_i64()),
            (Some(want_available), Some(want_pending)),
            "each grab counted once: {w}"
        );
    }
}
both_modes!(
    own_writes_are_read_on_the_other_node_redis_mode,
    own_writes_are_read_on_the_other_node_while_nothing_is_persisted_full_mode,
    own_writes_on_the_other_node
);

/// The randomized test: N nodes, random holds, cancels, payments (with
/// duplicated and dropped callbacks), refunds, expiries and grabs through
/// random nodes, then every invariant. `RUSH_RANDOM_SEED` replays a run,
/// `RUSH_RANDOM_OPS` and `RUSH_RANDOM_NODES` make it longer or wider
/// (`scripts/random-nodes.sh`); CI runs it briefly.
async fn randomized(kind: Kind, default_ops: usize) {
    let seed: u64 =
        std::env::var("RUSH_RANDOM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    let ops: usize = std::env::var("RUSH_RANDOM_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_ops);
    let n: usize = std::env::var("RUSH_RANDOM_NODES").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    eprintln!(
        "randomized multi-node test ({kind:?}): RUSH_RANDOM_SEED={seed} RUSH_RANDOM_OPS={ops} RUSH_RANDOM_NODES={n}"
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let cl = Cluster::start(kind, n, &[("RUSH__PAYMENTS__QUERY_AFTER_MS", "500")]).await;
    let admin = cl.admin();
    let per_user = 3;
    let events = [
        event(&cl.nodes[0], &admin, 8, json!({"limits": {"per_order": 3, "per_user": per_user}, "hold_ttl_s": 2}))
            .await,
        event(&cl.nodes[1 % n], &admin, 12, json!({"limits": {"per_order": 3, "per_user": per_user}})).await,
    ];
    let users: Vec<String> = (0..8).map(|i| format!("rnd{i}")).collect();
    let tokens: HashMap<String, String> = users.iter().map(|u| (u.clone(), user(u))).collect();
    // Packets from a funded sender.
    let sender = user("rnd-sender");
    let (s, v) = cl.nodes[0]
        .call("POST", "/v1/admin/wallet/rnd-sender/credit", &admin, json!({"amount": 100_000, "reason": "t"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut packets = Vec::new();
    for count in [3, 20] {
        let body = json!({"kind": "lucky", "total_amount": 1_000, "count": count});
        let (s, v) = call_retrying(&cl.nodes[rng.usize(..n)], "POST", "/v1/packets", &sender, body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        packets.push(v["packet_id"].as_str().expect("id").to_string());
    }
    // (user, order, event) of every order ever acknowledged.
    let mut orders: Vec<(String, String, String)> = Vec::new();
    let mut payments: Vec<(String, String)> = Vec::new();
    let mut grabs: HashMap<(String, String), i64> = HashMap::new();
    for step in 0..ops {
        let node = &cl.nodes[rng.usize(..n)];
        let u = &users[rng.usize(..users.len())];
        let t = &tokens[u];
        let ctx = format!("seed {seed} step {step}");
        match rng.u32(..10) {
            0..=3 => {
                let e = &events[rng.usize(..events.len())];
                let (s, v) = hold(node, t, e, rng.u32(1..=3)).await;
                match s {
                    StatusCode::CREATED => {
                        orders.push((u.clone(), v["order_id"].as_str().expect("id").into(), e.clone()))
                    }
                    StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY => {}
                    other => panic!("{ctx}: hold answered {other}: {v}"),
                }
            }
            4 => {
                let mine: Vec<_> = orders.iter().filter(|o| &o.0 == u).collect();
                if let Some((_, order, _)) = mine.get(rng.usize(..mine.len().max(1))) {
                    let (s, v) = call_retrying(node, "POST", &format!("/v1/orders/{order}/cancel"), t, json!({})).await;
                    assert!(s == StatusCode::OK || s == StatusCode::CONFLICT, "{ctx}: cancel {s}: {v}");
                }
            }
            5 | 6 => {
                let mine: Vec<_> = orders.iter().filter(|o| &o.0 == u).collect();
                if let Some((_, order, _)) = mine.get(rng.usize(..mine.len().max(1))) {
                    let channel = ["wechat", "alipay", "ecard"][rng.usize(..3)];
                    let (s, v) = call_retrying(
                        node,
                        "POST",
                        &format!("/v1/orders/{order}/payments"),
                        t,
                        json!({"channel": channel}),
                    )
                    .await;
                    if s.is_success() {
                        let payment = v["payment_id"].as_str().expect("id").to_string();
                        let plan = match rng.u32(..3) {
                            0 => json!({"callback": "drop"}),
                            1 => json!({"duplicates": 2}),
                            _ => json!({}),
                        };
                        let via = &cl.nodes[rng.usize(..n)];
                        let (s, v) = via
                            .call("POST", &format!("/v1/sandbox/{channel}/payments/{payment}/complete"), "", plan)
                            .await;
                        assert!(s == StatusCode::OK || s == StatusCode::CONFLICT, "{ctx}: pay {s}: {v}");
                        payments.push((u.clone(), payment));
                    } else {
                        assert_eq!(s, StatusCode::CONFLICT, "{ctx}: pay_order {s}: {v}");
                    }
                }
            }
            7 => {
                let mine: Vec<_> = orders.iter().filter(|o| &o.0 == u).collect();
                if let Some((_, order, _)) = mine.get(rng.usize(..mine.len().max(1))) {
                    let (s, v) = call_retrying(node, "POST", &format!("/v1/orders/{order}/refund"), t, json!({})).await;
                    assert!(s == StatusCode::OK || s == StatusCode::CONFLICT, "{ctx}: refund {s}: {v}");
                }
            }
            _ => {
                let p = &packets[rng.usize(..packets.len())];
                let (s, v) = call_retrying(node, "POST", &format!("/v1/packets/{p}/grab"), t, json!({})).await;
                match s {
                    StatusCode::OK => {
                        let amount = v["amount"].as_i64().expect("amount");
                        assert!(grabs.insert((u.clone(), p.clone()), amount).is_none(), "{ctx}: {u} grabbed {p} twice");
                    }
                    StatusCode::CONFLICT => {
                        assert_eq!(code(&v), "already_grabbed", "{ctx}: {v}");
                        let had = grabs.get(&(u.clone(), p.clone()));
                        assert_eq!(
                            had,
                            v["error"]["amount"].as_i64().as_ref(),
                            "{ctx}: already_grabbed with the grab's amount"
                        );
                    }
                    StatusCode::GONE => assert_eq!(code(&v), "packet_empty", "{ctx}: {v}"),
                    other => panic!("{ctx}: grab answered {other}: {v}"),
                }
            }
        }
    }
    // Let expiries, callbacks, queries and refunds finish.
    let a = &cl.nodes[0];
    let settled = eventually(60, || async {
        for (u, p) in &payments {
            let s = payment_status(a, &tokens[u], p).await;
            if s == "pending" {
                return false;
            }
        }
        true
    })
    .await;
    assert!(settled, "seed {seed}: payments still pending");
    tokio::time::sleep(Duration::from_secs(3)).await;

    // No seat twice, the per-user limit, and every node agrees with the orders.
    for e in &events {
        let mut owner: HashMap<String, String> = HashMap::new();
        let mut live: HashMap<&str, u32> = HashMap::new();
        for (u, order, _) in orders.iter().filter(|o| &o.2 == e) {
            let (s, v) = a.call("GET", &format!("/v1/orders/{order}"), &tokens[u], Value::Null).await;
            assert_eq!(s, StatusCode::OK, "seed {seed}: order {order}: {v}");
            let status = v["status"].as_str().unwrap_or_default();
            if status == "pending_payment" || status == "paid" {
                for seat in v["seats"].as_array().expect("seats") {
                    let id = seat["seat_id"].as_str().expect("seat").to_string();
                    if let Some(other) = owner.insert(id.clone(), order.clone()) {
                        panic!("seed {seed}: seat {id} is in orders {other} and {order}");
                    }
                    *live.entry(u.as_str()).or_default() += 1;
                }
            }
        }
        for (u, seats) in &live {
            assert!(*seats <= per_user, "seed {seed}: {u} has {seats} seats on event {e}");
        }
        let owned: HashSet<String> = owner.keys().cloned().collect();
        for node in &cl.nodes {
            assert_eq!(
                taken_seats(node, e, &admin).await,
                owned,
                "seed {seed}: a node's seat map differs from the orders"
            );
        }
    }
    // One grab per user, and the money of every grab reaches the wallets.
    for p in &packets {
        let (_, v) = cl.nodes[n - 1].call("GET", &format!("/v1/packets/{p}"), &admin, Value::Null).await;
        let granted: i64 = grabs.iter().filter(|((_, q), _)| q == p).map(|(_, a)| a).sum();
        let total = v["total_amount"].as_i64().unwrap_or(1_000);
        assert_eq!(v["remaining_amount"].as_i64(), Some(total - granted), "seed {seed}: packet {p}: {v}");
    }
    // Each grabber's wallet holds exactly their grabs, on any node, at
    // once (applied or not yet: issue 17).
    let mut by_user: HashMap<&str, i64> = HashMap::new();
    for ((u, _), amount) in &grabs {
        *by_user.entry(u.as_str()).or_default() += amount;
    }
    for u in &users {
        let want = by_user.get(u.as_str()).copied().unwrap_or(0);
        let node = &cl.nodes[rng.usize(..n)];
        let (_, v) = node.call("GET", "/v1/wallet", &tokens[u], Value::Null).await;
        let held = v["available"].as_i64().zip(v["pending"].as_i64()).map(|(a, p)| a + p);
        assert_eq!(held, Some(want), "seed {seed}: {u}'s wallet does not hold their grabs: {v}");
    }
    // Ledger balanced, every paid order has its money, bills agree.
    let clean = eventually(30, || async { cl.reconcile().0 == 0 }).await;
    assert!(clean, "seed {seed}: {:#}", cl.reconcile().1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_operations_through_three_nodes_keep_every_invariant_redis_mode() {
    randomized(Kind::Redis, 150).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_operations_through_three_nodes_keep_every_invariant_full_mode() {
    randomized(Kind::Full, 100).await;
}

/// Issue 18 across real processes: a pause, an edit, a resume and a
/// cancel through one node hold at once on the other (whose actor had the
/// event in memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_through_one_node_hold_on_the_other_redis_mode() {
    let cl = Cluster::start(Kind::Redis, 2, &[]).await;
    let (a, b, admin) = (&cl.nodes[0], &cl.nodes[1], cl.admin());
    let event = event(a, &admin, 10, json!({})).await;
    let fan = user("fan");
    assert_eq!(hold(b, &fan, &event, 1).await.0, StatusCode::CREATED, "node 2's actor has the event");
    let base = format!("/v1/admin/events/{event}");
    let (s, v) = a.call("POST", &format!("{base}/pause"), &admin, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = hold(b, &fan, &event, 1).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "sale_paused"), "{v}");
    let (s, v) = a.call("PATCH", &base, &admin, json!({"name": "Moved", "limits": {"per_user": 2}})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = b.call("POST", &format!("{base}/resume"), &admin, json!({})).await;
    assert_eq!((s, v["name"].as_str()), (StatusCode::OK, Some("Moved")), "node 2 shows node 1's edit: {v}");
    assert_eq!(hold(a, &fan, &event, 1).await.0, StatusCode::CREATED);
    let (s, v) = hold(b, &fan, &event, 1).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded"), "the new limit: {v}");
    let (s, v) = b.call("POST", &format!("{base}/cancel"), &admin, json!({"reason": "rain"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (s, v) = hold(a, &user("late"), &event, 1).await;
    assert_eq!((s, code(&v)), (StatusCode::GONE, "event_cancelled"), "{v}");
    let freed = eventually(15, || async { remaining(a, &event, &fan).await == 10 }).await;
    assert!(freed, "the fan-out closed both holds");
    let (_, v) = a.call("GET", "/v1/events?status=cancelled", "", Value::Null).await;
    assert_eq!(v["events"][0]["name"], "Moved", "{v}");
}

/// The cancel fan-out in full mode, killed (-9) midway: the other node
/// carries it on, the killed node restarts and joins in, and every paid
/// order is refunded exactly once; `rush reconcile` is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_fan_out_killed_midway_refunds_every_order_once_full_mode() {
    let mut cl = Cluster::start(
        Kind::Full,
        2,
        &[("RUSH__PAYMENTS__SANDBOX__REFUND_DELAY_MS", "400"), ("RUSH__EVENTS__CANCEL_RESUME_MS", "500")],
    )
    .await;
    let admin = cl.admin();
    let (a, b) = (cl.nodes[0].clone(), cl.nodes[1].clone());
    let event = event(&a, &admin, 20, json!({})).await;
    let channels = ["wechat", "alipay", "ecard"];
    let mut paid = Vec::new();
    for i in 0..9 {
        let (tok, via) = (user(&format!("payer{i}")), if i % 2 == 0 { &a } else { &b });
        let (s, v) = hold(via, &tok, &event, 1).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let order = v["order_id"].as_str().expect("order").to_string();
        let payment = open_payment(via, &tok, &order, channels[i % 3]).await;
        pay_at_sandbox(via, channels[i % 3], &payment, json!({})).await;
        paid.push((tok, order, payment));
    }
    for (tok, _, payment) in &paid {
        let ok = eventually(20, || async { payment_status(&a, tok, payment).await == "succeeded" }).await;
        assert!(ok, "payment {payment}");
    }
    let (s, v) = hold(&b, &user("pender"), &event, 2).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let pending = v["order_id"].as_str().expect("order").to_string();

    let base = format!("/v1/admin/events/{event}");
    let (s, v) = a.call("POST", &format!("{base}/cancel"), &admin, json!({"reason": "flood"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    // Each refund takes 400 ms at its channel: kill the node mid-way.
    let midway = eventually(10, || async {
        let (_, v) = b.call("GET", &format!("/v1/events/{event}"), &admin, Value::Null).await;
        v["cancellation"]["refunds_done"].as_u64().is_some_and(|d| d >= 1)
    })
    .await;
    assert!(midway, "the fan-out started");
    cl.kill(0);
    let (_, v) = b.call("GET", &format!("/v1/events/{event}"), &admin, Value::Null).await;
    let done_at_kill = v["cancellation"]["refunds_done"].as_u64().unwrap_or(0);
    assert!(done_at_kill < 9, "killed midway: {v}");
    cl.restart(0).await;
    let finished = eventually(60, || async {
        let (_, v) = b.call("GET", &format!("/v1/events/{event}"), &admin, Value::Null).await;
        v["cancellation"]["refunds_total"] == 9 && v["cancellation"]["refunds_done"] == 9
    })
    .await;
    let (_, v) = b.call("GET", &format!("/v1/events/{event}"), &admin, Value::Null).await;
    assert!(finished, "{v}");
    assert_eq!(v["categories"][0]["remaining"], 20, "{v}");
    for (tok, order, payment) in &paid {
        assert_eq!(payment_status(&b, tok, payment).await, "refunded");
        let ok = eventually(20, || async { order_status(&b, tok, order).await == "refunded" }).await;
        assert!(ok, "order {order}");
    }
    assert_eq!(order_status(&b, &admin, &pending).await, "cancelled");
    use sqlx::Connection as _;
    let mut pg = sqlx::PgConnection::connect(&cl.pg.url).await.expect("postgres");
    let clean = eventually(60, || async { cl.reconcile().0 == 0 }).await;
    assert!(clean, "{:#}", cl.reconcile().1);
    let legs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM journal WHERE kind = 'order_refund'")
        .fetch_one(&mut pg)
        .await
        .expect("journal");
    assert_eq!(legs, 18, "nine refunds, two legs each: each order refunded once");
}
