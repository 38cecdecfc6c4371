//! The engine in embedded mode without HTTP: confirm (held → sold) and
//! reopening the same file.

use std::time::Duration;

use chrono::Utc;
use rush_engine::actors::event::Selection;
use rush_engine::domain::{OrderStatus, SectionLayout};
use rush_engine::engine::{NewCategory, NewEvent, NewHold};
use rush_engine::telemetry::Metrics;
use rush_engine::{Caller, Config, Engine, EngineError};

fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config { data_dir: dir.to_path_buf(), ..Config::default() };
    cfg.workers.poll_wait_ms = 20;
    cfg
}

async fn open(dir: &std::path::Path) -> std::sync::Arc<Engine> {
    let engine = Engine::open_embedded(config(dir), Metrics::new()).await.expect("open");
    let (tx, rx) = tokio::sync::watch::channel(false);
    engine.start_workers(rx);
    std::mem::forget(tx);
    engine
}

fn event(per_user: u32) -> NewEvent {
    NewEvent {
        name: "Cup".into(),
        venue: "Court".into(),
        starts_at: Utc::now(),
        hold_ttl_s: None,
        limits: Some(rush_engine::engine::NewLimits { per_order: Some(4), per_user: Some(per_user) }),
        categories: vec![NewCategory { id: "c".into(), name: "C".into(), price: 500 }],
        layout: Some(vec![SectionLayout { name: "A".into(), rows: 1, cols: 4, category: "c".into() }]),
        seats: None,
    }
}

fn named(event_id: rush_engine::domain::Id, seats: &[&str]) -> NewHold {
    NewHold { event_id, selection: Selection::Named(seats.iter().map(|s| s.to_string()).collect()), attendees: vec![] }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_order_is_sold_for_good_even_after_reopening() {
    let dir = tempfile::tempdir().expect("dir");
    let engine = open(dir.path()).await;
    let (event_id, _) = engine.create_event(event(2)).await.expect("event");
    let held = engine.hold("u", named(event_id, &["A-1-1", "A-1-2"])).await.expect("hold");
    let paid = engine.confirm(event_id, held.order_id).await.expect("confirm");
    assert_eq!(paid.status, OrderStatus::Paid);
    assert_eq!(paid.amount.get(), 1000);

    let caller = Caller { user_id: "u".into(), admin: false };
    assert!(matches!(
        engine.cancel(&caller, held.order_id).await,
        Err(EngineError::OrderNotPending { status: OrderStatus::PendingPayment | OrderStatus::Paid })
    ));
    assert!(matches!(engine.confirm(event_id, held.order_id).await, Err(EngineError::OrderNotPending { .. })));
    assert!(engine.settle(Duration::from_secs(5)).await);
    let stored = engine.order(&caller, held.order_id).await.expect("order");
    assert_eq!(stored.status, OrderStatus::Paid);
    drop(engine);

    let engine = open(dir.path()).await;
    let seats = engine.seats(event_id, None).await.expect("seats");
    let sold: Vec<_> = seats.iter().filter(|s| s.status == "sold").map(|s| s.seat_id.as_str()).collect();
    assert_eq!(sold, vec!["A-1-1", "A-1-2"]);
    assert!(matches!(
        engine.hold("v", named(event_id, &["A-1-2"])).await,
        Err(EngineError::SeatUnavailable(ref s)) if s == &vec!["A-1-2".to_string()]
    ));
    // The per-user limit counts bought seats across restarts.
    assert!(matches!(
        engine.hold("u", named(event_id, &["A-1-3"])).await,
        Err(EngineError::LimitExceeded { which: "per_user", .. })
    ));
    let audit = engine.audit().await.expect("audit");
    assert_eq!(audit.sum_all_accounts, 0);
}
