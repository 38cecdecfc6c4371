//! What a lost Redis is rebuilt from (issue 15): event and packet
//! definitions written here before the hot store has them, the orders,
//! seats and grabs the workers applied, and the identity (epoch) of the
//! Redis data set this store was last fed from.

use sqlx::Row;

use super::{ms, ms_i, Durable, DurableError};
use crate::domain::Attendee;
use crate::domain::{EventDef, Fen, Id, OrderStatus};
use crate::store::restore::{AppliedGrab, AppliedOrder, AppliedPacket};
use crate::store::PacketDef;

fn bad(what: impl std::fmt::Display) -> DurableError {
    DurableError::Invariant(format!("rebuild: {what}"))
}

fn id_of(raw: i64) -> Result<Id, DurableError> {
    Id::from_raw(raw).map_err(bad)
}

/// Rows read per page while listing what to rebuild.
const PAGE: i64 = 500;

impl Durable {
    /// Events whose show starts at or after `since_ms`, by id, after `after`.
    pub async fn events_since(&self, since_ms: u64, after: Option<Id>) -> Result<Vec<EventDef>, DurableError> {
        let rows =
            sqlx::query("SELECT def FROM events WHERE starts_at_ms >= $1 AND event_id > $2 ORDER BY event_id LIMIT $3")
                .bind(ms_i(since_ms))
                .bind(after.map(|a| a.raw()).unwrap_or(i64::MIN))
                .bind(PAGE)
                .fetch_all(&self.db().read)
                .await?;
        rows.iter().map(|r| serde_json::from_str::<EventDef>(&r.try_get::<String, _>("def")?).map_err(bad)).collect()
    }

    /// Every order of `event_id` the workers have applied, oldest first.
    pub async fn applied_orders(&self, event_id: Id) -> Result<Vec<AppliedOrder>, DurableError> {
        let mut out = Vec::new();
        for gene in 0..crate::domain::id::GENE_COUNT {
            let rows = sqlx::query(&format!(
                "SELECT order_id, user_id, status, amount, created_at_ms, expires_at_ms FROM orders_{gene} \
                 WHERE event_id = $1"
            ))
            .bind(event_id.raw())
            .fetch_all(&self.db().read)
            .await?;
            for r in rows {
                let status: String = r.try_get("status")?;
                out.push(AppliedOrder {
                    order_id: id_of(r.try_get("order_id")?)?,
                    user_id: r.try_get("user_id")?,
                    status: OrderStatus::parse(&status).ok_or_else(|| bad(format!("order status {status}")))?,
                    amount: Fen::new(r.try_get("amount")?),
                    created_at_ms: ms(r.try_get("created_at_ms")?),
                    expires_at_ms: ms(r.try_get("expires_at_ms")?),
                    seat_labels: Vec::new(),
                    attendees: Vec::new(),
                });
            }
        }
        out.sort_by_key(|o| o.order_id);
        for o in &mut out {
            o.seat_labels = sqlx::query_scalar("SELECT seat_id FROM order_seats WHERE order_id = $1")
                .bind(o.order_id.raw())
                .fetch_all(&self.db().read)
                .await?;
            o.attendees = sqlx::query("SELECT name, id_number FROM attendees WHERE order_id = $1 ORDER BY idx")
                .bind(o.order_id.raw())
                .fetch_all(&self.db().read)
                .await?
                .iter()
                .map(|a| Ok(Attendee { name: a.try_get("name")?, id_number: a.try_get("id_number")? }))
                .collect::<Result<_, sqlx::Error>>()?;
        }
        Ok(out)
    }

    /// Packets (not failed) that expire at or after `since_ms`, by id, after
    /// `after`, with their grabs. Packets made before definitions were kept
    /// here are skipped.
    pub async fn packets_since(&self, since_ms: u64, after: Option<Id>) -> Result<Vec<AppliedPacket>, DurableError> {
        let rows = sqlx::query(
            "SELECT packet_id, def, status FROM packets WHERE expires_at_ms >= $1 AND packet_id > $2 \
             AND status <> 'failed' AND def <> '' ORDER BY packet_id LIMIT $3",
        )
        .bind(ms_i(since_ms))
        .bind(after.map(|a| a.raw()).unwrap_or(i64::MIN))
        .bind(PAGE)
        .fetch_all(&self.db().read)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let def: PacketDef = serde_json::from_str(&r.try_get::<String, _>("def")?).map_err(bad)?;
            let status: String = r.try_get("status")?;
            let grabs = sqlx::query(
                "SELECT grab_id, user_id, amount, at_ms FROM grabs WHERE packet_id = $1 ORDER BY at_ms, grab_id",
            )
            .bind(def.packet_id.raw())
            .fetch_all(&self.db().read)
            .await?
            .iter()
            .map(|g| {
                Ok(AppliedGrab {
                    grab_id: id_of(g.try_get("grab_id")?)?,
                    user_id: g.try_get("user_id")?,
                    amount: Fen::new(g.try_get("amount")?),
                    at_ms: ms(g.try_get("at_ms")?),
                })
            })
            .collect::<Result<_, DurableError>>()?;
            out.push(AppliedPacket { def, expired: status == "expired", grabs });
        }
        Ok(out)
    }

    /// The epoch of the Redis data set this store was last fed from.
    pub async fn hot_epoch(&self) -> Result<Option<String>, DurableError> {
        Ok(sqlx::query_scalar("SELECT epoch FROM hot_identity WHERE id = 1").fetch_optional(&self.db().read).await?)
    }

    /// Records `epoch` as the current Redis data set's, replacing any other.
    pub async fn set_hot_epoch(&self, epoch: &str) -> Result<(), DurableError> {
        let (epoch, now) = (epoch.to_string(), ms_i(crate::domain::now_unix_ms()));
        self.db()
            .writer
            .execute(
                "INSERT INTO hot_identity (id, epoch, at_ms) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, at_ms = excluded.at_ms",
                move |q| q.bind(epoch).bind(now),
            )
            .await?;
        Ok(())
    }

    /// Records `epoch` unless one is recorded already; returns the one that
    /// is (two nodes starting at once agree on the first).
    pub async fn adopt_hot_epoch(&self, epoch: &str) -> Result<String, DurableError> {
        let (e, now) = (epoch.to_string(), ms_i(crate::domain::now_unix_ms()));
        self.db()
            .writer
            .execute(
                "INSERT INTO hot_identity (id, epoch, at_ms) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
                move |q| q.bind(e).bind(now),
            )
            .await?;
        // The writer's commit is visible to the read pool from here on.
        self.hot_epoch().await?.ok_or_else(|| bad("the hot store epoch was not recorded"))
    }
}
