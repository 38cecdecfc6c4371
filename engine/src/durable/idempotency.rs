//! Idempotency-Key records. The first request with a key runs and its
//! answer is stored; a repeat with the same body gets that answer again, a
//! repeat with another body is refused, and a repeat while the first is
//! still running is told so. Server errors are not stored, so a request
//! that failed for want of a store can be retried under the same key.

use sqlx::{AnyConnection, Connection, Row};

use super::{Durable, DurableError};
use crate::error::EngineError;
use crate::idempotency::{Begin, IdempotencyStore, Ttl};

impl Durable {
    /// Claims `(user_id, key)` for a request with hash `hash`. Records older
    /// than `ttl_ms` are forgotten; an in-progress claim older than
    /// `stale_ms` (its request died with the process) is taken over.
    pub async fn idempotency_begin(
        &self,
        user_id: &str,
        key: &str,
        hash: &str,
        now_ms: u64,
        ttl_ms: u64,
        stale_ms: u64,
    ) -> Result<Begin, DurableError> {
        let (user_id, key, hash) = (user_id.to_string(), key.to_string(), hash.to_string());
        self.db
            .writer
            .run(move |c| {
                Box::pin(async move { idempotency_begin(c, &user_id, &key, &hash, now_ms, ttl_ms, stale_ms).await })
            })
            .await
    }

    pub async fn idempotency_finish(
        &self,
        user_id: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), DurableError> {
        let (user_id, key, body) = (user_id.to_string(), key.to_string(), body.to_string());
        let sql = "UPDATE idempotency_keys SET status = $1, response = $2 WHERE user_id = $3 AND idem_key = $4";
        self.db.writer.execute(sql, move |q| q.bind(i64::from(status)).bind(body).bind(user_id).bind(key)).await?;
        Ok(())
    }

    pub async fn idempotency_abandon(&self, user_id: &str, key: &str) -> Result<(), DurableError> {
        let (user_id, key) = (user_id.to_string(), key.to_string());
        let sql = "DELETE FROM idempotency_keys WHERE user_id = $1 AND idem_key = $2 AND status = 0";
        self.db.writer.execute(sql, move |q| q.bind(user_id).bind(key)).await?;
        Ok(())
    }

    /// Deletes a finished record that holds `status`.
    pub async fn idempotency_forget(&self, user_id: &str, key: &str, status: u16) -> Result<(), DurableError> {
        let (user_id, key) = (user_id.to_string(), key.to_string());
        let sql = "DELETE FROM idempotency_keys WHERE user_id = $1 AND idem_key = $2 AND status = $3";
        self.db.writer.execute(sql, move |q| q.bind(user_id).bind(key).bind(i64::from(status))).await?;
        Ok(())
    }

    /// Forgets records older than `before_ms`.
    pub async fn idempotency_purge(&self, before_ms: u64) -> Result<u64, DurableError> {
        let sql = "DELETE FROM idempotency_keys WHERE created_at_ms < $1";
        self.db.writer.execute(sql, move |q| q.bind(before_ms as i64)).await
    }
}

async fn idempotency_begin(
    conn: &mut AnyConnection,
    user_id: &str,
    key: &str,
    hash: &str,
    now_ms: u64,
    ttl_ms: u64,
    stale_ms: u64,
) -> Result<Begin, DurableError> {
    let now = now_ms as i64;
    let mut tx = conn.begin().await?;
    let row = sqlx::query(
        "SELECT request_hash, status, response, created_at_ms FROM idempotency_keys WHERE user_id = $1 AND idem_key = $2",
    )
    .bind(user_id)
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(r) = row {
        let created: i64 = r.try_get("created_at_ms")?;
        let status: i64 = r.try_get("status")?;
        let age = now.saturating_sub(created);
        let expired = age > ttl_ms as i64;
        let stale = status == 0 && age > stale_ms as i64;
        if !expired && !stale {
            let stored_hash: String = r.try_get("request_hash")?;
            let answer = if stored_hash != hash {
                Begin::Mismatch
            } else if status == 0 {
                Begin::InProgress
            } else {
                Begin::Replay { status: status as u16, body: r.try_get("response")? }
            };
            return Ok(answer);
        }
        sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND idem_key = $2")
            .bind(user_id)
            .bind(key)
            .execute(&mut *tx)
            .await?;
    }
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (user_id, idem_key, request_hash, status, response, created_at_ms) \
         VALUES ($1, $2, $3, 0, '', $4)",
    )
    .bind(user_id)
    .bind(key)
    .bind(hash)
    .bind(now)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        // Postgres: a concurrent request claimed the key between our
        // read and insert (SQLite's single writer serialises them).
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => return Ok(Begin::InProgress),
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    Ok(Begin::New)
}

#[async_trait::async_trait]
impl IdempotencyStore for Durable {
    async fn begin(&self, user_id: &str, key: &str, hash: &str, now_ms: u64, ttl: Ttl) -> Result<Begin, EngineError> {
        Ok(self.idempotency_begin(user_id, key, hash, now_ms, ttl.ttl_ms, ttl.stale_ms).await?)
    }

    async fn finish(&self, user_id: &str, key: &str, status: u16, body: &str) -> Result<(), EngineError> {
        Ok(self.idempotency_finish(user_id, key, status, body).await?)
    }

    async fn abandon(&self, user_id: &str, key: &str) -> Result<(), EngineError> {
        Ok(self.idempotency_abandon(user_id, key).await?)
    }

    async fn forget(&self, user_id: &str, key: &str, status: u16) -> Result<(), EngineError> {
        Ok(self.idempotency_forget(user_id, key, status).await?)
    }
}
