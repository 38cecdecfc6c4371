//! The embedded hot store: the same re-checks as the Lua scripts, over an
//! in-memory mirror, made durable in the SQLite file.
//!
//! Every call checks its ops against the mirror, then writes the accepted
//! changes and their outbox events in one SQLite transaction, and only then
//! returns: a batch is acknowledged after its transaction commits. If the
//! transaction fails, the entity's mirror is dropped and re-read from the
//! file on next use, so memory never runs ahead of what is durable.
//!
//! Why one file of ~730 lines: the embedded twin of every Lua script, in one
//! file as `redis.rs` is, so the two read side by side.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex as StdMutex};

use async_trait::async_trait;
use dashmap::DashMap;
use sqlx::Row;
use tokio::sync::{Mutex, Notify};

use super::commit::{insert_rows, stmt, Committer, WriteSet};
use super::db::Db;
use super::order_seats;
use super::queue::{Joined, MemQueue, QueueRules, QueueWrites, StoredTicket, Ticket};
use super::recent::RecentGrab;
use super::{
    Changed, DirectGrab, DueItem, EventSnapshot, Grab, HotOrder, HotStore, OpOutcome, PacketDef, PacketSnapshot,
    PaidOrder, SeatOp, SeatState, SeatsApplied, StoreError, Voided,
};
use crate::domain::DomainEvent;
use crate::domain::{EventDef, EventInfo, EventSettings, Fen, Id, IdGen, OrderStatus, PacketStatus, SaleStatus};

/// Attempts of a direct-mode grab that keeps losing races.
const DIRECT_ROUNDS_MAX: usize = 16;

struct EventHot {
    info: Arc<EventInfo>,
    seats: Vec<SeatState>,
    holds: HashMap<Id, HotOrder>,
    paid: HashMap<Id, PaidOrder>,
    /// Seats held or bought per user: the per-user limit, re-checked here
    /// as `hold.lua` does.
    user_seats: HashMap<String, u32>,
    /// Bumped by every call that writes (see `SeatsApplied`). Not stored:
    /// a mirror read again from the file starts over, and so does the
    /// actor that reloads with it.
    version: u64,
}

impl EventHot {
    /// The sale opened at `at` (by this process's clock, the one holds are
    /// checked by here), or seats are held or sold: prices and the seat map
    /// are fixed.
    fn opened(&self, at: u64) -> bool {
        crate::domain::now_unix_ms() >= at || !self.holds.is_empty() || !self.paid.is_empty()
    }

    fn new(
        info: Arc<EventInfo>,
        seats: Vec<SeatState>,
        holds: HashMap<Id, HotOrder>,
        paid: HashMap<Id, PaidOrder>,
    ) -> Self {
        let user_seats = super::seats_per_user(&holds, &paid);
        EventHot { info, seats, holds, paid, user_seats, version: 0 }
    }

    /// Checks one op against the mirror and applies it: the write to
    /// commit, or None when the op is rejected.
    fn apply(&mut self, op: &SeatOp) -> Option<SeatWrite> {
        let per_user = self.info.def.limits.per_user;
        match op {
            SeatOp::Hold(o) => {
                let free = !o.seats.is_empty()
                    && !self.holds.contains_key(&o.order_id)
                    && o.seats.iter().all(|s| self.seats.get(*s as usize) == Some(&SeatState::Available))
                    && self.user_seats.get(&o.user_id).copied().unwrap_or(0) + o.seats.len() as u32 <= per_user;
                if free {
                    for s in &o.seats {
                        self.seats[*s as usize] = SeatState::Held(o.order_id);
                    }
                    self.holds.insert(o.order_id, o.clone());
                    *self.user_seats.entry(o.user_id.clone()).or_default() += o.seats.len() as u32;
                    Some(SeatWrite::Hold(o.clone()))
                } else {
                    None
                }
            }
            SeatOp::Release { order_id, status } => match self.holds.remove(order_id) {
                Some(order) => {
                    for s in &order.seats {
                        self.seats[*s as usize] = SeatState::Available;
                    }
                    self.give_back(&order.user_id, order.seats.len());
                    Some(SeatWrite::Release { order, status: *status })
                }
                None => None,
            },
            SeatOp::Confirm { order_id } => match self.holds.remove(order_id) {
                Some(order) => {
                    for s in &order.seats {
                        self.seats[*s as usize] = SeatState::Sold(order.order_id);
                    }
                    self.paid.insert(
                        order.order_id,
                        PaidOrder { user_id: order.user_id.clone(), seats: order.seats.clone() },
                    );
                    Some(SeatWrite::Confirm { order })
                }
                None => None,
            },
            SeatOp::Refund { order_id } => match self.paid.remove(order_id) {
                Some(paid) => {
                    for s in &paid.seats {
                        self.seats[*s as usize] = SeatState::Available;
                    }
                    self.give_back(&paid.user_id, paid.seats.len());
                    Some(SeatWrite::Refund { order_id: *order_id, user_id: paid.user_id })
                }
                None => None,
            },
        }
    }

    fn give_back(&mut self, user_id: &str, seats: usize) {
        if let Some(n) = self.user_seats.get_mut(user_id) {
            *n = n.saturating_sub(seats as u32);
            if *n == 0 {
                self.user_seats.remove(user_id);
            }
        }
    }
}

struct PacketHot {
    def: Arc<PacketDef>,
    status: PacketStatus,
    grabs: Vec<Grab>,
    grabbed: HashSet<String>,
}

/// Deadlines by time, re-timed when claimed.
#[derive(Default)]
struct DueQueue {
    by_time: BTreeSet<(u64, DueItem)>,
    at: HashMap<DueItem, u64>,
}

impl DueQueue {
    fn insert(&mut self, at: u64, item: DueItem) {
        if let Some(old) = self.at.insert(item, at) {
            self.by_time.remove(&(old, item));
        }
        self.by_time.insert((at, item));
    }

    fn remove(&mut self, item: &DueItem) {
        if let Some(at) = self.at.remove(item) {
            self.by_time.remove(&(at, *item));
        }
    }

    fn claim(&mut self, now_ms: u64, limit: usize, lease_ms: u64) -> Vec<DueItem> {
        let items: Vec<DueItem> =
            self.by_time.iter().take_while(|(at, _)| *at <= now_ms).take(limit).map(|(_, i)| *i).collect();
        for item in &items {
            self.insert(now_ms.saturating_add(lease_ms), *item);
        }
        items
    }
}

pub struct MemoryStore {
    db: Db,
    seats_max: u32,
    events: DashMap<Id, Arc<Mutex<EventHot>>>,
    packets: DashMap<Id, Arc<Mutex<PacketHot>>>,
    /// Deadlines by time: holds to expire and packets to close.
    due: StdMutex<DueQueue>,
    /// Woken after every commit that appended to the outbox.
    appended: Arc<Notify>,
    /// Applies every write, grouped into shared transactions.
    committer: Committer,
    /// Recent and just-closed orders, for reads before the workers.
    recent: super::recent::Recent,
    /// Waiting rooms, loaded from `queue_tickets` on first use (None:
    /// dropped after a failed write, read again).
    queues: DashMap<Id, Arc<Mutex<Option<MemQueue>>>>,
}

fn db_err(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn ms_i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn lock_due(due: &StdMutex<DueQueue>) -> std::sync::MutexGuard<'_, DueQueue> {
    // A panic while holding this lock cannot leave the set half-changed
    // (single insert/remove calls), so a poisoned lock is still usable.
    due.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryStore {
    /// Opens the store over an open database and rebuilds the due queue from
    /// it (entity mirrors load lazily, on first use).
    pub async fn open(db: Db, ids: Arc<IdGen>, seats_max: u32) -> Result<Self, StoreError> {
        let mut due = DueQueue::default();
        for r in sqlx::query("SELECT order_id, event_id, expires_at_ms FROM hot_holds")
            .fetch_all(&db.read)
            .await
            .map_err(db_err)?
        {
            let order_id = Id::from_raw(r.try_get("order_id").map_err(db_err)?).map_err(corrupt)?;
            let event_id = Id::from_raw(r.try_get("event_id").map_err(db_err)?).map_err(corrupt)?;
            let at: i64 = r.try_get("expires_at_ms").map_err(db_err)?;
            due.insert(at.max(0) as u64, DueItem::Hold { event_id, order_id });
        }
        for r in sqlx::query("SELECT packet_id, expires_at_ms FROM hot_packets WHERE status <> 'expired'")
            .fetch_all(&db.read)
            .await
            .map_err(db_err)?
        {
            let packet_id = Id::from_raw(r.try_get("packet_id").map_err(db_err)?).map_err(corrupt)?;
            let at: i64 = r.try_get("expires_at_ms").map_err(db_err)?;
            due.insert(at.max(0) as u64, DueItem::Packet { packet_id });
        }
        let appended = Arc::new(Notify::new());
        let committer = Committer::spawn(db.clone(), ids.clone(), appended.clone());
        Ok(MemoryStore {
            db: db.clone(),
            seats_max,
            events: DashMap::new(),
            packets: DashMap::new(),
            due: StdMutex::new(due),
            committer,
            appended,
            queues: DashMap::new(),
            recent: super::recent::Recent::new(
                super::recent::RECENT_KEEP_MS_DEFAULT,
                super::recent::RECENT_PER_USER_MAX_DEFAULT,
            ),
        })
    }

    /// How long, and how many per user, recent and closed orders are
    /// remembered (`orders.recent_keep_s`, `orders.recent_per_user_max`).
    pub fn remember_recent(mut self, keep_ms: u64, per_user_max: usize) -> Self {
        self.recent = super::recent::Recent::new(keep_ms, per_user_max);
        self
    }

    /// Notified after each commit that appended events to the outbox.
    pub fn appended(&self) -> Arc<Notify> {
        self.appended.clone()
    }

    /// Runs `f` on the event's queue and writes what it changed to the
    /// file before answering; a failed write drops the queue from memory
    /// (read again next time), so memory never runs ahead of the file.
    async fn with_queue<T>(
        &self,
        event_id: Id,
        f: impl FnOnce(&mut MemQueue, u64, &mut QueueWrites) -> T,
    ) -> Result<T, StoreError> {
        let slot = self.queues.entry(event_id).or_default().clone();
        let mut guard = slot.lock().await;
        let now = crate::domain::now_unix_ms();
        if guard.is_none() {
            let mut tickets = HashMap::new();
            for r in sqlx::query(
                "SELECT user_id, ticket_id, score, admit_no, expires_ms FROM queue_tickets WHERE event_id = ?",
            )
            .bind(event_id.raw())
            .fetch_all(&self.db.read)
            .await
            .map_err(db_err)?
            {
                let n = |c: &str| r.try_get::<i64, _>(c).map(|v| v.max(0) as u64).map_err(db_err);
                let ticket_id = Id::from_raw(r.try_get("ticket_id").map_err(db_err)?).map_err(corrupt)?;
                tickets.insert(
                    r.try_get::<String, _>("user_id").map_err(db_err)?,
                    StoredTicket {
                        ticket_id,
                        score: n("score")?,
                        admit_no: n("admit_no")?,
                        expires_ms: n("expires_ms")?,
                    },
                );
            }
            *guard = Some(MemQueue::from_tickets(tickets, now));
        }
        let Some(q) = guard.as_mut() else { return Err(corrupt("queue not loaded")) };
        let mut w = QueueWrites::default();
        let out = f(q, now, &mut w);
        if w.upsert.is_empty() && w.delete.is_empty() {
            return Ok(out);
        }
        if let Err(e) = self.write_queue(event_id, w).await {
            *guard = None;
            return Err(e);
        }
        Ok(out)
    }

    async fn write_queue(&self, event_id: Id, w: QueueWrites) -> Result<(), StoreError> {
        let mut tx = self.db.write.begin().await.map_err(db_err)?;
        for (user, t) in &w.upsert {
            sqlx::query(
                "INSERT INTO queue_tickets (event_id, user_id, ticket_id, score, admit_no, expires_ms) VALUES (?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (event_id, user_id) DO UPDATE SET ticket_id = excluded.ticket_id, score = excluded.score, \
                 admit_no = excluded.admit_no, expires_ms = excluded.expires_ms",
            )
            .bind(event_id.raw())
            .bind(user)
            .bind(t.ticket_id.raw())
            .bind(ms_i(t.score))
            .bind(ms_i(t.admit_no))
            .bind(ms_i(t.expires_ms))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        for user in &w.delete {
            sqlx::query("DELETE FROM queue_tickets WHERE event_id = ? AND user_id = ?")
                .bind(event_id.raw())
                .bind(user)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn event_mirror(&self, event_id: Id) -> Result<Option<Arc<Mutex<EventHot>>>, StoreError> {
        if let Some(m) = self.events.get(&event_id) {
            return Ok(Some(m.clone()));
        }
        let Some(hot) = self.read_event(event_id).await? else {
            return Ok(None);
        };
        // Another task may have loaded it meanwhile; the first one wins so
        // that nobody works on a copy that is not the mirror.
        let entry = self.events.entry(event_id).or_insert_with(|| Arc::new(Mutex::new(hot)));
        Ok(Some(entry.clone()))
    }

    async fn read_event(&self, event_id: Id) -> Result<Option<EventHot>, StoreError> {
        let Some(row) = sqlx::query("SELECT def FROM hot_events WHERE event_id = $1")
            .bind(event_id.raw())
            .fetch_optional(&self.db.read)
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let def: EventDef = serde_json::from_str(row.try_get("def").map_err(db_err)?).map_err(corrupt)?;
        let info = EventInfo::build(def, self.seats_max).map_err(corrupt)?;
        let mut seats = vec![SeatState::Available; info.map.len()];
        for r in sqlx::query("SELECT seat, state, order_id FROM hot_seats WHERE event_id = $1")
            .bind(event_id.raw())
            .fetch_all(&self.db.read)
            .await
            .map_err(db_err)?
        {
            let seat: i64 = r.try_get("seat").map_err(db_err)?;
            let order = Id::from_raw(r.try_get("order_id").map_err(db_err)?).map_err(corrupt)?;
            let state: String = r.try_get("state").map_err(db_err)?;
            let slot =
                seats.get_mut(seat as usize).ok_or_else(|| corrupt(format!("seat {seat} outside event {event_id}")))?;
            *slot = match state.as_str() {
                "held" => SeatState::Held(order),
                "sold" => SeatState::Sold(order),
                other => return Err(corrupt(format!("seat state {other}"))),
            };
        }
        let mut holds = HashMap::new();
        for r in sqlx::query("SELECT body FROM hot_holds WHERE event_id = $1")
            .bind(event_id.raw())
            .fetch_all(&self.db.read)
            .await
            .map_err(db_err)?
        {
            let o: HotOrder = serde_json::from_str(r.try_get("body").map_err(db_err)?).map_err(corrupt)?;
            holds.insert(o.order_id, o);
        }
        let mut paid = HashMap::new();
        for r in sqlx::query("SELECT order_id, body FROM hot_paid WHERE event_id = $1")
            .bind(event_id.raw())
            .fetch_all(&self.db.read)
            .await
            .map_err(db_err)?
        {
            let id = Id::from_raw(r.try_get("order_id").map_err(db_err)?).map_err(corrupt)?;
            let o: HotOrder = serde_json::from_str(r.try_get("body").map_err(db_err)?).map_err(corrupt)?;
            paid.insert(id, PaidOrder { user_id: o.user_id, seats: o.seats });
        }
        Ok(Some(EventHot::new(info, seats, holds, paid)))
    }

    async fn packet_mirror(&self, packet_id: Id) -> Result<Option<Arc<Mutex<PacketHot>>>, StoreError> {
        if let Some(m) = self.packets.get(&packet_id) {
            return Ok(Some(m.clone()));
        }
        let Some(row) = sqlx::query("SELECT def, status FROM hot_packets WHERE packet_id = $1")
            .bind(packet_id.raw())
            .fetch_optional(&self.db.read)
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let def: PacketDef = serde_json::from_str(row.try_get("def").map_err(db_err)?).map_err(corrupt)?;
        let status: String = row.try_get("status").map_err(db_err)?;
        let status = PacketStatus::parse(&status).ok_or_else(|| corrupt(format!("packet status {status}")))?;
        let mut grabs = Vec::new();
        for r in sqlx::query(
            "SELECT user_id, grab_id, part, amount, at_ms FROM hot_grabs WHERE packet_id = $1 ORDER BY part",
        )
        .bind(packet_id.raw())
        .fetch_all(&self.db.read)
        .await
        .map_err(db_err)?
        {
            grabs.push(Grab {
                grab_id: Id::from_raw(r.try_get("grab_id").map_err(db_err)?).map_err(corrupt)?,
                user_id: r.try_get("user_id").map_err(db_err)?,
                part: r.try_get::<i64, _>("part").map_err(db_err)? as u32,
                amount: Fen::new(r.try_get("amount").map_err(db_err)?),
                at_ms: r.try_get::<i64, _>("at_ms").map_err(db_err)?.max(0) as u64,
            });
        }
        let grabbed = grabs.iter().map(|g| g.user_id.clone()).collect();
        let hot = PacketHot { def: Arc::new(def), status, grabs, grabbed };
        let entry = self.packets.entry(packet_id).or_insert_with(|| Arc::new(Mutex::new(hot)));
        Ok(Some(entry.clone()))
    }
}

/// What one accepted seat op writes, computed under the mirror lock.
enum SeatWrite {
    Hold(HotOrder),
    Release { order: HotOrder, status: OrderStatus },
    Confirm { order: HotOrder },
    Refund { order_id: Id, user_id: String },
}

#[async_trait]
impl HotStore for MemoryStore {
    async fn queue_join(
        &self,
        event_id: Id,
        user_id: &str,
        rules: &QueueRules,
        new: (Id, u64),
    ) -> Result<Joined, StoreError> {
        self.with_queue(event_id, |q, now, w| q.join(user_id, rules, now, new, w)).await
    }

    async fn queue_ticket(
        &self,
        event_id: Id,
        user_id: &str,
        rules: &QueueRules,
    ) -> Result<Option<Ticket>, StoreError> {
        self.with_queue(event_id, |q, now, w| {
            q.advance(rules, now, w);
            q.standing(user_id, rules, now)
        })
        .await
    }

    async fn queue_leave(&self, event_id: Id, user_id: &str, rules: &QueueRules) -> Result<bool, StoreError> {
        self.with_queue(event_id, |q, now, w| {
            let left = q.leave(user_id, w);
            q.advance(rules, now, w);
            left
        })
        .await
    }

    async fn queue_advance(&self, event_id: Id, rules: &QueueRules) -> Result<u64, StoreError> {
        self.with_queue(event_id, |q, now, w| q.advance(rules, now, w)).await
    }

    async fn create_event(&self, def: &EventDef) -> Result<(), StoreError> {
        let info = EventInfo::build(def.clone(), self.seats_max).map_err(corrupt)?;
        let body = serde_json::to_string(def).map_err(corrupt)?;
        sqlx::query("INSERT INTO hot_events (event_id, def) VALUES ($1, $2)")
            .bind(def.event_id.raw())
            .bind(body)
            .execute(&self.db.write)
            .await
            .map_err(db_err)?;
        let seats = vec![SeatState::Available; info.map.len()];
        self.events
            .insert(def.event_id, Arc::new(Mutex::new(EventHot::new(info, seats, HashMap::new(), HashMap::new()))));
        Ok(())
    }

    async fn load_event(&self, event_id: Id) -> Result<Option<EventSnapshot>, StoreError> {
        let Some(m) = self.event_mirror(event_id).await? else {
            return Ok(None);
        };
        let hot = m.lock().await;
        Ok(Some(EventSnapshot {
            info: hot.info.clone(),
            seats: hot.seats.clone(),
            holds: hot.holds.clone(),
            paid: hot.paid.clone(),
            version: hot.version,
        }))
    }

    async fn event_info(&self, event_id: Id) -> Result<Option<Arc<EventInfo>>, StoreError> {
        let Some(m) = self.event_mirror(event_id).await? else {
            return Ok(None);
        };
        let info = m.lock().await.info.clone();
        Ok(Some(info))
    }

    async fn update_event(
        &self,
        event_id: Id,
        expected_rev: u64,
        settings: &EventSettings,
        opens_ms: Option<u64>,
    ) -> Result<Changed, StoreError> {
        let Some(m) = self.event_mirror(event_id).await? else {
            return Ok(Changed::Stale);
        };
        let mut hot = m.lock().await;
        if hot.info.def.rev != expected_rev || settings.rev <= expected_rev {
            return Ok(Changed::Stale);
        }
        if opens_ms.is_some_and(|at| hot.opened(at)) {
            return Ok(Changed::OnSale);
        }
        let info = hot.info.with_settings(settings);
        let body = serde_json::to_string(&info.def).map_err(corrupt)?;
        sqlx::query("UPDATE hot_events SET def = $1 WHERE event_id = $2")
            .bind(body)
            .bind(event_id.raw())
            .execute(&self.db.write)
            .await
            .map_err(db_err)?;
        hot.info = info;
        // Every actor's memory of the event is stale now.
        hot.version += 1;
        Ok(Changed::Done)
    }

    async fn replace_seats(&self, expected_rev: u64, def: &EventDef, opens_ms: u64) -> Result<Changed, StoreError> {
        let Some(m) = self.event_mirror(def.event_id).await? else {
            return Ok(Changed::Stale);
        };
        let mut hot = m.lock().await;
        if hot.info.def.rev != expected_rev || def.rev <= expected_rev {
            return Ok(Changed::Stale);
        }
        if hot.opened(opens_ms) {
            return Ok(Changed::OnSale);
        }
        let info = EventInfo::build(def.clone(), self.seats_max).map_err(corrupt)?;
        let body = serde_json::to_string(def).map_err(corrupt)?;
        sqlx::query("UPDATE hot_events SET def = $1 WHERE event_id = $2")
            .bind(body)
            .bind(def.event_id.raw())
            .execute(&self.db.write)
            .await
            .map_err(db_err)?;
        let version = hot.version + 1;
        let seats = vec![SeatState::Available; info.map.len()];
        *hot = EventHot::new(info, seats, HashMap::new(), HashMap::new());
        hot.version = version;
        Ok(Changed::Done)
    }

    async fn event_version(&self, event_id: Id) -> Result<Option<u64>, StoreError> {
        let Some(m) = self.event_mirror(event_id).await? else {
            return Ok(None);
        };
        let version = m.lock().await.version;
        Ok(Some(version))
    }

    async fn apply_seats_at(
        &self,
        event_id: Id,
        version: Option<u64>,
        ops: &[SeatOp],
        now_ms: u64,
    ) -> Result<SeatsApplied, StoreError> {
        let Some(m) = self.event_mirror(event_id).await? else {
            return Ok(SeatsApplied { outcomes: vec![OpOutcome::Rejected; ops.len()], version: None });
        };
        let mut hot = m.lock().await;
        if version.is_some_and(|v| v != hot.version) {
            return Ok(SeatsApplied { outcomes: vec![OpOutcome::Rejected; ops.len()], version: None });
        }
        let mut outcomes = Vec::with_capacity(ops.len());
        let mut writes = Vec::new();
        // Check and apply to the mirror op by op: a later op sees the effect
        // of an earlier one (a release then a hold of the same seat).
        for op in ops {
            // The sale window, by the hold's own time (one clock here).
            if let SeatOp::Hold(o) = op {
                if hot.info.def.sale_status(o.created_at_ms) != SaleStatus::OnSale {
                    outcomes.push(OpOutcome::OffSale);
                    continue;
                }
            }
            let write = hot.apply(op);
            outcomes.push(if write.is_some() { OpOutcome::Applied } else { OpOutcome::Rejected });
            writes.extend(write);
        }
        if writes.is_empty() {
            return Ok(SeatsApplied { outcomes, version: Some(hot.version) });
        }
        let info = hot.info.clone();
        // A refunded order's body is in `hot_paid` only: read it before the
        // commit deletes it, to remember the order as refunded.
        let mut refunded = Vec::new();
        for w in &writes {
            if let SeatWrite::Refund { order_id, .. } = w {
                refunded.extend(self.order(*order_id).await?.map(|(o, _)| o));
            }
        }
        if let Err(e) = self.committer.commit(seat_writes(&info, &writes, now_ms)?).await {
            drop(hot);
            self.events.remove(&event_id);
            return Err(e);
        }
        hot.version += 1;
        let version = Some(hot.version);
        let mut due = lock_due(&self.due);
        for w in &writes {
            match w {
                SeatWrite::Hold(o) => {
                    due.insert(o.expires_at_ms, DueItem::Hold { event_id, order_id: o.order_id });
                }
                SeatWrite::Release { order, .. } | SeatWrite::Confirm { order } => {
                    due.remove(&DueItem::Hold { event_id, order_id: order.order_id });
                }
                SeatWrite::Refund { .. } => {}
            }
        }
        drop(due);
        for w in writes {
            match w {
                SeatWrite::Hold(o) => self.recent.held(&o),
                SeatWrite::Release { order, status } => self.recent.closed(order, status),
                SeatWrite::Confirm { .. } | SeatWrite::Refund { .. } => {}
            }
        }
        for order in refunded {
            self.recent.closed(order, OrderStatus::Refunded);
        }
        Ok(SeatsApplied { outcomes, version })
    }

    async fn order(&self, order_id: Id) -> Result<Option<(HotOrder, OrderStatus)>, StoreError> {
        let row = sqlx::query(
            "SELECT body, 0 AS paid FROM hot_holds WHERE order_id = $1 \
             UNION ALL SELECT body, 1 AS paid FROM hot_paid WHERE order_id = $1",
        )
        .bind(order_id.raw())
        .fetch_optional(&self.db.read)
        .await
        .map_err(db_err)?;
        let Some(r) = row else {
            let closed = self.recent.closed_order(order_id);
            return Ok(closed.map(|c| (c.order, c.status)));
        };
        let order: HotOrder = serde_json::from_str(r.try_get("body").map_err(db_err)?).map_err(corrupt)?;
        let paid: i64 = r.try_get("paid").map_err(db_err)?;
        Ok(Some((order, if paid == 1 { OrderStatus::Paid } else { OrderStatus::PendingPayment })))
    }

    async fn recent_orders(
        &self,
        user_id: &str,
        before: Option<Id>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<(HotOrder, OrderStatus)>, StoreError> {
        super::recent::page_of(self.recent.of_user(user_id, now_ms), before, limit, |id| self.order(id)).await
    }

    async fn recent_grabs(&self, user_id: &str, now_ms: u64) -> Result<Vec<RecentGrab>, StoreError> {
        Ok(self.recent.grabs_of(user_id, now_ms))
    }

    async fn void_packet(&self, packet_id: Id) -> Result<Voided, StoreError> {
        // A create call here has returned only once its transaction ended:
        // the row is there or never will be.
        Ok(match self.packet_mirror(packet_id).await? {
            Some(_) => Voided::Exists,
            None => Voided::Voided,
        })
    }

    async fn create_packet(&self, def: &PacketDef) -> Result<(), StoreError> {
        let body = serde_json::to_string(def).map_err(corrupt)?;
        let set = WriteSet {
            stmts: vec![stmt(
                "INSERT INTO hot_packets (packet_id, status, expires_at_ms, def) VALUES (?, 'active', ?, ?)",
                vec![def.packet_id.raw().into(), ms_i(def.expires_at_ms).into(), body.into()],
            )],
            events: vec![DomainEvent::PacketCreated {
                packet_id: def.packet_id,
                sender: def.sender.clone(),
                kind: def.kind,
                total: def.total,
                count: def.count,
                expires_at_ms: def.expires_at_ms,
                at_ms: def.created_at_ms,
            }],
        };
        self.committer.commit(set).await?;
        self.packets.insert(
            def.packet_id,
            Arc::new(Mutex::new(PacketHot {
                def: Arc::new(def.clone()),
                status: PacketStatus::Active,
                grabs: Vec::new(),
                grabbed: HashSet::new(),
            })),
        );
        lock_due(&self.due).insert(def.expires_at_ms, DueItem::Packet { packet_id: def.packet_id });
        Ok(())
    }

    async fn load_packet(&self, packet_id: Id) -> Result<Option<PacketSnapshot>, StoreError> {
        let Some(m) = self.packet_mirror(packet_id).await? else {
            return Ok(None);
        };
        let hot = m.lock().await;
        Ok(Some(PacketSnapshot { def: hot.def.clone(), status: hot.status, grabs: hot.grabs.clone() }))
    }

    async fn packet_progress(&self, packet_id: Id) -> Result<Option<(u32, PacketStatus)>, StoreError> {
        let Some(m) = self.packet_mirror(packet_id).await? else {
            return Ok(None);
        };
        let hot = m.lock().await;
        Ok(Some((hot.grabs.len() as u32, hot.status)))
    }

    async fn grab_batch(&self, packet_id: Id, grabs: &[Grab], now_ms: u64) -> Result<Vec<OpOutcome>, StoreError> {
        let Some(m) = self.packet_mirror(packet_id).await? else {
            return Ok(vec![OpOutcome::Rejected; grabs.len()]);
        };
        let mut hot = m.lock().await;
        let mut outcomes = Vec::with_capacity(grabs.len());
        let first_new = hot.grabs.len();
        for g in grabs {
            let next = hot.grabs.len();
            let ok = hot.status == PacketStatus::Active
                && now_ms < hot.def.expires_at_ms
                && g.part as usize == next
                && hot.def.parts.get(next) == Some(&g.amount)
                && !hot.grabbed.contains(&g.user_id);
            if ok {
                hot.grabbed.insert(g.user_id.clone());
                hot.grabs.push(g.clone());
                if hot.grabs.len() == hot.def.parts.len() {
                    hot.status = PacketStatus::Empty;
                }
            }
            outcomes.push(if ok { OpOutcome::Applied } else { OpOutcome::Rejected });
        }
        if hot.grabs.len() == first_new {
            return Ok(outcomes);
        }
        let new = &hot.grabs[first_new..];
        let rows = new
            .iter()
            .map(|g| {
                vec![
                    packet_id.raw().into(),
                    g.user_id.as_str().into(),
                    g.grab_id.raw().into(),
                    i64::from(g.part).into(),
                    g.amount.get().into(),
                    ms_i(g.at_ms).into(),
                ]
            })
            .collect();
        let mut stmts = insert_rows("hot_grabs (packet_id, user_id, grab_id, part, amount, at_ms)", rows);
        if hot.status == PacketStatus::Empty {
            stmts.push(stmt(
                "UPDATE hot_packets SET status = 'empty' WHERE packet_id = ?",
                vec![packet_id.raw().into()],
            ));
        }
        let events = new
            .iter()
            .map(|g| DomainEvent::PacketGrabbed {
                grab_id: g.grab_id,
                packet_id,
                sender: hot.def.sender.clone(),
                user_id: g.user_id.clone(),
                amount: g.amount,
                at_ms: g.at_ms,
            })
            .collect();
        if let Err(e) = self.committer.commit(WriteSet { stmts, events }).await {
            drop(hot);
            self.packets.remove(&packet_id);
            return Err(e);
        }
        for g in &hot.grabs[first_new..] {
            self.recent.grabbed(&g.user_id, RecentGrab::of(g, &hot.def.sender), g.at_ms);
        }
        Ok(outcomes)
    }

    async fn expire_packet(&self, packet_id: Id, now_ms: u64) -> Result<Option<Fen>, StoreError> {
        let Some(m) = self.packet_mirror(packet_id).await? else {
            return Ok(None);
        };
        let mut hot = m.lock().await;
        if hot.status == PacketStatus::Expired || now_ms < hot.def.expires_at_ms {
            return Ok(None);
        }
        let remaining = Fen::new(hot.def.parts[hot.grabs.len()..].iter().map(|p| p.get()).sum());
        let set = WriteSet {
            stmts: vec![stmt(
                "UPDATE hot_packets SET status = 'expired' WHERE packet_id = ?",
                vec![packet_id.raw().into()],
            )],
            events: vec![DomainEvent::PacketExpired {
                packet_id,
                sender: hot.def.sender.clone(),
                remaining,
                at_ms: now_ms,
            }],
        };
        if let Err(e) = self.committer.commit(set).await {
            drop(hot);
            self.packets.remove(&packet_id);
            return Err(e);
        }
        hot.status = PacketStatus::Expired;
        lock_due(&self.due).remove(&DueItem::Packet { packet_id });
        Ok(Some(remaining))
    }

    async fn ready(&self) -> bool {
        self.db.ping().await
    }

    async fn grab_direct(
        &self,
        packet_id: Id,
        user_id: &str,
        grab_id: Id,
        now_ms: u64,
    ) -> Result<DirectGrab, StoreError> {
        // Decide on the mirror, then apply through `grab_batch`, which
        // re-checks; a lost race (another grab took the part) decides again.
        for _ in 0..DIRECT_ROUNDS_MAX {
            let Some(m) = self.packet_mirror(packet_id).await? else { return Ok(DirectGrab::Unknown) };
            let grab = {
                let hot = m.lock().await;
                if let Some(g) = hot.grabs.iter().find(|g| g.user_id == user_id) {
                    return Ok(DirectGrab::Already(g.amount));
                }
                if hot.status == PacketStatus::Expired || now_ms >= hot.def.expires_at_ms {
                    return Ok(DirectGrab::Expired);
                }
                let part = hot.grabs.len();
                let Some(amount) = hot.def.parts.get(part).copied() else { return Ok(DirectGrab::Empty) };
                Grab { grab_id, user_id: user_id.to_string(), part: part as u32, amount, at_ms: now_ms }
            };
            if self.grab_batch(packet_id, std::slice::from_ref(&grab), now_ms).await? == [OpOutcome::Applied] {
                return Ok(DirectGrab::Granted(grab));
            }
        }
        Err(StoreError::Unavailable("grab contended past its retries".into()))
    }

    async fn claim_due(&self, now_ms: u64, limit: usize, lease_ms: u64) -> Result<Vec<DueItem>, StoreError> {
        Ok(lock_due(&self.due).claim(now_ms, limit, lease_ms))
    }
}

/// The writes of accepted seat ops, in order.
fn seat_writes(info: &EventInfo, writes: &[SeatWrite], now_ms: u64) -> Result<WriteSet, StoreError> {
    let e = info.def.event_id.raw();
    let mut set = WriteSet::default();
    // Consecutive holds share multi-row statements; a release or confirm
    // flushes the holds before it, so the file sees the ops in order.
    let mut holds: Vec<&HotOrder> = Vec::new();
    for w in writes {
        set.events.push(seat_event(info, w, now_ms));
        match w {
            SeatWrite::Hold(o) => holds.push(o),
            _ => {
                hold_rows(&mut set, e, &std::mem::take(&mut holds))?;
                settle_rows(&mut set, e, w)?;
            }
        }
    }
    hold_rows(&mut set, e, &holds)?;
    Ok(set)
}

/// The domain event a seat write publishes.
fn seat_event(info: &EventInfo, write: &SeatWrite, now_ms: u64) -> DomainEvent {
    let event_id = info.def.event_id;
    match write {
        SeatWrite::Hold(o) => DomainEvent::OrderHeld {
            order_id: o.order_id,
            event_id,
            user_id: o.user_id.clone(),
            amount: o.amount,
            created_at_ms: o.created_at_ms,
            expires_at_ms: o.expires_at_ms,
            seats: order_seats(info, &o.seats),
            attendees: o.attendees.clone(),
        },
        SeatWrite::Release { order, status } => DomainEvent::OrderReleased {
            order_id: order.order_id,
            event_id,
            user_id: order.user_id.clone(),
            status: *status,
            at_ms: now_ms,
        },
        SeatWrite::Confirm { order } => DomainEvent::OrderConfirmed {
            order_id: order.order_id,
            event_id,
            user_id: order.user_id.clone(),
            at_ms: now_ms,
        },
        SeatWrite::Refund { order_id, user_id } => DomainEvent::OrderReleased {
            order_id: *order_id,
            event_id,
            user_id: user_id.clone(),
            status: OrderStatus::Refunded,
            at_ms: now_ms,
        },
    }
}

/// The rows of a release, confirm or refund (holds go through `hold_rows`).
fn settle_rows(set: &mut WriteSet, e: i64, write: &SeatWrite) -> Result<(), StoreError> {
    match write {
        SeatWrite::Hold(_) => {}
        SeatWrite::Release { order, .. } => {
            let o = order.order_id.raw();
            set.stmts.push(stmt("DELETE FROM hot_seats WHERE event_id = ? AND order_id = ?", vec![e.into(), o.into()]));
            set.stmts.push(stmt("DELETE FROM hot_holds WHERE order_id = ?", vec![o.into()]));
        }
        SeatWrite::Confirm { order } => {
            let o = order.order_id.raw();
            let body = serde_json::to_string(order).map_err(corrupt)?;
            set.stmts.push(stmt(
                "UPDATE hot_seats SET state = 'sold' WHERE event_id = ? AND order_id = ?",
                vec![e.into(), o.into()],
            ));
            set.stmts.push(stmt("DELETE FROM hot_holds WHERE order_id = ?", vec![o.into()]));
            set.stmts.push(stmt(
                "INSERT INTO hot_paid (order_id, event_id, body) VALUES (?, ?, ?)",
                vec![o.into(), e.into(), body.into()],
            ));
        }
        SeatWrite::Refund { order_id, .. } => {
            let o = order_id.raw();
            set.stmts.push(stmt("DELETE FROM hot_seats WHERE event_id = ? AND order_id = ?", vec![e.into(), o.into()]));
            set.stmts.push(stmt("DELETE FROM hot_paid WHERE order_id = ?", vec![o.into()]));
        }
    }
    Ok(())
}

/// Holds: their seats as held, and the orders.
fn hold_rows(set: &mut WriteSet, event_id: i64, holds: &[&HotOrder]) -> Result<(), StoreError> {
    let seats = holds
        .iter()
        .flat_map(|o| {
            o.seats.iter().map(|s| vec![event_id.into(), i64::from(*s).into(), "held".into(), o.order_id.raw().into()])
        })
        .collect();
    set.stmts.extend(insert_rows("hot_seats (event_id, seat, state, order_id)", seats));
    let mut rows = Vec::with_capacity(holds.len());
    for o in holds {
        let body = serde_json::to_string(o).map_err(corrupt)?;
        rows.push(vec![o.order_id.raw().into(), event_id.into(), ms_i(o.expires_at_ms).into(), body.into()]);
    }
    set.stmts.extend(insert_rows("hot_holds (order_id, event_id, expires_at_ms, body)", rows));
    Ok(())
}
