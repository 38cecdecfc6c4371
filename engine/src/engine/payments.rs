//! What rush does with payments. The money's path is a chain of
//! compare-and-set steps on the payment row, each safe to repeat, so a
//! callback, its duplicates, the active query and a restarted worker can
//! all run it at once and the payment still changes once:
//!
//! 1. **money**: the channel took the money (`money = received`), from a
//!    verified callback or a query answer;
//! 2. **claim**: an order payment makes itself the one payment of its
//!    order (`order_payments`); a second payment's money is late money;
//! 3. **confirm**: the order's actor turns held seats into sold ones
//!    (refused after the hold's expiry);
//! 4. **succeed**: `pending → succeeded` with the ledger entry and the
//!    webhook deliveries, in one transaction;
//! 5. otherwise **refund**: `refund = due` (money into suspense), the
//!    channel refunds, `refund = done` (money back out).
//!
//! The payments worker (`workers::payments`) picks up whatever a
//! crash or a lost callback left half-way.
//!
//! Why one file of ~570 lines: the steps above, in the order the money moves;
//! the list above is its map.

use std::sync::Arc;

use super::input::Caller;
use super::{invalid, Engine};
use crate::domain::{gene_of_user, now_unix_ms, ChannelKind, Fen, Id, OrderStatus, Paid, UserId};
use crate::durable::payments::{CallbackRecord, PaymentRecord, PaymentStatus, Purpose, RefundState};
use crate::error::{EngineError, Entity};
use crate::pay::sandbox::{CallbackPlan, PayOutcome, SandboxChannel};
use crate::pay::{Ack, AckKind, CallbackError, ChannelError, PaymentChannel, TradeState};
use crate::views::PaymentView;

/// What a settle step came to (logged with the callback).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// This call made the payment succeed.
    Applied,
    /// Nothing left to do: another call got there first.
    Duplicate,
    /// The money could not buy anything any more; it is being refunded.
    LateRefunded,
}

impl Settled {
    fn as_str(self) -> &'static str {
        match self {
            Settled::Applied => "applied",
            Settled::Duplicate => "duplicate",
            Settled::LateRefunded => "late_refunded",
        }
    }
}

/// The money a payment has recorded, as the channel reported it.
fn recorded_paid(p: &PaymentRecord) -> Paid {
    Paid {
        txn_id: p.channel_txn.clone().unwrap_or_default(),
        amount: p.paid_amount.unwrap_or(p.amount),
        paid_at_ms: p.paid_at_ms.unwrap_or_else(now_unix_ms),
    }
}

fn channel_err(kind: ChannelKind) -> impl Fn(ChannelError) -> EngineError {
    move |e| match e {
        ChannelError::Unavailable(m) => {
            tracing::warn!(channel = kind.as_str(), error = %m, "payment channel unavailable");
            EngineError::ChannelUnavailable(kind.as_str())
        }
        ChannelError::Refused(m) => EngineError::Internal(format!("{} refused: {m}", kind.as_str())),
        ChannelError::UnknownTrade => EngineError::Internal(format!("{} does not know the payment", kind.as_str())),
    }
}

impl Engine {
    fn channel(&self, kind: ChannelKind) -> Result<&Arc<dyn PaymentChannel>, EngineError> {
        self.pay.channels.get(kind).ok_or(EngineError::NotFound(Entity::Channel))
    }

    /// Where sandbox callbacks go when `payments.notify_base_url` is unset.
    pub fn set_notify_base(&self, base: &str) {
        let _ = self.pay.notify_base.set(base.trim_end_matches('/').to_string());
    }

    /// The first check of a new payment: the active query after
    /// `query_after_ms`, or the close just after expiry, whichever is first.
    fn first_check_ms(&self, now_ms: u64, expires_at_ms: u64) -> u64 {
        let pc = &self.cfg.payments;
        (now_ms + pc.query_after_ms).min(expires_at_ms + pc.close_grace_ms)
    }

    /// `POST /v1/orders/{id}/payments`: only the owner, only a pending
    /// order; the amount is the order's. Asking again on the same channel
    /// while unpaid gives the same payment.
    pub async fn pay_order(
        &self,
        caller: &Caller,
        order_id: Id,
        channel: ChannelKind,
    ) -> Result<(PaymentView, bool), EngineError> {
        let order = self.live_order(order_id).await?;
        if order.user_id != caller.user_id {
            return Err(EngineError::NotFound(Entity::Order));
        }
        let now = now_unix_ms();
        let expires_at_ms = order.expires_at.timestamp_millis().max(0) as u64;
        if order.status != OrderStatus::PendingPayment || now >= expires_at_ms {
            let status = if order.status == OrderStatus::PendingPayment { OrderStatus::Expired } else { order.status };
            return Err(EngineError::OrderNotPending { status });
        }
        // A cancelled event's pending orders are being closed: no new
        // payment (one opened just before the cancel is closed with them).
        if let Some(c) = self.store.event_info(order.event_id).await?.and_then(|i| i.def.cancellation.clone()) {
            return Err(EngineError::EventCancelled { reason: c.reason });
        }
        self.channel(channel)?;
        let order_ref = Some((order_id, order.event_id));
        let p = self.new_payment(Purpose::Order, order_ref, &caller.user_id, channel, order.amount, expires_at_ms);
        // Asked again (or concurrently) on the same channel while unpaid:
        // the payment already open.
        if let Some(open) = self.durable.open_order_payment(&p).await? {
            return Ok((PaymentView::of(&open), false));
        }
        let p = self.open_trade(p).await?;
        Ok((PaymentView::of(&p), true))
    }

    /// A payment as it starts: pending, no money, first check scheduled.
    fn new_payment(
        &self,
        purpose: Purpose,
        order: Option<(Id, Id)>,
        user_id: &str,
        channel: ChannelKind,
        amount: Fen,
        expires_at_ms: u64,
    ) -> PaymentRecord {
        let now = now_unix_ms();
        PaymentRecord {
            payment_id: self.ids.next(gene_of_user(user_id)),
            purpose,
            order_id: order.map(|o| o.0),
            event_id: order.map(|o| o.1),
            user_id: user_id.to_string(),
            channel,
            amount,
            status: PaymentStatus::Pending,
            money_received: false,
            refund: RefundState::None,
            channel_txn: None,
            paid_amount: None,
            created_at_ms: now,
            expires_at_ms,
            paid_at_ms: None,
            checks: 0,
            next_check_at_ms: self.first_check_ms(now, expires_at_ms),
        }
    }

    /// The channel's trade for a payment already recorded (so that a
    /// callback always finds its payment). If the channel fails the
    /// payment stays pending with no trade behind it, and the worker
    /// closes it at expiry.
    async fn open_trade(&self, p: PaymentRecord) -> Result<PaymentRecord, EngineError> {
        let ch = self.channel(p.channel)?;
        // The channel lets the buyer pay until rush closes the trade, a
        // little after the order's expiry.
        let channel_expiry = p.expires_at_ms + self.cfg.payments.close_grace_ms;
        ch.create(p.payment_id, p.amount, channel_expiry).await.map_err(channel_err(p.channel))?;
        self.metrics.payments.with_label_values(&["created"]).inc();
        Ok(p)
    }

    /// `POST /v1/wallet/recharge`: a payment that credits the wallet once
    /// it succeeds.
    pub async fn recharge(
        &self,
        user_id: &UserId,
        amount: Fen,
        channel: ChannelKind,
    ) -> Result<PaymentView, EngineError> {
        let max = self.cfg.payments.recharge_max_fen;
        if amount.get() > max {
            return Err(invalid(format!("amount must be at most {max}")));
        }
        let expires_at_ms = now_unix_ms() + self.cfg.payments.recharge_ttl_s * 1000;
        let p = self.new_payment(Purpose::Recharge, None, user_id, channel, amount, expires_at_ms);
        self.durable.insert_payment(&p).await?;
        let p = self.open_trade(p).await?;
        Ok(PaymentView::of(&p))
    }

    /// A payment, for its payer or an admin.
    pub async fn payment(&self, caller: &Caller, payment_id: Id) -> Result<PaymentView, EngineError> {
        let p = self.durable.payment(payment_id).await?.ok_or(EngineError::NotFound(Entity::Payment))?;
        if !caller.admin && p.user_id != caller.user_id {
            return Err(EngineError::NotFound(Entity::Payment));
        }
        Ok(PaymentView::of(&p))
    }

    /// `POST /v1/channels/{channel}/notify`: the raw callback is logged
    /// first; then verify → look up → check channel and amount → settle.
    /// Answers in the channel's shape.
    pub async fn take_callback(&self, kind: ChannelKind, headers: &[(String, String)], body: &[u8]) -> Ack {
        let Ok(ch) = self.channel(kind) else {
            return Ack { status: 404, content_type: "text/plain", body: "unknown channel".into() };
        };
        let now = now_unix_ms();
        let callback_id = self.ids.next(0);
        let logged = CallbackRecord {
            callback_id,
            channel: kind.as_str().into(),
            received_at_ms: now,
            headers: serde_json::to_string(headers).unwrap_or_default(),
            body: String::from_utf8_lossy(body).into_owned(),
            payment_id: None,
            outcome: "received".into(),
            detail: String::new(),
        };
        // Not stored, not processed: the channel will send it again.
        if let Err(e) = self.durable.log_callback(&logged).await {
            tracing::warn!(channel = kind.as_str(), error = %e, "could not log a callback; asking for it again");
            return ch.acknowledge(AckKind::Failed);
        }
        let (payment_id, outcome, detail, ack) = self.process_callback(ch, headers, body, now).await;
        self.metrics.callbacks.with_label_values(&[kind.as_str(), outcome]).inc();
        if matches!(outcome, "bad_signature" | "amount_mismatch" | "unknown_payment" | "malformed" | "stale") {
            tracing::warn!(channel = kind.as_str(), %callback_id, outcome, detail, "callback refused");
        }
        if let Err(e) = self.durable.set_callback_outcome(callback_id, payment_id, outcome, &detail).await {
            tracing::warn!(%callback_id, error = %e, "could not record a callback's outcome");
        }
        ch.acknowledge(ack)
    }

    async fn process_callback(
        &self,
        ch: &Arc<dyn PaymentChannel>,
        headers: &[(String, String)],
        body: &[u8],
        now: u64,
    ) -> (Option<Id>, &'static str, String, AckKind) {
        let n = match ch.verify_callback(headers, body, now) {
            Ok(n) => n,
            Err(e) => {
                let outcome = match e {
                    CallbackError::BadSignature(_) => "bad_signature",
                    CallbackError::Malformed(_) => "malformed",
                    CallbackError::Stale => "stale",
                };
                return (None, outcome, e.to_string(), AckKind::Refused);
            }
        };
        let pid = Some(n.payment_id);
        crate::telemetry::record_ids(&[("payment_id", n.payment_id)]);
        let p = match self.durable.payment(n.payment_id).await {
            Ok(Some(p)) if p.channel == ch.kind() => p,
            Ok(_) => return (pid, "unknown_payment", "no such payment on this channel".into(), AckKind::Refused),
            Err(e) => return (pid, "failed", e.to_string(), AckKind::Failed),
        };
        if n.paid.amount != p.amount {
            let detail = format!("callback says {} but the payment is {}", n.paid.amount, p.amount);
            return (pid, "amount_mismatch", detail, AckKind::Refused);
        }
        match self.settle_paid(p, &n.paid).await {
            Ok(s) => (pid, s.as_str(), String::new(), AckKind::Ok),
            Err(e) => (pid, "failed", e.to_string(), AckKind::Failed),
        }
    }

    /// The channel has the buyer's money for `p` (a callback or a query
    /// said so): record it once and settle. Safe to call any number of
    /// times, from any node, concurrently.
    #[tracing::instrument(name = "settle_paid", skip_all, fields(payment_id = %p.payment_id, order_id = p.order_id.map(|i| i.raw()), event_id = p.event_id.map(|i| i.raw()), status))]
    pub async fn settle_paid(&self, p: PaymentRecord, paid: &Paid) -> Result<Settled, EngineError> {
        let settled = self.settle_paid_inner(p, paid).await;
        let status = match &settled {
            Ok(s) => s.as_str(),
            Err(_) => "failed",
        };
        tracing::Span::current().record("status", status);
        tracing::debug!("payment settled");
        settled
    }

    async fn settle_paid_inner(&self, p: PaymentRecord, paid: &Paid) -> Result<Settled, EngineError> {
        let now = now_unix_ms();
        // What is recorded (and by whom) decides from here on: this
        // record, or the one an earlier caller made.
        let p = match self.durable.record_money(p.payment_id, paid, now).await? {
            Some(p) => p,
            None => self.durable.payment(p.payment_id).await?.ok_or(EngineError::NotFound(Entity::Payment))?,
        };
        if p.refund != RefundState::None {
            if p.refund.owed() {
                self.refund_now(&p).await?;
            }
            return Ok(Settled::Duplicate);
        }
        match p.status {
            PaymentStatus::Succeeded | PaymentStatus::Refunded => Ok(Settled::Duplicate),
            PaymentStatus::Closed | PaymentStatus::Failed => self.late_money(&p, "payment already closed").await,
            PaymentStatus::Pending => match (p.purpose, p.order_id, p.event_id) {
                (Purpose::Recharge, _, _) => self.succeed(&p).await,
                (Purpose::Order, Some(order_id), Some(event_id)) => {
                    let holder = self.durable.claim_order(order_id, p.payment_id).await?;
                    if holder != p.payment_id {
                        return self.late_money(&p, "another payment paid the order").await;
                    }
                    // The actor decides against the hot store's current
                    // state (see `actors::event`), so its answer is the
                    // order's fate, except for "not found", which is
                    // checked below before any money moves.
                    let paid_at_ms = p.paid_at_ms.unwrap_or(paid.paid_at_ms);
                    match self.confirm(event_id, order_id, paid_at_ms).await {
                        // Paid already: by this payment's earlier attempt,
                        // since only the claim holder confirms.
                        Ok(_) | Err(EngineError::OrderNotPending { status: OrderStatus::Paid }) => {
                            self.succeed(&p).await
                        }
                        Err(EngineError::OrderNotPending { .. }) => {
                            self.late_money(&p, "order closed before the money arrived").await
                        }
                        Err(EngineError::NotFound(Entity::Order)) if self.order_closed(order_id).await? => {
                            self.late_money(&p, "order closed before the money arrived").await
                        }
                        // Not held, yet not known to be closed (the hot store
                        // lost it, or the release is not recorded yet):
                        // unknown is not no; the callback's resend or the
                        // payments worker comes back to it.
                        Err(EngineError::NotFound(what)) => {
                            tracing::warn!(payment_id = %p.payment_id, %order_id, what = what.as_str(), "order not found in the hot store; settling later");
                            Err(EngineError::StoreUnavailable)
                        }
                        Err(e) => Err(e),
                    }
                }
                _ => Err(EngineError::Internal(format!("order payment {} has no order", p.payment_id))),
            },
        }
    }

    /// Whether an order the hot store no longer holds is closed for
    /// good: its release is recorded, or its hold's deadline has passed
    /// (no confirm is accepted after it, so the money cannot buy it).
    async fn order_closed(&self, order_id: Id) -> Result<bool, EngineError> {
        let Some(r) = self.durable.order(order_id).await? else { return Ok(false) };
        Ok(match r.status {
            OrderStatus::Expired | OrderStatus::Cancelled | OrderStatus::Refunded => true,
            OrderStatus::PendingPayment => now_unix_ms() >= r.expires_at_ms,
            OrderStatus::Paid => false,
        })
    }

    async fn succeed(&self, p: &PaymentRecord) -> Result<Settled, EngineError> {
        if self.durable.succeed_payment(p, now_unix_ms()).await? {
            self.metrics.payments.with_label_values(&["succeeded"]).inc();
            tracing::info!(payment_id = %p.payment_id, order_id = ?p.order_id, status = "succeeded", "payment succeeded");
            Ok(Settled::Applied)
        } else {
            Ok(Settled::Duplicate)
        }
    }

    /// Money that cannot buy anything: book it as owed and refund it.
    async fn late_money(&self, p: &PaymentRecord, why: &str) -> Result<Settled, EngineError> {
        if self.durable.refund_late_money(p, now_unix_ms()).await? {
            self.metrics.payments.with_label_values(&["late"]).inc();
            tracing::warn!(payment_id = %p.payment_id, order_id = ?p.order_id, why, "late money: refunding");
        }
        let p = self.durable.payment(p.payment_id).await?.ok_or(EngineError::NotFound(Entity::Payment))?;
        if p.refund.owed() {
            // A failure here leaves the refund owed; the worker retries.
            if let Err(e) = self.refund_now(&p).await {
                tracing::warn!(payment_id = %p.payment_id, error = %e, "late refund will be retried");
            }
        }
        Ok(Settled::LateRefunded)
    }

    /// Carries out a due refund: the channel gives the money back, a paid
    /// order's seats go back on sale, then the refund is recorded done.
    /// Every step may run again after a failure.
    pub(crate) async fn refund_now(&self, p: &PaymentRecord) -> Result<(), EngineError> {
        if p.refund == RefundState::Due {
            let ch = self.channel(p.channel)?;
            ch.refund(p.payment_id, p.refund_amount()).await.map_err(channel_err(p.channel))?;
            // Recorded before anything else can fail.
            self.durable.refund_returned(p.payment_id, now_unix_ms()).await?;
        }
        if let (PaymentStatus::Succeeded, Some(order_id), Some(event_id)) = (p.status, p.order_id, p.event_id) {
            match self.refund_seats(event_id, order_id).await {
                // Not paid any more (the actor's view is the store's): this
                // refund's earlier attempt freed them.
                Ok(_) | Err(EngineError::NotFound(Entity::Order)) => {}
                Err(e) => return Err(e),
            }
        }
        if self.durable.finish_refund(p, now_unix_ms()).await? {
            self.metrics.payments.with_label_values(&["refunded"]).inc();
            tracing::info!(payment_id = %p.payment_id, order_id = ?p.order_id, status = "refunded", "payment refunded");
        }
        Ok(())
    }

    /// `POST /v1/orders/{id}/refund`: a paid order's money goes back
    /// through its channel and its seats go back on sale. Asking again
    /// while a refund is under way finishes it.
    pub async fn refund_order(&self, caller: &Caller, order_id: Id) -> Result<PaymentView, EngineError> {
        let order = self.live_order(order_id).await?;
        if !caller.admin && order.user_id != caller.user_id {
            return Err(EngineError::NotFound(Entity::Order));
        }
        // The payment that paid the order holds its claim.
        let payer = match self.durable.order_payer(order_id).await? {
            Some(id) => self.durable.payment(id).await?,
            None => None,
        };
        let p = match payer {
            Some(p) if p.status == PaymentStatus::Succeeded => p,
            Some(p) if p.status == PaymentStatus::Refunded && p.refund == RefundState::Done => {
                return Err(EngineError::conflict("already_refunded", "order is already refunded"))
            }
            _ => {
                return Err(EngineError::conflict(
                    "order_not_paid",
                    format!("order is {} and has no payment to refund", order.status.as_str()),
                ))
            }
        };
        let now = now_unix_ms();
        let retry_after_ms = self.cfg.payments.query_after_ms;
        if p.refund == RefundState::None && !self.durable.refund_paid(p.payment_id, now, retry_after_ms).await? {
            return Err(EngineError::conflict("refund_in_progress", "a refund of this order is under way"));
        }
        let p = self.durable.payment(p.payment_id).await?.ok_or(EngineError::NotFound(Entity::Payment))?;
        if p.refund.owed() {
            self.refund_now(&p).await?;
        }
        let p = self.durable.payment(p.payment_id).await?.ok_or(EngineError::NotFound(Entity::Payment))?;
        Ok(PaymentView::of(&p))
    }

    /// Cancelling an order closes its unpaid payments at their channels
    /// (best effort: the worker closes what this misses at expiry).
    pub(crate) async fn close_payments_of(&self, order_id: Id) {
        let Ok(payments) = self.durable.payments_of_order(order_id).await else { return };
        for p in payments.into_iter().filter(|p| p.status == PaymentStatus::Pending && !p.money_received) {
            if let Err(e) = self.close_or_settle(p).await {
                tracing::debug!(%order_id, error = %e, "closing a cancelled order's payment; the worker will retry");
            }
        }
    }

    /// Before an expired hold is released: each of its order's pending
    /// payments is settled (money already recorded) or closed at its
    /// channel (which finds money whose callback was lost or is still on
    /// its way, and settles it). True when none is left pending.
    pub(crate) async fn settle_payments_before_release(&self, order_id: Id) -> bool {
        let payments = match self.durable.payments_of_order(order_id).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(%order_id, error = %e, "reading an expiring order's payments; retried");
                return false;
            }
        };
        for p in payments.into_iter().filter(|p| p.status == PaymentStatus::Pending) {
            let done = if p.money_received {
                let paid = recorded_paid(&p);
                self.settle_paid(p, &paid).await.map(|_| ())
            } else {
                self.close_or_settle(p).await
            };
            if let Err(e) = done {
                tracing::debug!(%order_id, error = %e, "settling an expiring order's payment; retried");
                return false;
            }
        }
        true
    }

    /// Closes an unpaid payment at its channel; if the buyer paid first,
    /// settles that instead (which refunds it when the order is gone).
    async fn close_or_settle(&self, p: PaymentRecord) -> Result<(), EngineError> {
        let ch = self.channel(p.channel)?;
        match ch.close(p.payment_id).await {
            Ok(TradeState::Paid(paid)) | Ok(TradeState::Refunded(paid)) => {
                self.settle_paid(p, &paid).await?;
            }
            Ok(TradeState::Closed | TradeState::NotPaid) | Err(ChannelError::UnknownTrade) => {
                if self.durable.close_payment(&p, now_unix_ms()).await? {
                    self.metrics.payments.with_label_values(&["closed"]).inc();
                }
            }
            Err(e) => return Err(channel_err(p.channel)(e)),
        }
        Ok(())
    }

    /// The payments worker's look at one due payment: finish a due refund,
    /// settle money already recorded, ask the channel (active query), or
    /// close the payment once it has expired.
    pub(crate) async fn check_payment(&self, p: PaymentRecord) -> Result<(), EngineError> {
        let pc = &self.cfg.payments;
        let now = now_unix_ms();
        let backoff = pc.query_after_ms.saturating_mul(1u64 << p.checks.min(20)).min(pc.query_backoff_max_ms);
        let close_at = p.expires_at_ms + pc.close_grace_ms;
        let result = async {
            if p.refund.owed() {
                return self.refund_now(&p).await;
            }
            if p.status != PaymentStatus::Pending {
                return Ok(());
            }
            if p.money_received {
                return self.settle_paid(p.clone(), &recorded_paid(&p)).await.map(|_| ());
            }
            let ch = self.channel(p.channel)?;
            match ch.query(p.payment_id).await {
                Ok(TradeState::Paid(paid)) if paid.amount == p.amount => {
                    self.metrics.payments.with_label_values(&["found_by_query"]).inc();
                    self.settle_paid(p.clone(), &paid).await.map(|_| ())
                }
                Ok(TradeState::Paid(paid)) => Err(EngineError::Internal(format!(
                    "channel says payment {} was paid {} but it is {}",
                    p.payment_id, paid.amount, p.amount
                ))),
                Ok(TradeState::Closed) => self.close_or_settle(p.clone()).await,
                Ok(TradeState::NotPaid) | Err(ChannelError::UnknownTrade) if now >= close_at => {
                    self.close_or_settle(p.clone()).await
                }
                Ok(TradeState::NotPaid) | Err(ChannelError::UnknownTrade) => Ok(()),
                Ok(TradeState::Refunded(_)) => {
                    Err(EngineError::Internal(format!("channel says pending payment {} was refunded", p.payment_id)))
                }
                Err(e) => Err(channel_err(p.channel)(e)),
            }
        }
        .await;
        // Whatever happened, look again later (a transition that settled
        // the payment for good has set its next check to never). An unpaid
        // payment is looked at again no later than its close.
        let next = if now < close_at { (now + backoff).min(close_at) } else { now + backoff };
        self.durable.set_next_check(p.payment_id, next).await?;
        result
    }

    /// `POST /v1/sandbox/{channel}/payments/{id}/complete`: plays the
    /// buyer paying at the sandbox channel; the callback goes out dropped,
    /// delayed or duplicated as asked, else as configured.
    pub async fn sandbox_pay(
        &self,
        kind: ChannelKind,
        payment_id: Id,
        drop: Option<bool>,
        delay_ms: Option<u64>,
        duplicates: Option<u32>,
    ) -> Result<(PayOutcome, CallbackPlan), EngineError> {
        let sb = self.pay.sandboxes.get(&kind).ok_or(EngineError::NotFound(Entity::Channel))?;
        let plan = CallbackPlan::new(&self.cfg.payments.sandbox, drop, delay_ms, duplicates).map_err(invalid)?;
        Ok((sb.pay(payment_id, plan).await.map_err(channel_err(kind))?, plan))
    }

    pub fn sandbox(&self, kind: ChannelKind) -> Option<&Arc<SandboxChannel>> {
        self.pay.sandboxes.get(&kind)
    }

    pub async fn callbacks(
        &self,
        channel: Option<ChannelKind>,
        limit: Option<u32>,
    ) -> Result<Vec<CallbackRecord>, EngineError> {
        Ok(self.durable.callbacks(channel.map(ChannelKind::as_str), self.page_limit(limit)?).await?)
    }
}

#[async_trait::async_trait]
impl crate::workers::payments::PaymentCheck for Engine {
    async fn check_payment(&self, p: PaymentRecord) -> Result<(), EngineError> {
        Engine::check_payment(self, p).await
    }
}
