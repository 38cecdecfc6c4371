//! Withdrawals: requested under the risk rules (frozen at once), then
//! approved (the money leaves) or rejected (unfrozen) by an admin.

use serde::Serialize;
use serde_json::json;
use sqlx::{AnyConnection, Connection, Row};

use super::webhooks::announce;
use super::{ms, ms_i, transfer, Bucket, Durable, DurableError, Transfer};
use crate::domain::{Fen, Id, WithdrawalStatus, WORLD_ACCOUNT};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct WithdrawalRecord {
    pub withdrawal_id: Id,
    pub user_id: String,
    pub amount: Fen,
    pub status: WithdrawalStatus,
    pub created_at_ms: u64,
    pub decided_at_ms: Option<u64>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
}

/// The per-user, per-day rules a withdrawal must pass.
#[derive(Clone, Copy, Debug)]
pub struct RiskRules {
    pub count_per_day_max: u32,
    pub fen_per_day_max: i64,
}

const COLUMNS: &str = "withdrawal_id, user_id, amount, status, created_at_ms, decided_at_ms, decided_by, reason";

fn from_row(r: &sqlx::any::AnyRow) -> Result<WithdrawalRecord, DurableError> {
    Ok(WithdrawalRecord {
        withdrawal_id: Id::from_raw(r.try_get("withdrawal_id")?)
            .map_err(|_| DurableError::Invariant("stored withdrawal has a bad id".into()))?,
        user_id: r.try_get("user_id")?,
        amount: Fen::new(r.try_get("amount")?),
        status: {
            let raw: String = r.try_get("status")?;
            WithdrawalStatus::parse(&raw)
                .ok_or_else(|| DurableError::Invariant(format!("stored withdrawal has status {raw:?}")))?
        },
        created_at_ms: ms(r.try_get("created_at_ms")?),
        decided_at_ms: r.try_get::<Option<i64>, _>("decided_at_ms")?.map(ms),
        decided_by: r.try_get("decided_by")?,
        reason: r.try_get("reason")?,
    })
}

fn data(w: &WithdrawalRecord) -> serde_json::Value {
    json!({"withdrawal_id": w.withdrawal_id.to_string(), "user_id": w.user_id, "amount": w.amount.get(), "status": w.status.as_str()})
}

impl Durable {
    /// Checks the day's rules and freezes the amount, in one transaction.
    /// The user's account row is locked first (Postgres), so concurrent
    /// requests of one user are counted one after another and cannot all
    /// slip under the limit together; SQLite has one writer anyway.
    pub async fn request_withdrawal(
        &self,
        w: &WithdrawalRecord,
        day: i64,
        rules: RiskRules,
    ) -> Result<(), DurableError> {
        let w = w.clone();
        self.db.writer.run(move |c| Box::pin(async move { request_withdrawal(c, &w, day, rules).await })).await
    }

    /// pending → approved (frozen → world: the money leaves rush) or
    /// rejected (frozen → available). `None`: no such withdrawal.
    pub async fn decide_withdrawal(
        &self,
        withdrawal_id: Id,
        approve: bool,
        admin: &str,
        reason: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<WithdrawalRecord>, DurableError> {
        let (admin, reason) = (admin.to_string(), reason.map(str::to_string));
        self.db
            .writer
            .run(move |c| {
                Box::pin(async move {
                    decide_withdrawal(c, withdrawal_id, approve, &admin, reason.as_deref(), now_ms).await
                })
            })
            .await
    }

    pub async fn withdrawal(&self, withdrawal_id: Id) -> Result<Option<WithdrawalRecord>, DurableError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM withdrawals WHERE withdrawal_id = $1"))
            .bind(withdrawal_id.raw())
            .fetch_optional(&self.db.read)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Withdrawals in one status, oldest first (the admin's queue).
    pub async fn withdrawals(
        &self,
        status: WithdrawalStatus,
        limit: u32,
    ) -> Result<Vec<WithdrawalRecord>, DurableError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM withdrawals WHERE status = $1 ORDER BY withdrawal_id LIMIT $2"
        ))
        .bind(status.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.db.read)
        .await?;
        rows.iter().map(from_row).collect()
    }
}

async fn request_withdrawal(
    conn: &mut AnyConnection,
    w: &WithdrawalRecord,
    day: i64,
    rules: RiskRules,
) -> Result<(), DurableError> {
    let mut tx = conn.begin().await?;
    let locked = sqlx::query("UPDATE accounts SET version = version + 1 WHERE user_id = $1")
        .bind(&w.user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if locked == 0 {
        return Err(DurableError::InsufficientFunds);
    }
    check_day_limits(&mut tx, w, day, rules).await?;
    transfer(
        &mut tx,
        &Transfer {
            transfer_id: format!("withdraw-freeze-{}", w.withdrawal_id),
            from: (&w.user_id, Bucket::Available),
            to: (&w.user_id, Bucket::Frozen),
            amount: w.amount,
            kind: "withdraw_freeze",
            ref_id: w.withdrawal_id.to_string(),
            memo: "withdrawal requested: frozen until approved",
            at_ms: w.created_at_ms,
        },
    )
    .await?;
    sqlx::query(
        "INSERT INTO withdrawals (withdrawal_id, user_id, amount, status, day, created_at_ms) \
         VALUES ($1, $2, $3, 'pending', $4, $5)",
    )
    .bind(w.withdrawal_id.raw())
    .bind(&w.user_id)
    .bind(w.amount.get())
    .bind(day)
    .bind(ms_i(w.created_at_ms))
    .execute(&mut *tx)
    .await?;
    announce(
        &mut tx,
        &format!("withdrawal-{}-requested", w.withdrawal_id),
        "withdrawal.requested",
        data(w),
        w.created_at_ms,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn decide_withdrawal(
    conn: &mut AnyConnection,
    withdrawal_id: Id,
    approve: bool,
    admin: &str,
    reason: Option<&str>,
    now_ms: u64,
) -> Result<Option<WithdrawalRecord>, DurableError> {
    let mut tx = conn.begin().await?;
    let status = if approve { WithdrawalStatus::Approved } else { WithdrawalStatus::Rejected }.as_str();
    let changed = sqlx::query(
        "UPDATE withdrawals SET status = $1, decided_at_ms = $2, decided_by = $3, reason = $4 \
         WHERE withdrawal_id = $5 AND status = 'pending'",
    )
    .bind(status)
    .bind(ms_i(now_ms))
    .bind(admin)
    .bind(reason)
    .bind(withdrawal_id.raw())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM withdrawals WHERE withdrawal_id = $1"))
        .bind(withdrawal_id.raw())
        .fetch_optional(&mut *tx)
        .await?;
    let Some(w) = row.as_ref().map(from_row).transpose()? else {
        return Ok(None);
    };
    if changed == 0 {
        return Err(DurableError::Conflict(
            "withdrawal_not_pending",
            format!("withdrawal is {} and cannot change", w.status),
        ));
    }
    transfer(&mut tx, &decision_transfer(&w, approve, now_ms)).await?;
    announce(
        &mut tx,
        &format!("withdrawal-{withdrawal_id}-{status}"),
        &format!("withdrawal.{status}"),
        data(&w),
        now_ms,
    )
    .await?;
    tx.commit().await?;
    Ok(Some(w))
}

/// The ledger transfer of a decision: approved, the frozen money leaves
/// rush; rejected, it goes back to the user's available balance.
fn decision_transfer(w: &WithdrawalRecord, approve: bool, now_ms: u64) -> Transfer<'_> {
    let (user, withdrawal_id) = (w.user_id.as_str(), w.withdrawal_id);
    let (to, transfer_id, kind, memo) = if approve {
        ((WORLD_ACCOUNT, Bucket::Available), format!("withdraw-{withdrawal_id}"), "withdrawal", "withdrawal paid out")
    } else {
        (
            (user, Bucket::Available),
            format!("withdraw-reject-{withdrawal_id}"),
            "withdraw_rejected",
            "withdrawal rejected",
        )
    };
    Transfer {
        transfer_id,
        from: (user, Bucket::Frozen),
        to,
        amount: w.amount,
        kind,
        ref_id: withdrawal_id.to_string(),
        memo,
        at_ms: now_ms,
    }
}

/// The per-day rules, on the user's withdrawals not rejected that day (the
/// caller holds the user's account row, so two requests count in turn).
async fn check_day_limits(
    conn: &mut AnyConnection,
    w: &WithdrawalRecord,
    day: i64,
    rules: RiskRules,
) -> Result<(), DurableError> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS total FROM withdrawals \
         WHERE user_id = $1 AND day = $2 AND status <> 'rejected'",
    )
    .bind(&w.user_id)
    .bind(day)
    .fetch_one(&mut *conn)
    .await?;
    let (count, total): (i64, i64) = (row.try_get("n")?, row.try_get("total")?);
    if count >= i64::from(rules.count_per_day_max) {
        return Err(DurableError::RiskRefused(format!(
            "at most {} withdrawals a day; {count} already today",
            rules.count_per_day_max
        )));
    }
    if total.saturating_add(w.amount.get()) > rules.fen_per_day_max {
        return Err(DurableError::RiskRefused(format!(
            "at most {} a day may be withdrawn; {} already today",
            Fen::new(rules.fen_per_day_max),
            Fen::new(total)
        )));
    }
    Ok(())
}
