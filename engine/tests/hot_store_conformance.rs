//! The hot-store contract, written against the `HotStore` trait so that
//! every implementation runs the same tests: the embedded memory store
//! now, the Redis store when it lands (add a fixture below).
//!
//! Each check states one rule of the arbiter: what it applies, what it
//! rejects (without writing anything), and what survives a reopen.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use rush_engine::domain::{
    Category, EventDef, EventSettings, Fen, Id, IdGen, Limits, OrderStatus, PacketKind, PacketStatus, SeatMap,
    SectionLayout,
};
use rush_engine::store::db::Db;
use rush_engine::store::memory::MemoryStore;
use rush_engine::store::redis::RedisStore;
use rush_engine::store::restore::{AppliedGrab, AppliedOrder, AppliedPacket, HotRecovery};
use rush_engine::store::{
    Changed, DueItem, Grab, HotOrder, HotStore, OpOutcome, PacketDef, SeatOp, SeatState, StoreError,
};
use rush_engine::Config;
use std::time::Duration;

/// Opens a store; called again on the same fixture, it must see what the
/// previous store committed (a restart).
trait Fixture {
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn HotStore>> + '_>>;
    fn ids(&self) -> Arc<IdGen>;
    /// Several stores (nodes) may share the data at once; the embedded
    /// store is its file's only writer.
    fn shared(&self) -> bool {
        true
    }
}

struct Memory {
    dir: tempfile::TempDir,
    ids: Arc<IdGen>,
}

impl Memory {
    fn new() -> Self {
        Memory { dir: tempfile::tempdir().expect("dir"), ids: Arc::new(IdGen::new(1).expect("ids")) }
    }
}

impl Fixture for Memory {
    fn shared(&self) -> bool {
        false
    }

    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn HotStore>> + '_>> {
        Box::pin(async move {
            let cfg = Config::default();
            let db = Db::open(self.dir.path(), &cfg.sqlite).await.expect("db");
            let store = MemoryStore::open(db, self.ids.clone(), 1000).await.expect("store");
            Arc::new(store) as Arc<dyn HotStore>
        })
    }

    fn ids(&self) -> Arc<IdGen> {
        self.ids.clone()
    }
}

/// Redis: the URL comes from `RUSH_TEST_REDIS_URL` (default: database 15
/// of the local server); each fixture has its own key prefix, deleted after.
struct Redis {
    url: String,
    prefix: String,
    ids: Arc<IdGen>,
}

impl Redis {
    fn new() -> Self {
        Redis {
            url: std::env::var("RUSH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/15".into()),
            prefix: format!("rushtest-{:016x}", fastrand_u64()),
            ids: Arc::new(IdGen::new(2).expect("ids")),
        }
    }

    async fn cleanup(&self) {
        let client = redis::Client::open(self.url.as_str()).expect("url");
        let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}:*", self.prefix)).query_async(&mut conn).await.expect("keys");
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(keys).query_async(&mut conn).await.expect("del");
        }
    }
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

impl Redis {
    /// The store, with the data set's identity marked (as a node's first
    /// start does): without the markers every writing script refuses.
    async fn open_redis(&self) -> Arc<RedisStore> {
        let store = RedisStore::connect(&self.url, None, &self.prefix, self.ids.clone(), 1000, Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("Redis at {} is needed for this test (see .ci/run): {e}", self.url));
        store.set_markers("conformance").await.expect("markers");
        Arc::new(store)
    }
}

impl Fixture for Redis {
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn HotStore>> + '_>> {
        Box::pin(async move { self.open_redis().await as Arc<dyn HotStore> })
    }

    fn ids(&self) -> Arc<IdGen> {
        self.ids.clone()
    }
}

/// A real Redis Cluster on loopback: 3 masters and 3 replicas on ports
/// 7000–7005, started for the test and killed after. A script whose keys
/// span two slots fails there with CROSSSLOT, so passing the suite on it
/// proves every script is slot-safe.
struct ClusterNodes {
    procs: Vec<std::process::Child>,
    _dir: tempfile::TempDir,
}

const CLUSTER_PORTS: std::ops::Range<u16> = 7000..7006;

impl ClusterNodes {
    fn start() -> Self {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().expect("dir");
        for port in CLUSTER_PORTS {
            assert!(
                std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
                "port {port} is taken: the cluster test needs 7000-7005 free"
            );
        }
        let mut procs = Vec::new();
        for port in CLUSTER_PORTS {
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            procs.push(
                Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no", "--dir"])
                    .arg(&node_dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server must be installed (see .ci/run)"),
            );
        }
        let nodes = ClusterNodes { procs, _dir: dir };
        for port in CLUSTER_PORTS {
            let up = (0..100).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            assert!(up, "node {port} did not start");
        }
        let addrs: Vec<String> = CLUSTER_PORTS.map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli");
        assert!(created.success(), "redis-cli --cluster create failed");
        let ok = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            CLUSTER_PORTS.clone().all(|p| {
                Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            })
        });
        assert!(ok, "the cluster did not reach cluster_state:ok");
        nodes
    }
}

impl Drop for ClusterNodes {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

struct Cluster {
    prefix: String,
    ids: Arc<IdGen>,
}

impl Fixture for Cluster {
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn HotStore>> + '_>> {
        Box::pin(async move {
            let client = redis::cluster::ClusterClient::new(vec!["redis://127.0.0.1:7000"]).expect("client");
            let conn = client.get_async_connection().await.expect("cluster connection");
            let store =
                rush_engine::store::redis::RedisStore::with_connection(conn, &self.prefix, self.ids.clone(), 1000)
                    .await
                    .expect("scripts load on the cluster");
            store.set_markers("conformance").await.expect("markers on every master");
            Arc::new(store) as Arc<dyn HotStore>
        })
    }

    fn ids(&self) -> Arc<IdGen> {
        self.ids.clone()
    }
}

fn event_def(ids: &IdGen, cols: u32) -> EventDef {
    EventDef {
        event_id: ids.next(0),
        name: "conformance".into(),
        venue: "lab".into(),
        starts_at: Utc::now(),
        on_sale_at: None,
        sale_ends_at: None,
        rev: 0,
        map_rev: 0,
        paused: false,
        cancellation: None,
        waiting_room: None,
        hold_ttl_s: 60,
        limits: Limits { per_order: 4, per_user: 4 },
        categories: vec![Category { id: "c".into(), name: "C".into(), price: Fen::new(250) }],
        seats: SeatMap::from_layout(
            &[SectionLayout { name: "A".into(), rows: 1, cols, category: "c".into() }],
            &["c"],
            1000,
        )
        .expect("map")
        .seats()
        .to_vec(),
    }
}

fn hold(ids: &IdGen, event: Id, user: &str, seats: Vec<u32>, expires_at_ms: u64) -> HotOrder {
    HotOrder {
        order_id: ids.next(0),
        event_id: event,
        user_id: user.into(),
        amount: Fen::new(250 * seats.len() as i64),
        seats,
        created_at_ms: 1,
        expires_at_ms,
        attendees: vec![],
    }
}

fn packet_def(ids: &IdGen, parts: &[i64], expires_at_ms: u64) -> PacketDef {
    PacketDef {
        packet_id: ids.next(0),
        sender: "sender".into(),
        kind: PacketKind::Lucky,
        total: Fen::new(parts.iter().sum()),
        count: parts.len() as u32,
        greeting: String::new(),
        created_at_ms: 1,
        expires_at_ms,
        parts: parts.iter().map(|p| Fen::new(*p)).collect(),
    }
}

fn grab(ids: &IdGen, user: &str, part: u32, amount: i64) -> Grab {
    Grab { grab_id: ids.next(0), user_id: user.into(), part, amount: Fen::new(amount), at_ms: 10 }
}

const FAR: u64 = u64::MAX / 4;

async fn seats_hold_release_confirm(f: &dyn Fixture) {
    let ids = f.ids();
    let store = f.open().await;
    let def = event_def(&ids, 4);
    store.create_event(&def).await.expect("create");
    let e = def.event_id;
    let a = hold(&ids, e, "a", vec![0, 1], FAR);
    let b = hold(&ids, e, "b", vec![1, 2], FAR);
    let c = hold(&ids, e, "c", vec![3], FAR);
    let out = store
        .apply_seats(e, &[SeatOp::Hold(a.clone()), SeatOp::Hold(b.clone()), SeatOp::Hold(c.clone())], 5)
        .await
        .expect("apply");
    assert_eq!(
        out,
        vec![OpOutcome::Applied, OpOutcome::Rejected, OpOutcome::Applied],
        "an overlapping hold is rejected"
    );
    // A rejected op wrote nothing: seat 2 is still free.
    let snap = store.load_event(e).await.expect("load").expect("event");
    assert_eq!(
        snap.seats,
        vec![
            SeatState::Held(a.order_id),
            SeatState::Held(a.order_id),
            SeatState::Available,
            SeatState::Held(c.order_id)
        ]
    );
    assert_eq!(store.order(a.order_id).await.expect("order"), Some((a.clone(), OrderStatus::PendingPayment)));
    assert_eq!(store.order(b.order_id).await.expect("order"), None);

    let out = store
        .apply_seats(
            e,
            &[
                SeatOp::Release { order_id: a.order_id, status: OrderStatus::Cancelled },
                SeatOp::Release { order_id: a.order_id, status: OrderStatus::Cancelled },
                SeatOp::Confirm { order_id: c.order_id },
                SeatOp::Confirm { order_id: b.order_id },
            ],
            6,
        )
        .await
        .expect("apply");
    assert_eq!(out, vec![OpOutcome::Applied, OpOutcome::Rejected, OpOutcome::Applied, OpOutcome::Rejected]);
    assert_eq!(
        store.order(a.order_id).await.expect("order"),
        Some((a.clone(), OrderStatus::Cancelled)),
        "a released hold is remembered as closed (orders.recent_keep_s)"
    );
    assert_eq!(store.order(c.order_id).await.expect("order"), Some((c.clone(), OrderStatus::Paid)));
    let out = store
        .apply_seats(e, &[SeatOp::Release { order_id: c.order_id, status: OrderStatus::Cancelled }], 7)
        .await
        .expect("apply");
    assert_eq!(out, vec![OpOutcome::Rejected], "a sold order cannot be released");

    // A refund frees a sold order's seats, once; a held order is not refundable.
    let d = hold(&ids, e, "dora", vec![2], FAR);
    store.apply_seats(e, &[SeatOp::Hold(d.clone()), SeatOp::Confirm { order_id: d.order_id }], 8).await.expect("apply");
    let out = store
        .apply_seats(
            e,
            &[
                SeatOp::Refund { order_id: d.order_id },
                SeatOp::Refund { order_id: d.order_id },
                SeatOp::Refund { order_id: a.order_id },
            ],
            9,
        )
        .await
        .expect("apply");
    assert_eq!(out, vec![OpOutcome::Applied, OpOutcome::Rejected, OpOutcome::Rejected]);
    assert_eq!(
        store.order(d.order_id).await.expect("order"),
        Some((d.clone(), OrderStatus::Refunded)),
        "a refunded order is remembered as closed"
    );
    // A user's recent orders, newest first, each as the store last saw it.
    let recent = store.recent_orders("dora", None, 1, d.created_at_ms).await.expect("recent");
    assert_eq!(recent, vec![(d.clone(), OrderStatus::Refunded)]);
    assert!(store.recent_orders("dora", Some(d.order_id), 10, d.created_at_ms).await.expect("recent").is_empty());
    assert!(store.recent_orders("nobody", None, 10, d.created_at_ms).await.expect("recent").is_empty());

    // Everything above survives a restart.
    drop(store);
    let store = f.open().await;
    let snap = store.load_event(e).await.expect("load").expect("event");
    assert_eq!(
        snap.seats,
        vec![SeatState::Available, SeatState::Available, SeatState::Available, SeatState::Sold(c.order_id)]
    );
    assert!(snap.holds.is_empty());
    assert_eq!(snap.paid.get(&c.order_id).map(|p| p.seats.clone()), Some(vec![3]));
    assert!(store.load_event(ids.next(0)).await.expect("load").is_none(), "an unknown event is None");
}

async fn due_items_are_claimed_for_a_lease_and_leave_when_settled(f: &dyn Fixture) {
    const LEASE: u64 = 1_000;
    let ids = f.ids();
    let store = f.open().await;
    let def = event_def(&ids, 4);
    store.create_event(&def).await.expect("create");
    let e = def.event_id;
    let early = hold(&ids, e, "a", vec![0], 100);
    let late = hold(&ids, e, "b", vec![1], 200);
    let never = hold(&ids, e, "c", vec![2], FAR);
    let third = hold(&ids, e, "d", vec![3], 300);
    store
        .apply_seats(
            e,
            &[
                SeatOp::Hold(late.clone()),
                SeatOp::Hold(early.clone()),
                SeatOp::Hold(never),
                SeatOp::Hold(third.clone()),
            ],
            1,
        )
        .await
        .expect("apply");
    let h = |o: &HotOrder| DueItem::Hold { event_id: e, order_id: o.order_id };
    assert_eq!(store.claim_due(99, 10, LEASE).await.expect("claim"), vec![], "nothing is due yet");
    assert_eq!(store.claim_due(150, 10, LEASE).await.expect("claim"), vec![h(&early)]);
    assert_eq!(store.claim_due(250, 10, LEASE).await.expect("claim"), vec![h(&late)], "a claimed item is leased");
    assert_eq!(store.claim_due(400, 1, LEASE).await.expect("claim"), vec![h(&third)], "limit is honoured");
    assert_eq!(store.claim_due(1_160, 10, LEASE).await.expect("claim"), vec![h(&early)], "back after its lease");
    store
        .apply_seats(e, &[SeatOp::Release { order_id: early.order_id, status: OrderStatus::Expired }], 1_160)
        .await
        .expect("apply");
    store.apply_seats(e, &[SeatOp::Confirm { order_id: late.order_id }], 1_160).await.expect("apply");
    assert_eq!(
        store.claim_due(10_000, 10, LEASE).await.expect("claim"),
        vec![h(&third)],
        "settled holds are no longer due"
    );
    // The queue survives a reopen.
    drop(store);
    let store = f.open().await;
    assert_eq!(store.claim_due(20_000, 10, LEASE).await.expect("claim"), vec![h(&third)]);
}

async fn grabs_take_parts_in_order_once_per_user(f: &dyn Fixture) {
    let ids = f.ids();
    let store = f.open().await;
    let def = packet_def(&ids, &[30, 50, 20], FAR);
    let p = def.packet_id;
    store.create_packet(&def).await.expect("create");
    let out = store
        .grab_batch(
            p,
            &[
                grab(&ids, "u1", 0, 30),
                grab(&ids, "u1", 1, 50), // same user again
                grab(&ids, "u2", 2, 20), // skips part 1
                grab(&ids, "u2", 1, 99), // wrong amount
                grab(&ids, "u2", 1, 50),
            ],
            10,
        )
        .await
        .expect("grab");
    assert_eq!(
        out,
        vec![OpOutcome::Applied, OpOutcome::Rejected, OpOutcome::Rejected, OpOutcome::Rejected, OpOutcome::Applied]
    );
    let snap = store.load_packet(p).await.expect("load").expect("packet");
    assert_eq!(snap.status, PacketStatus::Active);
    assert_eq!(snap.remaining(), Fen::new(20));
    let out = store.grab_batch(p, &[grab(&ids, "u3", 2, 20), grab(&ids, "u4", 3, 1)], 11).await.expect("grab");
    assert_eq!(out, vec![OpOutcome::Applied, OpOutcome::Rejected], "no part after the last");
    // Granted grabs are remembered for their users' wallets; refused ones not.
    let amounts = |g: Vec<rush_engine::store::recent::RecentGrab>| g.iter().map(|g| g.amount.get()).collect::<Vec<_>>();
    assert_eq!(amounts(store.recent_grabs("u1", 11).await.expect("recent")), vec![30]);
    assert_eq!(amounts(store.recent_grabs("u2", 11).await.expect("recent")), vec![50]);
    assert_eq!(amounts(store.recent_grabs("u4", 11).await.expect("recent")), Vec::<i64>::new());
    let mine = packet_def(&ids, &[7], FAR);
    store.create_packet(&mine).await.expect("create");
    let own = grab(&ids, "sender", 0, 7);
    assert_eq!(store.grab_batch(mine.packet_id, &[own], 11).await.expect("grab"), vec![OpOutcome::Applied]);
    let remembered = store.recent_grabs("sender", 11).await.expect("recent");
    assert_eq!(remembered.iter().map(|g| (g.amount.get(), g.own)).collect::<Vec<_>>(), vec![(7, true)]);
    assert!(store.recent_grabs("u1", 11).await.expect("recent").iter().all(|g| !g.own));
    drop(store);
    let store = f.open().await;
    let snap = store.load_packet(p).await.expect("load").expect("packet");
    assert_eq!(snap.status, PacketStatus::Empty);
    let users: Vec<&str> = snap.grabs.iter().map(|g| g.user_id.as_str()).collect();
    assert_eq!(users, vec!["u1", "u2", "u3"]);
    assert_eq!(snap.grabs.iter().map(|g| g.amount.get()).sum::<i64>(), 100);
    assert!(store.load_packet(ids.next(0)).await.expect("load").is_none());
}

async fn packets_expire_once_with_their_remainder(f: &dyn Fixture) {
    let ids = f.ids();
    let store = f.open().await;
    let def = packet_def(&ids, &[10, 20, 30], 1_000);
    let p = def.packet_id;
    store.create_packet(&def).await.expect("create");
    store.grab_batch(p, &[grab(&ids, "u1", 0, 10)], 500).await.expect("grab");
    assert_eq!(store.claim_due(999, 10, 1).await.expect("claim"), vec![]);
    assert_eq!(store.claim_due(1_000, 10, 1).await.expect("claim"), vec![DueItem::Packet { packet_id: p }]);
    assert_eq!(store.expire_packet(p, 999).await.expect("expire"), None, "not before its time");
    let out = store.grab_batch(p, &[grab(&ids, "u2", 1, 20)], 1_000).await.expect("grab");
    assert_eq!(out, vec![OpOutcome::Rejected], "no grab at or after expiry");
    assert_eq!(store.expire_packet(p, 1_000).await.expect("expire"), Some(Fen::new(50)));
    assert_eq!(store.expire_packet(p, 2_000).await.expect("expire"), None, "only once");
    assert_eq!(store.claim_due(5_000, 10, 1).await.expect("claim"), vec![]);
    drop(store);
    let store = f.open().await;
    let snap = store.load_packet(p).await.expect("load").expect("packet");
    assert_eq!(snap.status, PacketStatus::Expired);
    assert_eq!(
        store.claim_due(5_000, 10, 1).await.expect("claim"),
        vec![],
        "an expired packet is not due again after a restart"
    );
}

async fn direct_grabs_decide_in_the_store(f: &dyn Fixture) {
    use rush_engine::store::DirectGrab;
    let ids = f.ids();
    let store = f.open().await;
    let def = packet_def(&ids, &[30, 70], 1_000);
    let p = def.packet_id;
    store.create_packet(&def).await.expect("create");
    let first = store.grab_direct(p, "u1", ids.next(0), 10).await.expect("grab");
    assert!(matches!(first, DirectGrab::Granted(ref g) if g.part == 0 && g.amount == Fen::new(30)), "{first:?}");
    assert_eq!(store.grab_direct(p, "u1", ids.next(0), 11).await.expect("grab"), DirectGrab::Already(Fen::new(30)));
    assert!(
        matches!(store.grab_direct(p, "u2", ids.next(0), 12).await.expect("grab"), DirectGrab::Granted(ref g) if g.amount == Fen::new(70))
    );
    assert_eq!(store.grab_direct(p, "u3", ids.next(0), 13).await.expect("grab"), DirectGrab::Empty);
    let remembered = store.recent_grabs("u2", 13).await.expect("recent");
    assert_eq!(remembered.iter().map(|g| g.amount.get()).collect::<Vec<_>>(), vec![70], "a direct grab is remembered");
    assert!(store.recent_grabs("u3", 13).await.expect("recent").is_empty());
    assert!(!remembered[0].own);
    // The sender grabs their own packet: remembered as their own.
    let mine = packet_def(&ids, &[5], FAR);
    store.create_packet(&mine).await.expect("create");
    assert!(matches!(
        store.grab_direct(mine.packet_id, "sender", ids.next(0), 14).await.expect("grab"),
        DirectGrab::Granted(_)
    ));
    let remembered = store.recent_grabs("sender", 14).await.expect("recent");
    assert_eq!(remembered.iter().map(|g| (g.amount.get(), g.own)).collect::<Vec<_>>(), vec![(5, true)]);
    assert_eq!(store.grab_direct(ids.next(0), "u3", ids.next(0), 13).await.expect("grab"), DirectGrab::Unknown);
    let late = packet_def(&ids, &[5], 1_000);
    store.create_packet(&late).await.expect("create");
    assert_eq!(store.grab_direct(late.packet_id, "u1", ids.next(0), 1_000).await.expect("grab"), DirectGrab::Expired);
    // Direct grabs are the same state actors read.
    let snap = store.load_packet(p).await.expect("load").expect("packet");
    assert_eq!(snap.status, PacketStatus::Empty);
    assert_eq!(snap.grabs.iter().map(|g| g.user_id.as_str()).collect::<Vec<_>>(), vec!["u1", "u2"]);
}

async fn concurrent_batches_never_double_sell(f: &dyn Fixture) {
    let ids = f.ids();
    let store = f.open().await;
    let def = event_def(&ids, 20);
    store.create_event(&def).await.expect("create");
    let e = def.event_id;
    // 40 tasks each try to hold the same 20 seats one by one.
    let tasks: Vec<_> = (0..40)
        .map(|t| {
            let (store, ids) = (store.clone(), ids.clone());
            tokio::spawn(async move {
                let mut won = Vec::new();
                for seat in 0..20u32 {
                    let o = hold(&ids, e, &format!("u{t}"), vec![seat], FAR);
                    if store.apply_seats(e, &[SeatOp::Hold(o.clone())], 1).await.expect("apply")
                        == vec![OpOutcome::Applied]
                    {
                        won.push((seat, o.order_id));
                    }
                }
                won
            })
        })
        .collect();
    let mut owner = vec![None; 20];
    for t in tasks {
        for (seat, order) in t.await.expect("task") {
            assert!(owner[seat as usize].replace(order).is_none(), "seat {seat} held twice");
        }
    }
    assert!(owner.iter().all(Option::is_some));
    let snap = store.load_event(e).await.expect("load").expect("event");
    for (seat, order) in owner.iter().enumerate() {
        assert_eq!(snap.seats[seat], SeatState::Held(order.expect("owner")));
    }
}

/// A batch decided on an old version writes nothing; every write bumps
/// the version; the per-user limit is the store's rule too.
async fn versions_fence_stale_batches_and_the_user_limit_holds(f: &dyn Fixture) {
    let ids = f.ids();
    let store = f.open().await;
    let def = event_def(&ids, 10);
    store.create_event(&def).await.expect("create");
    let e = def.event_id;
    let v0 = store.load_event(e).await.expect("load").expect("event").version;
    assert_eq!(store.event_version(e).await.expect("version"), Some(v0));
    assert_eq!(store.event_version(ids.next(0)).await.expect("version"), None, "no such event");
    // Two nodes decided on v0; the first one's batch lands.
    let a = hold(&ids, e, "u", vec![0, 1], FAR);
    let first = store.apply_seats_at(e, Some(v0), &[SeatOp::Hold(a.clone())], 1).await.expect("apply");
    assert_eq!(first.outcomes, vec![OpOutcome::Applied]);
    let v1 = first.version.expect("fresh");
    assert!(v1 > v0, "a write bumps the version");
    // The second, decided on v0 too, is stale as a whole, even on free seats.
    let b = hold(&ids, e, "w", vec![5], FAR);
    let stale = store
        .apply_seats_at(
            e,
            Some(v0),
            &[SeatOp::Hold(b.clone()), SeatOp::Release { order_id: a.order_id, status: OrderStatus::Cancelled }],
            2,
        )
        .await
        .expect("apply");
    assert_eq!(stale, rush_engine::store::SeatsApplied { outcomes: vec![OpOutcome::Rejected; 2], version: None });
    let snap = store.load_event(e).await.expect("load").expect("event");
    assert_eq!((snap.version, snap.seats[5], snap.holds.len()), (v1, SeatState::Available, 1), "nothing written");
    // A batch of two kinds chains its versions.
    let c = hold(&ids, e, "w", vec![6], FAR);
    let two = store
        .apply_seats_at(
            e,
            Some(v1),
            &[SeatOp::Release { order_id: a.order_id, status: OrderStatus::Cancelled }, SeatOp::Hold(c.clone())],
            3,
        )
        .await
        .expect("apply");
    assert_eq!(two.outcomes, vec![OpOutcome::Applied; 2]);
    let v2 = two.version.expect("fresh");
    assert_eq!(store.event_version(e).await.expect("version"), Some(v2));
    // per_user = 4: "w" holds 1; 3 more fit, a 4th does not, in one batch or two.
    let d = hold(&ids, e, "w", vec![2, 3, 4], FAR);
    let over = hold(&ids, e, "w", vec![7], FAR);
    let out = store.apply_seats(e, &[SeatOp::Hold(d.clone()), SeatOp::Hold(over.clone())], 4).await.expect("apply");
    assert_eq!(out, vec![OpOutcome::Applied, OpOutcome::Rejected], "the store enforces the per-user limit");
    // Releasing gives the allowance back.
    store
        .apply_seats(e, &[SeatOp::Release { order_id: c.order_id, status: OrderStatus::Expired }], 5)
        .await
        .expect("apply");
    let again = hold(&ids, e, "w", vec![7], FAR);
    assert_eq!(store.apply_seats(e, &[SeatOp::Hold(again)], 6).await.expect("apply"), vec![OpOutcome::Applied]);
}

/// An unknown packet creation is settled one way or the other, for good.
async fn packet_creation_can_be_voided(f: &dyn Fixture) {
    let ids = f.ids();
    let store = f.open().await;
    let made = packet_def(&ids, &[10, 20], FAR);
    store.create_packet(&made).await.expect("create");
    assert_eq!(store.void_packet(made.packet_id).await.expect("void"), rush_engine::store::Voided::Exists);
    assert!(store.load_packet(made.packet_id).await.expect("load").is_some(), "an existing packet is untouched");
    let never = packet_def(&ids, &[10, 20], FAR);
    assert_eq!(store.void_packet(never.packet_id).await.expect("void"), rush_engine::store::Voided::Voided);
    assert_eq!(store.void_packet(never.packet_id).await.expect("void"), rush_engine::store::Voided::Voided);
    assert!(store.load_packet(never.packet_id).await.expect("load").is_none());
    assert_eq!(store.packet_progress(made.packet_id).await.expect("progress"), Some((0, PacketStatus::Active)));
    assert_eq!(store.packet_progress(never.packet_id).await.expect("progress"), None);
}

/// Every check, each on a fresh fixture from `make`.
/// The store takes a hold only inside the event's sale window, by its own
/// clock (Redis: the server's TIME; embedded: the hold's time), whatever
/// the caller decided: the arbiter of the opening instant across nodes.
async fn holds_only_in_the_sale_window(f: &dyn Fixture) {
    let ids = f.ids();
    let store = f.open().await;
    let now = Utc::now();
    let at = |d: chrono::Duration| Some(now + d);
    let hour = chrono::Duration::hours(1);
    for (on, ends, want) in [
        (at(hour), at(hour * 2), OpOutcome::OffSale),
        (at(-hour * 2), at(-hour), OpOutcome::OffSale),
        (at(-hour), at(hour), OpOutcome::Applied),
    ] {
        let def = EventDef { on_sale_at: on, sale_ends_at: ends, ..event_def(&ids, 4) };
        store.create_event(&def).await.expect("create");
        let mut o = hold(&ids, def.event_id, "a", vec![0], FAR);
        o.created_at_ms = now.timestamp_millis() as u64;
        let out = store.apply_seats(def.event_id, &[SeatOp::Hold(o.clone())], o.created_at_ms).await.expect("hold");
        assert_eq!(out, vec![want], "window {on:?}..{ends:?}");
        let held = store.load_event(def.event_id).await.expect("load").expect("event").holds.contains_key(&o.order_id);
        assert_eq!(held, want == OpOutcome::Applied, "an off-sale hold writes nothing");
    }
}

/// An operator's change is compare-and-set on the definition's revision,
/// shows in every later load (a second store on the same data included),
/// and fences every batch decided on the old definition.
async fn operator_changes_are_compare_and_set_and_fence_old_decisions(f: &dyn Fixture) {
    let ids = f.ids();
    let store = f.open().await;
    let def = event_def(&ids, 4);
    let e = def.event_id;
    store.create_event(&def).await.expect("create");
    let before = store.load_event(e).await.expect("load").expect("event");
    let mut s = def.settings();
    s.rev = 1;
    s.name = "Renamed".into();
    s.paused = true;
    let up = |rev: u64, s: EventSettings, opens: Option<u64>| {
        let store = store.clone();
        async move { store.update_event(e, rev, &s, opens).await.expect("update") }
    };
    assert_eq!(up(7, s.clone(), None).await, Changed::Stale, "a change made on another revision");
    assert_eq!(up(1, s.clone(), None).await, Changed::Stale, "a change that is not newer");
    assert_eq!(up(0, s.clone(), Some(1)).await, Changed::OnSale, "prices after the opening (store's clock)");
    assert_eq!(up(0, s.clone(), Some(u64::MAX / 2)).await, Changed::Done);
    assert_eq!(up(0, s.clone(), None).await, Changed::Stale, "the same change twice applies once");
    let after = store.load_event(e).await.expect("load").expect("event");
    assert!(after.version > before.version, "the change bumps the version");
    assert_eq!((after.info.def.rev, after.info.def.name.as_str(), after.info.def.paused), (1, "Renamed", true));
    assert_eq!(after.info.map.len(), before.info.map.len(), "the seat map stays");
    let info = store.event_info(e).await.expect("info").expect("event");
    assert_eq!((info.def.rev, info.def.paused), (1, true));
    // Another node's store (its own cache) reads the change too.
    let other = f.open().await;
    assert_eq!(other.event_info(e).await.expect("info").expect("event").def.name, "Renamed");
    // A hold decided on the version before the change writes nothing.
    let o = hold(&ids, e, "a", vec![0], FAR);
    let applied = store.apply_seats_at(e, Some(before.version), &[SeatOp::Hold(o.clone())], 1).await.expect("hold");
    assert_eq!(applied.version, None, "stale: {applied:?}");
    assert!(!store.load_event(e).await.expect("load").expect("event").holds.contains_key(&o.order_id));
    let mut s2 = s.clone();
    s2.rev = 2;
    s2.paused = false;
    assert_eq!(up(1, s2, None).await, Changed::Done);
    let fresh = f.open().await;
    assert!(!fresh.load_event(e).await.expect("load").expect("event").info.def.paused, "resumed, as stored");
    let unknown = ids.next(0);
    assert_eq!(store.update_event(unknown, 0, &s, None).await.expect("update"), Changed::Stale, "no such event");

    // A new seat map, only while no seat is taken; every reader sees it.
    let grown = EventDef { rev: 3, map_rev: 3, ..event_def(&ids, 6) };
    let grown = EventDef { event_id: e, ..grown };
    let later = u64::MAX / 2;
    assert_eq!(store.replace_seats(1, &grown, later).await.expect("replace"), Changed::Stale);
    assert_eq!(store.replace_seats(2, &grown, 1).await.expect("replace"), Changed::OnSale, "after the opening");
    assert_eq!(store.replace_seats(2, &grown, later).await.expect("replace"), Changed::Done);
    let fresh = f.open().await;
    let snap = fresh.load_event(e).await.expect("load").expect("event");
    assert_eq!((snap.info.map.len(), snap.seats.len(), snap.info.def.rev), (6, 6, 3));
    if f.shared() {
        let other_snap = other.load_event(e).await.expect("load").expect("event");
        assert_eq!(other_snap.info.map.len(), 6, "a store that cached the old map reads the new one");
    }
    let o = hold(&ids, e, "a", vec![5], FAR);
    let at = store.event_version(e).await.expect("version");
    let applied = store.apply_seats_at(e, at, &[SeatOp::Hold(o)], 1).await.expect("hold");
    assert_eq!(applied.outcomes, vec![OpOutcome::Applied], "a seat of the new map");
    let again = EventDef { rev: 4, map_rev: 4, ..grown.clone() };
    assert_eq!(store.replace_seats(3, &again, later).await.expect("replace"), Changed::OnSale, "a seat is held");
    let mut priced = again.settings();
    priced.categories[0].price = Fen::new(999);
    assert_eq!(up(3, priced.clone(), Some(later)).await, Changed::OnSale, "a price while a seat is held");
    assert_eq!(up(3, priced, None).await, Changed::Done, "other changes go on");
}

async fn run_all<F: Fixture>(make: impl Fn() -> F) {
    operator_changes_are_compare_and_set_and_fence_old_decisions(&make()).await;
    holds_only_in_the_sale_window(&make()).await;
    seats_hold_release_confirm(&make()).await;
    due_items_are_claimed_for_a_lease_and_leave_when_settled(&make()).await;
    grabs_take_parts_in_order_once_per_user(&make()).await;
    packets_expire_once_with_their_remainder(&make()).await;
    direct_grabs_decide_in_the_store(&make()).await;
    concurrent_batches_never_double_sell(&make()).await;
    versions_fence_stale_batches_and_the_user_limit_holds(&make()).await;
    packet_creation_can_be_voided(&make()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_keeps_the_hot_store_contract() {
    run_all(Memory::new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_keeps_the_hot_store_contract() {
    let fixtures = std::sync::Mutex::new(Vec::new());
    run_all(|| {
        let f = Redis::new();
        fixtures.lock().expect("lock").push((f.url.clone(), f.prefix.clone()));
        f
    })
    .await;
    for (url, prefix) in fixtures.into_inner().expect("lock") {
        Redis { url, prefix, ids: Arc::new(IdGen::new(2).expect("ids")) }.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_keeps_the_contract_on_a_three_master_cluster() {
    let _nodes = ClusterNodes::start();
    let n = std::sync::atomic::AtomicU64::new(0);
    run_all(|| Cluster {
        prefix: format!("cluster{}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        ids: Arc::new(IdGen::new(3).expect("ids")),
    })
    .await;
    engine_in_cluster_mode().await;
    the_engine_follows_a_cluster_failover().await;
}

/// An engine on the test cluster with its workers running; the sender
/// stops them.
async fn engine_on_the_cluster(
    prefix: &str,
) -> (std::sync::Arc<rush_engine::Engine>, tokio::sync::watch::Sender<bool>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
    cfg.redis.url = Some("redis://127.0.0.1:7000".into());
    cfg.redis.cluster = true;
    cfg.redis.key_prefix = prefix.into();
    cfg.workers.poll_wait_ms = 20;
    let node =
        rush_engine::Node::open(cfg, rush_engine::telemetry::Metrics::new()).await.expect("engine on the cluster");
    let (tx, rx) = tokio::sync::watch::channel(false);
    node.start_workers(rx).expect("workers");
    (node.engine(), tx, dir)
}

/// The whole engine on the cluster: scripts, the stream event log and the
/// workers, from a grab to the ledger.
async fn engine_in_cluster_mode() {
    use rush_engine::engine::Selection;
    use rush_engine::engine::{NewHold, NewPacket};
    let (engine, tx, _dir) = engine_on_the_cluster("engine").await;
    engine.credit(&uid("sender"), rush_engine::domain::Fen::new(1_000), "test").await.expect("credit");
    let packet = engine
        .create_packet(
            &uid("sender"),
            NewPacket {
                kind: PacketKind::Normal,
                total_amount: rush_engine::domain::Fen::new(1_000),
                count: 10,
                greeting: None,
                expires_in_s: None,
            },
        )
        .await
        .expect("packet");
    for i in 0..10 {
        let g = engine.grab(&uid(&format!("g{i}")), packet.packet_id).await.expect("grab");
        assert_eq!(g.amount, Fen::new(100));
    }
    assert!(matches!(engine.grab(&uid("late"), packet.packet_id).await, Err(rush_engine::EngineError::PacketEmpty)));
    assert!(engine.settle(std::time::Duration::from_secs(10)).await, "the workers drained every partition's stream");
    for i in 0..10 {
        assert_eq!(engine.wallet(&uid(&format!("g{i}"))).await.expect("wallet").available, Fen::new(100));
    }
    assert_eq!(engine.wallet(&uid("sender")).await.expect("wallet").frozen, Fen::ZERO);
    let (event_id, _) = engine.create_event(event_input()).await.expect("event");
    let held = engine
        .hold(
            &uid("buyer"),
            NewHold {
                event_id,
                selection: Selection::Category { category: "c".into(), quantity: 2 },
                attendees: vec![],
                admission: None,
            },
        )
        .await
        .expect("hold");
    assert_eq!(held.seats.len(), 2);
    let _ = tx.send(true);
}

/// Issue 15: every master hands over to its replica (`CLUSTER FAILOVER`,
/// no data lost) and the engine goes on granting and persisting. (With the
/// redis crate's cluster connection alone it would not: see
/// `store::redis_cluster`.) Last on the cluster test: it swaps every
/// master.
async fn the_engine_follows_a_cluster_failover() {
    use rush_engine::engine::NewPacket;
    let (engine, tx, _dir) = engine_on_the_cluster("failover").await;
    engine.credit(&uid("sender"), rush_engine::domain::Fen::new(1_000), "test").await.expect("credit");
    let packet = engine
        .create_packet(
            &uid("sender"),
            NewPacket {
                kind: PacketKind::Normal,
                total_amount: rush_engine::domain::Fen::new(500),
                count: 5,
                greeting: None,
                expires_in_s: None,
            },
        )
        .await
        .expect("packet");
    for i in 0..5 {
        engine.grab(&uid(&format!("g{i}")), packet.packet_id).await.expect("grab");
    }
    // Every master hands over to its replica (`CLUSTER FAILOVER`): the
    // engine follows the slots and keeps granting, persisting and holding.
    fail_over_every_master();
    // The client learns the new masters from the first answers after the
    // failover (MOVED, a closed connection): until then a request may fail
    // as unavailable, never with a wrong answer.
    let mut followed = false;
    for _ in 0..100 {
        match engine.grab(&uid("late"), packet.packet_id).await {
            Err(rush_engine::EngineError::PacketEmpty) => {
                followed = true;
                break;
            }
            Err(e) if e.to_string().contains("unavailable") || e.to_string().contains("not known") => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => panic!("a grab of the empty packet after the failover: {other:?}"),
        }
    }
    assert!(followed, "the engine did not follow the new masters");
    engine.credit(&uid("sender"), rush_engine::domain::Fen::new(500), "test").await.expect("credit");
    // A master's first answer after the failover can outlast
    // `redis.timeout_ms` (the client refreshes its slots): the creation is
    // then `outcome_unknown`, and asking again (what a client's retry with
    // its Idempotency-Key does) resolves it, with the money moved once.
    let mut created = None;
    for _ in 0..100 {
        let input = NewPacket {
            kind: PacketKind::Normal,
            total_amount: rush_engine::domain::Fen::new(500),
            count: 5,
            greeting: None,
            expires_in_s: None,
        };
        match engine.create_packet(&uid("sender"), input).await {
            Ok(p) => created = Some(p),
            Err(rush_engine::EngineError::OutcomeUnknown { id, .. }) => {
                for _ in 0..100 {
                    match engine.packet_outcome(id).await {
                        Ok(Some(p)) => {
                            created = Some(p);
                            break;
                        }
                        Ok(None) => break,
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                    }
                }
            }
            // Refused before it ran (its money is back): asked again.
            Err(e) if e.to_string().contains("unavailable") => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("packet after the failover: {e}"),
        }
        if created.is_some() {
            break;
        }
    }
    let packet = created.expect("a packet created after the failover");
    for i in 0..5 {
        let g = engine.grab(&uid(&format!("g{i}")), packet.packet_id).await.expect("grab after the failover");
        assert_eq!(g.amount, Fen::new(100));
    }
    assert!(engine.settle(std::time::Duration::from_secs(10)).await, "the streams drain on the new masters");
    for i in 0..5 {
        assert_eq!(engine.wallet(&uid(&format!("g{i}"))).await.expect("wallet").available, Fen::new(200));
    }
    let _ = tx.send(true);
}

/// `CLUSTER FAILOVER` on every replica, one at a time, each waited for
/// until the replica is a master and the cluster is whole again.
fn fail_over_every_master() {
    use std::process::Command;
    let cli = |port: u16, args: &[&str]| {
        let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let replicas: Vec<u16> =
        CLUSTER_PORTS.filter(|p| cli(*p, &["INFO", "replication"]).contains("role:slave")).collect();
    assert_eq!(replicas.len(), 3, "three replicas");
    for port in replicas {
        // A manual failover gives up when the master does not answer in
        // time (a loaded machine): asked again, up to three times.
        let promoted = (0..3).any(|_| {
            let asked = cli(port, &["CLUSTER", "FAILOVER"]);
            (0..100).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                cli(port, &["INFO", "replication"]).contains("role:master")
            }) || {
                eprintln!("CLUSTER FAILOVER on {port} answered {asked:?}; not promoted yet");
                false
            }
        });
        assert!(promoted, "the replica on {port} did not take over: {}", cli(port, &["INFO", "replication"]));
        let whole = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            CLUSTER_PORTS.clone().all(|p| cli(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
        assert!(whole, "the cluster is not whole after {port} took over");
    }
}

fn event_input() -> rush_engine::engine::NewEvent {
    rush_engine::engine::NewEvent {
        name: "cluster".into(),
        venue: "lab".into(),
        starts_at: Utc::now() + chrono::Duration::days(1),
        on_sale_at: None,
        sale_ends_at: None,
        hold_ttl_s: None,
        limits: None,
        categories: vec![rush_engine::engine::NewCategory { id: "c".into(), name: "C".into(), price: 100 }],
        layout: Some(vec![SectionLayout { name: "A".into(), rows: 1, cols: 4, category: "c".into() }]),
        seats: None,
        waiting_room: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_reloads_its_scripts_after_a_script_flush() {
    let f = Redis::new();
    let store = f.open().await;
    let ids = f.ids();
    let def = packet_def(&ids, &[10, 20], FAR);
    store.create_packet(&def).await.expect("create");
    // Redis forgets every script, as after a restart or failover.
    let client = redis::Client::open(f.url.as_str()).expect("url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.expect("flush");
    let out = store.grab_batch(def.packet_id, &[grab(&ids, "u1", 0, 10)], 5).await.expect("grab after NOSCRIPT");
    assert_eq!(out, vec![OpOutcome::Applied]);
    f.cleanup().await;
}

/// Deletes every key of the fixture's prefix: Redis restarted empty.
async fn wipe(f: &Redis) {
    f.cleanup().await;
}

fn applied_order(o: &HotOrder, info: &rush_engine::domain::EventInfo, status: OrderStatus) -> AppliedOrder {
    AppliedOrder {
        order_id: o.order_id,
        user_id: o.user_id.clone(),
        status,
        amount: o.amount,
        created_at_ms: o.created_at_ms,
        expires_at_ms: o.expires_at_ms,
        seat_labels: o.seats.iter().map(|s| info.map.seat(*s).label()).collect(),
        attendees: vec![],
    }
}

/// Issue 15: a Redis that lost its data writes nothing (every script checks
/// its partition's marker), and a restore merges the durable store's
/// orders and grabs back: exactly what was applied, nothing sold twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_redis_refuses_writes_and_a_restore_puts_back_what_was_applied() {
    let f = Redis::new();
    let store = f.open_redis().await;
    let ids = f.ids();
    let def = event_def(&ids, 5);
    let info = rush_engine::domain::EventInfo::build(def.clone(), 1000).expect("info");
    store.create_event(&def).await.expect("event");
    let e = def.event_id;
    let a = hold(&ids, e, "a", vec![0, 1], FAR);
    let b = hold(&ids, e, "b", vec![2], FAR);
    let out = store.apply_seats(e, &[SeatOp::Hold(a.clone()), SeatOp::Hold(b.clone())], 5).await.expect("holds");
    assert_eq!(out, vec![OpOutcome::Applied; 2]);
    store.apply_seats(e, &[SeatOp::Confirm { order_id: b.order_id }], 6).await.expect("confirm");
    let pk = packet_def(&ids, &[10, 20, 30], FAR);
    store.create_packet(&pk).await.expect("packet");
    let g1 = grab(&ids, "u1", 0, 10);
    assert_eq!(
        store.grab_batch(pk.packet_id, std::slice::from_ref(&g1), 7).await.expect("grab"),
        vec![OpOutcome::Applied]
    );

    wipe(&f).await;
    let c = hold(&ids, e, "c", vec![4], FAR);
    assert!(matches!(store.apply_seats(e, &[SeatOp::Hold(c.clone())], 8).await, Err(StoreError::Lost)));
    assert!(matches!(store.load_event(e).await, Err(StoreError::Lost)), "a reload says lost, not 'no such event'");
    assert!(matches!(store.create_event(&event_def(&ids, 2)).await, Err(StoreError::Lost)));
    assert!(matches!(store.grab_batch(pk.packet_id, &[grab(&ids, "u9", 1, 20)], 9).await, Err(StoreError::Lost)));

    // What the durable store had applied: a pending, b paid, and d (held
    // on seat 3 and lost by Redis before it was read back).
    let d = hold(&ids, e, "d", vec![3], 1_000);
    let applied = vec![
        applied_order(&a, &info, OrderStatus::PendingPayment),
        applied_order(&b, &info, OrderStatus::Paid),
        applied_order(&d, &info, OrderStatus::PendingPayment),
    ];
    let now = rush_engine::domain::now_unix_ms();
    let r = store.restore_event(&def, &applied, now).await.expect("restore");
    assert_eq!((r.restored, r.conflicts.len()), (3, 0), "{r:?}");
    let g = |g: &Grab| AppliedGrab { grab_id: g.grab_id, user_id: g.user_id.clone(), amount: g.amount, at_ms: g.at_ms };
    let u2 = grab(&ids, "u2", 1, 30);
    let p = AppliedPacket { def: pk.clone(), expired: false, grabs: vec![g(&g1), g(&u2)] };
    assert_eq!(store.restore_packet(&p, now).await.expect("restore packet").restored, 2);
    store.set_markers("rebuilt").await.expect("markers");

    let snap = store.load_event(e).await.expect("load").expect("event is back");
    assert_eq!(snap.seats[0], SeatState::Held(a.order_id));
    assert_eq!(snap.seats[2], SeatState::Sold(b.order_id));
    assert_eq!(snap.seats[3], SeatState::Held(d.order_id));
    assert_eq!(snap.seats[4], SeatState::Available);
    assert!(snap.version >= now, "the version jumps past any an actor remembers");
    // The per-user counts came back with the orders.
    let client = redis::Client::open(f.url.as_str()).expect("url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    let users: std::collections::HashMap<String, u32> = redis::cmd("HGETALL")
        .arg(format!("{}:{{p{}}}:ev:{e}:users", f.prefix, e.partition()))
        .query_async(&mut conn)
        .await
        .expect("users");
    assert_eq!(users, [("a".to_string(), 2), ("b".to_string(), 1), ("d".to_string(), 1)].into_iter().collect());
    let taken = hold(&ids, e, "x", vec![3], FAR);
    let free = hold(&ids, e, "a", vec![4], FAR);
    let out = store
        .apply_seats(e, &[SeatOp::Hold(taken), SeatOp::Hold(free.clone())], 10)
        .await
        .expect("holds after the restore");
    assert_eq!(out, vec![OpOutcome::Rejected, OpOutcome::Applied]);
    assert_eq!(store.order(d.order_id).await.expect("order").map(|(o, _)| o.order_id), Some(d.order_id));
    // Due entries came back: the restored holds expire through the sweeper.
    let due = store.claim_due(2_000, 100, 1_000).await.expect("due");
    assert!(due.contains(&DueItem::Hold { event_id: e, order_id: d.order_id }), "{due:?}");

    let snap = store.load_packet(pk.packet_id).await.expect("load").expect("packet is back");
    assert_eq!(snap.grabs.len(), 2);
    assert_eq!(snap.remaining(), Fen::new(20));
    let again = store.grab_batch(pk.packet_id, &[grab(&ids, "u1", 2, 20)], 11).await.expect("grab");
    assert_eq!(again, vec![OpOutcome::Rejected], "u1 grabbed before the loss");
    let last = store.grab_batch(pk.packet_id, &[grab(&ids, "u3", 2, 20)], 11).await.expect("grab");
    assert_eq!(last, vec![OpOutcome::Applied], "the one part left");
    assert_eq!(store.load_packet(pk.packet_id).await.expect("load").expect("p").status, PacketStatus::Empty);
    f.cleanup().await;
}

/// A user id for the engine's API.
fn uid(s: &str) -> rush_engine::domain::UserId {
    rush_engine::domain::UserId::parse(s).expect("user id")
}
