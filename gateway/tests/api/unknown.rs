//! Unknown is not no (issue 13, cases 6 and 7): a hot-store call that
//! failed may still have taken effect, so rush reads back before any money
//! moves, and an Idempotency-Key survives a 503 whose effect is unknown.
//! The faults come from a store that wraps the real one and fails on cue.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use reqwest::StatusCode;
use rush_engine::domain::{EventDef, EventInfo, EventSettings, Fen, Id, OrderStatus, PacketStatus};
use rush_engine::store::queue::{Joined, QueueRules, Ticket};
use rush_engine::store::{
    DirectGrab, DueItem, EventSnapshot, Grab, HotOrder, HotStore, OpOutcome, PacketDef, PacketSnapshot, SeatOp,
    SeatsApplied, StoreError, Voided,
};
use serde_json::json;

use super::helpers::*;

/// What the next `create_packet` does.
const PASS: u8 = 0;
/// Runs, then reports a timeout (the reply was lost).
const RAN_THEN_TIMED_OUT: u8 = 1;
/// Never reaches the store, and reports a timeout.
const LOST: u8 = 2;

struct Flaky {
    inner: Arc<dyn HotStore>,
    create: AtomicU8,
    /// While set, `void_packet` cannot reach the store either.
    void_down: AtomicU8,
}

fn timeout() -> StoreError {
    StoreError::Unavailable("response timed out".into())
}

#[async_trait]
impl HotStore for Flaky {
    async fn queue_join(
        &self,
        event_id: Id,
        user_id: &str,
        rules: &QueueRules,
        new: (Id, u64),
    ) -> Result<Joined, StoreError> {
        self.inner.queue_join(event_id, user_id, rules, new).await
    }
    async fn queue_ticket(
        &self,
        event_id: Id,
        user_id: &str,
        rules: &QueueRules,
    ) -> Result<Option<Ticket>, StoreError> {
        self.inner.queue_ticket(event_id, user_id, rules).await
    }
    async fn queue_leave(&self, event_id: Id, user_id: &str, rules: &QueueRules) -> Result<bool, StoreError> {
        self.inner.queue_leave(event_id, user_id, rules).await
    }
    async fn queue_advance(&self, event_id: Id, rules: &QueueRules) -> Result<u64, StoreError> {
        self.inner.queue_advance(event_id, rules).await
    }
    async fn create_event(&self, def: &EventDef) -> Result<(), StoreError> {
        self.inner.create_event(def).await
    }
    async fn load_event(&self, event_id: Id) -> Result<Option<EventSnapshot>, StoreError> {
        self.inner.load_event(event_id).await
    }
    async fn apply_seats_at(
        &self,
        event_id: Id,
        version: Option<u64>,
        ops: &[SeatOp],
        now_ms: u64,
    ) -> Result<SeatsApplied, StoreError> {
        self.inner.apply_seats_at(event_id, version, ops, now_ms).await
    }
    async fn event_info(&self, event_id: Id) -> Result<Option<Arc<EventInfo>>, StoreError> {
        self.inner.event_info(event_id).await
    }
    async fn update_event(
        &self,
        event_id: Id,
        rev: u64,
        settings: &EventSettings,
        opens_ms: Option<u64>,
    ) -> Result<rush_engine::store::Changed, StoreError> {
        self.inner.update_event(event_id, rev, settings, opens_ms).await
    }
    async fn replace_seats(
        &self,
        rev: u64,
        def: &EventDef,
        opens_ms: u64,
    ) -> Result<rush_engine::store::Changed, StoreError> {
        self.inner.replace_seats(rev, def, opens_ms).await
    }
    async fn event_version(&self, event_id: Id) -> Result<Option<u64>, StoreError> {
        self.inner.event_version(event_id).await
    }
    async fn order(&self, order_id: Id) -> Result<Option<(HotOrder, OrderStatus)>, StoreError> {
        self.inner.order(order_id).await
    }
    async fn create_packet(&self, def: &PacketDef) -> Result<(), StoreError> {
        match self.create.swap(PASS, Ordering::SeqCst) {
            RAN_THEN_TIMED_OUT => {
                self.inner.create_packet(def).await?;
                Err(timeout())
            }
            LOST => Err(timeout()),
            _ => self.inner.create_packet(def).await,
        }
    }
    async fn void_packet(&self, packet_id: Id) -> Result<Voided, StoreError> {
        if self.void_down.load(Ordering::SeqCst) == 1 {
            return Err(timeout());
        }
        self.inner.void_packet(packet_id).await
    }
    async fn load_packet(&self, packet_id: Id) -> Result<Option<PacketSnapshot>, StoreError> {
        self.inner.load_packet(packet_id).await
    }
    async fn packet_progress(&self, packet_id: Id) -> Result<Option<(u32, PacketStatus)>, StoreError> {
        self.inner.packet_progress(packet_id).await
    }
    async fn grab_batch(&self, packet_id: Id, grabs: &[Grab], now_ms: u64) -> Result<Vec<OpOutcome>, StoreError> {
        self.inner.grab_batch(packet_id, grabs, now_ms).await
    }
    async fn expire_packet(&self, packet_id: Id, now_ms: u64) -> Result<Option<Fen>, StoreError> {
        self.inner.expire_packet(packet_id, now_ms).await
    }
    async fn claim_due(&self, now_ms: u64, limit: usize, lease_ms: u64) -> Result<Vec<DueItem>, StoreError> {
        self.inner.claim_due(now_ms, limit, lease_ms).await
    }
    async fn grab_direct(
        &self,
        packet_id: Id,
        user_id: &str,
        grab_id: Id,
        now_ms: u64,
    ) -> Result<DirectGrab, StoreError> {
        self.inner.grab_direct(packet_id, user_id, grab_id, now_ms).await
    }
    async fn ready(&self) -> bool {
        self.inner.ready().await
    }
}

async fn flaky_app(mode: Mode) -> (TestApp, Arc<Flaky>) {
    let slot: Arc<std::sync::Mutex<Option<Arc<Flaky>>>> = Arc::default();
    let keep = slot.clone();
    let app = spawn_wrapped(
        mode,
        |_| {},
        move |inner| {
            let f = Arc::new(Flaky { inner, create: AtomicU8::new(PASS), void_down: AtomicU8::new(0) });
            *keep.lock().expect("slot") = Some(f.clone());
            f as Arc<dyn HotStore>
        },
    )
    .await;
    let flaky = slot.lock().expect("slot").clone().expect("wrapped");
    (app, flaky)
}

async fn post_keyed(app: &TestApp, token: &str, key: &str, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    let resp = app
        .client
        .post(format!("{}/v1/packets", app.base))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .expect("send");
    let s = resp.status();
    (s, resp.json().await.unwrap_or_default())
}

/// Case 6, both ways, in one mode.
async fn unknown_packet_creation(mode: Mode) {
    let (app, flaky) = flaky_app(mode).await;
    app.credit("sender", 10_000).await;
    let sender = app.token("sender", "user").await;
    let body = json!({"kind": "normal", "total_amount": 1_000, "count": 10});

    // The script ran but its answer was lost: read back, it exists.
    flaky.create.store(RAN_THEN_TIMED_OUT, Ordering::SeqCst);
    let (s, v) = post_keyed(&app, &sender, "k-ran", body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "a read-back finds the packet: {v}");
    let ran = v["packet_id"].as_str().expect("id").to_string();
    assert_eq!(app.wallet(&sender).await, (9_000, 1_000), "the money stays frozen for the live packet");

    // It ran, and the read-back cannot reach the store either: unknown.
    flaky.create.store(RAN_THEN_TIMED_OUT, Ordering::SeqCst);
    flaky.void_down.store(1, Ordering::SeqCst);
    let (s, v) = post_keyed(&app, &sender, "k-unknown", body.clone()).await;
    assert_eq!((s, code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown"), "{v}");
    let unknown = v["error"]["packet_id"].as_str().expect("packet id in the answer").to_string();
    assert_eq!(app.wallet(&sender).await, (8_000, 2_000), "unknown: no money moves back");
    // Still unknown: the same answer again, nothing new frozen.
    let (s, v) = post_keyed(&app, &sender, "k-unknown", body.clone()).await;
    assert_eq!((s, code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown"), "{v}");
    assert_eq!(app.wallet(&sender).await, (8_000, 2_000));
    // The store answers again: the retry under the same key finds the packet.
    flaky.void_down.store(0, Ordering::SeqCst);
    let (s, v) = post_keyed(&app, &sender, "k-unknown", body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["packet_id"].as_str(), Some(unknown.as_str()));
    assert_eq!(app.wallet(&sender).await, (8_000, 2_000), "frozen once");

    // It never reached the store and the read-back fails: unknown, then
    // voided (no packet, money back) and the retry creates it once.
    flaky.create.store(LOST, Ordering::SeqCst);
    flaky.void_down.store(1, Ordering::SeqCst);
    let (s, v) = post_keyed(&app, &sender, "k-lost", body.clone()).await;
    assert_eq!((s, code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown"), "{v}");
    let lost = v["error"]["packet_id"].as_str().expect("packet id").to_string();
    flaky.void_down.store(0, Ordering::SeqCst);
    let (s, v) = post_keyed(&app, &sender, "k-lost", body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let retried = v["packet_id"].as_str().expect("id").to_string();
    assert_ne!(retried, lost, "the lost packet never exists; the retry made a new one");
    let (s, _) = app.get(&format!("/v1/packets/{lost}"), Some(&sender)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(app.wallet(&sender).await, (7_000, 3_000), "three live packets, each frozen once");
    // A plain failure (no read-back needed) answers 503 and moves nothing.
    flaky.create.store(LOST, Ordering::SeqCst);
    let (s, v) = app.post("/v1/packets", Some(&sender), body.clone()).await;
    assert_eq!((s, code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"), "{v}");
    assert_eq!(app.wallet(&sender).await, (7_000, 3_000), "the voided packet's money is back");

    // Every packet can be grabbed and the projection never stalls.
    for p in [&ran, &unknown, &retried] {
        let t = app.token("grabber", "user").await;
        let (s, v) = app.post(&format!("/v1/packets/{p}/grab"), Some(&t), json!({})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    app.settle().await;
    let t = app.token("grabber", "user").await;
    assert_eq!(app.wallet(&t).await, (300, 0));
    assert_eq!(app.wallet(&sender).await, (7_000, 2_700));
    app.assert_ledger_balances().await;
    let (_, m) = app.get("/metrics", None).await;
    let m = m.as_str().unwrap_or_default().to_string();
    assert!(m.contains("rush_parked_events_total 0"), "nothing parked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_packet_creation_is_read_back_before_money_moves_embedded() {
    unknown_packet_creation(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_packet_creation_is_read_back_before_money_moves_redis_mode() {
    unknown_packet_creation(Mode::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_packet_creation_is_read_back_before_money_moves_full_mode() {
    unknown_packet_creation(Mode::Full).await;
}

/// Case 7: free tickets are refused at event creation, with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_tickets_are_refused_at_event_creation() {
    let app = spawn_app().await;
    let body = json!({
        "name": "Free", "venue": "Hall", "starts_at": "2030-12-31T20:00:00Z",
        "categories": [{"id": "std", "name": "Std", "price": 0}],
        "layout": {"sections": [{"name": "A", "rows": 1, "cols": 2, "category": "std"}]}});
    let (s, v) = app.post("/v1/admin/events", Some(&app.admin), body).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or_default().contains("free tickets"), "{v}");
}
