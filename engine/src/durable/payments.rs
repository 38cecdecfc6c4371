//! Payments and the callback log. Every state change is a compare-and-set
//! on the row (`… WHERE status = 'pending'`), so duplicated and concurrent
//! callbacks, queries and workers change a payment once; the ledger
//! transfer and the webhook deliveries of a change commit with it.
//!
//! Why one file of ~680 lines: every compare-and-set step of a payment with
//! its SQL, in the order the money moves.

use serde::Serialize;
use serde_json::json;
use sqlx::{AnyConnection, Connection, Row};

use super::webhooks::{announce, Subscribers};
use super::{ms, ms_i, transfer, Bucket, Durable, DurableError, Transfer};
use crate::domain::{ChannelKind, Fen, Id, Paid, SALES_ACCOUNT, SUSPENSE_ACCOUNT, WORLD_ACCOUNT};

/// `next_check_at_ms` of a payment nobody needs to look at again.
pub const NEVER_MS: u64 = 9_000_000_000_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PaymentStatus {
    Pending,
    Succeeded,
    Failed,
    Closed,
    Refunded,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Closed => "closed",
            PaymentStatus::Refunded => "refunded",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => PaymentStatus::Pending,
            "succeeded" => PaymentStatus::Succeeded,
            "failed" => PaymentStatus::Failed,
            "closed" => PaymentStatus::Closed,
            "refunded" => PaymentStatus::Refunded,
            _ => return None,
        })
    }
}

/// What a payment pays for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// A ticket order: success sells its seats.
    Order,
    /// A wallet recharge: success credits the wallet.
    Recharge,
}

/// Whether rush owes the buyer their money back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RefundState {
    None,
    /// Decided; the channel's refund has not been confirmed yet.
    Due,
    /// The channel gave the money back; rush's own steps (seats back on
    /// sale, the books) are still to do. Recorded first thing after the
    /// channel's answer, so nothing that fails later can forget it.
    Returned,
    Done,
}

impl RefundState {
    /// A refund rush still has to carry on with.
    pub fn owed(self) -> bool {
        matches!(self, RefundState::Due | RefundState::Returned)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PaymentRecord {
    pub payment_id: Id,
    pub purpose: Purpose,
    pub order_id: Option<Id>,
    pub event_id: Option<Id>,
    pub user_id: String,
    pub channel: ChannelKind,
    pub amount: Fen,
    pub status: PaymentStatus,
    /// The channel has taken the buyer's money.
    pub money_received: bool,
    pub refund: RefundState,
    pub channel_txn: Option<String>,
    pub paid_amount: Option<Fen>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub paid_at_ms: Option<u64>,
    pub checks: u32,
    pub next_check_at_ms: u64,
}

impl PaymentRecord {
    /// What a refund gives back: a paid order's price, or whatever the
    /// channel took for money that could buy nothing.
    pub fn refund_amount(&self) -> Fen {
        if self.status == PaymentStatus::Succeeded {
            self.amount
        } else {
            self.paid_amount.unwrap_or(self.amount)
        }
    }
}

/// A callback as it arrived.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CallbackRecord {
    pub callback_id: Id,
    pub channel: String,
    pub received_at_ms: u64,
    pub headers: String,
    pub body: String,
    pub payment_id: Option<Id>,
    /// `received` until processed; then `applied`, `duplicate`,
    /// `bad_signature`, `malformed`, `stale`, `unknown_payment`,
    /// `amount_mismatch`, `late_refunded`, `failed`.
    pub outcome: String,
    pub detail: String,
}

const COLUMNS: &str = "payment_id, purpose, order_id, event_id, user_id, channel, amount, status, money, refund, \
     channel_txn, paid_amount, created_at_ms, expires_at_ms, paid_at_ms, checks, next_check_at_ms";

fn corrupt(what: &str) -> DurableError {
    DurableError::Invariant(format!("stored payment has a bad {what}"))
}

fn opt_id(v: Option<i64>, what: &str) -> Result<Option<Id>, DurableError> {
    v.map(|raw| Id::from_raw(raw).map_err(|_| corrupt(what))).transpose()
}

fn payment_from_row(r: &sqlx::any::AnyRow) -> Result<PaymentRecord, DurableError> {
    let purpose: String = r.try_get("purpose")?;
    let channel: String = r.try_get("channel")?;
    let status: String = r.try_get("status")?;
    let money: String = r.try_get("money")?;
    let refund: String = r.try_get("refund")?;
    Ok(PaymentRecord {
        payment_id: Id::from_raw(r.try_get("payment_id")?).map_err(|_| corrupt("id"))?,
        purpose: match purpose.as_str() {
            "order" => Purpose::Order,
            "recharge" => Purpose::Recharge,
            _ => return Err(corrupt("purpose")),
        },
        order_id: opt_id(r.try_get("order_id")?, "order_id")?,
        event_id: opt_id(r.try_get("event_id")?, "event_id")?,
        user_id: r.try_get("user_id")?,
        channel: ChannelKind::parse(&channel).ok_or_else(|| corrupt("channel"))?,
        amount: Fen::new(r.try_get("amount")?),
        status: PaymentStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        money_received: money == "received",
        refund: match refund.as_str() {
            "none" => RefundState::None,
            "due" => RefundState::Due,
            "returned" => RefundState::Returned,
            "done" => RefundState::Done,
            _ => return Err(corrupt("refund state")),
        },
        channel_txn: r.try_get("channel_txn")?,
        paid_amount: r.try_get::<Option<i64>, _>("paid_amount")?.map(Fen::new),
        created_at_ms: ms(r.try_get("created_at_ms")?),
        expires_at_ms: ms(r.try_get("expires_at_ms")?),
        paid_at_ms: r.try_get::<Option<i64>, _>("paid_at_ms")?.map(ms),
        checks: r.try_get::<i64, _>("checks")?.clamp(0, i64::from(u32::MAX)) as u32,
        next_check_at_ms: ms(r.try_get("next_check_at_ms")?),
    })
}

/// What webhooks say about a payment.
fn payment_data(p: &PaymentRecord) -> serde_json::Value {
    json!({
        "payment_id": p.payment_id.to_string(),
        "order_id": p.order_id.map(|o| o.to_string()),
        "user_id": p.user_id,
        "channel": p.channel.as_str(),
        "amount": p.amount.get(),
        "purpose": p.purpose,
    })
}

async fn set_status(
    conn: &mut AnyConnection,
    sql_set: &str,
    payment_id: Id,
    sql_where: &str,
    now_ms: u64,
) -> Result<bool, DurableError> {
    let done = sqlx::query(&format!(
        "UPDATE payments SET {sql_set}, updated_at_ms = $2 WHERE payment_id = $1 AND {sql_where}"
    ))
    .bind(payment_id.raw())
    .bind(ms_i(now_ms))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(done == 1)
}

async fn insert_payment(conn: &mut AnyConnection, p: &PaymentRecord) -> Result<(), DurableError> {
    sqlx::query(&format!(
        "INSERT INTO payments ({COLUMNS}, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 'none', \
         'none', NULL, NULL, $8, $9, NULL, 0, $10, $8)"
    ))
    .bind(p.payment_id.raw())
    .bind(match p.purpose {
        Purpose::Order => "order",
        Purpose::Recharge => "recharge",
    })
    .bind(p.order_id.map(Id::raw))
    .bind(p.event_id.map(Id::raw))
    .bind(&p.user_id)
    .bind(p.channel.as_str())
    .bind(p.amount.get())
    .bind(ms_i(p.created_at_ms))
    .bind(ms_i(p.expires_at_ms))
    .bind(ms_i(p.next_check_at_ms))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn open_order_payment(
    conn: &mut AnyConnection,
    p: &PaymentRecord,
) -> Result<Option<PaymentRecord>, DurableError> {
    let Some(order_id) = p.order_id else {
        return Err(DurableError::Invariant("an order payment without its order".into()));
    };
    let sqlite = super::is_sqlite(conn);
    let mut tx = conn.begin().await?;
    if !sqlite {
        // SQLite has one writer; on Postgres, requests for one order wait
        // for each other here until the first one commits.
        sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS locked")
            .bind(order_id.raw())
            .execute(&mut *tx)
            .await?;
    }
    let open = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM payments WHERE order_id = $1 AND channel = $2 AND status = 'pending' \
         AND money = 'none' ORDER BY payment_id LIMIT 1"
    ))
    .bind(order_id.raw())
    .bind(p.channel.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = open {
        return payment_from_row(&row).map(Some);
    }
    insert_payment(&mut tx, p).await?;
    tx.commit().await?;
    Ok(None)
}

async fn succeed_payment(conn: &mut AnyConnection, p: &PaymentRecord, now_ms: u64) -> Result<bool, DurableError> {
    let mut tx = conn.begin().await?;
    let set = format!("status = 'succeeded', next_check_at_ms = {NEVER_MS}");
    if !set_status(&mut tx, &set, p.payment_id, "status = 'pending' AND money = 'received' AND refund = 'none'", now_ms)
        .await?
    {
        return Ok(false);
    }
    let (to, kind, memo, id) = match p.purpose {
        Purpose::Order => (SALES_ACCOUNT, "order_payment", "ticket order paid", format!("pay-{}", p.payment_id)),
        Purpose::Recharge => (p.user_id.as_str(), "recharge", "wallet recharge", format!("recharge-{}", p.payment_id)),
    };
    let key = format!("payment-{}", p.payment_id);
    let subscribers = Subscribers::load(&mut tx).await?;
    subscribers.enqueue(&mut tx, &format!("{key}-succeeded"), "payment.succeeded", payment_data(p), now_ms).await?;
    if p.purpose == Purpose::Recharge {
        subscribers.enqueue(&mut tx, &format!("{key}-recharged"), "wallet.recharged", payment_data(p), now_ms).await?;
    }
    // Last: the system accounts' rows stay locked until the commit.
    transfer(
        &mut tx,
        &Transfer {
            transfer_id: id,
            from: (WORLD_ACCOUNT, Bucket::Available),
            to: (to, Bucket::Available),
            amount: p.amount,
            kind,
            ref_id: p.payment_id.to_string(),
            memo,
            at_ms: now_ms,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

async fn refund_late_money(conn: &mut AnyConnection, p: &PaymentRecord, now_ms: u64) -> Result<bool, DurableError> {
    let mut tx = conn.begin().await?;
    if !set_status(
        &mut tx,
        "refund = 'due', next_check_at_ms = $2",
        p.payment_id,
        "money = 'received' AND refund = 'none' AND status <> 'succeeded'",
        now_ms,
    )
    .await?
    {
        return Ok(false);
    }
    let amount = p.refund_amount();
    if amount.get() > 0 {
        transfer(
            &mut tx,
            &Transfer {
                transfer_id: format!("late-in-{}", p.payment_id),
                from: (WORLD_ACCOUNT, Bucket::Available),
                to: (SUSPENSE_ACCOUNT, Bucket::Available),
                amount,
                kind: "late_payment",
                ref_id: p.payment_id.to_string(),
                memo: "paid after the order closed: to be refunded",
                at_ms: now_ms,
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

async fn finish_refund(conn: &mut AnyConnection, p: &PaymentRecord, now_ms: u64) -> Result<bool, DurableError> {
    let mut tx = conn.begin().await?;
    let set = format!("refund = 'done', status = 'refunded', next_check_at_ms = {NEVER_MS}");
    if !set_status(&mut tx, &set, p.payment_id, "refund IN ('due', 'returned')", now_ms).await? {
        return Ok(false);
    }
    let (from, kind, memo, id) = if p.status == PaymentStatus::Succeeded {
        (SALES_ACCOUNT, "order_refund", "ticket order refunded", format!("refund-{}", p.payment_id))
    } else {
        (SUSPENSE_ACCOUNT, "late_refund", "late payment refunded", format!("late-out-{}", p.payment_id))
    };
    let amount = p.refund_amount();
    if amount.get() > 0 {
        transfer(
            &mut tx,
            &Transfer {
                transfer_id: id,
                from: (from, Bucket::Available),
                to: (WORLD_ACCOUNT, Bucket::Available),
                amount,
                kind,
                ref_id: p.payment_id.to_string(),
                memo,
                at_ms: now_ms,
            },
        )
        .await?;
    }
    announce(&mut tx, &format!("payment-{}-refunded", p.payment_id), "payment.refunded", payment_data(p), now_ms)
        .await?;
    tx.commit().await?;
    Ok(true)
}

async fn close_payment(conn: &mut AnyConnection, p: &PaymentRecord, now_ms: u64) -> Result<bool, DurableError> {
    let mut tx = conn.begin().await?;
    let set = format!("status = 'closed', next_check_at_ms = {NEVER_MS}");
    if !set_status(&mut tx, &set, p.payment_id, "status = 'pending' AND money = 'none'", now_ms).await? {
        return Ok(false);
    }
    announce(&mut tx, &format!("payment-{}-closed", p.payment_id), "payment.closed", payment_data(p), now_ms).await?;
    tx.commit().await?;
    Ok(true)
}

impl Durable {
    pub async fn insert_payment(&self, p: &PaymentRecord) -> Result<(), DurableError> {
        let p = p.clone();
        self.db.writer.run(move |c| Box::pin(async move { insert_payment(c, &p).await })).await
    }

    /// Opens `p` for its order unless the order already has an open
    /// payment on the same channel (pending, no money yet), which is then
    /// returned instead: one check-and-insert, so concurrent requests for
    /// one order and channel open one payment.
    pub async fn open_order_payment(&self, p: &PaymentRecord) -> Result<Option<PaymentRecord>, DurableError> {
        let p = p.clone();
        self.db.writer.run(move |c| Box::pin(async move { open_order_payment(c, &p).await })).await
    }

    pub async fn payment(&self, payment_id: Id) -> Result<Option<PaymentRecord>, DurableError> {
        // On the writer: callers decide on what they read, which must
        // include every write answered before (on SQLite a reader's cache
        // is also dropped after every write: reads on the readers made a
        // purchase slower, BENCHMARKS.md "Money path").
        self.db
            .writer
            .run(move |c| {
                Box::pin(async move {
                    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM payments WHERE payment_id = $1"))
                        .bind(payment_id.raw())
                        .fetch_optional(&mut *c)
                        .await?;
                    row.as_ref().map(payment_from_row).transpose()
                })
            })
            .await
    }

    /// The payments of an order, oldest first.
    pub async fn payments_of_order(&self, order_id: Id) -> Result<Vec<PaymentRecord>, DurableError> {
        self.db
            .writer
            .run(move |c| {
                Box::pin(async move {
                    let rows =
                        sqlx::query(&format!("SELECT {COLUMNS} FROM payments WHERE order_id = $1 ORDER BY payment_id"))
                            .bind(order_id.raw())
                            .fetch_all(&mut *c)
                            .await?;
                    rows.iter().map(payment_from_row).collect()
                })
            })
            .await
    }

    /// Records that the channel took the money, once, and returns the
    /// payment as recorded. `None` if it was already recorded (a duplicate
    /// callback, or the query got there first): read it to see by whom.
    pub async fn record_money(
        &self,
        payment_id: Id,
        paid: &Paid,
        now_ms: u64,
    ) -> Result<Option<PaymentRecord>, DurableError> {
        let paid = paid.clone();
        self.db
            .writer
            .run(move |c| {
                Box::pin(async move {
                    let row = sqlx::query(&format!(
                        "UPDATE payments SET money = 'received', channel_txn = $2, paid_amount = $3, paid_at_ms = $4, \
                         updated_at_ms = $5 WHERE payment_id = $1 AND money = 'none' RETURNING {COLUMNS}"
                    ))
                    .bind(payment_id.raw())
                    .bind(&paid.txn_id)
                    .bind(paid.amount.get())
                    .bind(ms_i(paid.paid_at_ms))
                    .bind(ms_i(now_ms))
                    .fetch_optional(&mut *c)
                    .await?;
                    row.as_ref().map(payment_from_row).transpose()
                })
            })
            .await
    }

    /// Makes `payment_id` the one payment of its order, unless another got
    /// there first; returns the payment that holds the order.
    pub async fn claim_order(&self, order_id: Id, payment_id: Id) -> Result<Id, DurableError> {
        self.db
            .writer
            .run(move |c| {
                Box::pin(async move {
                    // One statement: a claim already there is "updated" to
                    // itself, so RETURNING gives whoever holds the order.
                    let holder: i64 = sqlx::query_scalar(
                        "INSERT INTO order_payments (order_id, payment_id) VALUES ($1, $2) ON CONFLICT (order_id) \
                         DO UPDATE SET payment_id = order_payments.payment_id RETURNING payment_id",
                    )
                    .bind(order_id.raw())
                    .bind(payment_id.raw())
                    .fetch_one(&mut *c)
                    .await?;
                    Id::from_raw(holder).map_err(|_| corrupt("order claim"))
                })
            })
            .await
    }

    /// The payment holding an order's claim, if any.
    pub async fn order_payer(&self, order_id: Id) -> Result<Option<Id>, DurableError> {
        self.db
            .writer
            .run(move |c| {
                Box::pin(async move {
                    let holder: Option<i64> =
                        sqlx::query_scalar("SELECT payment_id FROM order_payments WHERE order_id = $1")
                            .bind(order_id.raw())
                            .fetch_optional(&mut *c)
                            .await?;
                    holder.map(|h| Id::from_raw(h).map_err(|_| corrupt("order claim"))).transpose()
                })
            })
            .await
    }

    /// pending → succeeded, with the money's ledger entry: order payments
    /// are revenue (world → sales), recharges credit the wallet (world →
    /// user). False if another caller made the transition.
    pub async fn succeed_payment(&self, p: &PaymentRecord, now_ms: u64) -> Result<bool, DurableError> {
        let p = p.clone();
        self.db.writer.run(move |c| Box::pin(async move { succeed_payment(c, &p, now_ms).await })).await
    }

    /// Money arrived that must go back (the order closed, another payment
    /// paid it, the payment was closed): the refund becomes due and the
    /// money is booked into suspense until the channel confirms the refund.
    pub async fn refund_late_money(&self, p: &PaymentRecord, now_ms: u64) -> Result<bool, DurableError> {
        let p = p.clone();
        self.db.writer.run(move |c| Box::pin(async move { refund_late_money(c, &p, now_ms).await })).await
    }

    /// A paid order's refund is decided: succeeded → refund due. False if
    /// the payment is not succeeded or its refund is already under way.
    pub async fn refund_paid(&self, payment_id: Id, now_ms: u64, check_after_ms: u64) -> Result<bool, DurableError> {
        // Scheduled: if the caller's own attempt fails half-way, the
        // payments worker carries it on.
        let set = format!("refund = 'due', next_check_at_ms = {}", ms_i(now_ms.saturating_add(check_after_ms)));
        self.transition(set, payment_id, "status = 'succeeded' AND refund = 'none'", now_ms).await
    }

    /// The channel has refunded: due → returned (see [`RefundState::Returned`]).
    pub async fn refund_returned(&self, payment_id: Id, now_ms: u64) -> Result<bool, DurableError> {
        self.transition("refund = 'returned'".into(), payment_id, "refund = 'due'", now_ms).await
    }

    /// One compare-and-set of a payment's state, alone.
    async fn transition(
        &self,
        set: String,
        payment_id: Id,
        sql_where: &'static str,
        now_ms: u64,
    ) -> Result<bool, DurableError> {
        self.db
            .writer
            .run(move |c| Box::pin(async move { set_status(c, &set, payment_id, sql_where, now_ms).await }))
            .await
    }

    /// The channel confirmed the refund: due → done, status refunded, and
    /// the money leaves (sales → world for a paid order, suspense → world
    /// for late money).
    pub async fn finish_refund(&self, p: &PaymentRecord, now_ms: u64) -> Result<bool, DurableError> {
        let p = p.clone();
        self.db.writer.run(move |c| Box::pin(async move { finish_refund(c, &p, now_ms).await })).await
    }

    /// pending (no money) → closed.
    pub async fn close_payment(&self, p: &PaymentRecord, now_ms: u64) -> Result<bool, DurableError> {
        let p = p.clone();
        self.db.writer.run(move |c| Box::pin(async move { close_payment(c, &p, now_ms).await })).await
    }

    /// Payments whose next check is due, soonest first.
    pub async fn payments_due(&self, now_ms: u64, limit: usize) -> Result<Vec<PaymentRecord>, DurableError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM payments WHERE next_check_at_ms <= $1 ORDER BY next_check_at_ms LIMIT $2"
        ))
        .bind(ms_i(now_ms))
        .bind(limit as i64)
        .fetch_all(&self.db.read)
        .await?;
        rows.iter().map(payment_from_row).collect()
    }

    /// Takes a due payment until `until_ms` (compare-and-set on the check
    /// time seen), so one node checks it at a time.
    pub async fn claim_check(&self, p: &PaymentRecord, until_ms: u64) -> Result<bool, DurableError> {
        let (payment_id, seen) = (p.payment_id, p.next_check_at_ms);
        let sql = "UPDATE payments SET next_check_at_ms = $1, checks = checks + 1 \
                   WHERE payment_id = $2 AND next_check_at_ms = $3";
        let done = self
            .db
            .writer
            .execute(sql, move |q| q.bind(ms_i(until_ms)).bind(payment_id.raw()).bind(ms_i(seen)))
            .await?;
        Ok(done == 1)
    }

    /// When to look at a payment next (unless a transition set it to never).
    pub async fn set_next_check(&self, payment_id: Id, at_ms: u64) -> Result<(), DurableError> {
        let sql = format!(
            "UPDATE payments SET next_check_at_ms = $1 WHERE payment_id = $2 AND next_check_at_ms <> {NEVER_MS}"
        );
        self.db.writer.execute(sql, move |q| q.bind(ms_i(at_ms)).bind(payment_id.raw())).await?;
        Ok(())
    }

    /// Stores a raw callback before anything is done with it.
    pub async fn log_callback(&self, c: &CallbackRecord) -> Result<(), DurableError> {
        let c = c.clone();
        let sql =
            "INSERT INTO callback_log (callback_id, channel, received_at_ms, headers, body, payment_id, outcome, \
                   detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        self.db
            .writer
            .execute(sql, move |q| {
                q.bind(c.callback_id.raw())
                    .bind(c.channel)
                    .bind(ms_i(c.received_at_ms))
                    .bind(c.headers)
                    .bind(c.body)
                    .bind(c.payment_id.map(Id::raw))
                    .bind(c.outcome)
                    .bind(c.detail)
            })
            .await?;
        Ok(())
    }

    pub async fn set_callback_outcome(
        &self,
        callback_id: Id,
        payment_id: Option<Id>,
        outcome: &str,
        detail: &str,
    ) -> Result<(), DurableError> {
        let (outcome, detail) = (outcome.to_string(), detail.to_string());
        let sql = "UPDATE callback_log SET payment_id = $1, outcome = $2, detail = $3 WHERE callback_id = $4";
        self.db
            .writer
            .execute(sql, move |q| q.bind(payment_id.map(Id::raw)).bind(outcome).bind(detail).bind(callback_id.raw()))
            .await?;
        Ok(())
    }

    /// The callback log, newest first, optionally of one channel.
    pub async fn callbacks(&self, channel: Option<&str>, limit: u32) -> Result<Vec<CallbackRecord>, DurableError> {
        let filter = if channel.is_some() { "WHERE channel = $2" } else { "" };
        let sql = format!(
            "SELECT callback_id, channel, received_at_ms, headers, body, payment_id, outcome, detail FROM callback_log \
             {filter} ORDER BY callback_id DESC LIMIT $1"
        );
        let mut q = sqlx::query(&sql).bind(i64::from(limit));
        if let Some(c) = channel {
            q = q.bind(c);
        }
        let rows = q.fetch_all(&self.db.read).await?;
        rows.iter()
            .map(|r| {
                Ok(CallbackRecord {
                    callback_id: Id::from_raw(r.try_get("callback_id")?).map_err(|_| corrupt("callback id"))?,
                    channel: r.try_get("channel")?,
                    received_at_ms: ms(r.try_get("received_at_ms")?),
                    headers: r.try_get("headers")?,
                    body: r.try_get("body")?,
                    payment_id: opt_id(r.try_get("payment_id")?, "callback payment id")?,
                    outcome: r.try_get("outcome")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    /// Our payments whose money the channel took on `[start, end)`, for
    /// reconciliation against the channel's bill.
    pub async fn payments_paid_between(
        &self,
        channel: ChannelKind,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<PaymentRecord>, DurableError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM payments WHERE channel = $1 AND money = 'received' \
             AND paid_at_ms >= $2 AND paid_at_ms < $3 ORDER BY payment_id"
        ))
        .bind(channel.as_str())
        .bind(start_ms)
        .bind(end_ms)
        .fetch_all(&self.db.read)
        .await?;
        rows.iter().map(payment_from_row).collect()
    }
}
