//! Where Idempotency-Key records live: the durable store in embedded mode,
//! Redis (`lua/idempotency.lua`) in Redis mode, so that every node sees the
//! same record.

use async_trait::async_trait;

use crate::error::EngineError;

#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// First time: run the request, then `finish` or `abandon`.
    New,
    Replay {
        status: u16,
        body: String,
    },
    /// Same key, different request.
    Mismatch,
    /// The first request with this key has not finished.
    InProgress,
}

/// Timing of a record: how long the first answer is replayed, and after how
/// long an unfinished claim is presumed dead.
#[derive(Clone, Copy, Debug)]
pub struct Ttl {
    pub ttl_ms: u64,
    pub stale_ms: u64,
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    async fn begin(&self, user_id: &str, key: &str, hash: &str, now_ms: u64, ttl: Ttl) -> Result<Begin, EngineError>;
    async fn finish(&self, user_id: &str, key: &str, status: u16, body: &str) -> Result<(), EngineError>;
    async fn abandon(&self, user_id: &str, key: &str) -> Result<(), EngineError>;
    /// Deletes a finished record that holds `status` (an `outcome_unknown`
    /// answer found not to have happened), so the request may run again.
    async fn forget(&self, user_id: &str, key: &str, status: u16) -> Result<(), EngineError>;
}
