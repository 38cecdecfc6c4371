//! Domain events, their envelope, and the event log that carries them from
//! the hot store's outbox to the workers.
//!
//! Embedded mode reads the outbox table of the SQLite file (`outbox.rs`),
//! Redis mode the partition outbox streams (`redis_stream.rs`); in full mode
//! the relay moves those streams to Kafka (`kafka.rs`), which the workers read.

pub mod kafka;
pub mod outbox;
pub mod redis_stream;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{Fen, Id, OrderStatus, PacketKind};
use crate::store::Attendee;

/// A seat as recorded on an order: enough to persist it without the map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSeat {
    pub seat_id: String,
    pub section: String,
    pub row: u32,
    pub col: u32,
    pub category: String,
    pub price: Fen,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DomainEvent {
    OrderHeld {
        order_id: Id,
        event_id: Id,
        user_id: String,
        amount: Fen,
        created_at_ms: u64,
        expires_at_ms: u64,
        seats: Vec<OrderSeat>,
        attendees: Vec<Attendee>,
    },
    OrderReleased {
        order_id: Id,
        event_id: Id,
        user_id: String,
        status: OrderStatus,
        at_ms: u64,
    },
    OrderConfirmed {
        order_id: Id,
        event_id: Id,
        user_id: String,
        at_ms: u64,
    },
    PacketCreated {
        packet_id: Id,
        sender: String,
        kind: PacketKind,
        total: Fen,
        count: u32,
        expires_at_ms: u64,
        at_ms: u64,
    },
    PacketGrabbed {
        grab_id: Id,
        packet_id: Id,
        sender: String,
        user_id: String,
        amount: Fen,
        at_ms: u64,
    },
    PacketExpired {
        packet_id: Id,
        sender: String,
        remaining: Fen,
        at_ms: u64,
    },
}

impl DomainEvent {
    /// When the event happened (Unix ms): for the relay's lag.
    pub fn at_ms(&self) -> u64 {
        match self {
            DomainEvent::OrderHeld { created_at_ms, .. } => *created_at_ms,
            DomainEvent::OrderReleased { at_ms, .. }
            | DomainEvent::OrderConfirmed { at_ms, .. }
            | DomainEvent::PacketCreated { at_ms, .. }
            | DomainEvent::PacketGrabbed { at_ms, .. }
            | DomainEvent::PacketExpired { at_ms, .. } => *at_ms,
        }
    }

    /// The entity whose order of events must be kept: the event (seats) or
    /// the packet. It picks the partition.
    pub fn entity_id(&self) -> Id {
        match self {
            DomainEvent::OrderHeld { event_id, .. }
            | DomainEvent::OrderReleased { event_id, .. }
            | DomainEvent::OrderConfirmed { event_id, .. } => *event_id,
            DomainEvent::PacketCreated { packet_id, .. }
            | DomainEvent::PacketGrabbed { packet_id, .. }
            | DomainEvent::PacketExpired { packet_id, .. } => *packet_id,
        }
    }
}

/// An event as it travels: a unique id (the idempotency key of its effect),
/// its partition, and its position in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Position in the log; assigned by the log, not serialized into it.
    #[serde(skip)]
    pub position: u64,
    pub event_id: Id,
    pub partition: u16,
    pub event: DomainEvent,
}

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
