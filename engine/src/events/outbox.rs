//! The embedded event log: the outbox table of the SQLite file, read in
//! order of `seq`. Committed offsets live in `consumer_offsets`; rows every
//! consumer has committed are deleted, so the outbox stays bounded by the
//! consumers' lag.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use sqlx::Row;
use tokio::sync::Notify;

use super::{Envelope, EventLog, LogError};
use crate::store::db::Db;

pub struct OutboxLog {
    db: Db,
    appended: Arc<Notify>,
    /// Read-ahead position per consumer (what poll returned last).
    read_pos: DashMap<String, u64>,
}

fn unavailable(e: sqlx::Error) -> LogError {
    LogError::Unavailable(e.to_string())
}

impl OutboxLog {
    /// `appended` is notified by the hot store after each commit.
    pub fn new(db: Db, appended: Arc<Notify>) -> Self {
        OutboxLog { db, appended, read_pos: DashMap::new() }
    }

    async fn committed(&self, consumer: &str) -> Result<u64, LogError> {
        let pos: Option<i64> = sqlx::query_scalar("SELECT position FROM consumer_offsets WHERE consumer = $1")
            .bind(consumer)
            .fetch_optional(&self.db.read)
            .await
            .map_err(unavailable)?;
        Ok(pos.unwrap_or(0).max(0) as u64)
    }

    async fn read_after(&self, after: u64, max: usize) -> Result<Vec<Envelope>, LogError> {
        let rows = sqlx::query("SELECT seq, body FROM outbox WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after as i64)
            .bind(max as i64)
            .fetch_all(&self.db.read)
            .await
            .map_err(unavailable)?;
        rows.into_iter()
            .map(|r| {
                let seq: i64 = r.try_get("seq").map_err(unavailable)?;
                let body: String = r.try_get("body").map_err(unavailable)?;
                let mut env: Envelope = serde_json::from_str(&body)
                    .map_err(|e| LogError::Corrupt { position: seq as u64, reason: e.to_string() })?;
                env.position = seq as u64;
                Ok(env)
            })
            .collect()
    }
}

#[async_trait]
impl EventLog for OutboxLog {
    async fn poll(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Envelope>, LogError> {
        let after = match self.read_pos.get(consumer).map(|p| *p) {
            Some(p) => p,
            None => self.committed(consumer).await?,
        };
        // Register interest before reading so an append between the read
        // and the wait still wakes us.
        let notified = self.appended.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut batch = self.read_after(after, max).await?;
        if batch.is_empty() {
            let _ = tokio::time::timeout(wait, notified).await;
            batch = self.read_after(after, max).await?;
        }
        if let Some(last) = batch.last() {
            self.read_pos.insert(consumer.to_string(), last.position);
        }
        Ok(batch)
    }

    async fn commit(&self, consumer: &str, position: u64) -> Result<(), LogError> {
        let mut tx = self.db.write.begin().await.map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO consumer_offsets (consumer, position) VALUES ($1, $2) \
             ON CONFLICT (consumer) DO UPDATE SET position = excluded.position",
        )
        .bind(consumer)
        .bind(position as i64)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query("DELETE FROM outbox WHERE seq <= (SELECT MIN(position) FROM consumer_offsets)")
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn rewind(&self, consumer: &str) {
        self.read_pos.remove(consumer);
    }

    async fn lag(&self, consumer: &str) -> Result<u64, LogError> {
        // `seq` has no gaps (AUTOINCREMENT under one writer; a rolled-back
        // append gives its numbers back; only committed prefixes are
        // deleted), so the lag is a subtraction, not a `COUNT(*)` that
        // scans the whole backlog.
        let committed = self.committed(consumer).await?;
        let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM outbox")
            .fetch_one(&self.db.read)
            .await
            .map_err(unavailable)?;
        Ok((last.max(0) as u64).saturating_sub(committed))
    }
}
