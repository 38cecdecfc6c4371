//! An event's life after its creation (issue 18): operator changes (edit,
//! pause, resume), cancellation and its refund fan-out, the public
//! catalogue, and what operators see (an event's stats, the order search).
//!
//! A change is compare-and-set on the definition's revision in the hot
//! store, which bumps the event's version: every node's actor reloads
//! before its next commit, so a hold decided on the old definition is
//! never written. The durable store records it after the hot store took
//! it (never a change the hot store refused); a node that dies between
//! the two leaves the durable store one change behind until the change is
//! asked for again (every operator action is idempotent and writes the
//! hot store's word back when there is nothing to change).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::oneshot;

use super::input::{Caller, NewLimits, CATEGORY_ID_LEN_MAX, REASON_LEN_MAX};
use super::{check_text, invalid, next_cursor, Engine};
use crate::actors::event::{CategoryCount, CategoryView, EventMsg, OpenOrders, ReleaseReason};
use crate::config::EventConfig;
use crate::domain::{
    now_unix_ms, Cancellation, EventDef, EventInfo, EventSettings, Fen, Id, OrderStatus, SaleStatus, SeatDef, SeatMap,
    SectionLayout,
};
use crate::durable::lifecycle::{CatalogueQuery, OrderQuery};
use crate::durable::payments::{PaymentStatus, RefundState};
use crate::error::{EngineError, Entity};
use crate::store::Changed;
use crate::views::OrderView;

/// Attempts of a change that keeps meeting another operator's.
const CHANGE_TRIES_MAX: usize = 4;

/// A category's new price (`PATCH`): prices change only before the sale.
#[derive(Clone, Debug)]
pub struct PriceChange {
    pub id: String,
    pub price: i64,
}

/// `PATCH /v1/admin/events/{id}`: what is given changes, the rest stays.
#[derive(Clone, Debug, Default)]
pub struct EventPatch {
    pub name: Option<String>,
    pub venue: Option<String>,
    pub hold_ttl_s: Option<u32>,
    pub limits: Option<NewLimits>,
    pub on_sale_at: Option<DateTime<Utc>>,
    pub sale_ends_at: Option<DateTime<Utc>>,
    pub categories: Option<Vec<PriceChange>>,
    /// A new seat map (one of the two), only while scheduled and empty.
    pub layout: Option<Vec<SectionLayout>>,
    pub seats: Option<Vec<SeatDef>>,
}

/// A cancellation as shown on its event.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CancellationView {
    pub reason: String,
    pub at: DateTime<Utc>,
    pub refunds_total: u64,
    pub refunds_done: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CatalogueItem {
    pub event_id: Id,
    pub name: String,
    pub venue: String,
    pub starts_at: DateTime<Utc>,
    pub on_sale_at: DateTime<Utc>,
    pub status: SaleStatus,
    pub categories: Vec<CategoryView>,
}

#[derive(Clone, Debug, Serialize, Default, PartialEq, Eq)]
pub struct OrdersByStatus {
    pub pending_payment: u64,
    pub paid: u64,
    pub cancelled: u64,
    pub expired: u64,
    pub refunded: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EventStats {
    pub categories: Vec<CategoryCount>,
    pub orders: OrdersByStatus,
    /// Fen kept from paid orders (refunded ones not counted).
    pub revenue: Fen,
    /// Fen given back for refunded orders.
    pub refunded: Fen,
    pub last_minute_holds: u64,
    pub last_minute_payments: u64,
}

fn cancelled(def: &EventDef) -> Option<EngineError> {
    def.cancellation.as_ref().map(|c| EngineError::EventCancelled { reason: c.reason.clone() })
}

/// A change to an event: its new settings, and a new seat map if any.
struct Change {
    settings: EventSettings,
    map: Option<SeatMap>,
    /// Prices change: only before the opening, by the hot store's clock,
    /// and while no seat is held or sold (as a new seat map).
    prices: bool,
}

impl From<EventSettings> for Change {
    fn from(settings: EventSettings) -> Self {
        Change { settings, map: None, prices: false }
    }
}

fn on_sale() -> EngineError {
    EngineError::conflict(
        "event_on_sale",
        "prices and the seat map change only before on_sale_at and while no seat is held or sold",
    )
}

/// `patch` applied to `def`'s settings, checked.
fn patched(def: &EventDef, now_ms: u64, patch: &EventPatch, ec: &EventConfig) -> Result<Change, EngineError> {
    // Malformed input is 400 whatever the event's state (the seat map
    // names the event's own categories, which a change never renames).
    if patch.categories.as_ref().is_some_and(|p| p.is_empty() || p.len() > ec.categories_max) {
        return Err(invalid(format!("categories: 1-{} prices", ec.categories_max)));
    }
    for p in patch.categories.iter().flatten() {
        check_text("category id", &p.id, CATEGORY_ID_LEN_MAX)?;
        if p.price < 1 || p.price > ec.price_max_fen {
            return Err(invalid(format!("price must be 1-{} fen", ec.price_max_fen)));
        }
    }
    for section in
        patch.layout.iter().flatten().map(|l| &l.name).chain(patch.seats.iter().flatten().map(|s| &s.section))
    {
        check_text("section name", section, ec.name_len_max)?;
    }
    let cats: Vec<&str> = def.categories.iter().map(|c| c.id.as_str()).collect();
    let map = match (&patch.layout, &patch.seats) {
        (None, None) => None,
        (Some(_), Some(_)) => return Err(invalid("give at most one of layout or seats")),
        (Some(layout), None) => Some(SeatMap::from_layout(layout, &cats, ec.seats_max)),
        (None, Some(seats)) => Some(SeatMap::from_seats(seats.clone(), &cats, ec.seats_max)),
    };
    let map = map.transpose().map_err(|e| invalid(e.to_string()))?;
    let scheduled = now_ms < def.sale_window_ms().0;
    let mut s = def.settings();
    if let Some(name) = &patch.name {
        check_text("name", name, ec.name_len_max)?;
        s.name = name.clone();
    }
    if let Some(venue) = &patch.venue {
        check_text("venue", venue, ec.name_len_max)?;
        s.venue = venue.clone();
    }
    if let Some(ttl) = patch.hold_ttl_s {
        if ttl == 0 || ttl > ec.hold_ttl_s_max {
            return Err(invalid(format!("hold_ttl_s must be 1-{}", ec.hold_ttl_s_max)));
        }
        s.hold_ttl_s = ttl;
    }
    if let Some(l) = &patch.limits {
        s.limits.per_order = l.per_order.unwrap_or(s.limits.per_order);
        s.limits.per_user = l.per_user.unwrap_or(s.limits.per_user);
        let bad = |v: u32| v == 0 || v > ec.seats_max;
        if bad(s.limits.per_order) || bad(s.limits.per_user) {
            return Err(invalid(format!("limits must be 1-{}", ec.seats_max)));
        }
    }
    if let Some(e) = cancelled(def) {
        return Err(e);
    }
    if let Some(prices) = &patch.categories {
        // Buyers hold at the price they saw: none once anyone could.
        if !scheduled {
            return Err(on_sale());
        }
        for p in prices {
            let c = s
                .categories
                .iter_mut()
                .find(|c| c.id == p.id)
                .ok_or_else(|| invalid(format!("unknown category {}", p.id)))?;
            c.price = Fen::new(p.price);
        }
    }
    if patch.on_sale_at.is_some() || patch.sale_ends_at.is_some() {
        s.on_sale_at = patch.on_sale_at.or(s.on_sale_at);
        s.sale_ends_at = patch.sale_ends_at.or(s.sale_ends_at);
        let on = s.on_sale_at.map(|t| t.timestamp_millis()).unwrap_or(0);
        let ends = s.sale_ends_at.map(|t| t.timestamp_millis()).unwrap_or(i64::MAX);
        if ends <= on || ends <= now_ms as i64 {
            return Err(invalid("sale_ends_at must be after on_sale_at and in the future"));
        }
    }
    if map.is_some() && !scheduled {
        return Err(on_sale());
    }
    Ok(Change { settings: s, map, prices: patch.categories.is_some() })
}

impl Engine {
    /// Applies `change` to the event's current definition: `None` from it
    /// means nothing to change (an idempotent repeat). Returns the event's
    /// definition after.
    async fn change_event<F>(&self, event_id: Id, change: F) -> Result<Arc<EventInfo>, EngineError>
    where
        F: Fn(&EventDef, u64) -> Result<Option<Change>, EngineError>,
    {
        self.check_hot()?;
        for _ in 0..CHANGE_TRIES_MAX {
            let info = self.store.event_info(event_id).await?.ok_or(EngineError::NotFound(Entity::Event))?;
            let Some(Change { mut settings, map, prices }) = change(&info.def, now_unix_ms())? else {
                // Nothing to change: the durable store gets the hot store's
                // word again (a change whose node died before it wrote
                // there is repaired by asking again).
                self.durable.save_event_change(&info.def).await?;
                return Ok(info);
            };
            settings.rev = info.def.rev + 1;
            let next = match map {
                None => info.with_settings(&settings),
                Some(map) => {
                    settings.map_rev = settings.rev;
                    let def = EventDef { seats: map.seats().to_vec(), ..info.def.with_settings(&settings) };
                    Arc::new(EventInfo { def, map })
                }
            };
            // The opening this change must come before (by the store's clock).
            let opens_ms = info.def.sale_window_ms().0;
            let changed = if next.def.map_rev == info.def.map_rev {
                self.store.update_event(event_id, info.def.rev, &settings, prices.then_some(opens_ms)).await?
            } else {
                self.store.replace_seats(info.def.rev, &next.def, opens_ms).await?
            };
            let applied = match changed {
                Changed::Done => true,
                Changed::Stale => false,
                Changed::OnSale => return Err(on_sale()),
            };
            if applied {
                self.durable.save_event_change(&next.def).await?;
                self.infos.insert(event_id, next.clone());
                self.catalogue.invalidate(&event_id);
                tracing::info!(%event_id, rev = settings.rev, "event changed");
                return Ok(next);
            }
        }
        Err(EngineError::conflict("event_changing", "another operator is changing this event; try again"))
    }

    /// `PATCH /v1/admin/events/{id}`.
    pub async fn patch_event(&self, event_id: Id, patch: EventPatch) -> Result<Arc<EventInfo>, EngineError> {
        let ec = self.cfg.events.clone();
        self.change_event(event_id, |def, now_ms| patched(def, now_ms, &patch, &ec).map(Some)).await
    }

    /// `POST …/pause`: no holds until resumed; a paused event stays paused.
    pub async fn pause_event(&self, event_id: Id) -> Result<Arc<EventInfo>, EngineError> {
        self.change_event(event_id, |def, now_ms| {
            if let Some(e) = cancelled(def) {
                return Err(e);
            }
            if def.paused {
                return Ok(None);
            }
            if def.sale_status(now_ms) == SaleStatus::Ended {
                return Err(crate::actors::event::off_sale_error(def, now_ms));
            }
            Ok(Some(EventSettings { paused: true, ..def.settings() }.into()))
        })
        .await
    }

    /// `POST …/resume`.
    pub async fn resume_event(&self, event_id: Id) -> Result<Arc<EventInfo>, EngineError> {
        self.change_event(event_id, |def, _| {
            if let Some(e) = cancelled(def) {
                return Err(e);
            }
            Ok(def.paused.then(|| EventSettings { paused: false, ..def.settings() }.into()))
        })
        .await
    }

    /// `POST …/cancel`: final. Every pending order is closed, every paid
    /// one refunded through its channel; asking again changes nothing
    /// (the first reason stays) and the fan-out goes on where it is.
    pub async fn cancel_event(self: &Arc<Self>, event_id: Id, reason: &str) -> Result<Arc<EventInfo>, EngineError> {
        check_text("reason", reason, REASON_LEN_MAX)?;
        let info = self
            .change_event(event_id, |def, _| {
                if def.cancellation.is_some() {
                    return Ok(None);
                }
                let c = Cancellation { reason: reason.to_string(), at: Utc::now() };
                Ok(Some(EventSettings { cancellation: Some(c), ..def.settings() }.into()))
            })
            .await?;
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.run_cancellation(event_id).await {
                tracing::warn!(%event_id, error = %e, "cancellation fan-out stopped; it resumes later");
            }
        });
        Ok(info)
    }

    /// A cancellation as its event shows it (`None`: not cancelled).
    pub async fn cancellation(&self, def: &EventDef) -> Result<Option<CancellationView>, EngineError> {
        let Some(c) = &def.cancellation else { return Ok(None) };
        let (refunds_total, refunds_done) = self.durable.cancel_progress(def.event_id).await?;
        Ok(Some(CancellationView { reason: c.reason.clone(), at: c.at, refunds_total, refunds_done }))
    }

    async fn open_orders(&self, event_id: Id) -> Result<OpenOrders, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.ask_event(event_id, EventMsg::Open(tx), rx).await
    }

    /// One round of a cancellation's fan-out: every live hold closed (its
    /// payments closed at their channels first: money found there pays it,
    /// and it is refunded below), every paid order refunded once (the
    /// payment's refund state is compare-and-set; a refund the channel has
    /// not confirmed is retried here and by the payments worker). True
    /// once nothing is left; then the cancellation is recorded finished.
    /// Safe to run on several nodes at once and again after a crash.
    pub async fn run_cancellation(&self, event_id: Id) -> Result<bool, EngineError> {
        let info = self.store.event_info(event_id).await?.ok_or(EngineError::NotFound(Entity::Event))?;
        if info.def.cancellation.is_none() {
            return Ok(true);
        }
        let open = self.open_orders(event_id).await?;
        for order_id in open.holds {
            if !self.settle_payments_before_release(order_id).await {
                continue;
            }
            let (reply, rx) = oneshot::channel();
            let why = ReleaseReason::Cancel { user_id: None };
            let msg = EventMsg::Release { order_id, why, now_ms: now_unix_ms(), reply };
            match self.ask_event(event_id, msg, rx).await? {
                Ok(_) => self.close_payments_of(order_id).await,
                // Paid meanwhile (refunded below) or already gone.
                Err(EngineError::OrderNotPending { .. } | EngineError::NotFound(_)) => {}
                Err(e) => tracing::debug!(%order_id, error = %e, "closing a cancelled event's hold; retried"),
            }
        }
        for order_id in self.open_orders(event_id).await?.paid {
            let Some(payment_id) = self.durable.order_payer(order_id).await? else {
                tracing::warn!(%order_id, "a paid order without its payment; the fan-out waits for it");
                continue;
            };
            let Some(p) = self.durable.payment(payment_id).await? else { continue };
            self.durable.cancel_refund_owed(event_id, order_id, payment_id, p.amount).await?;
        }
        for (order_id, payment_id) in self.durable.cancel_refunds_open(event_id).await? {
            if let Err(e) = self.refund_for_cancellation(event_id, order_id, payment_id).await {
                tracing::debug!(%order_id, error = %e, "refunding a cancelled event's order; retried");
            }
        }
        let left = self.open_orders(event_id).await?;
        let finished = left.holds.is_empty()
            && left.paid.is_empty()
            && self.durable.cancel_refunds_open(event_id).await?.is_empty();
        if finished {
            self.durable.finish_cancellation(event_id, now_unix_ms()).await?;
            self.metrics.cancel_refunds.with_label_values(&["finished"]).inc();
            tracing::info!(%event_id, "cancellation finished: every order closed or refunded");
        }
        Ok(finished)
    }

    async fn refund_for_cancellation(&self, event_id: Id, order_id: Id, payment_id: Id) -> Result<(), EngineError> {
        let p = self.durable.payment(payment_id).await?.ok_or(EngineError::NotFound(Entity::Payment))?;
        if p.status == PaymentStatus::Succeeded && p.refund == RefundState::None {
            let retry_after_ms = self.cfg.payments.query_after_ms;
            if self.durable.refund_paid(payment_id, now_unix_ms(), retry_after_ms).await? {
                self.metrics.cancel_refunds.with_label_values(&["refund_asked"]).inc();
            }
        }
        let p = self.durable.payment(payment_id).await?.ok_or(EngineError::NotFound(Entity::Payment))?;
        if p.refund.owed() {
            self.refund_now(&p).await?;
        }
        let p = self.durable.payment(payment_id).await?.ok_or(EngineError::NotFound(Entity::Payment))?;
        if p.refund == RefundState::Done {
            self.durable.cancel_refund_done(event_id, order_id, now_unix_ms()).await?;
            self.metrics.cancel_refunds.with_label_values(&["refund_done"]).inc();
        }
        Ok(())
    }

    /// Runs the fan-out of every cancellation not yet finished (the
    /// timeout sweep calls this every `events.cancel_resume_ms`).
    pub async fn resume_cancellations(&self) -> Result<(), EngineError> {
        for event_id in self.durable.unfinished_cancellations().await? {
            if let Err(e) = self.run_cancellation(event_id).await {
                tracing::warn!(%event_id, error = %e, "cancellation fan-out failed; retried");
            }
        }
        Ok(())
    }

    /// `GET /v1/events`: the public catalogue, newest event first, each
    /// with its remaining seats per category (from a bounded cache that
    /// asks the event's actor at most once per `catalogue_cache_ttl_ms`).
    pub async fn catalogue(
        &self,
        mut q: CatalogueQuery,
        limit: Option<u32>,
    ) -> Result<(Vec<CatalogueItem>, Option<Id>), EngineError> {
        q.limit = self.page_limit(limit)?;
        let now_ms = now_unix_ms();
        let rows = self.durable.catalogue(&q, now_ms).await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            let categories = match self.remaining(r.event_id).await {
                Ok(c) => c.to_vec(),
                Err(e) => {
                    tracing::debug!(event_id = %r.event_id, error = %e, "remaining seats unknown; shown as 0");
                    r.categories
                        .iter()
                        .map(|c| CategoryView { id: c.id.clone(), name: c.name.clone(), price: c.price, remaining: 0 })
                        .collect()
                }
            };
            items.push(CatalogueItem {
                event_id: r.event_id,
                name: r.name.clone(),
                venue: r.venue.clone(),
                starts_at: crate::domain::time_of(r.starts_at_ms),
                on_sale_at: crate::domain::time_of(r.on_sale_at_ms),
                status: r.status(now_ms),
                categories,
            });
        }
        let next = next_cursor(&items, q.limit, |i| i.event_id);
        Ok((items, next))
    }

    async fn remaining(&self, event_id: Id) -> Result<Arc<Vec<CategoryView>>, EngineError> {
        if let Some(c) = self.catalogue.get(&event_id) {
            self.metrics.catalogue_cache.with_label_values(&["hit"]).inc();
            return Ok(c);
        }
        self.metrics.catalogue_cache.with_label_values(&["miss"]).inc();
        let (tx, rx) = oneshot::channel();
        let (_, categories) = self.ask_event(event_id, EventMsg::View(tx), rx).await?;
        let categories = Arc::new(categories);
        self.catalogue.insert(event_id, categories.clone());
        Ok(categories)
    }

    /// `GET /v1/admin/events/{id}/stats`: seats from the event's actor (the
    /// store's state), live holds and paid orders from it too, closed
    /// orders and the last minute from the durable store (as far as the
    /// workers have applied).
    pub async fn event_stats(&self, event_id: Id) -> Result<EventStats, EngineError> {
        let (tx, rx) = oneshot::channel();
        let categories = self.ask_event(event_id, EventMsg::Counts(tx), rx).await?;
        let open = self.open_orders(event_id).await?;
        let now = now_unix_ms();
        let counts = self.durable.order_counts(event_id, now.saturating_sub(60_000)).await?;
        let of = |s: OrderStatus| counts.by_status.iter().find(|(st, _, _)| *st == s).map(|(_, n, f)| (*n, *f));
        let mut revenue = 0i64;
        for order_id in &open.paid {
            if let Some((hot, _)) = self.store.order(*order_id).await? {
                revenue += hot.amount.get();
            }
        }
        let (refunded_n, refunded) = of(OrderStatus::Refunded).unwrap_or((0, Fen::ZERO));
        Ok(EventStats {
            categories,
            orders: OrdersByStatus {
                pending_payment: open.holds.len() as u64,
                paid: open.paid.len() as u64,
                cancelled: of(OrderStatus::Cancelled).map(|c| c.0).unwrap_or(0),
                expired: of(OrderStatus::Expired).map(|c| c.0).unwrap_or(0),
                refunded: refunded_n,
            },
            revenue: Fen::new(revenue),
            refunded,
            last_minute_holds: counts.created_since,
            last_minute_payments: counts.paid_since,
        })
    }

    /// `GET /v1/admin/orders`: personal data masked (as every order view).
    pub async fn search_orders(
        &self,
        caller: &Caller,
        mut q: OrderQuery,
        limit: Option<u32>,
    ) -> Result<(Vec<OrderView>, Option<Id>), EngineError> {
        if !caller.admin {
            return Err(EngineError::NotFound(Entity::Order));
        }
        q.limit = self.page_limit(limit)?;
        let records = self.durable.search_orders(&q).await?;
        let mut views = Vec::with_capacity(records.len());
        for r in &records {
            // The hot store's word on a live order wins over the workers' lag.
            let view = match self.live_order(r.order_id).await {
                Ok(v) => v,
                Err(_) => OrderView::from_record(r),
            };
            views.push(view);
        }
        let next = next_cursor(&records, q.limit, |r| r.order_id);
        Ok((views, next))
    }
}
