//! The sandbox channels: a stand-in for WeChat Pay, Alipay and the campus
//! e-card that keeps its own books (the `sandbox_trades` table, which no
//! other part of rush reads), lets a test play the buyer, and then calls
//! rush back the way the real channel would: signed in the channel's
//! shape, asynchronously, resent until acknowledged, and — as the
//! settings say — dropped, delayed or duplicated.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{AnyPool, Row};

use super::wire::Wire;
use super::{
    Ack, AckKind, BillLine, CallbackError, ChannelError, ChannelKind, Notification, Paid, PaymentChannel, TradeState,
};
use crate::config::SandboxConfig;
use crate::domain::{now_unix_ms, Fen, Id};
use crate::durable::writer::Writer;

/// How the sandbox calls back after a buyer pays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallbackPlan {
    /// Send nothing: only an active query will find out.
    pub drop: bool,
    pub delay_ms: u64,
    /// Extra copies, each sent independently.
    pub duplicates: u32,
}

/// Most extra copies and longest delay one sandbox payment may ask for.
pub const DUPLICATES_MAX: u32 = 10;
pub const DELAY_MS_MAX: u64 = 600_000;

impl CallbackPlan {
    /// What a sandbox payment asked for, the configured behaviour (drop
    /// chance, delay, duplicates) where it asked nothing.
    pub fn new(
        cfg: &SandboxConfig,
        drop: Option<bool>,
        delay_ms: Option<u64>,
        duplicates: Option<u32>,
    ) -> Result<Self, String> {
        let plan = CallbackPlan {
            drop: drop.unwrap_or_else(|| fastrand::u8(0..100) < cfg.drop_pct),
            delay_ms: delay_ms.unwrap_or(cfg.delay_ms),
            duplicates: duplicates.unwrap_or(cfg.duplicates),
        };
        if plan.duplicates > DUPLICATES_MAX || plan.delay_ms > DELAY_MS_MAX {
            return Err(format!("duplicates must be 0-{DUPLICATES_MAX} and delay_ms 0-{DELAY_MS_MAX}"));
        }
        Ok(plan)
    }
}

/// Where the sandbox buyer pays a payment.
pub fn pay_url(kind: ChannelKind, payment_id: Id) -> String {
    format!("/v1/sandbox/{}/payments/{payment_id}/complete", kind.as_str())
}

/// What happened when the buyer tried to pay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PayOutcome {
    Paid(Paid),
    /// The payment was closed (or refunded) before the buyer paid.
    NotPayable(&'static str),
    UnknownTrade,
}

pub struct SandboxChannel {
    wire: Arc<dyn Wire>,
    db: Writer,
    read: AnyPool,
    /// Where callbacks go: `<base>/v1/channels/<channel>/notify`; set once
    /// the node knows its address.
    notify_base: Arc<OnceLock<String>>,
    http: reqwest::Client,
    retry_max: u32,
    refund_delay_ms: u64,
    day_offset_min: i32,
}

fn unavailable(e: impl std::fmt::Display) -> ChannelError {
    ChannelError::Unavailable(e.to_string())
}

impl SandboxChannel {
    pub fn new(
        wire: Arc<dyn Wire>,
        pools: &crate::durable::Pools,
        notify_base: Arc<OnceLock<String>>,
        http: reqwest::Client,
        retry_max: u32,
        refund_delay_ms: u64,
        day_offset_min: i32,
    ) -> Self {
        SandboxChannel {
            wire,
            db: pools.writer.clone(),
            read: pools.read.clone(),
            notify_base,
            http,
            retry_max,
            refund_delay_ms,
            day_offset_min,
        }
    }

    /// The buyer pays: the trade becomes paid (if it still can be) and the
    /// callback goes out as `plan` says.
    pub async fn pay(&self, payment_id: Id, plan: CallbackPlan) -> Result<PayOutcome, ChannelError> {
        let now = now_unix_ms();
        let txn_id = format!("{}{}{:06}", self.kind().as_str().to_uppercase(), now, fastrand::u32(..1_000_000));
        let (channel, txn) = (self.kind().as_str(), txn_id.clone());
        let amount: Option<i64> = self
            .db
            .run(move |c| {
                Box::pin(async move {
                    Ok(sqlx::query_scalar(
                        "UPDATE sandbox_trades SET status = 'SUCCESS', txn_id = $1, paid_at_ms = $2 \
                         WHERE channel = $3 AND payment_id = $4 AND status = 'NOTPAY' RETURNING amount",
                    )
                    .bind(txn)
                    .bind(now as i64)
                    .bind(channel)
                    .bind(payment_id.raw())
                    .fetch_optional(&mut *c)
                    .await?)
                })
            })
            .await
            .map_err(unavailable)?;
        let Some(amount) = amount else {
            return Ok(match self.query(payment_id).await {
                Ok(TradeState::Paid(_)) => PayOutcome::NotPayable("already paid"),
                Ok(TradeState::Closed) => PayOutcome::NotPayable("closed"),
                Ok(TradeState::Refunded(_)) => PayOutcome::NotPayable("refunded"),
                Ok(TradeState::NotPaid) => PayOutcome::NotPayable("not payable"),
                Err(ChannelError::UnknownTrade) => PayOutcome::UnknownTrade,
                Err(e) => return Err(e),
            });
        };
        let paid = Paid { txn_id, amount: Fen::new(amount), paid_at_ms: now };
        if !plan.drop {
            for _ in 0..=plan.duplicates {
                self.send_callback(Notification { payment_id, paid: paid.clone() }, plan.delay_ms);
            }
        }
        Ok(PayOutcome::Paid(paid))
    }

    /// Sends one callback in the background, resending (1 s, 2 s, 4 s …)
    /// until rush acknowledges it or `retry_max` resends are spent. Each
    /// attempt is signed when it is sent, as real channels do.
    fn send_callback(&self, n: Notification, delay_ms: u64) {
        let Some(base) = self.notify_base.get().cloned() else {
            tracing::warn!("sandbox: no notify URL yet; callback not sent");
            return;
        };
        let url = format!("{base}/v1/channels/{}/notify", self.kind().as_str());
        let (http, wire, retry_max) = (self.http.clone(), self.wire.clone(), self.retry_max);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            for attempt in 0..=retry_max {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(1000 << (attempt - 1).min(6))).await;
                }
                let cb = wire.callback(&n, now_unix_ms());
                let mut req = http.post(&url).header("content-type", cb.content_type).body(cb.body);
                for (k, v) in cb.headers {
                    req = req.header(k, v);
                }
                let channel = wire.kind().as_str();
                match req.send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let body = resp.text().await.unwrap_or_default();
                        if wire.acked(status, &body) {
                            return;
                        }
                        tracing::debug!(channel, status, "sandbox callback not acknowledged");
                    }
                    Err(e) => tracing::debug!(channel, error = %e, "sandbox callback failed"),
                }
            }
        });
    }

    /// The signed callback the channel would send for `n` now (tests forge
    /// and replay with it).
    pub fn signed_callback(&self, n: &Notification) -> super::wire::Callback {
        self.wire.callback(n, now_unix_ms())
    }
}

fn trade_state(r: &sqlx::any::AnyRow) -> Result<TradeState, ChannelError> {
    let status: String = r.try_get("status").map_err(unavailable)?;
    let paid = || -> Result<Paid, ChannelError> {
        Ok(Paid {
            txn_id: r.try_get("txn_id").map_err(unavailable)?,
            amount: Fen::new(r.try_get("amount").map_err(unavailable)?),
            paid_at_ms: r.try_get::<Option<i64>, _>("paid_at_ms").map_err(unavailable)?.unwrap_or(0).max(0) as u64,
        })
    };
    Ok(match status.as_str() {
        "NOTPAY" => TradeState::NotPaid,
        "SUCCESS" => TradeState::Paid(paid()?),
        "CLOSED" => TradeState::Closed,
        "REFUND" => TradeState::Refunded(paid()?),
        other => return Err(ChannelError::Unavailable(format!("sandbox trade in unknown state {other}"))),
    })
}

#[async_trait]
impl PaymentChannel for SandboxChannel {
    fn kind(&self) -> ChannelKind {
        self.wire.kind()
    }

    async fn create(&self, payment_id: Id, amount: Fen, expires_at_ms: u64) -> Result<String, ChannelError> {
        let (channel, now) = (self.kind().as_str(), now_unix_ms() as i64);
        let sql =
            "INSERT INTO sandbox_trades (channel, payment_id, amount, status, txn_id, created_at_ms, expires_at_ms) \
                   VALUES ($1, $2, $3, 'NOTPAY', '', $4, $5) ON CONFLICT (channel, payment_id) DO NOTHING";
        self.db
            .execute(sql, move |q| {
                q.bind(channel).bind(payment_id.raw()).bind(amount.get()).bind(now).bind(expires_at_ms as i64)
            })
            .await
            .map_err(unavailable)?;
        Ok(pay_url(self.kind(), payment_id))
    }

    async fn query(&self, payment_id: Id) -> Result<TradeState, ChannelError> {
        let channel = self.kind().as_str();
        let row = self
            .db
            .run(move |c| {
                Box::pin(async move {
                    Ok(sqlx::query(
                        "SELECT status, txn_id, amount, paid_at_ms FROM sandbox_trades WHERE channel = $1 \
                         AND payment_id = $2",
                    )
                    .bind(channel)
                    .bind(payment_id.raw())
                    .fetch_optional(&mut *c)
                    .await?)
                })
            })
            .await
            .map_err(unavailable)?;
        match row {
            Some(r) => trade_state(&r),
            None => Err(ChannelError::UnknownTrade),
        }
    }

    async fn close(&self, payment_id: Id) -> Result<TradeState, ChannelError> {
        let channel = self.kind().as_str();
        let sql =
            "UPDATE sandbox_trades SET status = 'CLOSED' WHERE channel = $1 AND payment_id = $2 AND status = 'NOTPAY'";
        self.db.execute(sql, move |q| q.bind(channel).bind(payment_id.raw())).await.map_err(unavailable)?;
        self.query(payment_id).await
    }

    async fn refund(&self, payment_id: Id, amount: Fen) -> Result<(), ChannelError> {
        if self.refund_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.refund_delay_ms)).await;
        }
        let (channel, now) = (self.kind().as_str(), now_unix_ms() as i64);
        let sql = "UPDATE sandbox_trades SET status = 'REFUND', refunded_at_ms = $1 \
                   WHERE channel = $2 AND payment_id = $3 AND status = 'SUCCESS' AND amount = $4";
        self.db
            .execute(sql, move |q| q.bind(now).bind(channel).bind(payment_id.raw()).bind(amount.get()))
            .await
            .map_err(unavailable)?;
        match self.query(payment_id).await? {
            TradeState::Refunded(p) if p.amount == amount => Ok(()),
            TradeState::Paid(p) => {
                Err(ChannelError::Refused(format!("refund of {amount} does not match {}", p.amount)))
            }
            other => Err(ChannelError::Refused(format!("cannot refund a trade in state {other:?}"))),
        }
    }

    fn verify_callback(
        &self,
        headers: &[(String, String)],
        body: &[u8],
        now_ms: u64,
    ) -> Result<Notification, CallbackError> {
        self.wire.verify(headers, body, now_ms)
    }

    fn acknowledge(&self, kind: AckKind) -> Ack {
        self.wire.ack(kind)
    }

    async fn bill(&self, day: i64) -> Result<Vec<BillLine>, ChannelError> {
        let (start, end) = super::day_bounds_ms(day, self.day_offset_min);
        let rows = sqlx::query(
            "SELECT payment_id, txn_id, amount, status FROM sandbox_trades WHERE channel = $1 \
             AND paid_at_ms >= $2 AND paid_at_ms < $3 AND status IN ('SUCCESS', 'REFUND') ORDER BY payment_id",
        )
        .bind(self.kind().as_str())
        .bind(start)
        .bind(end)
        .fetch_all(&self.read)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(BillLine {
                    payment_id: Id::from_raw(r.try_get("payment_id").map_err(unavailable)?)
                        .map_err(|_| ChannelError::Unavailable("bad payment id in the bill".into()))?,
                    txn_id: r.try_get("txn_id").map_err(unavailable)?,
                    amount: Fen::new(r.try_get("amount").map_err(unavailable)?),
                    status: r.try_get("status").map_err(unavailable)?,
                })
            })
            .collect()
    }
}
