//! The event log that carries domain events (`domain::change`) from the
//! hot store's outbox to the workers.
//!
//! Embedded mode reads the outbox table of the SQLite file (`outbox.rs`),
//! Redis mode the partition outbox streams (`redis_stream.rs`); in full mode
//! the relay moves those streams to Kafka (`kafka.rs`), which the workers read.

pub mod kafka;
pub mod outbox;
pub mod redis_stream;

use std::time::Duration;

use async_trait::async_trait;

pub use crate::domain::{DomainEvent, Envelope};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    #[error("event log entry {position} is corrupt: {reason}")]
    Corrupt { position: u64, reason: String },
}

#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Up to `max` events after what this consumer has already read, waiting
    /// up to `wait` when there are none.
    async fn poll(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Envelope>, LogError>;
    /// Records that every event up to `position` has taken effect. Called
    /// only after the effects are durable.
    async fn commit(&self, consumer: &str, position: u64) -> Result<(), LogError>;
    /// Events appended but not yet committed by this consumer.
    async fn lag(&self, consumer: &str) -> Result<u64, LogError>;
    /// Forgets what was delivered and not committed, so the next poll
    /// delivers it again (the relay, after Kafka refused a batch).
    async fn rewind(&self, consumer: &str);
    /// Makes this reader the owner of everything other readers of the group
    /// were given and did not commit (they are gone: the relay took over
    /// their lease), to be delivered again before anything new.
    async fn take_over(&self, _consumer: &str) -> Result<(), LogError> {
        Ok(())
    }
}
