//! The engine in embedded mode without HTTP: confirm (held → sold) and
//! reopening the same file.

use std::time::Duration;

use chrono::Utc;
use rush_engine::domain::{OrderStatus, SectionLayout};
use rush_engine::engine::Selection;
use rush_engine::engine::{NewCategory, NewEvent, NewHold};
use rush_engine::telemetry::Metrics;
use rush_engine::{Caller, Config, Engine, EngineError};

fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config { data_dir: dir.to_path_buf(), ..Config::default() };
    cfg.workers.poll_wait_ms = 20;
    cfg
}

async fn open(dir: &std::path::Path) -> std::sync::Arc<Engine> {
    let node = rush_engine::Node::open(config(dir), Metrics::new()).await.expect("open");
    let (tx, rx) = tokio::sync::watch::channel(false);
    node.start_workers(rx).expect("workers");
    std::mem::forget(tx);
    node.engine()
}

fn event(per_user: u32) -> NewEvent {
    NewEvent {
        name: "Cup".into(),
        venue: "Court".into(),
        starts_at: Utc::now() + chrono::Duration::days(1),
        on_sale_at: None,
        sale_ends_at: None,
        hold_ttl_s: None,
        limits: Some(rush_engine::engine::NewLimits { per_order: Some(4), per_user: Some(per_user) }),
        categories: vec![NewCategory { id: "c".into(), name: "C".into(), price: 500 }],
        layout: Some(vec![SectionLayout { name: "A".into(), rows: 1, cols: 4, category: "c".into() }]),
        seats: None,
        waiting_room: None,
    }
}

fn named(event_id: rush_engine::domain::Id, seats: &[&str]) -> NewHold {
    NewHold {
        event_id,
        selection: Selection::Named(seats.iter().map(|s| s.to_string()).collect()),
        attendees: vec![],
        admission: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_order_is_sold_for_good_even_after_reopening() {
    let dir = tempfile::tempdir().expect("dir");
    let engine = open(dir.path()).await;
    let (event_id, _) = engine.create_event(event(2)).await.expect("event");
    let held = engine.hold(&uid("u"), named(event_id, &["A-1-1", "A-1-2"])).await.expect("hold");
    let paid = engine.confirm(event_id, held.order_id, rush_engine::domain::now_unix_ms()).await.expect("confirm");
    assert_eq!(paid.status, OrderStatus::Paid);
    assert_eq!(paid.amount.get(), 1000);

    let caller = Caller { user_id: uid("u"), admin: false };
    assert!(matches!(
        engine.cancel(&caller, held.order_id).await,
        Err(EngineError::OrderNotPending { status: OrderStatus::PendingPayment | OrderStatus::Paid })
    ));
    assert!(matches!(
        engine.confirm(event_id, held.order_id, rush_engine::domain::now_unix_ms()).await,
        Err(EngineError::OrderNotPending { .. })
    ));
    assert!(engine.settle(Duration::from_secs(5)).await);
    let stored = engine.order(&caller, held.order_id).await.expect("order");
    assert_eq!(stored.status, OrderStatus::Paid);
    drop(engine);

    let engine = open(dir.path()).await;
    let seats = engine.seats(event_id, None).await.expect("seats");
    let sold: Vec<_> = seats.iter().filter(|s| s.status == "sold").map(|s| s.seat_id.as_str()).collect();
    assert_eq!(sold, vec!["A-1-1", "A-1-2"]);
    assert!(matches!(
        engine.hold(&uid("v"), named(event_id, &["A-1-2"])).await,
        Err(EngineError::SeatUnavailable(ref s)) if s == &vec!["A-1-2".to_string()]
    ));
    // The per-user limit counts bought seats across restarts.
    assert!(matches!(
        engine.hold(&uid("u"), named(event_id, &["A-1-3"])).await,
        Err(EngineError::LimitExceeded { which: "per_user", .. })
    ));
    let audit = engine.audit().await.expect("audit");
    assert_eq!(audit.sum_all_accounts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_in_one_batch_reach_the_file_in_order() {
    use rush_engine::domain::{EventDef, Fen, Id, IdGen, Limits};
    use rush_engine::store::db::Db;
    use rush_engine::store::memory::MemoryStore;
    use rush_engine::store::{HotOrder, HotStore, OpOutcome, SeatOp, SeatState};
    use std::sync::Arc;

    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path());
    let db = Db::open(dir.path(), &cfg.sqlite).await.expect("db");
    let ids = Arc::new(IdGen::new(0).expect("ids"));
    let store = MemoryStore::open(db.clone(), ids.clone(), 100).await.expect("store");
    let def = EventDef {
        event_id: ids.next(0),
        name: "e".into(),
        venue: "v".into(),
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
        categories: vec![rush_engine::domain::Category { id: "c".into(), name: "C".into(), price: Fen::new(1) }],
        seats: rush_engine::domain::SeatMap::from_layout(
            &[SectionLayout { name: "A".into(), rows: 1, cols: 3, category: "c".into() }],
            &["c"],
            100,
        )
        .expect("map")
        .seats()
        .to_vec(),
    };
    store.create_event(&def).await.expect("create");
    let order = |id: Id, seats: Vec<u32>| HotOrder {
        order_id: id,
        event_id: def.event_id,
        user_id: "u".into(),
        seats,
        amount: Fen::new(1),
        created_at_ms: 0,
        expires_at_ms: u64::MAX / 2,
        attendees: vec![],
    };
    let (o1, o2, o3) = (ids.next(1), ids.next(1), ids.next(1));
    let ops = vec![
        SeatOp::Hold(order(o1, vec![0, 1])),
        SeatOp::Release { order_id: o1, status: OrderStatus::Cancelled },
        SeatOp::Hold(order(o2, vec![1])),
        SeatOp::Hold(order(o3, vec![2])),
        SeatOp::Confirm { order_id: o3 },
        // Stale: seat 1 is o2's now.
        SeatOp::Hold(order(ids.next(1), vec![1])),
    ];
    let outcomes = store.apply_seats(def.event_id, &ops, 1).await.expect("apply");
    assert_eq!(outcomes[..5], [OpOutcome::Applied; 5]);
    assert_eq!(outcomes[5], OpOutcome::Rejected);
    drop(store);
    // A fresh store reads only the file.
    let store = MemoryStore::open(db, ids, 100).await.expect("reopen");
    let snap = store.load_event(def.event_id).await.expect("load").expect("event");
    assert_eq!(snap.seats, vec![SeatState::Available, SeatState::Held(o2), SeatState::Sold(o3)]);
    assert_eq!(snap.holds.keys().copied().collect::<Vec<_>>(), vec![o2]);
    assert!(snap.paid.contains_key(&o3));
}

/// A user id for the engine's API.
fn uid(s: &str) -> rush_engine::domain::UserId {
    rush_engine::domain::UserId::parse(s).expect("user id")
}
