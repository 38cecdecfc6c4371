//! The durable store over sqlx: accounts and the double-entry journal,
//! orders in 16 gene tables, packets, grabs, and the workers' idempotent
//! application of events. One body of SQL runs on SQLite and Postgres
//! (`pool.rs`); only the migrations are per dialect.
//!
//! Why one file of ~1 000 lines: applying events (each effect) and the
//! ledger's transfer core, which every repository file of this folder builds
//! on; payments, wallet, webhooks, idempotency and rebuild are already apart.

pub mod idempotency;
pub mod lifecycle;
pub mod payments;
pub mod pool;
pub mod rebuild;
pub mod wallet;
pub mod webhooks;
pub mod writer;

use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Connection, Row};

pub use crate::store::db::DbOpenError;
pub use pool::{Backend, Pools};

use crate::domain::{Attendee, OrderSeat};
use crate::domain::{DomainEvent, Envelope};
use crate::domain::{Fen, Id, OrderStatus, WORLD_ACCOUNT};
use crate::error::EngineError;
use crate::store::recent::RecentGrab;
use crate::store::PacketDef;

#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error("durable store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("insufficient funds")]
    InsufficientFunds,
    /// A replayed or conflicting write that the constraints caught: it must
    /// alert, never pass silently.
    #[error("durable invariant broken: {0}")]
    Invariant(String),
    #[error("{0}")]
    RiskRefused(String),
    /// The row is not in the state the change needs (code, message).
    #[error("{1}")]
    Conflict(&'static str, String),
    /// The group commit this write was part of did not commit (see
    /// `writer.rs`): nothing of the write was kept.
    #[error("durable store: group commit failed: {0}")]
    GroupCommit(String),
}

impl DurableError {
    /// Whether trying again may succeed (the database was unreachable,
    /// busy or timed out) rather than the write being refused for what it
    /// is (a constraint, an invariant, funds that do not cover it).
    pub fn is_transient(&self) -> bool {
        match self {
            DurableError::Db(sqlx::Error::Database(e)) => {
                // SQLite busy/locked; Postgres serialization failure,
                // deadlock, shutdown and connection classes.
                let code = e.code().unwrap_or_default();
                matches!(code.as_ref(), "5" | "6" | "261" | "262" | "517" | "40001" | "40P01")
                    || code.starts_with("08")
                    || code.starts_with("57")
                    || code.starts_with("53")
            }
            DurableError::Db(_) | DurableError::GroupCommit(_) => true,
            _ => false,
        }
    }
}

/// Which half of an account a leg touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bucket {
    Available,
    Frozen,
}

impl Bucket {
    fn column(self) -> &'static str {
        match self {
            Bucket::Available => "available",
            Bucket::Frozen => "frozen",
        }
    }
}

/// One movement of money between two account buckets.
pub struct Transfer<'a> {
    /// Unique per transfer: replaying one hits the journal's unique key.
    pub transfer_id: String,
    pub from: (&'a str, Bucket),
    pub to: (&'a str, Bucket),
    pub amount: Fen,
    pub kind: &'static str,
    pub ref_id: String,
    pub memo: &'a str,
    pub at_ms: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct OrderRecord {
    pub order_id: Id,
    pub event_id: Id,
    pub user_id: String,
    pub status: OrderStatus,
    pub amount: Fen,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub seats: Vec<OrderSeat>,
    pub attendees: Vec<Attendee>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct JournalEntry {
    pub entry_id: i64,
    pub transfer_id: String,
    pub bucket: String,
    pub amount: Fen,
    pub kind: String,
    pub ref_id: String,
    pub memo: String,
    pub at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Balance {
    pub available: Fen,
    pub frozen: Fen,
    /// Credits granted (grabs the hot store answered) that the ledger has
    /// not applied yet: they join `available` within the workers' lag.
    pub pending: Fen,
}

/// What reconciliation reads: the sum over every account (the world account
/// included) is zero when money is conserved, and no transfer is lopsided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audit {
    pub sum_all_accounts: i64,
    pub sum_users: i64,
    pub lopsided_transfers: Vec<String>,
}

fn order_table(id: Id) -> String {
    format!("orders_{}", id.gene())
}

fn order_table_of_user(user_id: &str) -> String {
    format!("orders_{}", crate::domain::gene_of_user(user_id))
}

fn ms(v: i64) -> u64 {
    v.max(0) as u64
}

/// Amounts and times bind as i64 (SQLite's integer; Postgres BIGINT).
fn ms_i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A durable-store failure as the client sees it.
impl From<DurableError> for EngineError {
    fn from(e: DurableError) -> Self {
        match e {
            DurableError::InsufficientFunds => EngineError::InsufficientFunds,
            DurableError::Db(e) => {
                tracing::warn!(error = %e, "durable store failed");
                EngineError::StoreUnavailable
            }
            DurableError::GroupCommit(m) => {
                tracing::warn!(error = %m, "durable store failed");
                EngineError::StoreUnavailable
            }
            DurableError::Invariant(m) => EngineError::Internal(m),
            DurableError::RiskRefused(m) => EngineError::RiskRefused(m),
            DurableError::Conflict(code, m) => EngineError::Conflict { code, message: m },
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_numbers_placeholders_row_by_row() {
        assert_eq!(super::values(false, 2, 3), " VALUES ($1, $2, $3), ($4, $5, $6)");
        assert_eq!(super::values(false, 1, 1), " VALUES ($1)");
        assert_eq!(super::values(true, 2, 2), " VALUES (?, ?), (?, ?)");
    }
}

#[derive(Clone, Debug)]
pub struct Durable {
    db: Pools,
}

/// Whether `conn` is SQLite (multi-row statements then use `?`, see
/// [`values`]).
fn is_sqlite(conn: &AnyConnection) -> bool {
    conn.backend_name() == "SQLite"
}

/// ` VALUES ($1, $2), ($3, $4)` for `rows` rows of `cols` columns. `$n` is
/// the placeholder SQLite and Postgres share, but SQLite resolves a named
/// placeholder with a linear scan of the statement's names, once per
/// parameter, so binding an N-parameter statement costs O(N²) (it was 38%
/// of rush's CPU under a hot packet). On SQLite (`sqlite`), multi-row
/// statements therefore use anonymous `?`, bound in order in O(1) each.
fn values(sqlite: bool, rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5 + 8);
    s.push_str(" VALUES ");
    for r in 0..rows {
        s.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            if sqlite {
                s.push('?');
            } else {
                s.push('$');
                s.push_str(&(r * cols + c + 1).to_string());
            }
        }
        s.push(')');
    }
    s
}

/// Rows per multi-row statement: well under SQLite's 32 766 bound
/// variables with the widest row (the journal's 9 columns).
const ROWS_PER_STATEMENT: usize = 500;

/// Moves money between two buckets and journals both legs. Only system
/// accounts (`@…`) may go negative.
pub async fn transfer(conn: &mut AnyConnection, t: &Transfer<'_>) -> Result<(), DurableError> {
    transfer_all(conn, std::slice::from_ref(t)).await
}

/// Applies many transfers with a handful of statements: the net change of
/// each account bucket is computed first, debits are checked (a user's
/// bucket never goes below zero) and applied, credits are upserted, and
/// every leg is journalled (before the balances change: see below). One
/// round trip per statement, not per transfer,
/// is what lets the workers keep up with a flash sale.
pub async fn transfer_all(conn: &mut AnyConnection, ts: &[Transfer<'_>]) -> Result<(), DurableError> {
    let net = net_of(ts)?;
    // The journal first, the balances last: on Postgres an account row
    // stays locked from its update until the commit, and the system
    // accounts (`@world`, `@sales`) are in nearly every transfer.
    write_journal(conn, ts).await?;
    apply_balances(conn, &net).await
}

/// Each (user, bucket)'s net change over the transfers.
fn net_of<'a>(ts: &[Transfer<'a>]) -> Result<BTreeMap<(&'a str, Bucket), i64>, DurableError> {
    let mut net: BTreeMap<(&str, Bucket), i64> = BTreeMap::new();
    for t in ts {
        let amount = t.amount.get();
        if amount <= 0 {
            return Err(DurableError::Invariant(format!("transfer {} of non-positive amount {amount}", t.transfer_id)));
        }
        let overflow = || DurableError::Invariant(format!("transfer {} overflows", t.transfer_id));
        let from = net.entry(t.from).or_default();
        *from = from.checked_sub(amount).ok_or_else(overflow)?;
        let to = net.entry(t.to).or_default();
        *to = to.checked_add(amount).ok_or_else(overflow)?;
    }
    Ok(net)
}

/// Two journal legs per transfer; a transfer applied twice is an invariant
/// broken (its id is unique).
async fn write_journal(conn: &mut AnyConnection, ts: &[Transfer<'_>]) -> Result<(), DurableError> {
    let legs: Vec<_> =
        ts.iter().flat_map(|t| [(t, 0i64, t.from, -t.amount.get()), (t, 1, t.to, t.amount.get())]).collect();
    for chunk in legs.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO journal (transfer_id, leg, user_id, bucket, amount, kind, ref_id, memo, at_ms){}",
            values(is_sqlite(conn), chunk.len(), 9)
        );
        let mut q = sqlx::query(&sql);
        for (t, leg, (user, bucket), delta) in chunk {
            q = q
                .bind(&t.transfer_id)
                .bind(*leg)
                .bind(*user)
                .bind(bucket.column())
                .bind(*delta)
                .bind(t.kind)
                .bind(&t.ref_id)
                .bind(t.memo)
                .bind(ms_i(t.at_ms));
        }
        q.execute(&mut *conn).await.map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                DurableError::Invariant("a transfer was applied twice".to_string())
            }
            e => DurableError::Db(e),
        })?;
    }
    Ok(())
}

/// The net changes applied to the accounts: a user's debits checked (a
/// bucket may not go negative), the rest upserted in multi-row statements.
async fn apply_balances(conn: &mut AnyConnection, net: &BTreeMap<(&str, Bucket), i64>) -> Result<(), DurableError> {
    let mut upserts: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for ((user, bucket), delta) in net {
        if *delta < 0 && !user.starts_with('@') {
            let col = bucket.column();
            let done = sqlx::query(&format!(
                "UPDATE accounts SET {col} = {col} + $2, version = version + 1 WHERE user_id = $1 AND {col} + $2 >= 0"
            ))
            .bind(*user)
            .bind(*delta)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if done == 0 {
                return Err(DurableError::InsufficientFunds);
            }
        } else {
            let e = upserts.entry(user).or_default();
            match bucket {
                Bucket::Available => e.0 += delta,
                Bucket::Frozen => e.1 += delta,
            }
        }
    }
    let upserts: Vec<_> = upserts.into_iter().collect();
    for chunk in upserts.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO accounts (user_id, available, frozen, version){} \
             ON CONFLICT (user_id) DO UPDATE SET available = accounts.available + excluded.available, \
             frozen = accounts.frozen + excluded.frozen, version = accounts.version + 1",
            values(is_sqlite(conn), chunk.len(), 4)
        );
        let mut q = sqlx::query(&sql);
        for (user, (available, frozen)) in chunk {
            q = q.bind(*user).bind(*available).bind(*frozen).bind(1i64);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

impl Durable {
    pub fn new(db: Pools) -> Self {
        Durable { db }
    }

    pub fn db(&self) -> &Pools {
        &self.db
    }

    /// Freezes a packet's total in the sender's wallet and records the packet,
    /// in one transaction; refused when the sender's available is short.
    pub async fn freeze_for_packet(&self, def: &PacketDef) -> Result<(), DurableError> {
        let def = def.clone();
        self.db.writer.run(move |c| Box::pin(async move { freeze_for_packet(c, &def).await })).await
    }

    /// Undoes [`Durable::freeze_for_packet`] when the hot store did not
    /// create the packet (and never will: see `HotStore::void_packet`), so
    /// no money stays frozen for a packet nobody can grab. Once per packet:
    /// the row leaves `active` in the same transaction.
    pub async fn unfreeze_failed_packet(&self, packet_id: Id) -> Result<(), DurableError> {
        self.db.writer.run(move |c| Box::pin(async move { unfreeze_failed_packet(c, packet_id).await })).await
    }

    /// Admin credit: money enters rush from the world account.
    pub async fn credit(&self, user_id: &str, amount: Fen, reason: &str, transfer_id: Id) -> Result<(), DurableError> {
        let (user_id, reason) = (user_id.to_string(), reason.to_string());
        self.db
            .writer
            .run(move |c| Box::pin(async move { credit(c, &user_id, amount, &reason, transfer_id).await }))
            .await
    }

    pub async fn balance(&self, user_id: &str) -> Result<Balance, DurableError> {
        let row = sqlx::query("SELECT available, frozen FROM accounts WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.db.read)
            .await?;
        Ok(match row {
            Some(r) => Balance {
                available: Fen::new(r.try_get("available")?),
                frozen: Fen::new(r.try_get("frozen")?),
                pending: Fen::ZERO,
            },
            None => Balance { available: Fen::ZERO, frozen: Fen::ZERO, pending: Fen::ZERO },
        })
    }

    /// The balance with the grabs the hot store granted the user that this
    /// store has not applied yet: their credits as `pending`, and, for a
    /// grab of the user's own packet, its money out of `frozen` (it left
    /// the packet when the grab was answered). One statement, so one
    /// snapshot: a grab the workers apply meanwhile counts once, in the
    /// account or as pending.
    pub async fn balance_with_grabs(&self, user_id: &str, grabs: &[RecentGrab]) -> Result<Balance, DurableError> {
        if grabs.is_empty() {
            return self.balance(user_id).await;
        }
        let ids = |own: bool| {
            let listed: Vec<String> =
                (0..grabs.len()).filter(|i| !own || grabs[*i].own).map(|i| format!("${}", i + 2)).collect();
            if listed.is_empty() {
                "NULL".to_string()
            } else {
                listed.join(", ")
            }
        };
        let applied = |own: bool| {
            format!(
                "(SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM grabs WHERE user_id = $1 AND grab_id IN ({}))",
                ids(own)
            )
        };
        let sql = format!(
            "SELECT COALESCE((SELECT available FROM accounts WHERE user_id = $1), 0) AS available, \
             COALESCE((SELECT frozen FROM accounts WHERE user_id = $1), 0) AS frozen, \
             {} AS applied, {} AS applied_own",
            applied(false),
            applied(true)
        );
        let mut q = sqlx::query(&sql).bind(user_id);
        for g in grabs {
            q = q.bind(g.grab_id.raw());
        }
        let r = q.fetch_one(&self.db.read).await?;
        let granted: i64 = grabs.iter().map(|g| g.amount.get()).sum();
        let granted_own: i64 = grabs.iter().filter(|g| g.own).map(|g| g.amount.get()).sum();
        let (applied, applied_own): (i64, i64) = (r.try_get("applied")?, r.try_get("applied_own")?);
        let frozen: i64 = r.try_get("frozen")?;
        Ok(Balance {
            available: Fen::new(r.try_get("available")?),
            frozen: Fen::new(frozen - (granted_own - applied_own)),
            pending: Fen::new(granted - applied),
        })
    }

    /// The user's journal legs, newest first, before `before` (an entry id).
    pub async fn ledger(
        &self,
        user_id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<JournalEntry>, DurableError> {
        let rows = sqlx::query(
            "SELECT entry_id, transfer_id, bucket, amount, kind, ref_id, memo, at_ms FROM journal \
             WHERE user_id = $1 AND entry_id < $2 ORDER BY entry_id DESC LIMIT $3",
        )
        .bind(user_id)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.db.read)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(JournalEntry {
                    entry_id: r.try_get("entry_id")?,
                    transfer_id: r.try_get("transfer_id")?,
                    bucket: r.try_get("bucket")?,
                    amount: Fen::new(r.try_get("amount")?),
                    kind: r.try_get("kind")?,
                    ref_id: r.try_get("ref_id")?,
                    memo: r.try_get("memo")?,
                    at_ms: ms(r.try_get("at_ms")?),
                })
            })
            .collect()
    }

    pub async fn order(&self, order_id: Id) -> Result<Option<OrderRecord>, DurableError> {
        let row = sqlx::query(&format!(
            "SELECT order_id, event_id, user_id, status, amount, created_at_ms, expires_at_ms \
             FROM {} WHERE order_id = $1",
            order_table(order_id)
        ))
        .bind(order_id.raw())
        .fetch_optional(&self.db.read)
        .await?;
        match row {
            Some(r) => Ok(Some(self.order_from_row(r).await?)),
            None => Ok(None),
        }
    }

    /// The user's orders, newest first, with ids below `before`.
    pub async fn orders_of(
        &self,
        user_id: &str,
        before: Option<Id>,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, DurableError> {
        let rows = sqlx::query(&format!(
            "SELECT order_id, event_id, user_id, status, amount, created_at_ms, expires_at_ms \
             FROM {} WHERE user_id = $1 AND order_id < $2 ORDER BY order_id DESC LIMIT $3",
            order_table_of_user(user_id)
        ))
        .bind(user_id)
        .bind(before.map(|b| b.raw()).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.db.read)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.order_from_row(r).await?);
        }
        Ok(out)
    }

    async fn order_from_row(&self, r: AnyRow) -> Result<OrderRecord, DurableError> {
        let bad = |what: &str| DurableError::Invariant(format!("stored order has a bad {what}"));
        let order_id = Id::from_raw(r.try_get("order_id")?).map_err(|_| bad("order_id"))?;
        let status: String = r.try_get("status")?;
        let seats = sqlx::query(
            "SELECT seat_id, section, row_no, col_no, category, price FROM order_seats \
             WHERE order_id = $1 ORDER BY section, row_no, col_no",
        )
        .bind(order_id.raw())
        .fetch_all(&self.db.read)
        .await?
        .into_iter()
        .map(|s| {
            Ok(OrderSeat {
                seat_id: s.try_get("seat_id")?,
                section: s.try_get("section")?,
                row: s.try_get::<i64, _>("row_no")? as u32,
                col: s.try_get::<i64, _>("col_no")? as u32,
                category: s.try_get("category")?,
                price: Fen::new(s.try_get("price")?),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let attendees = sqlx::query("SELECT name, id_number FROM attendees WHERE order_id = $1 ORDER BY idx")
            .bind(order_id.raw())
            .fetch_all(&self.db.read)
            .await?
            .into_iter()
            .map(|a| Ok(Attendee { name: a.try_get("name")?, id_number: a.try_get("id_number")? }))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(OrderRecord {
            order_id,
            event_id: Id::from_raw(r.try_get("event_id")?).map_err(|_| bad("event_id"))?,
            user_id: r.try_get("user_id")?,
            status: OrderStatus::parse(&status).ok_or_else(|| bad("status"))?,
            amount: Fen::new(r.try_get("amount")?),
            created_at_ms: ms(r.try_get("created_at_ms")?),
            expires_at_ms: ms(r.try_get("expires_at_ms")?),
            seats,
            attendees,
        })
    }

    /// Conservation check used by tests and reconciliation.
    pub async fn audit(&self) -> Result<Audit, DurableError> {
        let all: Option<i64> = sqlx::query_scalar("SELECT CAST(SUM(available + frozen) AS BIGINT) FROM accounts")
            .fetch_one(&self.db.read)
            .await?;
        let users: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(SUM(available + frozen) AS BIGINT) FROM accounts WHERE user_id NOT LIKE '@%'",
        )
        .fetch_one(&self.db.read)
        .await?;
        let lopsided: Vec<String> =
            sqlx::query_scalar("SELECT transfer_id FROM journal GROUP BY transfer_id HAVING SUM(amount) <> 0")
                .fetch_all(&self.db.read)
                .await?;
        Ok(Audit { sum_all_accounts: all.unwrap_or(0), sum_users: users.unwrap_or(0), lopsided_transfers: lopsided })
    }

    /// Applies a batch of events in one transaction; each event's effect and
    /// its processed id commit together, so a redelivered event is skipped.
    /// Grabs and their transfers are applied together at the end of the
    /// batch with multi-row statements (transfers commute: every worker
    /// transfer moves money out of a frozen bucket that already holds it).
    /// Returns how many events were new.
    /// Parks an event that cannot be applied (see `parked_events`): kept
    /// with its reason and marked processed, in one transaction.
    pub async fn park_event(&self, env: &Envelope, reason: &str) -> Result<(), DurableError> {
        let (env, reason) = (env.clone(), reason.to_string());
        self.db.writer.run(move |c| Box::pin(async move { park_event(c, &env, &reason).await })).await
    }

    /// Parked events by id: (event id, reason).
    pub async fn parked_events(&self, limit: u32) -> Result<Vec<(Id, String)>, DurableError> {
        Ok(self.parked(None, limit).await?.into_iter().map(|p| (p.event_id, p.reason)).collect())
    }

    /// Parked events in full, by id, after `after` (an event id).
    pub async fn parked(&self, after: Option<Id>, limit: u32) -> Result<Vec<ParkedEvent>, DurableError> {
        let rows = sqlx::query(
            "SELECT event_id, body, reason, parked_at_ms FROM parked_events WHERE event_id > $1 \
             ORDER BY event_id LIMIT $2",
        )
        .bind(after.map(|a| a.raw()).unwrap_or(i64::MIN))
        .bind(i64::from(limit))
        .fetch_all(&self.db.read)
        .await?;
        rows.iter()
            .map(|r| {
                let id = Id::from_raw(r.try_get("event_id")?).map_err(|e| DurableError::Invariant(e.to_string()))?;
                let body: String = r.try_get("body")?;
                Ok(ParkedEvent {
                    event_id: id,
                    event: serde_json::from_str::<serde_json::Value>(&body).unwrap_or(serde_json::Value::String(body)),
                    reason: r.try_get("reason")?,
                    parked_at_ms: ms(r.try_get("parked_at_ms")?),
                })
            })
            .collect()
    }

    /// Applies a parked event again (after an operator fixed what it
    /// broke on): applied and unparked in one transaction, or left parked
    /// with the new reason.
    pub async fn replay_parked(&self, event_id: Id) -> Result<Replayed, DurableError> {
        let body: Option<String> = sqlx::query_scalar("SELECT body FROM parked_events WHERE event_id = $1")
            .bind(event_id.raw())
            .fetch_optional(&self.db.read)
            .await?;
        let Some(body) = body else { return Ok(Replayed::NotParked) };
        let env: Envelope = serde_json::from_str(&body).map_err(|e| DurableError::Invariant(e.to_string()))?;
        self.db.writer.run(move |c| Box::pin(async move { replay_parked(c, &env).await })).await
    }

    /// Applies a batch; a batch the store refuses for what it holds (not
    /// for being unreachable) is split in halves until the offending
    /// events are alone, which are parked. Returns (applied, parked); a
    /// transient failure is returned for the caller to retry the whole
    /// batch (what was applied is skipped by its event id).
    pub async fn apply_or_park(&self, batch: &[Envelope]) -> Result<(usize, Vec<(Id, String)>), DurableError> {
        let (mut applied, mut parked) = (0, Vec::new());
        // A stack of ranges, first half on top: the log's order is kept.
        let mut todo = vec![(0, batch.len())];
        while let Some((from, to)) = todo.pop() {
            let part = &batch[from..to];
            match self.apply_events(part).await {
                Ok(n) => applied += n,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) if part.len() == 1 => {
                    let reason = e.to_string();
                    self.park_event(&part[0], &reason).await?;
                    parked.push((part[0].event_id, reason));
                }
                Err(_) => {
                    let mid = from + part.len() / 2;
                    todo.push((mid, to));
                    todo.push((from, mid));
                }
            }
        }
        Ok((applied, parked))
    }

    pub async fn apply_events(&self, batch: &[Envelope]) -> Result<usize, DurableError> {
        let batch = batch.to_vec();
        self.db.writer.run(move |c| Box::pin(async move { apply_events(c, &batch).await })).await
    }
}

/// The webhook event type and payload of a domain event (grabs have none).
fn webhook_of(event: &DomainEvent) -> Option<(&'static str, serde_json::Value)> {
    use serde_json::json;
    Some(match event {
        DomainEvent::OrderHeld { order_id, event_id, user_id, amount, expires_at_ms, .. } => (
            "order.created",
            json!({"order_id": order_id.to_string(), "event_id": event_id.to_string(), "user_id": user_id,
                   "amount": amount.get(), "expires_at": crate::domain::time_of(*expires_at_ms)}),
        ),
        DomainEvent::OrderReleased { order_id, event_id, user_id, status, .. } => (
            match status {
                OrderStatus::Cancelled => "order.cancelled",
                OrderStatus::Refunded => "order.refunded",
                _ => "order.expired",
            },
            json!({"order_id": order_id.to_string(), "event_id": event_id.to_string(), "user_id": user_id,
                   "status": status.as_str()}),
        ),
        DomainEvent::OrderConfirmed { order_id, event_id, user_id, .. } => (
            "order.paid",
            json!({"order_id": order_id.to_string(), "event_id": event_id.to_string(), "user_id": user_id,
                   "status": "paid"}),
        ),
        DomainEvent::PacketCreated { packet_id, sender, total, count, .. } => (
            "packet.created",
            json!({"packet_id": packet_id.to_string(), "sender": sender, "total_amount": total.get(), "count": count}),
        ),
        DomainEvent::PacketExpired { packet_id, sender, remaining, .. } => (
            "packet.expired",
            json!({"packet_id": packet_id.to_string(), "sender": sender, "refunded": remaining.get()}),
        ),
        DomainEvent::PacketGrabbed { .. } => return None,
    })
}

async fn set_order_status(
    conn: &mut AnyConnection,
    order_id: Id,
    to: OrderStatus,
    at_ms: u64,
    live: bool,
) -> Result<(), DurableError> {
    let from = match to {
        OrderStatus::Refunded => OrderStatus::Paid,
        _ => OrderStatus::PendingPayment,
    };
    let changed = sqlx::query(&format!(
        "UPDATE {} SET status = $1, updated_at_ms = $2 WHERE order_id = $3 AND status = $4",
        order_table(order_id)
    ))
    .bind(to.as_str())
    .bind(ms_i(at_ms))
    .bind(order_id.raw())
    .bind(from.as_str())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if changed == 0 {
        return Err(DurableError::Invariant(format!(
            "order {order_id} is not {} (wanted {})",
            from.as_str(),
            to.as_str()
        )));
    }
    if !live {
        sqlx::query("UPDATE order_seats SET live = 0 WHERE order_id = $1")
            .bind(order_id.raw())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

fn unique_to_invariant(what: String) -> impl FnOnce(sqlx::Error) -> DurableError {
    move |e| match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => DurableError::Invariant(what),
        e => DurableError::Db(e),
    }
}

async fn apply_one(conn: &mut AnyConnection, event: &DomainEvent) -> Result<(), DurableError> {
    match event {
        DomainEvent::OrderHeld {
            order_id,
            event_id,
            user_id,
            amount,
            created_at_ms,
            expires_at_ms,
            seats,
            attendees,
        } => {
            sqlx::query(&format!(
                "INSERT INTO {} (order_id, event_id, user_id, status, amount, created_at_ms, expires_at_ms, updated_at_ms) \
                 VALUES ($1, $2, $3, 'pending_payment', $4, $5, $6, $5)",
                order_table(*order_id)
            ))
            .bind(order_id.raw())
            .bind(event_id.raw())
            .bind(user_id)
            .bind(amount.get())
            .bind(ms_i(*created_at_ms))
            .bind(ms_i(*expires_at_ms))
            .execute(&mut *conn)
            .await
            .map_err(unique_to_invariant(format!("order {order_id} persisted twice")))?;
            for s in seats {
                sqlx::query(
                    "INSERT INTO order_seats (order_id, event_id, seat_id, section, row_no, col_no, category, price, live) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1)",
                )
                .bind(order_id.raw())
                .bind(event_id.raw())
                .bind(&s.seat_id)
                .bind(&s.section)
                .bind(i64::from(s.row))
                .bind(i64::from(s.col))
                .bind(&s.category)
                .bind(s.price.get())
                .execute(&mut *conn)
                .await
                .map_err(unique_to_invariant(format!(
                    "seat {} of event {event_id} has two live orders",
                    s.seat_id
                )))?;
            }
            for (i, a) in attendees.iter().enumerate() {
                sqlx::query("INSERT INTO attendees (order_id, idx, name, id_number) VALUES ($1, $2, $3, $4)")
                    .bind(order_id.raw())
                    .bind(i as i64)
                    .bind(&a.name)
                    .bind(&a.id_number)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        DomainEvent::OrderReleased { order_id, status, at_ms, .. } => {
            set_order_status(conn, *order_id, *status, *at_ms, false).await?;
        }
        DomainEvent::OrderConfirmed { order_id, at_ms, .. } => {
            set_order_status(conn, *order_id, OrderStatus::Paid, *at_ms, true).await?;
        }
        // The packet row and the frozen funds were written when it was
        // created, before it was acknowledged.
        DomainEvent::PacketCreated { .. } => {}
        // Applied in bulk by `apply_events`.
        DomainEvent::PacketGrabbed { .. } | DomainEvent::PacketExpired { .. } => {}
    }
    Ok(())
}

async fn freeze_for_packet(conn: &mut AnyConnection, def: &PacketDef) -> Result<(), DurableError> {
    let mut tx = conn.begin().await?;
    transfer(
        &mut tx,
        &Transfer {
            transfer_id: format!("packet-freeze-{}", def.packet_id),
            from: (&def.sender, Bucket::Available),
            to: (&def.sender, Bucket::Frozen),
            amount: def.total,
            kind: "packet_freeze",
            ref_id: def.packet_id.to_string(),
            memo: "red packet created",
            at_ms: def.created_at_ms,
        },
    )
    .await?;
    sqlx::query(
        "INSERT INTO packets (packet_id, sender, kind, total, count, greeting, status, \
         created_at_ms, expires_at_ms, refunded, def) VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $8, 0, $9)",
    )
    .bind(def.packet_id.raw())
    .bind(&def.sender)
    .bind(match def.kind {
        crate::domain::PacketKind::Normal => "normal",
        crate::domain::PacketKind::Lucky => "lucky",
    })
    .bind(def.total.get())
    .bind(i64::from(def.count))
    .bind(&def.greeting)
    .bind(ms_i(def.created_at_ms))
    .bind(ms_i(def.expires_at_ms))
    .bind(serde_json::to_string(def).map_err(|e| DurableError::Invariant(e.to_string()))?)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn unfreeze_failed_packet(conn: &mut AnyConnection, packet_id: Id) -> Result<(), DurableError> {
    let mut tx = conn.begin().await?;
    let row = sqlx::query(
        "UPDATE packets SET status = 'failed' WHERE packet_id = $1 AND status = 'active' RETURNING sender, total",
    )
    .bind(packet_id.raw())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(());
    };
    let sender: String = row.try_get("sender")?;
    let total = Fen::new(row.try_get("total")?);
    transfer(
        &mut tx,
        &Transfer {
            transfer_id: format!("packet-unfreeze-{packet_id}"),
            from: (&sender, Bucket::Frozen),
            to: (&sender, Bucket::Available),
            amount: total,
            kind: "packet_create_failed",
            ref_id: packet_id.to_string(),
            memo: "red packet could not be created",
            at_ms: crate::domain::now_unix_ms(),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn credit(
    conn: &mut AnyConnection,
    user_id: &str,
    amount: Fen,
    reason: &str,
    transfer_id: Id,
) -> Result<(), DurableError> {
    let mut tx = conn.begin().await?;
    transfer(
        &mut tx,
        &Transfer {
            transfer_id: format!("credit-{transfer_id}"),
            from: (WORLD_ACCOUNT, Bucket::Available),
            to: (user_id, Bucket::Available),
            amount,
            kind: "admin_credit",
            ref_id: transfer_id.to_string(),
            memo: reason,
            at_ms: crate::domain::now_unix_ms(),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn park_event(conn: &mut AnyConnection, env: &Envelope, reason: &str) -> Result<(), DurableError> {
    let now = ms_i(crate::domain::now_unix_ms());
    let body = serde_json::to_string(env).map_err(|e| DurableError::Invariant(e.to_string()))?;
    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO parked_events (event_id, position, body, reason, parked_at_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(env.event_id.raw())
    .bind(i64::try_from(env.position).unwrap_or(i64::MAX))
    .bind(body)
    .bind(reason)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO processed_events (event_id, at_ms) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING")
        .bind(env.event_id.raw())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn replay_parked(conn: &mut AnyConnection, env: &Envelope) -> Result<Replayed, DurableError> {
    let id = env.event_id.raw();
    let mut tx = conn.begin().await?;
    sqlx::query("DELETE FROM processed_events WHERE event_id = $1").bind(id).execute(&mut *tx).await?;
    let gone = sqlx::query("DELETE FROM parked_events WHERE event_id = $1").bind(id).execute(&mut *tx).await?;
    if gone.rows_affected() == 0 {
        return Ok(Replayed::NotParked);
    }
    // A savepoint inside the transaction: a refusal undoes only the replay.
    match apply_events(&mut tx, std::slice::from_ref(env)).await {
        Ok(_) => {
            tx.commit().await?;
            Ok(Replayed::Applied)
        }
        Err(e) if e.is_transient() => Err(e),
        Err(e) => {
            tx.rollback().await?;
            let reason = e.to_string();
            sqlx::query("UPDATE parked_events SET reason = $1, parked_at_ms = $2 WHERE event_id = $3")
                .bind(&reason)
                .bind(ms_i(crate::domain::now_unix_ms()))
                .bind(id)
                .execute(&mut *conn)
                .await?;
            Ok(Replayed::StillRefused(reason))
        }
    }
}

/// A parked event as an operator sees it.
#[derive(Clone, Debug, Serialize)]
pub struct ParkedEvent {
    pub event_id: Id,
    pub event: serde_json::Value,
    pub reason: String,
    pub parked_at_ms: u64,
}

/// What replaying a parked event did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum Replayed {
    Applied,
    StillRefused(String),
    NotParked,
}

async fn apply_events(conn: &mut AnyConnection, batch: &[Envelope]) -> Result<usize, DurableError> {
    let mut tx = conn.begin().await?;
    let mut fresh = mark_processed(&mut tx, batch).await?;
    let applied = fresh.len();
    // Webhook subscribers, read once per batch; none (the usual case)
    // costs nothing more.
    let subscribers = webhooks::Subscribers::load(&mut tx).await?;
    let mut grabs = Vec::new();
    let mut transfers = Vec::new();
    for env in batch {
        // `remove`: an event delivered twice in one batch applies once.
        if !fresh.remove(&env.event_id.raw()) {
            continue;
        }
        if !subscribers.is_empty() {
            if let Some((event_type, data)) = webhook_of(&env.event) {
                subscribers.enqueue(&mut tx, &env.event_id.to_string(), event_type, data, env.event.at_ms()).await?;
            }
        }
        match &env.event {
            DomainEvent::PacketGrabbed { grab_id, packet_id, sender, user_id, amount, at_ms } => {
                grabs.push((grab_id, packet_id, user_id, amount, at_ms));
                transfers.push(Transfer {
                    transfer_id: format!("grab-{grab_id}"),
                    from: (sender, Bucket::Frozen),
                    to: (user_id, Bucket::Available),
                    amount: *amount,
                    kind: "packet_grab",
                    ref_id: packet_id.to_string(),
                    memo: "red packet",
                    at_ms: *at_ms,
                });
            }
            DomainEvent::PacketExpired { packet_id, sender, remaining, at_ms } => {
                sqlx::query("UPDATE packets SET status = 'expired', refunded = $1 WHERE packet_id = $2")
                    .bind(remaining.get())
                    .bind(packet_id.raw())
                    .execute(&mut *tx)
                    .await?;
                if remaining.get() > 0 {
                    transfers.push(Transfer {
                        transfer_id: format!("packet-expire-{packet_id}"),
                        from: (sender, Bucket::Frozen),
                        to: (sender, Bucket::Available),
                        amount: *remaining,
                        kind: "packet_expired",
                        ref_id: packet_id.to_string(),
                        memo: "red packet expired: remainder returned",
                        at_ms: *at_ms,
                    });
                }
            }
            other => apply_one(&mut tx, other).await?,
        }
    }
    insert_grabs(&mut tx, &grabs).await?;
    transfer_all(&mut tx, &transfers).await.map_err(|e| match e {
        DurableError::InsufficientFunds => {
            DurableError::Invariant("a sender's frozen funds do not cover their packets' grabs".into())
        }
        e => e,
    })?;
    tx.commit().await?;
    Ok(applied)
}

/// Records the batch's events as processed: the ids not seen before.
async fn mark_processed(conn: &mut AnyConnection, batch: &[Envelope]) -> Result<HashSet<i64>, DurableError> {
    let now = ms_i(crate::domain::now_unix_ms());
    let mut fresh: HashSet<i64> = HashSet::with_capacity(batch.len());
    for chunk in batch.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO processed_events (event_id, at_ms){} ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            values(is_sqlite(conn), chunk.len(), 2)
        );
        let mut q = sqlx::query_scalar::<_, i64>(&sql);
        for env in chunk {
            q = q.bind(env.event_id.raw()).bind(now);
        }
        let ids: Vec<i64> = q.fetch_all(&mut *conn).await?;
        fresh.extend(ids);
    }
    Ok(fresh)
}

type GrabRow<'a> = (&'a Id, &'a Id, &'a String, &'a Fen, &'a u64);

/// The batch's grabs in multi-row statements; a user's second grab of a
/// packet is an invariant broken (unique key).
async fn insert_grabs(conn: &mut AnyConnection, grabs: &[GrabRow<'_>]) -> Result<(), DurableError> {
    for chunk in grabs.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO grabs (grab_id, packet_id, user_id, amount, at_ms){}",
            values(is_sqlite(conn), chunk.len(), 5)
        );
        let mut q = sqlx::query(&sql);
        for (grab_id, packet_id, user_id, amount, at_ms) in chunk {
            q = q
                .bind(grab_id.raw())
                .bind(packet_id.raw())
                .bind(user_id.as_str())
                .bind(amount.get())
                .bind(ms_i(**at_ms));
        }
        q.execute(&mut *conn).await.map_err(unique_to_invariant("a user grabbed a packet twice".into()))?;
    }
    Ok(())
}
