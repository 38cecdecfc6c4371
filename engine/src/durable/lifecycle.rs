//! The sale's lifecycle in the durable store (issue 18): an event's
//! changes after creation, the public catalogue read from them, a
//! cancellation's refund fan-out tracked order by order, and what operators
//! read (an event's order counts, the order search).

use sqlx::Row;

use super::{ms, ms_i, Durable, DurableError, OrderRecord};
use crate::domain::{Category, EventDef, Fen, Id, OrderStatus, SaleStatus};

fn bad(what: impl std::fmt::Display) -> DurableError {
    DurableError::Invariant(format!("events: {what}"))
}

/// `sale_ends_at` of an event without one.
const NO_END_MS: i64 = i64::MAX;

/// An event as the catalogue lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogueRow {
    pub event_id: Id,
    pub name: String,
    pub venue: String,
    pub starts_at_ms: u64,
    pub on_sale_at_ms: u64,
    pub sale_ends_at_ms: Option<u64>,
    pub paused: bool,
    pub cancelled: bool,
    pub categories: Vec<Category>,
}

impl CatalogueRow {
    pub fn status(&self, now_ms: u64) -> SaleStatus {
        let window = (self.on_sale_at_ms, self.sale_ends_at_ms.unwrap_or(u64::MAX));
        SaleStatus::at(now_ms, window, self.paused, self.cancelled)
    }
}

/// What the catalogue is filtered by.
#[derive(Clone, Debug, Default)]
pub struct CatalogueQuery {
    pub status: Option<SaleStatus>,
    /// A substring of the name or the venue, any case.
    pub q: Option<String>,
    /// The show starts at or after `from_ms` and before `to_ms`.
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    /// Events with ids below this one (the cursor), newest first.
    pub before: Option<Id>,
    /// Set by the engine (`orders.list_limit_*`).
    pub limit: u32,
}

/// An event's orders as the durable store has applied them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderCounts {
    pub by_status: Vec<(OrderStatus, u64, Fen)>,
    /// Orders created at or after the `since` given.
    pub created_since: u64,
    /// Payments of the event's orders that succeeded at or after `since`.
    pub paid_since: u64,
}

/// The admin order search.
#[derive(Clone, Debug, Default)]
pub struct OrderQuery {
    pub event_id: Option<Id>,
    pub user_id: Option<String>,
    pub status: Option<OrderStatus>,
    pub before: Option<Id>,
    pub limit: u32,
}

/// The `events` row's columns of a definition.
struct Columns {
    body: String,
    categories: String,
    on_sale_at_ms: i64,
    sale_ends_at_ms: i64,
    paused: i64,
    cancelled_at_ms: Option<i64>,
    cancel_reason: Option<String>,
}

fn columns(def: &EventDef) -> Result<Columns, DurableError> {
    let (on, ends) = def.sale_window_ms();
    Ok(Columns {
        body: serde_json::to_string(def).map_err(bad)?,
        categories: serde_json::to_string(&def.categories).map_err(bad)?,
        on_sale_at_ms: ms_i(on),
        sale_ends_at_ms: if ends == u64::MAX { NO_END_MS } else { ms_i(ends) },
        paused: i64::from(def.paused),
        cancelled_at_ms: def.cancellation.as_ref().map(|c| c.at.timestamp_millis()),
        cancel_reason: def.cancellation.as_ref().map(|c| c.reason.clone()),
    })
}

impl Durable {
    /// Records an event's definition, before the hot store has it, so that a
    /// lost Redis can be given it back. Once per event.
    pub async fn save_event(&self, def: &EventDef) -> Result<(), DurableError> {
        let c = columns(def)?;
        let (id, starts) = (def.event_id.raw(), def.starts_at.timestamp_millis());
        let (name, venue) = (def.name.clone(), def.venue.clone());
        let now = ms_i(crate::domain::now_unix_ms());
        self.db()
            .writer
            .execute(
                "INSERT INTO events (event_id, def, starts_at_ms, created_at_ms, rev, name, venue, categories, \
                 on_sale_at_ms, sale_ends_at_ms, paused) VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (event_id) DO NOTHING",
                move |q| {
                    q.bind(id)
                        .bind(c.body)
                        .bind(starts)
                        .bind(now)
                        .bind(name)
                        .bind(venue)
                        .bind(c.categories)
                        .bind(c.on_sale_at_ms)
                        .bind(c.sale_ends_at_ms)
                        .bind(c.paused)
                },
            )
            .await?;
        Ok(())
    }

    /// Records an operator's change to an event once the hot store took it
    /// (over the same or an older revision: the hot store's word); a
    /// cancellation is announced to webhooks in the same transaction (once:
    /// the delivery id is the event's).
    pub async fn save_event_change(&self, def: &EventDef) -> Result<(), DurableError> {
        let cols = columns(def)?;
        let (id, rev) = (def.event_id.raw(), ms_i(def.rev));
        let (name, venue) = (def.name.clone(), def.venue.clone());
        let announce = def.cancellation.is_some().then(|| {
            let at = cols.cancelled_at_ms.map(ms).unwrap_or(0);
            let data = serde_json::json!({
                "event_id": def.event_id.to_string(),
                "name": def.name,
                "reason": cols.cancel_reason.clone().unwrap_or_default(),
            });
            (format!("event-{}-cancelled", def.event_id), data, at)
        });
        let sql = String::from(
            "UPDATE events SET def = $1, name = $2, venue = $3, categories = $4, on_sale_at_ms = $5, \
             sale_ends_at_ms = $6, paused = $7, rev = $9, \
             cancelled_at_ms = COALESCE(cancelled_at_ms, $10), cancel_reason = COALESCE(cancel_reason, $11) \
             WHERE event_id = $8 AND rev <= $9",
        );
        self.db()
            .writer
            .run(move |c| {
                Box::pin(async move {
                    sqlx::query(&sql)
                        .bind(cols.body)
                        .bind(name)
                        .bind(venue)
                        .bind(cols.categories)
                        .bind(cols.on_sale_at_ms)
                        .bind(cols.sale_ends_at_ms)
                        .bind(cols.paused)
                        .bind(id)
                        .bind(rev)
                        .bind(cols.cancelled_at_ms)
                        .bind(cols.cancel_reason)
                        .execute(&mut *c)
                        .await?;
                    if let Some((key, data, at)) = announce {
                        super::webhooks::announce(c, &key, "event.cancelled", data, at).await?;
                    }
                    Ok(())
                })
            })
            .await
    }

    /// A page of the catalogue, newest event first.
    pub async fn catalogue(&self, f: &CatalogueQuery, now_ms: u64) -> Result<Vec<CatalogueRow>, DurableError> {
        let mut sql = String::from(
            "SELECT event_id, name, venue, starts_at_ms, on_sale_at_ms, sale_ends_at_ms, paused, cancelled_at_ms, \
             categories FROM events WHERE event_id < $1 AND starts_at_ms >= $2 AND starts_at_ms < $3 \
             AND (lower(name) LIKE $4 ESCAPE '\\' OR lower(venue) LIKE $4 ESCAPE '\\')",
        );
        // The status as `CatalogueRow::status` computes it, in SQL.
        sql.push_str(match f.status {
            None => "",
            Some(SaleStatus::Cancelled) => " AND cancelled_at_ms IS NOT NULL",
            Some(SaleStatus::Ended) => " AND cancelled_at_ms IS NULL AND sale_ends_at_ms <= $5",
            Some(SaleStatus::Paused) => " AND cancelled_at_ms IS NULL AND sale_ends_at_ms > $5 AND paused = 1",
            Some(SaleStatus::Scheduled) => {
                " AND cancelled_at_ms IS NULL AND sale_ends_at_ms > $5 AND paused = 0 AND on_sale_at_ms > $5"
            }
            Some(SaleStatus::OnSale) => {
                " AND cancelled_at_ms IS NULL AND sale_ends_at_ms > $5 AND paused = 0 AND on_sale_at_ms <= $5"
            }
        });
        if f.status.is_none() {
            // Every query binds the same parameters.
            sql.push_str(" AND $5 = $5");
        }
        sql.push_str(" ORDER BY event_id DESC LIMIT $6");
        let pattern = format!("%{}%", escape_like(&f.q.clone().unwrap_or_default().to_lowercase()));
        let rows = sqlx::query(&sql)
            .bind(f.before.map(|b| b.raw()).unwrap_or(i64::MAX))
            .bind(f.from_ms.map(ms_i).unwrap_or(i64::MIN))
            .bind(f.to_ms.map(ms_i).unwrap_or(i64::MAX))
            .bind(pattern)
            .bind(ms_i(now_ms))
            .bind(i64::from(f.limit))
            .fetch_all(&self.db().read)
            .await?;
        rows.iter()
            .map(|r| {
                let ends: i64 = r.try_get("sale_ends_at_ms")?;
                let cats: String = r.try_get("categories")?;
                Ok(CatalogueRow {
                    event_id: Id::from_raw(r.try_get("event_id")?).map_err(bad)?,
                    name: r.try_get("name")?,
                    venue: r.try_get("venue")?,
                    starts_at_ms: ms(r.try_get("starts_at_ms")?),
                    on_sale_at_ms: ms(r.try_get("on_sale_at_ms")?),
                    sale_ends_at_ms: (ends != NO_END_MS).then(|| ms(ends)),
                    paused: r.try_get::<i64, _>("paused")? != 0,
                    cancelled: r.try_get::<Option<i64>, _>("cancelled_at_ms")?.is_some(),
                    categories: serde_json::from_str(&cats).map_err(bad)?,
                })
            })
            .collect()
    }

    /// Cancelled events whose refund fan-out has not finished.
    pub async fn unfinished_cancellations(&self) -> Result<Vec<Id>, DurableError> {
        let rows = sqlx::query(
            "SELECT event_id FROM events WHERE cancelled_at_ms IS NOT NULL AND cancel_done_at_ms IS NULL \
             ORDER BY event_id",
        )
        .fetch_all(&self.db().read)
        .await?;
        rows.iter().map(|r| Id::from_raw(r.try_get("event_id")?).map_err(bad)).collect()
    }

    pub async fn finish_cancellation(&self, event_id: Id, now_ms: u64) -> Result<(), DurableError> {
        self.db()
            .writer
            .execute(
                "UPDATE events SET cancel_done_at_ms = $1 WHERE event_id = $2 AND cancel_done_at_ms IS NULL",
                move |q| q.bind(ms_i(now_ms)).bind(event_id.raw()),
            )
            .await?;
        Ok(())
    }

    /// A paid order of a cancelled event is to be refunded by `payment_id`.
    pub async fn cancel_refund_owed(
        &self,
        event_id: Id,
        order_id: Id,
        payment_id: Id,
        amount: Fen,
    ) -> Result<(), DurableError> {
        self.db()
            .writer
            .execute(
                "INSERT INTO cancel_refunds (event_id, order_id, payment_id, amount) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (event_id, order_id) DO NOTHING",
                move |q| q.bind(event_id.raw()).bind(order_id.raw()).bind(payment_id.raw()).bind(amount.get()),
            )
            .await?;
        Ok(())
    }

    pub async fn cancel_refund_done(&self, event_id: Id, order_id: Id, now_ms: u64) -> Result<(), DurableError> {
        self.db()
            .writer
            .execute(
                "UPDATE cancel_refunds SET done_at_ms = $1 WHERE event_id = $2 AND order_id = $3 \
                 AND done_at_ms IS NULL",
                move |q| q.bind(ms_i(now_ms)).bind(event_id.raw()).bind(order_id.raw()),
            )
            .await?;
        Ok(())
    }

    /// The refunds of a cancellation not yet done: (order, payment).
    pub async fn cancel_refunds_open(&self, event_id: Id) -> Result<Vec<(Id, Id)>, DurableError> {
        let rows = sqlx::query(
            "SELECT order_id, payment_id FROM cancel_refunds WHERE event_id = $1 AND done_at_ms IS NULL \
             ORDER BY order_id",
        )
        .bind(event_id.raw())
        .fetch_all(&self.db().read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    Id::from_raw(r.try_get("order_id")?).map_err(bad)?,
                    Id::from_raw(r.try_get("payment_id")?).map_err(bad)?,
                ))
            })
            .collect()
    }

    /// A cancellation's progress: (refunds owed, refunds done).
    pub async fn cancel_progress(&self, event_id: Id) -> Result<(u64, u64), DurableError> {
        let r =
            sqlx::query("SELECT COUNT(*) AS total, COUNT(done_at_ms) AS done FROM cancel_refunds WHERE event_id = $1")
                .bind(event_id.raw())
                .fetch_one(&self.db().read)
                .await?;
        Ok((ms(r.try_get("total")?), ms(r.try_get("done")?)))
    }

    /// The event's orders by status (count and amount), and the orders
    /// created and payments succeeded since `since_ms`.
    pub async fn order_counts(&self, event_id: Id, since_ms: u64) -> Result<OrderCounts, DurableError> {
        let mut by: Vec<(OrderStatus, u64, Fen)> = Vec::new();
        let mut created_since = 0;
        for gene in 0..crate::domain::id::GENE_COUNT {
            let rows = sqlx::query(&format!(
                "SELECT status, COUNT(*) AS n, CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS amount, \
                 CAST(COALESCE(SUM(CASE WHEN created_at_ms >= $2 THEN 1 ELSE 0 END), 0) AS BIGINT) AS recent \
                 FROM orders_{gene} WHERE event_id = $1 GROUP BY status"
            ))
            .bind(event_id.raw())
            .bind(ms_i(since_ms))
            .fetch_all(&self.db().read)
            .await?;
            for r in rows {
                let status: String = r.try_get("status")?;
                let status = OrderStatus::parse(&status).ok_or_else(|| bad(format!("order status {status}")))?;
                let (n, amount) = (ms(r.try_get("n")?), r.try_get::<i64, _>("amount")?);
                created_since += ms(r.try_get("recent")?);
                match by.iter_mut().find(|(s, _, _)| *s == status) {
                    Some(e) => {
                        e.1 += n;
                        e.2 = Fen::new(e.2.get() + amount);
                    }
                    None => by.push((status, n, Fen::new(amount))),
                }
            }
        }
        let paid = sqlx::query(
            "SELECT COUNT(*) AS n FROM payments WHERE event_id = $1 AND paid_at_ms >= $2 \
             AND status IN ('succeeded', 'refunded')",
        )
        .bind(event_id.raw())
        .bind(ms_i(since_ms))
        .fetch_one(&self.db().read)
        .await?;
        Ok(OrderCounts { by_status: by, created_since, paid_since: ms(paid.try_get("n")?) })
    }

    /// The admin order search, newest first.
    pub async fn search_orders(&self, f: &OrderQuery) -> Result<Vec<OrderRecord>, DurableError> {
        let genes: Vec<u8> = match &f.user_id {
            Some(u) => vec![crate::domain::gene_of_user(u)],
            None => (0..crate::domain::id::GENE_COUNT).collect(),
        };
        let mut found = Vec::new();
        for gene in genes {
            let rows = sqlx::query(&format!(
                "SELECT order_id, event_id, user_id, status, amount, created_at_ms, expires_at_ms FROM orders_{gene} \
                 WHERE order_id < $1 AND ($2 = 0 OR event_id = $2) AND ($3 = '' OR user_id = $3) \
                 AND ($4 = '' OR status = $4) ORDER BY order_id DESC LIMIT $5"
            ))
            .bind(f.before.map(|b| b.raw()).unwrap_or(i64::MAX))
            .bind(f.event_id.map(|e| e.raw()).unwrap_or(0))
            .bind(f.user_id.clone().unwrap_or_default())
            .bind(f.status.map(|s| s.as_str()).unwrap_or(""))
            .bind(i64::from(f.limit))
            .fetch_all(&self.db().read)
            .await?;
            found.extend(rows);
        }
        found.sort_by_key(|r| std::cmp::Reverse(r.try_get::<i64, _>("order_id").unwrap_or(0)));
        found.truncate(f.limit as usize);
        let mut out = Vec::with_capacity(found.len());
        for r in found {
            out.push(self.order_from_row(r).await?);
        }
        Ok(out)
    }
}

/// `%` and `_` in a search text match themselves.
fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}
