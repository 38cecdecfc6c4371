//! Events, seats, holds and orders: creating an event, reading it, holding
//! seats, cancelling, confirming and refunding through the event's actor,
//! and settling what is due.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::oneshot;

use super::input::{Caller, NewEvent, NewHold, CATEGORY_ID_LEN_MAX, ID_NUMBER_LEN_MAX};
use super::{check_text, invalid, next_cursor, Engine};
use crate::actors::event::{CategoryView, EventMsg, HoldRequest, ReleaseReason, SeatView, Selection};
use crate::actors::packet::PacketMsg;
use crate::domain::{
    now_unix_ms, Category, EventDef, EventInfo, Fen, Id, Limits, OrderStatus, SaleStatus, SeatMap, UserId, WaitingRoom,
};
use crate::error::{EngineError, Entity};
use crate::store::DueItem;
use crate::views::OrderView;

/// `waiting_room.pre_queue_s` and `admission_ttl_s` when not given (API.md).
const WAITING_PRE_QUEUE_S_DEFAULT: u32 = 600;
const WAITING_ADMISSION_TTL_S_DEFAULT: u32 = 300;

#[derive(Clone, Debug, Serialize)]
pub struct EventView {
    pub event_id: Id,
    pub name: String,
    pub venue: String,
    pub starts_at: DateTime<Utc>,
    pub hold_ttl_s: u32,
    pub categories: Vec<CategoryView>,
    pub limits: Limits,
    pub status: SaleStatus,
    pub on_sale_at: Option<DateTime<Utc>>,
    pub sale_ends_at: Option<DateTime<Utc>>,
    pub cancellation: Option<super::lifecycle::CancellationView>,
    pub waiting_room: Option<WaitingRoom>,
}

impl Engine {
    pub async fn create_event(&self, input: NewEvent) -> Result<(Id, usize), EngineError> {
        let ec = &self.cfg.events;
        check_text("name", &input.name, ec.name_len_max)?;
        check_text("venue", &input.venue, ec.name_len_max)?;
        if input.categories.is_empty() || input.categories.len() > ec.categories_max {
            return Err(invalid(format!("an event needs 1-{} categories", ec.categories_max)));
        }
        let mut seen = HashSet::new();
        let mut categories = Vec::with_capacity(input.categories.len());
        for c in input.categories {
            check_text("category id", &c.id, CATEGORY_ID_LEN_MAX)?;
            check_text("category name", &c.name, ec.name_len_max)?;
            if !seen.insert(c.id.clone()) {
                return Err(invalid(format!("category {} appears twice", c.id)));
            }
            // Free tickets are refused: an order completes through a
            // payment, and a payment of 0 fen moves no money to confirm it.
            if c.price < 1 || c.price > ec.price_max_fen {
                return Err(invalid(format!(
                    "price must be 1-{} fen (free tickets are not supported)",
                    ec.price_max_fen
                )));
            }
            categories.push(Category { id: c.id, name: c.name, price: Fen::new(c.price) });
        }
        let hold_ttl_s = input.hold_ttl_s.unwrap_or(ec.hold_ttl_s_default);
        if hold_ttl_s == 0 || hold_ttl_s > ec.hold_ttl_s_max {
            return Err(invalid(format!("hold_ttl_s must be 1-{}", ec.hold_ttl_s_max)));
        }
        let limits = Limits {
            per_order: input.limits.as_ref().and_then(|l| l.per_order).unwrap_or(ec.per_order_default),
            per_user: input.limits.as_ref().and_then(|l| l.per_user).unwrap_or(ec.per_user_default),
        };
        if limits.per_order == 0
            || limits.per_user == 0
            || limits.per_order > ec.seats_max
            || limits.per_user > ec.seats_max
        {
            return Err(invalid(format!("limits must be 1-{}", ec.seats_max)));
        }
        // To the millisecond, as every time is stored and compared.
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_else(Utc::now);
        let on_sale_at = input.on_sale_at.unwrap_or(now);
        let sale_ends_at = input.sale_ends_at.unwrap_or(input.starts_at);
        if sale_ends_at <= on_sale_at || sale_ends_at <= now {
            return Err(invalid(
                "sale_ends_at (default: starts_at) must be after on_sale_at (default: now) and in the future",
            ));
        }
        let waiting_room = input.waiting_room.map(|w| WaitingRoom {
            admit_per_s: w.admit_per_s,
            active_max: w.active_max,
            pre_queue_s: w.pre_queue_s.unwrap_or(WAITING_PRE_QUEUE_S_DEFAULT),
            admission_ttl_s: w.admission_ttl_s.unwrap_or(WAITING_ADMISSION_TTL_S_DEFAULT),
        });
        if let Some(w) = &waiting_room {
            super::queue::check_waiting_room(w, &self.cfg.waiting_room)?;
        }
        let cat_ids: Vec<&str> = categories.iter().map(|c| c.id.as_str()).collect();
        let map = match (input.layout, input.seats) {
            (Some(layout), None) => SeatMap::from_layout(&layout, &cat_ids, ec.seats_max),
            (None, Some(seats)) => SeatMap::from_seats(seats, &cat_ids, ec.seats_max),
            _ => return Err(invalid("give exactly one of layout or seats")),
        }
        .map_err(|e| invalid(e.to_string()))?;
        let def = EventDef {
            event_id: self.ids.next(0),
            name: input.name,
            venue: input.venue,
            starts_at: input.starts_at,
            hold_ttl_s,
            limits,
            categories,
            seats: map.seats().to_vec(),
            on_sale_at: Some(on_sale_at),
            sale_ends_at: Some(sale_ends_at),
            rev: 0,
            map_rev: 0,
            paused: false,
            cancellation: None,
            waiting_room,
        };
        let count = map.len();
        self.check_hot()?;
        // The durable store first: a rebuild knows every event Redis had.
        self.durable.save_event(&def).await?;
        self.store.create_event(&def).await?;
        let id = def.event_id;
        self.infos.insert(id, Arc::new(EventInfo { def, map }));
        crate::telemetry::record_ids(&[("event_id", id)]);
        Ok((id, count))
    }

    /// An event as its actor decides on it (this node's memory, checked
    /// against the store's version, so another node's change shows).
    pub async fn event(&self, event_id: Id) -> Result<EventView, EngineError> {
        let (tx, rx) = oneshot::channel();
        let (info, categories) = self.ask_event(event_id, EventMsg::View(tx), rx).await?;
        self.infos.insert(event_id, info.clone());
        self.event_view(&info, categories).await
    }

    pub(crate) async fn event_view(
        &self,
        info: &EventInfo,
        categories: Vec<CategoryView>,
    ) -> Result<EventView, EngineError> {
        let def = &info.def;
        Ok(EventView {
            event_id: def.event_id,
            name: def.name.clone(),
            venue: def.venue.clone(),
            starts_at: def.starts_at,
            hold_ttl_s: def.hold_ttl_s,
            categories,
            limits: def.limits,
            status: def.sale_status(now_unix_ms()),
            on_sale_at: def.on_sale_at,
            sale_ends_at: def.sale_ends_at,
            cancellation: self.cancellation(def).await?,
            waiting_room: def.waiting_room,
        })
    }

    pub async fn seats(&self, event_id: Id, section: Option<String>) -> Result<Vec<SeatView>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.ask_event(event_id, EventMsg::Seats { section, reply }, rx).await
    }

    pub async fn hold(&self, user_id: &UserId, input: NewHold) -> Result<OrderView, EngineError> {
        let ec = &self.cfg.events;
        if input.attendees.len() > ec.attendees_max {
            return Err(invalid(format!("at most {} attendees", ec.attendees_max)));
        }
        for a in &input.attendees {
            check_text("attendee name", &a.name, ec.name_len_max)?;
            check_text("attendee id_number", &a.id_number, ID_NUMBER_LEN_MAX)?;
        }
        if let Selection::Named(seats) = &input.selection {
            if seats.is_empty() {
                return Err(invalid("name at least one seat"));
            }
        }
        if self.info(input.event_id).await?.def.waiting_room.is_some() {
            self.check_admission(input.event_id, user_id, input.admission.as_deref())?;
        }
        self.check_outbox()?;
        let req = HoldRequest {
            order_id: self.ids.next_for_user(user_id),
            user_id: user_id.to_string(),
            selection: input.selection,
            attendees: input.attendees,
            now_ms: now_unix_ms(),
        };
        crate::telemetry::record_ids(&[("order_id", req.order_id), ("event_id", input.event_id)]);
        let (tx, rx) = oneshot::channel();
        let result = self.ask_event(input.event_id, EventMsg::Hold(req, tx), rx).await?;
        let outcome = match &result {
            Ok(_) => "held",
            Err(EngineError::SoldOut { .. }) => "sold_out",
            Err(EngineError::SeatUnavailable(_)) => "seat_unavailable",
            Err(EngineError::LimitExceeded { .. }) => "limit_exceeded",
            Err(_) => "refused",
        };
        self.metrics.holds.with_label_values(&[outcome]).inc();
        result
    }

    /// An order by id, for its owner or an admin; 404 for anyone else.
    pub async fn order(&self, caller: &Caller, order_id: Id) -> Result<OrderView, EngineError> {
        let view = self.live_order(order_id).await?;
        if !caller.admin && view.user_id != caller.user_id {
            return Err(EngineError::NotFound(Entity::Order));
        }
        Ok(view)
    }

    /// The user's orders, newest first; `next` is the cursor for the page
    /// after this one.
    pub async fn orders(
        &self,
        user_id: &UserId,
        before: Option<Id>,
        limit: Option<u32>,
    ) -> Result<(Vec<OrderView>, Option<Id>), EngineError> {
        let limit = self.page_limit(limit)?;
        let records = self.durable.orders_of(user_id, before, limit).await?;
        let mut views: Vec<OrderView> = records.iter().map(OrderView::from_record).collect();
        // What the hot store knows of the user's recent orders wins over the
        // durable store's older word (or its silence, while the workers lag).
        match self.store.recent_orders(user_id.as_str(), before, limit as usize, now_unix_ms()).await {
            Ok(recent) => {
                for (hot, status) in recent {
                    let info = self.info(hot.event_id).await?;
                    let view = OrderView::from_hot(&hot, &info, status);
                    match views.iter_mut().find(|v| v.order_id == view.order_id) {
                        Some(v) => *v = view,
                        None => views.push(view),
                    }
                }
                views.sort_by_key(|v| std::cmp::Reverse(v.order_id));
                views.truncate(limit as usize);
            }
            Err(e) => tracing::warn!(error = %e, "recent orders unavailable; listing the durable store's"),
        }
        let next = next_cursor(&views, limit, |v| v.order_id);
        Ok((views, next))
    }

    pub async fn cancel(&self, caller: &Caller, order_id: Id) -> Result<OrderView, EngineError> {
        let current = self.order(caller, order_id).await?;
        if current.status != OrderStatus::PendingPayment {
            return Err(EngineError::OrderNotPending { status: current.status });
        }
        let why = ReleaseReason::Cancel { user_id: (!caller.admin).then(|| caller.user_id.to_string()) };
        let (reply, rx) = oneshot::channel();
        let msg = EventMsg::Release { order_id, why, now_ms: now_unix_ms(), reply };
        let released = match self.ask_event(current.event_id, msg, rx).await? {
            // Released between our read and the actor's decision.
            Err(EngineError::NotFound(_)) => Err(EngineError::OrderNotPending { status: OrderStatus::Expired }),
            other => other,
        }?;
        self.close_payments_of(order_id).await;
        Ok(released)
    }

    /// Held → sold; used by payments. Refused for money taken at or after
    /// the hold's expiry (`paid_at_ms`, the channel's time).
    pub async fn confirm(&self, event_id: Id, order_id: Id, paid_at_ms: u64) -> Result<OrderView, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.ask_event(event_id, EventMsg::Confirm { order_id, paid_at_ms, reply }, rx).await?
    }

    /// Sold → available after the order's money went back.
    pub async fn refund_seats(&self, event_id: Id, order_id: Id) -> Result<OrderView, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.ask_event(event_id, EventMsg::Refund { order_id, reply }, rx).await?
    }

    /// An order as it stands now: the hot store knows live holds and paid
    /// orders before the workers persist them; released ones are read from
    /// the durable store. No owner check.
    pub(crate) async fn live_order(&self, order_id: Id) -> Result<OrderView, EngineError> {
        // A lost Redis holds nothing: the guess below would be wrong.
        self.check_hot()?;
        if let Some((hot, status)) = self.store.order(order_id).await? {
            let info = self.info(hot.event_id).await?;
            return Ok(OrderView::from_hot(&hot, &info, status));
        }
        let Some(r) = self.durable.order(order_id).await? else {
            return Err(EngineError::NotFound(Entity::Order));
        };
        let mut view = OrderView::from_record(&r);
        // The hot store keeps every live hold and paid order; one it no
        // longer has was released, even if the workers have not persisted
        // that yet: expired past its deadline, cancelled before it, and a
        // paid one refunded.
        view.status = match r.status {
            OrderStatus::PendingPayment if now_unix_ms() >= r.expires_at_ms => OrderStatus::Expired,
            OrderStatus::PendingPayment => OrderStatus::Cancelled,
            OrderStatus::Paid => OrderStatus::Refunded,
            s => s,
        };
        Ok(view)
    }

    /// Settles up to `limit` due holds and packets through their actors.
    pub async fn settle_due(&self, limit: usize) -> Result<usize, EngineError> {
        if !self.hot_intact() {
            return Ok(0);
        }
        let now_ms = now_unix_ms();
        let lease_ms = self.cfg.workers.due_lease_ms;
        let due = self.store.claim_due(now_ms, limit, lease_ms).await?;
        let (mut holds, mut packets) = (Vec::new(), Vec::new());
        // Send everything first so each actor decides its share as one
        // batch, then wait for the answers.
        for item in &due {
            match *item {
                DueItem::Hold { event_id, order_id } => {
                    // Close the order's payments at their channels first:
                    // money taken in time is found and buys the seats, and
                    // none can come after. Not all settled: next round.
                    if !self.settle_payments_before_release(order_id).await {
                        continue;
                    }
                    let (reply, rx) = oneshot::channel();
                    let msg = EventMsg::Release { order_id, why: ReleaseReason::Expire, now_ms, reply };
                    if self.actors.send_event(event_id, msg).await? {
                        holds.push(rx);
                    }
                }
                DueItem::Packet { packet_id } => {
                    let (reply, rx) = oneshot::channel();
                    if self.actors.send_packet(packet_id, PacketMsg::Expire { reply }).await? {
                        packets.push(rx);
                    }
                }
            }
        }
        for rx in holds {
            if let Ok(Err(e)) = rx.await {
                tracing::debug!(error = %e, "due hold not settled");
            }
        }
        for rx in packets {
            if let Ok(Err(e)) = rx.await {
                tracing::debug!(error = %e, "due packet not settled");
            }
        }
        Ok(due.len())
    }
}

#[async_trait::async_trait]
impl crate::workers::Sweep for Engine {
    fn intake_open(&self) -> bool {
        Engine::intake_open(self)
    }

    async fn settle_due(&self, limit: usize) -> Result<usize, EngineError> {
        Engine::settle_due(self, limit).await
    }

    async fn resume_cancellations(&self) -> Result<(), EngineError> {
        Engine::resume_cancellations(self).await
    }
}
