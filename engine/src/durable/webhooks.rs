//! Webhooks: registrations, the deliveries written in the same transaction
//! as the change they announce (a transactional outbox in the durable
//! store), and every attempt to deliver them.

use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{AnyConnection, Connection, Row};

use super::{ms, ms_i, Durable, DurableError};
use crate::domain::Id;

/// The event types a webhook may subscribe to (`*` = all of them). Grabs
/// are not among them: a hot packet makes thousands a second, and the
/// grabber's wallet and the packet already show them.
pub const EVENT_TYPES: &[&str] = &[
    "order.created",
    "order.paid",
    "order.cancelled",
    "order.expired",
    "order.refunded",
    "payment.succeeded",
    "payment.closed",
    "payment.refunded",
    "wallet.recharged",
    "withdrawal.requested",
    "withdrawal.approved",
    "withdrawal.rejected",
    "packet.created",
    "packet.expired",
    "event.cancelled",
];

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct WebhookRecord {
    pub webhook_id: Id,
    pub url: String,
    pub events: Vec<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub created_at_ms: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub at_ms: u64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub delivery_id: String,
    pub webhook_id: Id,
    pub event_type: String,
    pub body: String,
    /// `pending`, `delivered`, `failed` (retry window closed) or `disabled`
    /// (the endpoint answered 410).
    pub status: String,
    pub attempts: u32,
    pub created_at_ms: u64,
    pub next_attempt_at_ms: u64,
    pub delivered_at_ms: Option<u64>,
    pub attempt_log: Vec<AttemptRecord>,
}

/// A due delivery with where and how to send it.
#[derive(Clone, Debug)]
pub struct DueDelivery {
    pub delivery: DeliveryRecord,
    pub url: String,
    pub secret: String,
}

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    RetryAt(u64),
    /// The retry window closed.
    Failed,
    /// 410 Gone: the endpoint is disabled with its pending deliveries.
    Gone,
}

/// The enabled webhooks and what they subscribe to, read once per
/// transaction that may announce events.
pub struct Subscribers(Vec<(i64, Vec<String>)>);

impl Subscribers {
    pub async fn load(conn: &mut AnyConnection) -> Result<Subscribers, DurableError> {
        let rows =
            sqlx::query("SELECT webhook_id, events FROM webhooks WHERE enabled = 1").fetch_all(&mut *conn).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let events: String = r.try_get("events")?;
            out.push((r.try_get("webhook_id")?, events.split(',').map(str::to_string).collect()));
        }
        Ok(Subscribers(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Writes one delivery per subscriber of `event_type`. `key` names the
    /// change uniquely (an event id, `payment-<id>-succeeded`), so writing
    /// the same change twice writes each delivery once.
    pub async fn enqueue(
        &self,
        conn: &mut AnyConnection,
        key: &str,
        event_type: &str,
        data: Value,
        at_ms: u64,
    ) -> Result<(), DurableError> {
        let subscribed: Vec<i64> = self
            .0
            .iter()
            .filter(|(_, events)| events.iter().any(|e| e == "*" || e == event_type))
            .map(|(id, _)| *id)
            .collect();
        if subscribed.is_empty() {
            return Ok(());
        }
        let body = json!({
            "id": key,
            "type": event_type,
            "created_at": crate::domain::time_of(at_ms),
            "data": data,
        })
        .to_string();
        for webhook_id in subscribed {
            sqlx::query(
                "INSERT INTO webhook_deliveries (delivery_id, webhook_id, event_type, body, status, attempts, \
                 created_at_ms, next_attempt_at_ms) VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5) \
                 ON CONFLICT (delivery_id) DO NOTHING",
            )
            .bind(format!("{key}:{webhook_id}"))
            .bind(webhook_id)
            .bind(event_type)
            .bind(&body)
            .bind(ms_i(at_ms))
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// Announces `event_type` to its subscribers inside the caller's transaction.
pub async fn announce(
    conn: &mut AnyConnection,
    key: &str,
    event_type: &str,
    data: Value,
    at_ms: u64,
) -> Result<(), DurableError> {
    let subs = Subscribers::load(conn).await?;
    subs.enqueue(conn, key, event_type, data, at_ms).await
}

fn webhook_from_row(r: &sqlx::any::AnyRow) -> Result<WebhookRecord, DurableError> {
    let events: String = r.try_get("events")?;
    Ok(WebhookRecord {
        webhook_id: Id::from_raw(r.try_get("webhook_id")?)
            .map_err(|_| DurableError::Invariant("stored webhook has a bad id".into()))?,
        url: r.try_get("url")?,
        events: events.split(',').map(str::to_string).collect(),
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        disabled_reason: r.try_get("disabled_reason")?,
        created_at_ms: ms(r.try_get("created_at_ms")?),
    })
}

fn delivery_from_row(r: &sqlx::any::AnyRow) -> Result<DeliveryRecord, DurableError> {
    Ok(DeliveryRecord {
        delivery_id: r.try_get("delivery_id")?,
        webhook_id: Id::from_raw(r.try_get("webhook_id")?)
            .map_err(|_| DurableError::Invariant("stored delivery has a bad webhook id".into()))?,
        event_type: r.try_get("event_type")?,
        body: r.try_get("body")?,
        status: r.try_get("status")?,
        attempts: r.try_get::<i64, _>("attempts")?.max(0) as u32,
        created_at_ms: ms(r.try_get("created_at_ms")?),
        next_attempt_at_ms: ms(r.try_get("next_attempt_at_ms")?),
        delivered_at_ms: r.try_get::<Option<i64>, _>("delivered_at_ms")?.map(ms),
        attempt_log: vec![],
    })
}

const DELIVERY_COLUMNS: &str = "d.delivery_id, d.webhook_id, d.event_type, d.body, d.status, d.attempts, \
     d.created_at_ms, d.next_attempt_at_ms, d.delivered_at_ms";

impl Durable {
    pub async fn create_webhook(
        &self,
        webhook_id: Id,
        url: &str,
        events: &[String],
        secret: &str,
        at_ms: u64,
    ) -> Result<(), DurableError> {
        let (url, events, secret) = (url.to_string(), events.join(","), secret.to_string());
        let sql = "INSERT INTO webhooks (webhook_id, url, events, secret, enabled, created_at_ms) \
                   VALUES ($1, $2, $3, $4, 1, $5)";
        self.db
            .writer
            .execute(sql, move |q| q.bind(webhook_id.raw()).bind(url).bind(events).bind(secret).bind(ms_i(at_ms)))
            .await?;
        Ok(())
    }

    pub async fn webhook_count(&self) -> Result<u64, DurableError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhooks").fetch_one(&self.db.read).await?;
        Ok(n.max(0) as u64)
    }

    pub async fn webhook(&self, webhook_id: Id) -> Result<Option<WebhookRecord>, DurableError> {
        let row = sqlx::query(
            "SELECT webhook_id, url, events, enabled, disabled_reason, created_at_ms FROM webhooks WHERE webhook_id = $1",
        )
        .bind(webhook_id.raw())
        .fetch_optional(&self.db.read)
        .await?;
        row.as_ref().map(webhook_from_row).transpose()
    }

    /// A webhook's deliveries, newest first, with every attempt.
    pub async fn deliveries(&self, webhook_id: Id, limit: u32) -> Result<Vec<DeliveryRecord>, DurableError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d WHERE d.webhook_id = $1 \
             ORDER BY d.created_at_ms DESC, d.delivery_id DESC LIMIT $2"
        ))
        .bind(webhook_id.raw())
        .bind(i64::from(limit))
        .fetch_all(&self.db.read)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut d = delivery_from_row(r)?;
            let attempts = sqlx::query(
                "SELECT attempt, at_ms, status_code, error, duration_ms FROM webhook_attempts \
                 WHERE delivery_id = $1 ORDER BY attempt",
            )
            .bind(&d.delivery_id)
            .fetch_all(&self.db.read)
            .await?;
            for a in attempts {
                d.attempt_log.push(AttemptRecord {
                    attempt: a.try_get::<i64, _>("attempt")?.max(0) as u32,
                    at_ms: ms(a.try_get("at_ms")?),
                    status_code: a.try_get::<Option<i64>, _>("status_code")?.map(|c| c.clamp(0, 999) as u16),
                    error: a.try_get("error")?,
                    duration_ms: ms(a.try_get("duration_ms")?),
                });
            }
            out.push(d);
        }
        Ok(out)
    }

    /// Pending deliveries of enabled webhooks whose next attempt is due.
    pub async fn due_deliveries(&self, now_ms: u64, limit: usize) -> Result<Vec<DueDelivery>, DurableError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS}, w.url, w.secret FROM webhook_deliveries d \
             JOIN webhooks w ON w.webhook_id = d.webhook_id \
             WHERE d.status = 'pending' AND d.next_attempt_at_ms <= $1 AND w.enabled = 1 \
             ORDER BY d.next_attempt_at_ms, d.created_at_ms LIMIT $2"
        ))
        .bind(ms_i(now_ms))
        .bind(limit as i64)
        .fetch_all(&self.db.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DueDelivery {
                    delivery: delivery_from_row(r)?,
                    url: r.try_get("url")?,
                    secret: r.try_get("secret")?,
                })
            })
            .collect()
    }

    /// Takes a due delivery for `until_ms` (compare-and-set on the time it
    /// was seen due), so two nodes never send one delivery at once.
    pub async fn claim_delivery(&self, d: &DeliveryRecord, until_ms: u64) -> Result<bool, DurableError> {
        let (delivery_id, seen) = (d.delivery_id.clone(), d.next_attempt_at_ms);
        let sql = "UPDATE webhook_deliveries SET next_attempt_at_ms = $1 \
                   WHERE delivery_id = $2 AND status = 'pending' AND next_attempt_at_ms = $3";
        let done =
            self.db.writer.execute(sql, move |q| q.bind(ms_i(until_ms)).bind(delivery_id).bind(ms_i(seen))).await?;
        Ok(done == 1)
    }

    /// Logs an attempt and moves the delivery on.
    pub async fn record_attempt(
        &self,
        d: &DeliveryRecord,
        at_ms: u64,
        status_code: Option<u16>,
        error: Option<&str>,
        duration_ms: u64,
        outcome: &AttemptOutcome,
    ) -> Result<(), DurableError> {
        let attempt =
            Attempt { at_ms, status_code, error: error.map(str::to_string), duration_ms, outcome: outcome.clone() };
        let d = d.clone();
        self.db.writer.run(move |c| Box::pin(async move { record_attempt(c, &d, &attempt).await })).await
    }
}

/// One attempt at a delivery, as [`Durable::record_attempt`] logs it.
struct Attempt {
    at_ms: u64,
    status_code: Option<u16>,
    error: Option<String>,
    duration_ms: u64,
    outcome: AttemptOutcome,
}

async fn record_attempt(conn: &mut AnyConnection, d: &DeliveryRecord, a: &Attempt) -> Result<(), DurableError> {
    let Attempt { at_ms, status_code, error, duration_ms, outcome } = a;
    let (at_ms, status_code, duration_ms) = (*at_ms, *status_code, *duration_ms);
    let attempt = i64::from(d.attempts) + 1;
    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempt, at_ms, status_code, error, duration_ms) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (delivery_id, attempt) DO NOTHING",
    )
    .bind(&d.delivery_id)
    .bind(attempt)
    .bind(ms_i(at_ms))
    .bind(status_code.map(i64::from))
    .bind(error.as_deref())
    .bind(ms_i(duration_ms))
    .execute(&mut *tx)
    .await?;
    let (status, next, delivered) = match outcome {
        AttemptOutcome::Delivered => ("delivered", d.next_attempt_at_ms, Some(ms_i(at_ms))),
        AttemptOutcome::RetryAt(t) => ("pending", *t, None),
        AttemptOutcome::Failed => ("failed", d.next_attempt_at_ms, None),
        AttemptOutcome::Gone => ("disabled", d.next_attempt_at_ms, None),
    };
    sqlx::query(
        "UPDATE webhook_deliveries SET status = $1, attempts = $2, next_attempt_at_ms = $3, delivered_at_ms = $4 \
         WHERE delivery_id = $5",
    )
    .bind(status)
    .bind(attempt)
    .bind(ms_i(next))
    .bind(delivered)
    .bind(&d.delivery_id)
    .execute(&mut *tx)
    .await?;
    if *outcome == AttemptOutcome::Gone {
        sqlx::query("UPDATE webhooks SET enabled = 0, disabled_reason = $1 WHERE webhook_id = $2")
            .bind("the endpoint answered 410 Gone")
            .bind(d.webhook_id.raw())
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE webhook_deliveries SET status = 'disabled' WHERE webhook_id = $1 AND status = 'pending'")
            .bind(d.webhook_id.raw())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
