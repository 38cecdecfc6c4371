//! Domain events: what changed, as the hot store's outbox records it and
//! the workers apply it to the durable store.

use serde::{Deserialize, Serialize};

use super::{Attendee, Fen, Id, OrderSeat, OrderStatus, PacketKind};

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
