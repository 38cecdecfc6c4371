//! The durable store's behaviour, run on SQLite and on Postgres: the same
//! body of tests against both backends.
//!
//! Postgres: each test gets a fresh database on `RUSH_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1/postgres`), dropped afterwards.

use std::sync::Arc;

use rush_engine::config::{PostgresConfig, SqliteConfig};
use rush_engine::domain::{gene_of_user, Fen, Id, IdGen, OrderStatus, PacketKind, WORLD_ACCOUNT};
use rush_engine::domain::{Attendee, OrderSeat};
use rush_engine::durable::payments::{PaymentRecord, PaymentStatus, Purpose, RefundState};
use rush_engine::durable::wallet::{RiskRules, WithdrawalRecord};
use rush_engine::durable::{Durable, DurableError, Pools};
use rush_engine::events::{DomainEvent, Envelope};
use rush_engine::idempotency::Begin;
use rush_engine::pay::{ChannelKind, Paid};
use rush_engine::store::PacketDef;
use rush_engine::testkit::ScratchDb;

enum Fixture {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] ScratchDb),
}

async fn open(backend: &str) -> (Durable, Fixture) {
    match backend {
        "sqlite" => {
            let dir = tempfile::tempdir().expect("tempdir");
            let pools = Pools::sqlite(dir.path(), &SqliteConfig::default()).await.expect("sqlite");
            (Durable::new(pools), Fixture::Sqlite(dir))
        }
        _ => {
            let db = ScratchDb::create().await.expect("Postgres for tests (RUSH_TEST_POSTGRES_URL)");
            let pools = Pools::postgres(&db.url, &PostgresConfig::default()).await.expect("postgres");
            (Durable::new(pools), Fixture::Postgres(db))
        }
    }
}

/// Runs one test body on both backends.
macro_rules! both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body("sqlite").await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body("postgres").await;
            }
        }
    };
}

fn ids() -> Arc<IdGen> {
    Arc::new(IdGen::new(7).expect("ids"))
}

fn env(ids: &IdGen, event: DomainEvent) -> Envelope {
    let partition = event.entity_id().partition();
    Envelope { position: 0, event_id: ids.next(0), partition, event }
}

fn seat(id: &str) -> OrderSeat {
    OrderSeat {
        seat_id: id.into(),
        section: "A".into(),
        row: 1,
        col: id.len() as u32,
        category: "std".into(),
        price: Fen::new(100),
    }
}

fn held(ids: &IdGen, event_id: Id, user: &str, seats: &[&str]) -> (Id, Envelope) {
    let order_id = ids.next_for_user(user);
    let e = env(
        ids,
        DomainEvent::OrderHeld {
            order_id,
            event_id,
            user_id: user.into(),
            amount: Fen::new(100 * seats.len() as i64),
            created_at_ms: 1_000,
            expires_at_ms: 901_000,
            seats: seats.iter().map(|s| seat(s)).collect(),
            attendees: vec![Attendee { name: "Li Lei".into(), id_number: "110101199001011234".into() }],
        },
    );
    (order_id, e)
}

fn packet(ids: &IdGen, sender: &str, total: i64, count: u32) -> PacketDef {
    PacketDef {
        packet_id: ids.next(gene_of_user(sender)),
        sender: sender.into(),
        kind: PacketKind::Normal,
        total: Fen::new(total),
        count,
        greeting: "hi".into(),
        created_at_ms: 1_000,
        expires_at_ms: 2_000,
        parts: vec![Fen::new(total / i64::from(count)); count as usize],
    }
}

fn grabbed(ids: &IdGen, def: &PacketDef, user: &str, amount: i64) -> Envelope {
    env(
        ids,
        DomainEvent::PacketGrabbed {
            grab_id: ids.next_for_user(user),
            packet_id: def.packet_id,
            sender: def.sender.clone(),
            user_id: user.into(),
            amount: Fen::new(amount),
            at_ms: 1_500,
        },
    )
}

/// A packet of `total` from "sender", credited and frozen.
async fn funded_packet(d: &Durable, ids: &IdGen, total: i64, count: u32) -> PacketDef {
    d.credit("sender", Fen::new(total), "t", ids.next(0)).await.expect("credit");
    let def = packet(ids, "sender", total, count);
    d.freeze_for_packet(&def).await.expect("freeze");
    def
}

async fn assert_conserved(d: &Durable) {
    let audit = d.audit().await.expect("audit");
    assert_eq!(audit.sum_all_accounts, 0, "money created or destroyed");
    assert!(audit.lopsided_transfers.is_empty(), "{:?}", audit.lopsided_transfers);
}

async fn credit_balance_and_ledger(backend: &str) {
    let (d, _f) = open(backend).await;
    let ids = ids();
    d.credit("alice", Fen::new(5_000), "welcome", ids.next(0)).await.expect("credit");
    d.credit("alice", Fen::new(250), "bonus", ids.next(0)).await.expect("credit");
    let b = d.balance("alice").await.expect("balance");
    assert_eq!((b.available.get(), b.frozen.get()), (5_250, 0));
    let nobody = d.balance("nobody").await.expect("balance");
    assert_eq!((nobody.available.get(), nobody.frozen.get()), (0, 0));
    let world = d.balance(WORLD_ACCOUNT).await.expect("world");
    assert_eq!(world.available.get(), -5_250);
    // Newest first, paged by entry id.
    let page = d.ledger("alice", None, 1).await.expect("ledger");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].amount.get(), 250);
    let rest = d.ledger("alice", Some(page[0].entry_id), 10).await.expect("ledger");
    assert_eq!(rest.iter().map(|e| e.amount.get()).collect::<Vec<_>>(), vec![5_000]);
    assert_conserved(&d).await;
}
both!(credit_balance_and_ledger_work, credit_balance_and_ledger);

async fn packet_freeze_checks_funds(backend: &str) {
    let (d, _f) = open(backend).await;
    let ids = ids();
    let def = packet(&ids, "sender", 1_000, 10);
    assert!(matches!(d.freeze_for_packet(&def).await, Err(DurableError::InsufficientFunds)));
    d.credit("sender", Fen::new(1_500), "t", ids.next(0)).await.expect("credit");
    d.freeze_for_packet(&def).await.expect("freeze");
    let b = d.balance("sender").await.expect("balance");
    assert_eq!((b.available.get(), b.frozen.get()), (500, 1_000));
    // A failed creation is undone to the cent, once however often asked.
    d.unfreeze_failed_packet(def.packet_id).await.expect("unfreeze");
    d.unfreeze_failed_packet(def.packet_id).await.expect("unfreeze again");
    let b = d.balance("sender").await.expect("balance");
    assert_eq!((b.available.get(), b.frozen.get()), (1_500, 0));
    assert_conserved(&d).await;
}
both!(packet_freeze_checks_funds_and_undoes, packet_freeze_checks_funds);

async fn orders_by_gene(backend: &str) {
    let (d, _f) = open(backend).await;
    let ids = ids();
    let event_id = ids.next(0);
    let (o1, e1) = held(&ids, event_id, "bob", &["A-1-1", "A-1-2"]);
    let (o2, e2) = held(&ids, event_id, "carol", &["A-1-3"]);
    let (o3, e3) = held(&ids, event_id, "bob", &["A-1-4"]);
    assert_eq!(d.apply_events(&[e1, e2, e3]).await.expect("apply"), 3);
    let r = d.order(o1).await.expect("read").expect("order 1");
    assert_eq!((r.user_id.as_str(), r.status, r.amount.get()), ("bob", OrderStatus::PendingPayment, 200));
    assert_eq!(r.seats.iter().map(|s| s.seat_id.as_str()).collect::<Vec<_>>(), vec!["A-1-1", "A-1-2"]);
    assert_eq!(r.attendees.len(), 1);
    // By user: newest first, only that user's, from the user's gene table.
    let bobs = d.orders_of("bob", None, 10).await.expect("list");
    assert_eq!(bobs.iter().map(|o| o.order_id).collect::<Vec<_>>(), vec![o3, o1]);
    let older = d.orders_of("bob", Some(o3), 10).await.expect("page");
    assert_eq!(older.iter().map(|o| o.order_id).collect::<Vec<_>>(), vec![o1]);
    // The row sits in the table of its gene and nowhere else.
    let table = format!("orders_{}", o2.gene());
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE order_id = $1"))
        .bind(o2.raw())
        .fetch_one(&d.db().read)
        .await
        .expect("count");
    assert_eq!(n, 1);
    let mut total = 0i64;
    for g in 0..16 {
        let n: i64 =
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM orders_{g}")).fetch_one(&d.db().read).await.expect("n");
        total += n;
    }
    assert_eq!(total, 3);
}
both!(orders_live_in_their_gene_table, orders_by_gene);

async fn order_lifecycle(backend: &str) {
    let (d, _f) = open(backend).await;
    let ids = ids();
    let event_id = ids.next(0);
    let (o1, e1) = held(&ids, event_id, "bob", &["A-1-1"]);
    let (o2, e2) = held(&ids, event_id, "dan", &["A-1-2"]);
    d.apply_events(&[e1, e2]).await.expect("held");
    let release = env(
        &ids,
        DomainEvent::OrderReleased {
            order_id: o1,
            event_id,
            user_id: "bob".into(),
            status: OrderStatus::Expired,
            at_ms: 2_000,
        },
    );
    let confirm =
        env(&ids, DomainEvent::OrderConfirmed { order_id: o2, event_id, user_id: "dan".into(), at_ms: 2_000 });
    d.apply_events(&[release, confirm]).await.expect("released and confirmed");
    assert_eq!(d.order(o1).await.expect("read").expect("o1").status, OrderStatus::Expired);
    assert_eq!(d.order(o2).await.expect("read").expect("o2").status, OrderStatus::Paid);
    // The released seat can be held again; the sold one cannot.
    let (_, again) = held(&ids, event_id, "erin", &["A-1-1"]);
    d.apply_events(&[again]).await.expect("seat freed by release");
    let (o4, sold) = held(&ids, event_id, "fay", &["A-1-2"]);
    let err = d.apply_events(&[sold]).await.expect_err("one live order per seat");
    assert!(matches!(err, DurableError::Invariant(_)), "{err}");
    assert!(d.order(o4).await.expect("read").is_none(), "a refused batch leaves nothing behind");
}
both!(order_lifecycle_frees_and_sells_seats, order_lifecycle);

/// A batch the store refuses for one event is split; that event is parked
/// with its reason, every other one applied, and a redelivery changes
/// nothing (issue 13: no poison batch wedges the projection).
async fn poison_event_parked(backend: &str) {
    let (d, _f) = open(backend).await;
    let ids = ids();
    let event_id = ids.next(0);
    let (o1, e1) = held(&ids, event_id, "bob", &["A-1-1"]);
    d.apply_events(&[e1]).await.expect("held");
    let def = funded_packet(&d, &ids, 1_000, 4).await;
    // The seat is taken (a double sale the hot store let through), and a
    // grab is worth more than its packet's frozen money.
    let (o2, double) = held(&ids, event_id, "eve", &["A-1-1"]);
    let overdrawn = grabbed(&ids, &def, "g9", 5_000);
    let (o3, fine) = held(&ids, event_id, "dan", &["A-1-2"]);
    let batch =
        vec![grabbed(&ids, &def, "g1", 250), double.clone(), grabbed(&ids, &def, "g2", 250), overdrawn.clone(), fine];
    let (applied, parked) = d.apply_or_park(&batch).await.expect("applied around the poison");
    assert_eq!(applied, 3);
    let parked_ids: Vec<_> = parked.iter().map(|(id, _)| *id).collect();
    assert_eq!(parked_ids, vec![double.event_id, overdrawn.event_id], "in the log's order");
    assert_eq!(d.parked_events(10).await.expect("list").len(), 2);
    assert!(d.order(o2).await.expect("read").is_none());
    assert!(d.order(o3).await.expect("read").is_some(), "the events after the poison are applied");
    assert_eq!(d.order(o1).await.expect("read").expect("o1").user_id, "bob");
    for u in ["g1", "g2"] {
        assert_eq!(d.balance(u).await.expect("b").available.get(), 250, "{u}");
    }
    assert_eq!(d.balance("g9").await.expect("b").available.get(), 0);
    // Delivered again: nothing applied, nothing parked twice.
    assert_eq!(d.apply_or_park(&batch).await.expect("again"), (0, vec![]));
    assert_eq!(d.parked_events(10).await.expect("list").len(), 2);
    assert_conserved(&d).await;
}
both!(a_poison_event_is_parked_and_the_rest_applied, poison_event_parked);

async fn redelivery_applies_once(backend: &str) {
    let (d, _f) = open(backend).await;
    let ids = ids();
    let def = funded_packet(&d, &ids, 1_000, 4).await;
    let grab = |user: &str| grabbed(&ids, &def, user, 250);
    let batch = vec![grab("g1"), grab("g2"), grab("g3")];
    assert_eq!(d.apply_events(&batch).await.expect("first"), 3);
    // The same events again (a relay or worker restarted): no effect.
    assert_eq!(d.apply_events(&batch).await.expect("again"), 0);
    // Twice in one batch: once.
    let g4 = grab("g4");
    assert_eq!(d.apply_events(&[g4.clone(), g4]).await.expect("dup in batch"), 1);
    for u in ["g1", "g2", "g3", "g4"] {
        assert_eq!(d.balance(u).await.expect("b").available.get(), 250, "{u}");
    }
    let s = d.balance("sender").await.expect("sender");
    assert_eq!((s.available.get(), s.frozen.get()), (0, 0));
    assert_conserved(&d).await;
}
both!(redelivered_events_apply_once, redelivery_applies_once);

/// A wallet read adds the credits of grabs the hot store granted and this
/// store has not applied; once applied, each counts once (issue 17).
async fn pending_grabs_count_once(backend: &str) {
    use rush_engine::store::recent::RecentGrab;
    let (d, _f) = open(backend).await;
    let ids = ids();
    let def = funded_packet(&d, &ids, 1_000, 4).await;
    let (first, second) = (grabbed(&ids, &def, "gw", 250), grabbed(&ids, &def, "gw", 100));
    let granted = |e: &Envelope, own: bool| match &e.event {
        DomainEvent::PacketGrabbed { grab_id, amount, .. } => RecentGrab { grab_id: *grab_id, amount: *amount, own },
        other => panic!("{other:?}"),
    };
    let pending = [granted(&first, false), granted(&second, false)];
    let seen = |b: rush_engine::durable::Balance| (b.available.get(), b.frozen.get(), b.pending.get());
    assert_eq!(seen(d.balance_with_grabs("gw", &pending).await.expect("b")), (0, 0, 350), "nothing applied yet");
    assert_eq!(seen(d.balance("gw").await.expect("b")), (0, 0, 0));
    d.apply_events(&[first]).await.expect("apply");
    assert_eq!(seen(d.balance_with_grabs("gw", &pending).await.expect("b")), (250, 0, 100), "one applied");
    // Another user's grab id in the list is not theirs to count.
    let theirs = grabbed(&ids, &def, "other", 50);
    let with_theirs = [pending[0], granted(&theirs, false)];
    d.apply_events(&[theirs]).await.expect("apply");
    assert_eq!(seen(d.balance_with_grabs("gw", &with_theirs).await.expect("b")), (250, 0, 50));
    // The sender grabs their own packet: out of frozen, pending, once.
    let own = grabbed(&ids, &def, "sender", 100);
    let mine = [granted(&own, true)];
    assert_eq!(seen(d.balance("sender").await.expect("b")), (0, 700, 0));
    assert_eq!(seen(d.balance_with_grabs("sender", &mine).await.expect("b")), (0, 600, 100));
    d.apply_events(&[own]).await.expect("apply");
    assert_eq!(seen(d.balance_with_grabs("sender", &mine).await.expect("b")), (100, 600, 0));
    assert_eq!(seen(d.balance_with_grabs("nobody", &[]).await.expect("b")), (0, 0, 0));
    assert_conserved(&d).await;
}
both!(a_wallet_read_counts_each_grab_once_applied_or_not, pending_grabs_count_once);

async fn grabs_and_expiry(backend: &str) {
    let (d, _f) = open(backend).await;
    let ids = ids();
    let def = funded_packet(&d, &ids, 1_000, 4).await;
    let grab = |user: &str| grabbed(&ids, &def, user, 250);
    d.apply_events(&[grab("g1")]).await.expect("grab");
    // The same user again under another event id: the constraint refuses it.
    let err = d.apply_events(&[grab("g1")]).await.expect_err("second grab by one user");
    assert!(matches!(err, DurableError::Invariant(_)), "{err}");
    let expired = env(
        &ids,
        DomainEvent::PacketExpired {
            packet_id: def.packet_id,
            sender: "sender".into(),
            remaining: Fen::new(750),
            at_ms: 2_000,
        },
    );
    d.apply_events(&[expired]).await.expect("expiry");
    let s = d.balance("sender").await.expect("sender");
    assert_eq!((s.available.get(), s.frozen.get()), (750, 0));
    assert_eq!(d.balance("g1").await.expect("g1").available.get(), 250);
    assert_conserved(&d).await;
}
both!(grabs_move_frozen_money_and_expiry_refunds, grabs_and_expiry);

async fn concurrent_redelivery(backend: &str) {
    let (d, _f) = open(backend).await;
    let ids = ids();
    let def = funded_packet(&d, &ids, 100_000, 200).await;
    let events: Vec<Envelope> = (0..200).map(|i| grabbed(&ids, &def, &format!("u{i}"), 500)).collect();
    // Eight workers get overlapping slices (as after a rebalance): each
    // event must take effect exactly once.
    let events = Arc::new(events);
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let (d, events) = (d.clone(), events.clone());
        tasks.push(tokio::spawn(async move {
            let start = (w * 25).saturating_sub(20);
            let end = (w * 25 + 45).min(200);
            let mut applied = 0;
            for chunk in events[start..end].chunks(10) {
                loop {
                    match d.apply_events(chunk).await {
                        Ok(n) => {
                            applied += n;
                            break;
                        }
                        // Postgres may pick a deadlock victim; the worker retries.
                        Err(DurableError::Db(_)) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            applied
        }));
    }
    let mut applied = 0;
    for t in tasks {
        applied += t.await.expect("task");
    }
    assert_eq!(applied, 200, "every event applied exactly once across workers");
    for i in [0, 57, 199] {
        assert_eq!(d.balance(&format!("u{i}")).await.expect("b").available.get(), 500);
    }
    let s = d.balance("sender").await.expect("sender");
    assert_eq!(s.frozen.get(), 0);
    assert_conserved(&d).await;
}
both!(concurrent_workers_apply_each_event_once, concurrent_redelivery);

async fn idempotency_keys(backend: &str) {
    let (d, _f) = open(backend).await;
    let (ttl, stale) = (86_400_000, 60_000);
    assert_eq!(d.idempotency_begin("u", "k", "h1", 1_000, ttl, stale).await.expect("begin"), Begin::New);
    assert_eq!(d.idempotency_begin("u", "k", "h1", 1_001, ttl, stale).await.expect("again"), Begin::InProgress);
    d.idempotency_finish("u", "k", 201, "{\"ok\":1}").await.expect("finish");
    assert_eq!(
        d.idempotency_begin("u", "k", "h1", 1_002, ttl, stale).await.expect("replay"),
        Begin::Replay { status: 201, body: "{\"ok\":1}".into() }
    );
    assert_eq!(d.idempotency_begin("u", "k", "h2", 1_003, ttl, stale).await.expect("mismatch"), Begin::Mismatch);
    // Another user's same key is theirs.
    assert_eq!(d.idempotency_begin("v", "k", "h2", 1_004, ttl, stale).await.expect("other"), Begin::New);
    // After the TTL the key starts over.
    assert_eq!(d.idempotency_begin("u", "k", "h2", 1_000 + ttl + 1, ttl, stale).await.expect("expired"), Begin::New);
    assert_eq!(d.idempotency_purge(2_000).await.expect("purge"), 1);
}
both!(idempotency_keys_replay_and_expire, idempotency_keys);

async fn concurrent_idempotency(backend: &str) {
    let (d, _f) = open(backend).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let d = d.clone();
        tasks.push(tokio::spawn(async move { d.idempotency_begin("u", "same", "h", 5_000, 86_400_000, 60_000).await }));
    }
    let mut new = 0;
    for t in tasks {
        match t.await.expect("task").expect("begin") {
            Begin::New => new += 1,
            Begin::InProgress => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(new, 1, "exactly one request runs under a key");
}
both!(concurrent_requests_with_one_key_run_once, concurrent_idempotency);

fn payment(ids: &IdGen, purpose: Purpose, user: &str, amount: i64) -> PaymentRecord {
    let now = rush_engine::domain::now_unix_ms();
    PaymentRecord {
        payment_id: ids.next(gene_of_user(user)),
        purpose,
        order_id: (purpose == Purpose::Order).then(|| ids.next_for_user(user)),
        event_id: (purpose == Purpose::Order).then(|| ids.next(0)),
        user_id: user.into(),
        channel: ChannelKind::Wechat,
        amount: Fen::new(amount),
        status: PaymentStatus::Pending,
        money_received: false,
        refund: RefundState::None,
        channel_txn: None,
        paid_amount: None,
        created_at_ms: now,
        expires_at_ms: now + 60_000,
        paid_at_ms: None,
        checks: 0,
        next_check_at_ms: now + 10_000,
    }
}

fn paid(amount: i64) -> Paid {
    Paid { txn_id: "T1".into(), amount: Fen::new(amount), paid_at_ms: rush_engine::domain::now_unix_ms() }
}

both!(payment_transitions_happen_once, payment_transitions_once);
async fn payment_transitions_once(backend: &str) {
    let (d, _f) = open(backend).await;
    let ids = ids();
    // A recharge: 16 concurrent settlers record the money and succeed it;
    // one of each wins, and the wallet is credited once.
    let p = payment(&ids, Purpose::Recharge, "rita", 5_000);
    d.insert_payment(&p).await.expect("insert");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (d, p) = (d.clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            // The winner gets the payment back as recorded.
            let recorded = d.record_money(p.payment_id, &paid(5_000), 1).await.expect("money");
            let recorded = recorded.is_some_and(|r| r.money_received && r.status == PaymentStatus::Pending);
            let succeeded = d.succeed_payment(&p, 2).await.expect("succeed");
            (recorded, succeeded)
        }));
    }
    let mut wins = (0, 0);
    for t in tasks {
        let (r, s) = t.await.expect("task");
        wins.0 += r as u32;
        wins.1 += s as u32;
    }
    assert_eq!(wins, (1, 1), "money recorded and payment succeeded exactly once each");
    assert_eq!(d.balance("rita").await.expect("balance").available, Fen::new(5_000));
    let stored = d.payment(p.payment_id).await.expect("read").expect("exists");
    assert_eq!((stored.status, stored.money_received), (PaymentStatus::Succeeded, true));
    // A succeeded payment cannot be closed or become late money.
    assert!(!d.close_payment(&stored, 3).await.expect("close"));
    assert!(!d.refund_late_money(&stored, 3).await.expect("late"));

    // An order payment: the first claim holds the order; a refund is
    // decided once and finished once, and the money goes back out.
    let o = payment(&ids, Purpose::Order, "olga", 300);
    d.insert_payment(&o).await.expect("insert");
    let order_id = o.order_id.expect("order");
    assert_eq!(d.claim_order(order_id, o.payment_id).await.expect("claim"), o.payment_id);
    assert_eq!(d.claim_order(order_id, ids.next(0)).await.expect("claim"), o.payment_id, "a second payment loses");
    assert!(d.record_money(o.payment_id, &paid(300), 1).await.expect("money").is_some());
    assert!(d.record_money(o.payment_id, &paid(300), 1).await.expect("money").is_none(), "recorded once");
    assert!(d.succeed_payment(&o, 2).await.expect("succeed"));
    assert!(d.refund_paid(o.payment_id, 3, 10).await.expect("due"));
    assert!(!d.refund_paid(o.payment_id, 3, 10).await.expect("due twice"), "a refund is decided once");
    let o = d.payment(o.payment_id).await.expect("read").expect("exists");
    // A refund decided is a refund scheduled: the worker finds it.
    assert_eq!(o.next_check_at_ms, 13, "a due refund is looked at again");
    assert!(d.payments_due(13, 10).await.expect("due").iter().any(|p| p.payment_id == o.payment_id));
    assert!(d.refund_returned(o.payment_id, 4).await.expect("returned"));
    assert!(!d.refund_returned(o.payment_id, 4).await.expect("returned twice"));
    let o = d.payment(o.payment_id).await.expect("read").expect("exists");
    assert_eq!(o.refund, RefundState::Returned);
    assert!(d.finish_refund(&o, 4).await.expect("finish"));
    assert!(!d.finish_refund(&o, 4).await.expect("finish twice"));
    let o = d.payment(o.payment_id).await.expect("read").expect("exists");
    assert_eq!((o.status, o.refund), (PaymentStatus::Refunded, RefundState::Done));

    // Late money: booked into suspense, then out again.
    let late = payment(&ids, Purpose::Order, "lena", 700);
    d.insert_payment(&late).await.expect("insert");
    assert!(d.close_payment(&late, 1).await.expect("close"));
    assert!(d.record_money(late.payment_id, &paid(700), 2).await.expect("money").is_some());
    let late = d.payment(late.payment_id).await.expect("read").expect("exists");
    assert!(d.refund_late_money(&late, 3).await.expect("late"));
    assert!(!d.refund_late_money(&late, 3).await.expect("late twice"));
    assert_eq!(d.balance("@suspense").await.expect("suspense").available, Fen::new(700));
    let late = d.payment(late.payment_id).await.expect("read").expect("exists");
    assert!(d.finish_refund(&late, 4).await.expect("finish"));
    assert_eq!(d.balance("@suspense").await.expect("suspense").available, Fen::ZERO);
    assert_eq!(d.balance("@sales").await.expect("sales").available, Fen::ZERO, "paid then refunded");
    assert_conserved(&d).await;
}

both!(withdrawals_keep_the_daily_limits, withdrawals_limits);
async fn withdrawals_limits(backend: &str) {
    let (d, _f) = open(backend).await;
    let ids = ids();
    d.credit("wes", Fen::new(5_000_000), "test", ids.next(0)).await.expect("credit");
    let rules = RiskRules { count_per_day_max: 3, fen_per_day_max: 1_000_000 };
    let request = |amount: i64| WithdrawalRecord {
        withdrawal_id: ids.next(gene_of_user("wes")),
        user_id: "wes".into(),
        amount: Fen::new(amount),
        status: rush_engine::domain::WithdrawalStatus::Pending,
        created_at_ms: 1,
        decided_at_ms: None,
        decided_by: None,
        reason: None,
    };
    // Ten at once on one day: the account row serializes them; three pass.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (d, w) = (d.clone(), request(1_000));
        tasks.push(tokio::spawn(async move { d.request_withdrawal(&w, 100, rules).await.map(|_| w.withdrawal_id) }));
    }
    let mut ok = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(id) => ok.push(id),
            Err(DurableError::RiskRefused(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok.len(), 3, "three withdrawals a day");
    assert_eq!(d.balance("wes").await.expect("balance").frozen, Fen::new(3_000));
    // A rejected one gives its money and its place back.
    d.decide_withdrawal(ok[0], false, "ops", Some("test"), 2).await.expect("reject");
    assert!(matches!(
        d.decide_withdrawal(ok[0], true, "ops", None, 2).await,
        Err(DurableError::Conflict("withdrawal_not_pending", _))
    ));
    d.request_withdrawal(&request(1_000), 100, rules).await.expect("the rejected one's place");
    // Approved money leaves rush.
    d.decide_withdrawal(ok[1], true, "ops", None, 3).await.expect("approve");
    let b = d.balance("wes").await.expect("balance");
    assert_eq!((b.available.get(), b.frozen.get()), (5_000_000 - 3_000, 2_000));
    // The amount rule, on another day.
    d.request_withdrawal(&request(900_000), 101, rules).await.expect("under the amount");
    assert!(matches!(d.request_withdrawal(&request(100_001), 101, rules).await, Err(DurableError::RiskRefused(_))));
    d.request_withdrawal(&request(100_000), 101, rules).await.expect("exactly the amount");
    // Nobody withdraws what they do not have.
    assert!(matches!(
        d.request_withdrawal(&WithdrawalRecord { user_id: "nobody".into(), ..request(100) }, 101, rules).await,
        Err(DurableError::InsufficientFunds)
    ));
    assert_conserved(&d).await;
}

/// An operator replays parked events: one whose cause was fixed applies
/// and leaves the table; one still refused stays with the new reason.
async fn parked_events_replay(backend: &str) {
    use rush_engine::durable::Replayed;
    let (d, _f) = open(backend).await;
    let ids = ids();
    let event_id = ids.next(0);
    let (o1, e1) = held(&ids, event_id, "bob", &["A-1-1"]);
    d.apply_events(&[e1]).await.expect("held");
    let (o2, double) = held(&ids, event_id, "eve", &["A-1-1"]);
    let (_, still) = held(&ids, event_id, "eve", &["A-1-1"]);
    let (_, parked) = d.apply_or_park(&[double.clone(), still.clone()]).await.expect("parked");
    assert_eq!(parked.len(), 2);
    let listed = d.parked(None, 10).await.expect("list");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].event["event"]["type"], "order_held", "the event itself, as JSON");
    // The operator releases bob's order (say: it was the lost one).
    let released = env(
        &ids,
        DomainEvent::OrderReleased {
            order_id: o1,
            event_id,
            user_id: "bob".into(),
            status: OrderStatus::Cancelled,
            at_ms: 2_000,
        },
    );
    d.apply_events(&[released]).await.expect("released");
    assert_eq!(d.replay_parked(double.event_id).await.expect("replay"), Replayed::Applied);
    assert_eq!(d.order(o2).await.expect("read").expect("o2 applied").status, OrderStatus::PendingPayment);
    // The other one now collides with eve's own order: still refused.
    match d.replay_parked(still.event_id).await.expect("replay") {
        Replayed::StillRefused(reason) => assert!(reason.contains("two live orders"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(d.replay_parked(double.event_id).await.expect("again"), Replayed::NotParked);
    let left = d.parked(None, 10).await.expect("list");
    assert_eq!(left.iter().map(|p| p.event_id).collect::<Vec<_>>(), vec![still.event_id]);
    // Replayed events stay applied once: a redelivery does nothing.
    assert_eq!(d.apply_events(&[double]).await.expect("redelivered"), 0);
}
both!(parked_events_can_be_listed_and_replayed, parked_events_replay);

/// What a lost Redis is rebuilt from: event definitions, each event's
/// applied orders with their seats, packets with their definitions and
/// grabs, and the epoch of the data set.
async fn rebuild_sources(backend: &str) {
    let (d, _f) = open(backend).await;
    let ids = ids();
    assert_eq!(d.hot_epoch().await.expect("epoch"), None);
    assert_eq!(d.adopt_hot_epoch("e1").await.expect("adopt"), "e1");
    assert_eq!(d.adopt_hot_epoch("e2").await.expect("adopt"), "e1", "the first recorded wins");
    d.set_hot_epoch("e3").await.expect("set");
    assert_eq!(d.hot_epoch().await.expect("epoch").as_deref(), Some("e3"));

    let def = rush_engine::domain::EventDef {
        event_id: ids.next(0),
        name: "show".into(),
        venue: "hall".into(),
        starts_at: chrono::Utc::now(),
        on_sale_at: None,
        sale_ends_at: None,
        rev: 0,
        map_rev: 0,
        paused: false,
        cancellation: None,
        waiting_room: None,
        hold_ttl_s: 60,
        limits: rush_engine::domain::Limits { per_order: 4, per_user: 4 },
        categories: vec![rush_engine::domain::Category { id: "std".into(), name: "S".into(), price: Fen::new(100) }],
        seats: vec![],
    };
    d.save_event(&def).await.expect("save");
    d.save_event(&def).await.expect("saving twice is a no-op");
    let old = rush_engine::domain::EventDef {
        event_id: ids.next(0),
        starts_at: chrono::Utc::now() - chrono::Duration::days(30),
        on_sale_at: None,
        sale_ends_at: None,
        rev: 0,
        map_rev: 0,
        paused: false,
        cancellation: None,
        waiting_room: None,
        ..def.clone()
    };
    d.save_event(&old).await.expect("save old");
    let since = rush_engine::domain::now_unix_ms() - 86_400_000;
    let listed = d.events_since(since, None).await.expect("list");
    assert_eq!(listed.iter().map(|e| e.event_id).collect::<Vec<_>>(), vec![def.event_id], "the old show is left");
    assert!(d.events_since(since, Some(def.event_id)).await.expect("next page").is_empty());

    let (o1, e1) = held(&ids, def.event_id, "bob", &["A-1-1", "A-1-22"]);
    let (o2, e2) = held(&ids, def.event_id, "amy", &["A-1-333"]);
    let confirmed = env(
        &ids,
        DomainEvent::OrderConfirmed { order_id: o2, event_id: def.event_id, user_id: "amy".into(), at_ms: 1_500 },
    );
    d.apply_events(&[e1, e2, confirmed]).await.expect("orders");
    let orders = d.applied_orders(def.event_id).await.expect("orders");
    assert_eq!(orders.len(), 2);
    let bob = orders.iter().find(|o| o.order_id == o1).expect("bob");
    assert_eq!(bob.status, OrderStatus::PendingPayment);
    let mut labels = bob.seat_labels.clone();
    labels.sort();
    assert_eq!(labels, vec!["A-1-1", "A-1-22"]);
    assert_eq!(bob.attendees.len(), 1);
    assert_eq!(orders.iter().find(|o| o.order_id == o2).expect("amy").status, OrderStatus::Paid);

    let mut pk = funded_packet(&d, &ids, 1_000, 4).await;
    pk.expires_at_ms = rush_engine::domain::now_unix_ms() + 60_000;
    // funded_packet froze it with its own expiry; a live one for the list:
    let live = PacketDef { packet_id: ids.next(gene_of_user("sender")), ..pk.clone() };
    d.credit("sender", Fen::new(1_000), "t", ids.next(0)).await.expect("credit");
    d.freeze_for_packet(&live).await.expect("freeze");
    d.apply_events(&[grabbed(&ids, &live, "g1", 250)]).await.expect("grab");
    let packets = d.packets_since(since, None).await.expect("packets");
    assert_eq!(packets.len(), 1, "only the packet still live in the window");
    assert_eq!(packets[0].def, live, "the definition with its parts");
    assert_eq!(packets[0].grabs.len(), 1);
    assert_eq!(packets[0].grabs[0].user_id, "g1");
    assert!(!packets[0].expired);
}
both!(the_durable_store_keeps_what_a_rebuild_needs, rebuild_sources);
