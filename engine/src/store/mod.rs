//! The hot store: the atomic arbiter of seats and packets.
//!
//! Actors decide in memory and commit a batch with one call; the store
//! re-checks every decision before writing anything (as the Lua scripts do),
//! applies the accepted ones atomically and appends their events to the
//! outbox in the same step. `memory.rs` is the embedded implementation.

pub mod commit;
pub mod db;
pub mod memory;
pub mod queue;
pub mod recent;
pub mod redis;
pub mod redis_cluster;
pub mod restore;
pub mod scripts;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{
    Attendee, EventDef, EventInfo, EventSettings, Fen, Id, OrderStatus, PacketKind, PacketStatus, SeatIdx,
};
use crate::error::EngineError;

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("hot store unavailable: {0}")]
    Unavailable(String),
    #[error("hot store data is corrupt: {0}")]
    Corrupt(String),
    /// Redis lost (or rolled back) its data: the partition's identity
    /// marker is gone, and the script wrote nothing. Recovery rebuilds it.
    #[error("the hot store lost its data and is being rebuilt")]
    Lost,
}

impl StoreError {
    /// What a client is told when a hot-store call failed under an
    /// actor: the store is being rebuilt, or simply unavailable.
    pub fn answer(&self) -> EngineError {
        match self {
            StoreError::Lost => EngineError::HotStoreRecovering,
            _ => EngineError::StoreUnavailable,
        }
    }
}

/// A hot-store failure as the client sees it.
impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "hot store unavailable");
                EngineError::StoreUnavailable
            }
            StoreError::Corrupt(m) => EngineError::Internal(m),
            StoreError::Lost => EngineError::HotStoreRecovering,
        }
    }
}

/// A lease held in the hot store: one holder at a time of a role (the
/// outbox reader, see `workers::lead`), renewed while it works.
#[async_trait::async_trait]
pub trait Lease: Send + Sync {
    /// Takes the lease if free, renews it if ours; false if another holds it.
    async fn hold(&self) -> Result<bool, String>;
    fn lease_ms(&self) -> u64;
}

/// The state of one seat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeatState {
    Available,
    Held(Id),
    Sold(Id),
}

/// A hold: an order in `pending_payment` and its seats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotOrder {
    pub order_id: Id,
    pub event_id: Id,
    pub user_id: String,
    pub seats: Vec<SeatIdx>,
    pub amount: Fen,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub attendees: Vec<Attendee>,
}

/// An order whose seats are sold (kept so per-user limits survive restarts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaidOrder {
    pub user_id: String,
    pub seats: Vec<SeatIdx>,
}

/// Everything the event actor needs to rebuild itself.
#[derive(Clone, Debug)]
pub struct EventSnapshot {
    pub info: Arc<EventInfo>,
    pub seats: Vec<SeatState>,
    pub holds: HashMap<Id, HotOrder>,
    pub paid: HashMap<Id, PaidOrder>,
    /// The event's version: bumped by every call that changes its seats,
    /// so an actor can tell whether another node changed it since.
    pub version: u64,
}

/// The store's verdict on a batch of seat ops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeatsApplied {
    /// One per op.
    pub outcomes: Vec<OpOutcome>,
    /// The event's version after the batch; `None` when the store found
    /// the event at another version than the batch was decided on (another
    /// node wrote it): nothing from that point on was written.
    pub version: Option<u64>,
}

/// One decision of the event actor, to be re-checked and applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeatOp {
    /// Every seat must be available; they become held by the order.
    Hold(HotOrder),
    /// The order must be held; its seats become available again.
    Release { order_id: Id, status: OrderStatus },
    /// The order must be held; its seats become sold.
    Confirm { order_id: Id },
    /// The order must be paid; its seats become available (refunded).
    Refund { order_id: Id },
}

/// The store's verdict on one op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpOutcome {
    Applied,
    /// The re-check failed: the actor's view was stale (another node got
    /// there first); nothing of this op was written.
    Rejected,
    /// A hold outside the event's sale window by the store's clock (the
    /// arbiter of the opening instant across nodes): nothing written.
    OffSale,
}

/// A packet as created: its parts are split up front.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketDef {
    pub packet_id: Id,
    pub sender: String,
    pub kind: PacketKind,
    pub total: Fen,
    pub count: u32,
    pub greeting: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub parts: Vec<Fen>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grab {
    pub grab_id: Id,
    pub user_id: String,
    /// Index of the part taken; parts are taken in order.
    pub part: u32,
    pub amount: Fen,
    pub at_ms: u64,
}

#[derive(Clone, Debug)]
pub struct PacketSnapshot {
    pub def: Arc<PacketDef>,
    pub status: PacketStatus,
    /// Grabs in the order they happened.
    pub grabs: Vec<Grab>,
}

impl PacketSnapshot {
    pub fn remaining(&self) -> Fen {
        Fen::new(self.def.parts[self.grabs.len().min(self.def.parts.len())..].iter().map(|p| p.get()).sum())
    }
}

/// What [`HotStore::update_event`] and [`HotStore::replace_seats`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    Done,
    /// The definition changed meanwhile (or there is no such event).
    Stale,
    /// The sale has opened by the store's clock, or seats are held or
    /// sold: prices and the seat map stay.
    OnSale,
}

/// What [`HotStore::void_packet`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Voided {
    /// The packet was created: the earlier call did run.
    Exists,
    /// The packet does not exist and never will.
    Voided,
}

/// The verdict of a grab decided by the store itself (direct mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectGrab {
    Granted(Grab),
    Already(Fen),
    Empty,
    Expired,
    Unknown,
}

/// Something whose deadline has passed and that a timeout worker should
/// settle through its actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DueItem {
    Hold { event_id: Id, order_id: Id },
    Packet { packet_id: Id },
}

/// Seats held or bought per user (the per-user limit's count), from an
/// event's holds and paid orders.
pub fn seats_per_user(holds: &HashMap<Id, HotOrder>, paid: &HashMap<Id, PaidOrder>) -> HashMap<String, u32> {
    let mut per_user: HashMap<String, u32> = HashMap::new();
    let orders =
        holds.values().map(|o| (&o.user_id, o.seats.len())).chain(paid.values().map(|p| (&p.user_id, p.seats.len())));
    for (user, n) in orders {
        *per_user.entry(user.clone()).or_default() += n as u32;
    }
    per_user
}

/// The seats of an order as they are recorded and shown.
pub fn order_seats(info: &EventInfo, seats: &[SeatIdx]) -> Vec<crate::domain::OrderSeat> {
    seats
        .iter()
        .map(|s| {
            let d = info.map.seat(*s);
            crate::domain::OrderSeat {
                seat_id: d.label(),
                section: d.section.clone(),
                row: d.row,
                col: d.col,
                category: d.category.clone(),
                price: info.price_of(&d.category),
            }
        })
        .collect()
}

#[async_trait]
pub trait HotStore: Send + Sync + 'static {
    /// Joins the event's waiting room (see [`queue`]): idempotent while
    /// waiting or admitted. `new` is the ticket id and random key a new
    /// ticket gets.
    async fn queue_join(
        &self,
        event_id: Id,
        user_id: &str,
        rules: &queue::QueueRules,
        new: (Id, u64),
    ) -> Result<queue::Joined, StoreError>;
    /// Admits what is due, then where the user stands (None: not queued).
    async fn queue_ticket(
        &self,
        event_id: Id,
        user_id: &str,
        rules: &queue::QueueRules,
    ) -> Result<Option<queue::Ticket>, StoreError>;
    /// Leaves the queue (frees an admission's slot); false if not queued.
    async fn queue_leave(&self, event_id: Id, user_id: &str, rules: &queue::QueueRules) -> Result<bool, StoreError>;
    /// Marks node `node_id` alive for `ttl_ms` and counts the live nodes
    /// (rate limits share their budget among them). Embedded: this one.
    async fn live_nodes(&self, node_id: u16, ttl_ms: u64) -> Result<u32, StoreError> {
        let _ = (node_id, ttl_ms);
        Ok(1)
    }
    /// Admits what is due; how many it admitted.
    async fn queue_advance(&self, event_id: Id, rules: &queue::QueueRules) -> Result<u64, StoreError>;

    async fn create_event(&self, def: &EventDef) -> Result<(), StoreError>;
    async fn load_event(&self, event_id: Id) -> Result<Option<EventSnapshot>, StoreError>;
    /// The event's definition as it stands (operator changes applied).
    async fn event_info(&self, event_id: Id) -> Result<Option<Arc<EventInfo>>, StoreError>;
    /// An operator's change: applied only if the definition is still at
    /// `expected_rev` and `settings.rev` is newer, and, with `opens_ms`,
    /// only before that instant by the store's clock (the one the opening
    /// is checked against) while no seat is held or sold (a change of
    /// prices). It bumps the event's version, so every node's actor reloads
    /// before its next decision (a hold decided on the old definition is
    /// not committed).
    async fn update_event(
        &self,
        event_id: Id,
        expected_rev: u64,
        settings: &EventSettings,
        opens_ms: Option<u64>,
    ) -> Result<Changed, StoreError>;
    /// [`HotStore::update_event`] that also replaces the seat map with
    /// `def`'s (its `rev` the new revision), always under the `opens_ms`
    /// rule.
    async fn replace_seats(&self, expected_rev: u64, def: &EventDef, opens_ms: u64) -> Result<Changed, StoreError>;
    /// Re-checks and applies a batch of seat ops in order, atomically with
    /// their outbox events. With `version`, nothing is written unless the
    /// event is still at that version (the actor decided on the store's
    /// state); without, every op is re-checked on its own.
    async fn apply_seats_at(
        &self,
        event_id: Id,
        version: Option<u64>,
        ops: &[SeatOp],
        now_ms: u64,
    ) -> Result<SeatsApplied, StoreError>;
    /// [`HotStore::apply_seats_at`] without a version: one outcome per op.
    async fn apply_seats(&self, event_id: Id, ops: &[SeatOp], now_ms: u64) -> Result<Vec<OpOutcome>, StoreError> {
        Ok(self.apply_seats_at(event_id, None, ops, now_ms).await?.outcomes)
    }
    /// The event's current version (`None`: no such event). One read: an
    /// actor that decided a batch without writing anything (refusals,
    /// reads) checks with it that its memory was the store's state.
    async fn event_version(&self, event_id: Id) -> Result<Option<u64>, StoreError>;
    /// An order the hot store still holds (pending, or paid and sold), or
    /// closed within `orders.recent_keep_s` (with its final status), for
    /// reads before the workers have persisted it.
    async fn order(&self, order_id: Id) -> Result<Option<(HotOrder, OrderStatus)>, StoreError>;
    /// Of the user's orders held within `orders.recent_keep_s` that the hot
    /// store still knows (held, paid or closed), the `limit` newest below
    /// `before`, newest first: a list read right after a hold shows it
    /// before the workers have persisted it.
    async fn recent_orders(
        &self,
        user_id: &str,
        before: Option<Id>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<(HotOrder, OrderStatus)>, StoreError> {
        let _ = (user_id, before, limit, now_ms);
        Ok(vec![])
    }
    /// The user's grabs granted within `orders.recent_keep_s`, newest
    /// first: a wallet read adds the credits the durable store has not
    /// applied yet, so a grab's money shows at once on any node.
    async fn recent_grabs(&self, user_id: &str, now_ms: u64) -> Result<Vec<recent::RecentGrab>, StoreError> {
        let _ = (user_id, now_ms);
        Ok(vec![])
    }

    async fn create_packet(&self, def: &PacketDef) -> Result<(), StoreError>;
    /// Settles a `create_packet` whose outcome is unknown (its call failed
    /// or timed out and may still run): either the packet exists, or it is
    /// made impossible from now on (a tombstone the create script refuses).
    async fn void_packet(&self, packet_id: Id) -> Result<Voided, StoreError>;
    async fn load_packet(&self, packet_id: Id) -> Result<Option<PacketSnapshot>, StoreError>;
    /// How far the packet has gone: parts taken and status (`None`: no such
    /// packet). Both only ever move forward, so an actor whose memory
    /// matches them answers reads from it; a grab's refusals (already
    /// grabbed, empty, expired) stay true once true and need no check.
    async fn packet_progress(&self, packet_id: Id) -> Result<Option<(u32, PacketStatus)>, StoreError>;
    /// Re-checks and applies grabs in order: the user has not grabbed, the
    /// part is the next one, the packet is active.
    async fn grab_batch(&self, packet_id: Id, grabs: &[Grab], now_ms: u64) -> Result<Vec<OpOutcome>, StoreError>;
    /// Marks the packet expired; returns the remainder to unfreeze, or
    /// `None` if it was already expired.
    async fn expire_packet(&self, packet_id: Id, now_ms: u64) -> Result<Option<Fen>, StoreError>;

    /// Claims deadlines that have passed (holds to expire, packets to
    /// close), oldest first, at most `limit` from each partition's queue (the
    /// embedded store has one): each is leased to the caller until
    /// `now + lease_ms`, so other nodes skip it meanwhile. An item leaves the
    /// queue when its op applies; an item whose claimer died comes back when
    /// its lease ends.
    async fn claim_due(&self, now_ms: u64, limit: usize, lease_ms: u64) -> Result<Vec<DueItem>, StoreError>;

    /// Direct mode (no actor, for comparison): decides and applies one grab
    /// in the store, one call per request.
    async fn grab_direct(
        &self,
        packet_id: Id,
        user_id: &str,
        grab_id: Id,
        now_ms: u64,
    ) -> Result<DirectGrab, StoreError>;

    /// The store answers (for `/readyz`).
    async fn ready(&self) -> bool;
}
