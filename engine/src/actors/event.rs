//! The event actor: one per event per node. It owns the seat statuses in
//! memory, decides a batch of requests, and commits the batch to the hot
//! store with one call. Decisions are plain methods on [`EventState`].
//!
//! Why one file of ~780 lines (about 200 of them tests): one actor per file,
//! its state, messages, decisions and tests together.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::{Mailbox, STALE_ROUNDS_MAX};
use crate::domain::{Attendee, EventDef, EventInfo, Fen, Id, OrderStatus, SaleStatus, SeatIdx};
use crate::error::{EngineError, Entity};
use crate::store::{
    EventSnapshot, HotOrder, HotStore, OpOutcome, PaidOrder, SeatOp, SeatState, SeatsApplied, StoreError,
};
use crate::views::OrderView;

/// In-memory state of one event.
pub struct EventState {
    /// Definition and seat map, shared read-only.
    info: Arc<EventInfo>,
    /// Status of every seat, by seat index.
    seats: Vec<SeatState>,
    /// Free seats per row (all categories): lets the search skip full rows.
    row_free: Vec<u32>,
    /// Free seats per category id: answers sold out without a scan.
    free_by_category: HashMap<String, u32>,
    /// Live holds (orders in `pending_payment`).
    holds: HashMap<Id, HotOrder>,
    /// Paid orders: their seats are sold.
    paid: HashMap<Id, PaidOrder>,
    /// Seats held or bought per user, for the per-user limit.
    user_seats: HashMap<String, u32>,
    /// The store's version of the event this memory is (see
    /// [`crate::store::SeatsApplied`]): decisions count only once the
    /// store confirms it is still the current one.
    version: u64,
}

/// Which seats a buyer asks for.
#[derive(Clone, Debug)]
pub enum Selection {
    Named(Vec<String>),
    Category { category: String, quantity: u32 },
}

#[derive(Clone, Debug)]
pub struct HoldRequest {
    pub order_id: Id,
    pub user_id: String,
    pub selection: Selection,
    pub attendees: Vec<Attendee>,
    pub now_ms: u64,
}

/// The refusal of a hold outside the event's sale at `now_ms` (this
/// node's clock). A hold the store refused by its own clock while this one
/// says on sale is near one of the window's ends: the nearer one names it.
pub fn off_sale_error(def: &EventDef, now_ms: u64) -> EngineError {
    let (on, ends) = def.sale_window_ms();
    let not_yet = match def.sale_status(now_ms) {
        SaleStatus::Cancelled => {
            let reason = def.cancellation.as_ref().map(|c| c.reason.clone()).unwrap_or_default();
            return EngineError::EventCancelled { reason };
        }
        SaleStatus::Paused => return EngineError::SalePaused,
        SaleStatus::Scheduled => true,
        SaleStatus::Ended => false,
        SaleStatus::OnSale => now_ms - on < ends.saturating_sub(now_ms),
    };
    match (not_yet, def.on_sale_at, def.sale_ends_at) {
        (true, Some(on_sale_at), _) => EngineError::NotOnSale { on_sale_at },
        (false, _, Some(sale_ends_at)) => EngineError::SaleEnded { sale_ends_at },
        // A window without that end cannot refuse at it.
        _ => EngineError::Internal("a hold refused outside a sale window without that end".into()),
    }
}

/// Why an order is being released.
#[derive(Clone, Debug)]
pub enum ReleaseReason {
    /// The buyer (or an admin, `user_id = None`) cancels.
    Cancel { user_id: Option<String> },
    /// The hold's time ran out; refused before `expires_at_ms`.
    Expire,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CategoryView {
    pub id: String,
    pub name: String,
    pub price: Fen,
    pub remaining: u32,
}

/// An event's live orders, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenOrders {
    pub holds: Vec<Id>,
    pub paid: Vec<Id>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CategoryCount {
    pub id: String,
    pub available: u32,
    pub held: u32,
    pub sold: u32,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SeatView {
    pub seat_id: String,
    pub section: String,
    pub row: u32,
    pub col: u32,
    pub category: String,
    pub status: &'static str,
}

impl EventState {
    pub fn from_snapshot(s: EventSnapshot) -> Self {
        let map = &s.info.map;
        let mut row_free = vec![0u32; map.row_count()];
        let mut free_by_category: HashMap<String, u32> =
            s.info.def.categories.iter().map(|c| (c.id.clone(), 0)).collect();
        for (i, st) in s.seats.iter().enumerate() {
            if *st == SeatState::Available {
                row_free[map.row_of(i as SeatIdx) as usize] += 1;
                *free_by_category.entry(map.seat(i as SeatIdx).category.clone()).or_default() += 1;
            }
        }
        let user_seats = crate::store::seats_per_user(&s.holds, &s.paid);
        EventState {
            info: s.info,
            seats: s.seats,
            row_free,
            free_by_category,
            holds: s.holds,
            paid: s.paid,
            user_seats,
            version: s.version,
        }
    }

    fn set(&mut self, seat: SeatIdx, to: SeatState) {
        let was_free = self.seats[seat as usize] == SeatState::Available;
        let now_free = to == SeatState::Available;
        if was_free != now_free {
            let row = self.info.map.row_of(seat) as usize;
            let cat = &self.info.map.seat(seat).category;
            let counter = self.free_by_category.entry(cat.clone()).or_default();
            if now_free {
                self.row_free[row] += 1;
                *counter += 1;
            } else {
                self.row_free[row] -= 1;
                *counter -= 1;
            }
        }
        self.seats[seat as usize] = to;
    }

    /// Decides a hold and applies it to memory. The caller commits it.
    pub fn decide_hold(&mut self, req: &HoldRequest) -> Result<HotOrder, EngineError> {
        if self.info.def.sale_status(req.now_ms) != SaleStatus::OnSale {
            return Err(off_sale_error(&self.info.def, req.now_ms));
        }
        let limits = self.info.def.limits;
        let quantity = match &req.selection {
            Selection::Named(seats) => seats.len() as u32,
            Selection::Category { quantity, .. } => *quantity,
        };
        if quantity == 0 {
            return Err(EngineError::Invalid("quantity must be at least 1".into()));
        }
        if quantity > limits.per_order {
            return Err(EngineError::LimitExceeded { which: "per_order", max: limits.per_order });
        }
        let seats: Vec<SeatIdx> = match &req.selection {
            Selection::Named(labels) => {
                let mut idx = Vec::with_capacity(labels.len());
                for l in labels {
                    let i =
                        self.info.map.index_of(l).ok_or_else(|| EngineError::Invalid(format!("unknown seat {l}")))?;
                    if idx.contains(&i) {
                        return Err(EngineError::Invalid(format!("seat {l} named twice")));
                    }
                    idx.push(i);
                }
                let taken: Vec<String> = idx
                    .iter()
                    .filter(|i| self.seats[**i as usize] != SeatState::Available)
                    .map(|i| self.info.map.seat(*i).label())
                    .collect();
                if !taken.is_empty() {
                    return Err(EngineError::SeatUnavailable(taken));
                }
                idx
            }
            Selection::Category { category, quantity } => {
                let free = *self
                    .free_by_category
                    .get(category)
                    .ok_or_else(|| EngineError::Invalid(format!("unknown category {category}")))?;
                if free < *quantity {
                    return Err(EngineError::SoldOut { category: category.clone(), remaining: free });
                }
                let seats = &self.seats;
                self.info
                    .map
                    .find_adjacent(category, *quantity, |s| seats[s as usize] == SeatState::Available, &self.row_free)
                    .ok_or_else(|| EngineError::NoAdjacentSeats { category: category.clone(), quantity: *quantity })?
            }
        };
        let owned = self.user_seats.get(&req.user_id).copied().unwrap_or(0);
        if owned + quantity > limits.per_user {
            return Err(EngineError::LimitExceeded { which: "per_user", max: limits.per_user });
        }
        let amount = Fen::new(seats.iter().map(|s| self.info.price_of(&self.info.map.seat(*s).category).get()).sum());
        let order = HotOrder {
            order_id: req.order_id,
            event_id: self.info.def.event_id,
            user_id: req.user_id.clone(),
            seats,
            amount,
            created_at_ms: req.now_ms,
            expires_at_ms: req.now_ms + u64::from(self.info.def.hold_ttl_s) * 1000,
            attendees: req.attendees.clone(),
        };
        for s in &order.seats {
            self.set(*s, SeatState::Held(order.order_id));
        }
        *self.user_seats.entry(order.user_id.clone()).or_default() += quantity;
        self.holds.insert(order.order_id, order.clone());
        Ok(order)
    }

    /// Decides to release a live hold (cancel or expiry) and frees its seats.
    pub fn decide_release(&mut self, order_id: Id, why: &ReleaseReason, now_ms: u64) -> Result<HotOrder, EngineError> {
        let Some(order) = self.holds.get(&order_id) else {
            return Err(match self.paid.get(&order_id) {
                Some(_) => EngineError::OrderNotPending { status: OrderStatus::Paid },
                None => EngineError::NotFound(Entity::Order),
            });
        };
        match why {
            ReleaseReason::Cancel { user_id: Some(u) } if *u != order.user_id => {
                return Err(EngineError::NotFound(Entity::Order))
            }
            ReleaseReason::Expire if now_ms < order.expires_at_ms => {
                return Err(EngineError::Invalid("hold is not due to expire yet".into()))
            }
            _ => {}
        }
        let order = self.holds.remove(&order_id).ok_or(EngineError::NotFound(Entity::Order))?;
        self.give_back(&order.user_id, &order.seats);
        Ok(order)
    }

    /// Seats leave an order: back on sale, and off the user's count.
    fn give_back(&mut self, user_id: &str, seats: &[SeatIdx]) {
        for s in seats {
            self.set(*s, SeatState::Available);
        }
        if let Some(n) = self.user_seats.get_mut(user_id) {
            *n = n.saturating_sub(seats.len() as u32);
        }
    }

    /// Decides that a live hold is paid: its seats become sold. What counts
    /// is when the channel took the money (`paid_at_ms`), not when rush
    /// hears of it: money taken at or after the hold's expiry is refused
    /// (the buyer was told it ends then; late money is refunded), money
    /// taken before it buys the seats as long as the hold is still there
    /// (the sweeper settles an order's payments before releasing it).
    pub fn decide_confirm(&mut self, order_id: Id, paid_at_ms: u64) -> Result<HotOrder, EngineError> {
        if self.holds.get(&order_id).is_some_and(|o| paid_at_ms >= o.expires_at_ms) {
            return Err(EngineError::OrderNotPending { status: OrderStatus::Expired });
        }
        let order = self.holds.remove(&order_id).ok_or(match self.paid.contains_key(&order_id) {
            true => EngineError::OrderNotPending { status: OrderStatus::Paid },
            false => EngineError::NotFound(Entity::Order),
        })?;
        for s in &order.seats {
            self.set(*s, SeatState::Sold(order.order_id));
        }
        self.paid.insert(order.order_id, PaidOrder { user_id: order.user_id.clone(), seats: order.seats.clone() });
        Ok(order)
    }

    /// Decides that a paid order is refunded: its seats go back on sale.
    pub fn decide_refund(&mut self, order_id: Id) -> Result<HotOrder, EngineError> {
        let paid = self.paid.remove(&order_id).ok_or(match self.holds.contains_key(&order_id) {
            true => EngineError::OrderNotPending { status: OrderStatus::PendingPayment },
            false => EngineError::NotFound(Entity::Order),
        })?;
        self.give_back(&paid.user_id, &paid.seats);
        let amount =
            Fen::new(paid.seats.iter().map(|s| self.info.price_of(&self.info.map.seat(*s).category).get()).sum());
        Ok(HotOrder {
            order_id,
            event_id: self.info.def.event_id,
            user_id: paid.user_id,
            seats: paid.seats,
            amount,
            created_at_ms: 0,
            expires_at_ms: 0,
            attendees: vec![],
        })
    }

    pub fn categories(&self) -> Vec<CategoryView> {
        self.info
            .def
            .categories
            .iter()
            .map(|c| CategoryView {
                id: c.id.clone(),
                name: c.name.clone(),
                price: c.price,
                remaining: self.free_by_category.get(&c.id).copied().unwrap_or(0),
            })
            .collect()
    }

    pub fn seat_views(&self, section: Option<&str>) -> Vec<SeatView> {
        self.info
            .map
            .seats()
            .iter()
            .zip(&self.seats)
            .filter(|(d, _)| section.is_none_or(|s| d.section == s))
            .map(|(d, st)| SeatView {
                seat_id: d.label(),
                section: d.section.clone(),
                row: d.row,
                col: d.col,
                category: d.category.clone(),
                status: match st {
                    SeatState::Available => "available",
                    SeatState::Held(_) => "held",
                    SeatState::Sold(_) => "sold",
                },
            })
            .collect()
    }

    pub fn open_orders(&self) -> OpenOrders {
        let mut holds: Vec<Id> = self.holds.keys().copied().collect();
        let mut paid: Vec<Id> = self.paid.keys().copied().collect();
        holds.sort();
        paid.sort();
        OpenOrders { holds, paid }
    }

    /// One pass over the seats: an operator's read, not a buyer's.
    pub fn counts(&self) -> Vec<CategoryCount> {
        let mut out: Vec<CategoryCount> = self
            .info
            .def
            .categories
            .iter()
            .map(|c| CategoryCount { id: c.id.clone(), available: 0, held: 0, sold: 0 })
            .collect();
        for (d, st) in self.info.map.seats().iter().zip(&self.seats) {
            if let Some(c) = out.iter_mut().find(|c| c.id == d.category) {
                match st {
                    SeatState::Available => c.available += 1,
                    SeatState::Held(_) => c.held += 1,
                    SeatState::Sold(_) => c.sold += 1,
                }
            }
        }
        out
    }

    /// Checks the invariants that must hold after every batch.
    pub fn check_invariants(&self) {
        let held: usize = self.holds.values().map(|o| o.seats.len()).sum();
        let sold: usize = self.paid.values().map(|o| o.seats.len()).sum();
        let free = self.seats.iter().filter(|s| **s == SeatState::Available).count();
        assert_eq!(held + sold + free, self.seats.len(), "seats held + sold + free != capacity");
        assert_eq!(free as u32, self.row_free.iter().sum::<u32>(), "row counters drifted");
    }
}

pub enum EventMsg {
    Hold(HoldRequest, oneshot::Sender<Result<OrderView, EngineError>>),
    Release {
        order_id: Id,
        why: ReleaseReason,
        now_ms: u64,
        reply: oneshot::Sender<Result<OrderView, EngineError>>,
    },
    Confirm {
        order_id: Id,
        /// When the channel took the money.
        paid_at_ms: u64,
        reply: oneshot::Sender<Result<OrderView, EngineError>>,
    },
    /// A paid order's money went back: its seats go back on sale.
    Refund {
        order_id: Id,
        reply: oneshot::Sender<Result<OrderView, EngineError>>,
    },
    /// The definition the actor decides on, and what is left per category.
    View(oneshot::Sender<(Arc<EventInfo>, Vec<CategoryView>)>),
    /// Live holds and paid orders (a cancellation closes and refunds them).
    Open(oneshot::Sender<OpenOrders>),
    /// Seats available, held and sold per category.
    Counts(oneshot::Sender<Vec<CategoryCount>>),
    Seats {
        section: Option<String>,
        reply: oneshot::Sender<Vec<SeatView>>,
    },
}

type Reply = oneshot::Sender<Result<OrderView, EngineError>>;

/// A write request, kept until its decision commits so that it can be
/// decided again if the store finds the decision stale.
enum Request {
    Hold(HoldRequest),
    Release { order_id: Id, why: ReleaseReason, now_ms: u64 },
    Confirm { order_id: Id, paid_at_ms: u64 },
    Refund { order_id: Id },
}

/// A decision waiting for its commit.
struct Pending {
    request: Request,
    reply: Reply,
    order: HotOrder,
    /// The order's status once committed.
    status: OrderStatus,
}

impl EventState {
    /// Decides one write request: the store op and what it commits to.
    fn decide(&mut self, request: &Request) -> Result<(SeatOp, HotOrder, OrderStatus), EngineError> {
        match request {
            Request::Hold(req) => {
                let order = self.decide_hold(req)?;
                Ok((SeatOp::Hold(order.clone()), order, OrderStatus::PendingPayment))
            }
            Request::Release { order_id, why, now_ms } => {
                let order = self.decide_release(*order_id, why, *now_ms)?;
                let status = match why {
                    ReleaseReason::Cancel { .. } => OrderStatus::Cancelled,
                    ReleaseReason::Expire => OrderStatus::Expired,
                };
                Ok((SeatOp::Release { order_id: *order_id, status }, order, status))
            }
            Request::Confirm { order_id, paid_at_ms } => {
                let order = self.decide_confirm(*order_id, *paid_at_ms)?;
                Ok((SeatOp::Confirm { order_id: *order_id }, order, OrderStatus::Paid))
            }
            Request::Refund { order_id } => {
                let order = self.decide_refund(*order_id)?;
                Ok((SeatOp::Refund { order_id: *order_id }, order, OrderStatus::Refunded))
            }
        }
    }
}

/// Remaining seats per category by event, as the catalogue shows them.
pub type CatalogueCache = moka::sync::Cache<Id, Arc<Vec<CategoryView>>>;

/// Runs the actor until its mailbox closes or it has been idle too long.
pub async fn run(
    mut state: EventState,
    mut rx: mpsc::Receiver<EventMsg>,
    store: Arc<dyn HotStore>,
    mailbox: Mailbox,
    catalogue: CatalogueCache,
) {
    let mut buf = Vec::with_capacity(mailbox.batch_len_max);
    'actor: loop {
        let got = tokio::time::timeout(mailbox.idle, rx.recv_many(&mut buf, mailbox.batch_len_max)).await;
        match got {
            Ok(0) => break,
            Ok(n) => mailbox.received(n),
            Err(_) => {
                // Idle: refuse new messages, finish what is queued, then stop.
                rx.close();
                continue;
            }
        }
        let now_ms = crate::domain::now_unix_ms();
        let mut work: Vec<(Request, Reply)> = Vec::with_capacity(buf.len());
        let mut reads = Vec::new();
        for msg in buf.drain(..) {
            match msg {
                EventMsg::Hold(req, reply) => work.push((Request::Hold(req), reply)),
                EventMsg::Release { order_id, why, now_ms, reply } => {
                    work.push((Request::Release { order_id, why, now_ms }, reply))
                }
                EventMsg::Confirm { order_id, paid_at_ms, reply } => {
                    work.push((Request::Confirm { order_id, paid_at_ms }, reply))
                }
                EventMsg::Refund { order_id, reply } => work.push((Request::Refund { order_id }, reply)),
                other => reads.push(other),
            }
        }
        let writes = !work.is_empty();
        if !decide_and_commit(&mut state, work, !reads.is_empty(), &store, now_ms).await {
            break 'actor;
        }
        state.check_invariants();
        // The catalogue shows this node's own changes at once (others' within its TTL).
        let event_id = state.info.def.event_id;
        if writes && catalogue.contains_key(&event_id) {
            catalogue.insert(event_id, Arc::new(state.categories()));
        }
        for r in reads {
            match r {
                EventMsg::View(reply) => {
                    let _ = reply.send((state.info.clone(), state.categories()));
                }
                EventMsg::Open(reply) => {
                    let _ = reply.send(state.open_orders());
                }
                EventMsg::Counts(reply) => {
                    let _ = reply.send(state.counts());
                }
                EventMsg::Seats { section, reply } => {
                    let _ = reply.send(state.seat_views(section.as_deref()));
                }
                _ => {}
            }
        }
    }
    mailbox.stopped();
}

/// Decides a batch and commits it. Every answer, refusals and reads
/// included, is given only once the store has confirmed that the memory it
/// was decided on is the store's current state: a batch that writes learns
/// it from its commit (the scripts check the event's version), one that
/// does not asks for the version (one read). A stale memory is reloaded and
/// the batch decided again. False when the event can no longer be read
/// (the actor stops).
async fn decide_and_commit(
    state: &mut EventState,
    mut work: Vec<(Request, Reply)>,
    reads: bool,
    store: &Arc<dyn HotStore>,
    now_ms: u64,
) -> bool {
    let event_id = state.info.def.event_id;
    if work.is_empty() && !reads {
        return true;
    }
    for round in 0..=STALE_ROUNDS_MAX {
        let batch = Batch::decide(state, &mut work);
        let committed = if batch.ops.is_empty() {
            let at = state.version;
            store
                .event_version(event_id)
                .await
                .map(|v| SeatsApplied { outcomes: vec![], version: v.filter(|v| *v == at) })
        } else {
            store.apply_seats_at(event_id, Some(state.version), &batch.ops, now_ms).await
        };
        let last_round = round == STALE_ROUNDS_MAX;
        match committed {
            Ok(applied) => {
                if batch.answer_committed(state, applied, last_round, &mut work) {
                    return true;
                }
            }
            Err(e) => {
                tracing::warn!(%event_id, error = %e, "seat batch failed");
                batch.answer_all(&e);
            }
        }
        // Memory holds stale or uncommitted decisions: take the store's
        // truth (a consistent snapshot: reads are answered from it).
        match reload(store, event_id).await {
            Some(s) => *state = s,
            None => {
                for (_, reply) in work.drain(..) {
                    let _ = reply.send(Err(EngineError::StoreUnavailable));
                }
                return false;
            }
        }
        if work.is_empty() {
            return true;
        }
    }
    true
}

/// One round of decisions: the ops to commit with the requests waiting on
/// them, and the requests refused on the memory they were decided on.
struct Batch {
    ops: Vec<SeatOp>,
    pending: Vec<Pending>,
    refused: Vec<(Request, Reply, EngineError)>,
}

impl Batch {
    fn decide(state: &mut EventState, work: &mut Vec<(Request, Reply)>) -> Batch {
        let mut batch =
            Batch { ops: Vec::with_capacity(work.len()), pending: Vec::with_capacity(work.len()), refused: Vec::new() };
        for (request, reply) in work.drain(..) {
            match state.decide(&request) {
                Ok((op, order, status)) => {
                    batch.ops.push(op);
                    batch.pending.push(Pending { request, reply, order, status });
                }
                Err(e) => batch.refused.push((request, reply, e)),
            }
        }
        batch
    }

    /// Answers what the store committed. True when the memory was current
    /// (refusals answered too, the state at the new version); false when it
    /// was stale: what must be decided again is back in `work` (or refused
    /// as overloaded on the last round).
    fn answer_committed(
        self,
        state: &mut EventState,
        applied: SeatsApplied,
        last_round: bool,
        work: &mut Vec<(Request, Reply)>,
    ) -> bool {
        let event_id = state.info.def.event_id;
        let info = state.info.clone();
        let mut rejected = false;
        let mut off_sale = false;
        for (p, outcome) in self.pending.into_iter().zip(applied.outcomes) {
            match outcome {
                OpOutcome::Applied => {
                    let _ = p.reply.send(Ok(OrderView::from_hot(&p.order, &info, p.status)));
                }
                // The store's clock says the sale is not open: final,
                // nothing written, the memory gives the hold back below.
                OpOutcome::OffSale => {
                    off_sale = true;
                    let _ = p.reply.send(Err(off_sale_error(&info.def, crate::domain::now_unix_ms())));
                }
                OpOutcome::Rejected if !last_round => {
                    rejected = true;
                    work.push((p.request, p.reply));
                }
                // Still contended by other nodes: retry later.
                OpOutcome::Rejected => {
                    let _ = p.reply.send(Err(EngineError::Overloaded("event")));
                }
            }
        }
        match applied.version {
            // A hold refused off sale was applied to the memory only: the
            // memory is reloaded (the refusals decided again on it).
            Some(v) if !rejected && !off_sale => {
                state.version = v;
                for (_, reply, e) in self.refused {
                    let _ = reply.send(Err(e));
                }
                true
            }
            // Stale, or (a bug) an op rejected at the version it was
            // decided on: either way the store's word counts.
            version => {
                if version.is_some() && rejected {
                    tracing::error!(%event_id, "the store rejected a decision made on its current version");
                }
                for (request, reply, _) in self.refused {
                    if !last_round {
                        work.push((request, reply));
                    } else {
                        let _ = reply.send(Err(EngineError::Overloaded("event")));
                    }
                }
                tracing::debug!(%event_id, again = work.len(), "another node changed the event; reloading");
                false
            }
        }
    }

    /// The store failed: without its word, even a refusal may be stale.
    fn answer_all(self, error: &StoreError) {
        for p in self.pending {
            let _ = p.reply.send(Err(error.answer()));
        }
        for (_, reply, _) in self.refused {
            let _ = reply.send(Err(error.answer()));
        }
    }
}

async fn reload(store: &Arc<dyn HotStore>, event_id: Id) -> Option<EventState> {
    match store.load_event(event_id).await {
        Ok(Some(s)) => Some(EventState::from_snapshot(s)),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(%event_id, error = %e, "reload failed; actor stops");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Category, EventDef, Limits, SeatMap, SectionLayout};
    use proptest::prelude::*;

    fn state(rows: u32, cols: u32, per_user: u32) -> EventState {
        let seats = SeatMap::from_layout(
            &[SectionLayout { name: "A".into(), rows, cols, category: "std".into() }],
            &["std"],
            100_000,
        )
        .unwrap()
        .seats()
        .to_vec();
        let def = EventDef {
            event_id: Id::from_raw(1).unwrap(),
            name: "e".into(),
            venue: "v".into(),
            starts_at: chrono::Utc::now(),
            on_sale_at: None,
            sale_ends_at: None,
            rev: 0,
            map_rev: 0,
            paused: false,
            cancellation: None,
            waiting_room: None,
            hold_ttl_s: 60,
            limits: Limits { per_order: 6, per_user },
            categories: vec![Category { id: "std".into(), name: "Std".into(), price: Fen::new(100) }],
            seats,
        };
        let info = EventInfo::build(def, 100_000).unwrap();
        let n = info.map.len();
        EventState::from_snapshot(EventSnapshot {
            info,
            seats: vec![SeatState::Available; n],
            holds: HashMap::new(),
            paid: HashMap::new(),
            version: 0,
        })
    }

    fn req(order: i64, user: &str, sel: Selection) -> HoldRequest {
        HoldRequest {
            order_id: Id::from_raw(order).unwrap(),
            user_id: user.into(),
            selection: sel,
            attendees: vec![],
            now_ms: 1000,
        }
    }

    fn cat(q: u32) -> Selection {
        Selection::Category { category: "std".into(), quantity: q }
    }

    #[test]
    fn holding_a_held_seat_is_refused() {
        let mut s = state(1, 4, 6);
        s.decide_hold(&req(1, "a", Selection::Named(vec!["A-1-2".into()]))).unwrap();
        let err = s.decide_hold(&req(2, "b", Selection::Named(vec!["A-1-2".into(), "A-1-3".into()]))).unwrap_err();
        assert!(matches!(err, EngineError::SeatUnavailable(ref v) if v == &vec!["A-1-2".to_string()]));
    }

    #[test]
    fn a_category_hold_beyond_the_free_seats_is_sold_out() {
        let mut s = state(1, 2, 6);
        s.decide_hold(&req(1, "a", cat(2))).unwrap();
        assert!(matches!(s.decide_hold(&req(2, "b", cat(1))), Err(EngineError::SoldOut { remaining: 0, .. })));
    }

    #[test]
    fn per_order_and_per_user_limits_are_enforced() {
        let mut s = state(2, 10, 3);
        assert!(matches!(
            s.decide_hold(&req(1, "a", cat(7))),
            Err(EngineError::LimitExceeded { which: "per_order", .. })
        ));
        s.decide_hold(&req(2, "a", cat(2))).unwrap();
        assert!(matches!(
            s.decide_hold(&req(3, "a", cat(2))),
            Err(EngineError::LimitExceeded { which: "per_user", .. })
        ));
        // Cancelling gives the allowance back.
        s.decide_release(Id::from_raw(2).unwrap(), &ReleaseReason::Cancel { user_id: Some("a".into()) }, 1000).unwrap();
        s.decide_hold(&req(4, "a", cat(3))).unwrap();
    }

    #[test]
    fn cancel_by_another_user_is_not_found_and_expiry_waits_for_the_deadline() {
        let mut s = state(1, 4, 6);
        let o = s.decide_hold(&req(1, "a", cat(1))).unwrap();
        assert!(matches!(
            s.decide_release(o.order_id, &ReleaseReason::Cancel { user_id: Some("b".into()) }, 1000),
            Err(EngineError::NotFound(Entity::Order))
        ));
        assert!(s.decide_release(o.order_id, &ReleaseReason::Expire, o.expires_at_ms - 1).is_err());
        s.decide_release(o.order_id, &ReleaseReason::Expire, o.expires_at_ms).unwrap();
        assert_eq!(s.categories()[0].remaining, 4);
    }

    #[test]
    fn a_paid_order_cannot_be_cancelled() {
        let mut s = state(1, 4, 6);
        let o = s.decide_hold(&req(1, "a", cat(2))).unwrap();
        s.decide_confirm(o.order_id, 0).unwrap();
        assert!(matches!(
            s.decide_release(o.order_id, &ReleaseReason::Cancel { user_id: None }, 1000),
            Err(EngineError::OrderNotPending { status: OrderStatus::Paid })
        ));
        assert_eq!(s.seat_views(None).iter().filter(|v| v.status == "sold").count(), 2);
    }

    #[test]
    fn a_hold_past_its_expiry_cannot_be_paid() {
        let mut s = state(1, 4, 6);
        let o = s.decide_hold(&req(1, "a", cat(1))).unwrap();
        assert!(matches!(
            s.decide_confirm(o.order_id, o.expires_at_ms),
            Err(EngineError::OrderNotPending { status: OrderStatus::Expired })
        ));
        s.decide_confirm(o.order_id, o.expires_at_ms - 1).unwrap();
    }

    #[test]
    fn a_refund_puts_the_seats_back_on_sale_and_gives_the_allowance_back() {
        let mut s = state(1, 4, 2);
        let o = s.decide_hold(&req(1, "a", cat(2))).unwrap();
        assert!(matches!(
            s.decide_refund(o.order_id),
            Err(EngineError::OrderNotPending { status: OrderStatus::PendingPayment })
        ));
        s.decide_confirm(o.order_id, 0).unwrap();
        let refunded = s.decide_refund(o.order_id).unwrap();
        assert_eq!((refunded.user_id.as_str(), refunded.seats.len()), ("a", 2));
        assert_eq!(s.categories()[0].remaining, 4);
        assert!(matches!(s.decide_refund(o.order_id), Err(EngineError::NotFound(Entity::Order))));
        s.decide_hold(&req(2, "a", cat(2))).unwrap();
        s.check_invariants();
    }

    #[derive(Clone, Debug)]
    enum Op {
        Named(String, Vec<u32>),
        Cat(String, u32),
        Cancel(usize),
        Expire(usize),
        Confirm(usize),
        Refund(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let user = prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(String::from);
        prop_oneof![
            (user.clone(), prop::collection::vec(1u32..=8, 1..4)).prop_map(|(u, c)| Op::Named(u, c)),
            (user, 1u32..4).prop_map(|(u, q)| Op::Cat(u, q)),
            (0usize..50).prop_map(Op::Cancel),
            (0usize..50).prop_map(Op::Expire),
            (0usize..50).prop_map(Op::Confirm),
            (0usize..50).prop_map(Op::Refund),
        ]
    }

    proptest! {
        #[test]
        fn seats_are_never_held_or_sold_twice(ops in prop::collection::vec(op(), 1..120)) {
            let mut s = state(3, 8, 6);
            let mut orders: Vec<Id> = Vec::new();
            let mut next = 1;
            for op in ops {
                match op {
                    Op::Named(u, cols) => {
                        let labels = cols.iter().map(|c| format!("A-1-{c}")).collect();
                        if let Ok(o) = s.decide_hold(&req(next, &u, Selection::Named(labels))) { orders.push(o.order_id); }
                        next += 1;
                    }
                    Op::Cat(u, q) => {
                        if let Ok(o) = s.decide_hold(&req(next, &u, cat(q))) { orders.push(o.order_id); }
                        next += 1;
                    }
                    Op::Cancel(i) => if let Some(o) = orders.get(i) {
                        let _ = s.decide_release(*o, &ReleaseReason::Cancel { user_id: None }, 1000);
                    },
                    Op::Expire(i) => if let Some(o) = orders.get(i) {
                        let _ = s.decide_release(*o, &ReleaseReason::Expire, u64::MAX);
                    },
                    Op::Confirm(i) => if let Some(o) = orders.get(i) {
                        let _ = s.decide_confirm(*o, 0);
                    },
                    Op::Refund(i) => if let Some(o) = orders.get(i) {
                        let _ = s.decide_refund(*o);
                    },
                }
                s.check_invariants();
                // Every non-free seat belongs to exactly one live or paid order.
                let mut owner = vec![None; s.seats.len()];
                for (id, o) in &s.holds {
                    for seat in &o.seats { prop_assert!(owner[*seat as usize].replace(*id).is_none()); }
                }
                for (id, o) in &s.paid {
                    for seat in &o.seats { prop_assert!(owner[*seat as usize].replace(*id).is_none()); }
                }
                for (i, st) in s.seats.iter().enumerate() {
                    match st {
                        SeatState::Available => prop_assert!(owner[i].is_none()),
                        SeatState::Held(o) | SeatState::Sold(o) => prop_assert_eq!(owner[i], Some(*o)),
                    }
                }
                for (u, n) in &s.user_seats { prop_assert!(*n <= 6, "user {} has {}", u, n); }
            }
        }
    }
}
