//! Expected failures of the engine. The gateway maps each to one HTTP status
//! and error code in one place.

use crate::domain::{Fen, OrderStatus};

/// What a request named that does not exist (or that the caller may not
/// see: the same answer, so ids cannot be probed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entity {
    Event,
    Order,
    Packet,
    Seat,
    Payment,
    Channel,
    Withdrawal,
    Webhook,
    Ticket,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Event => "event",
            Entity::Order => "order",
            Entity::Packet => "packet",
            Entity::Seat => "seat",
            Entity::Payment => "payment",
            Entity::Channel => "channel",
            Entity::Withdrawal => "withdrawal",
            Entity::Webhook => "webhook",
            Entity::Ticket => "ticket",
        }
    }

    /// The API's error code: `order_not_found`, …
    pub fn code(self) -> &'static str {
        match self {
            Entity::Event => "event_not_found",
            Entity::Order => "order_not_found",
            Entity::Packet => "packet_not_found",
            Entity::Seat => "seat_not_found",
            Entity::Payment => "payment_not_found",
            Entity::Channel => "channel_not_found",
            Entity::Withdrawal => "withdrawal_not_found",
            Entity::Webhook => "webhook_not_found",
            Entity::Ticket => "ticket_not_found",
        }
    }
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(Entity),
    #[error("seats are not available: {}", .0.join(", "))]
    SeatUnavailable(Vec<String>),
    #[error("category {category} is sold out ({remaining} left)")]
    SoldOut { category: String, remaining: u32 },
    #[error("no {quantity} adjacent seats of category {category} are left in one row")]
    NoAdjacentSeats { category: String, quantity: u32 },
    #[error("{which} limit of {max} seats exceeded")]
    LimitExceeded { which: &'static str, max: u32 },
    /// A hold before the event's sale opens (409 `not_on_sale`).
    #[error("the sale opens at {}", .on_sale_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))]
    NotOnSale { on_sale_at: chrono::DateTime<chrono::Utc> },
    /// A hold once the event's sale has ended (409 `sale_ended`).
    #[error("the sale ended at {}", .sale_ends_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))]
    SaleEnded { sale_ends_at: chrono::DateTime<chrono::Utc> },
    /// A hold while an operator has paused the sale (409 `sale_paused`).
    #[error("the sale is paused")]
    SalePaused,
    /// Anything that would sell on a cancelled event (410 `event_cancelled`).
    #[error("the event was cancelled: {reason}")]
    EventCancelled { reason: String },
    /// A join before the waiting room opens (409 `queue_not_open`).
    #[error("the waiting room opens at {}", .opens_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))]
    QueueNotOpen { opens_at: chrono::DateTime<chrono::Utc> },
    /// A hold on an event with a waiting room without an admission (403).
    #[error("this event has a waiting room: join it and hold with the admission token (Rush-Admission header)")]
    AdmissionRequired,
    /// An admission token that is forged, expired, or another user's or
    /// event's (403 `admission_invalid`).
    #[error("the admission token is {0}")]
    AdmissionInvalid(&'static str),
    #[error("order is {} and cannot change", .status.as_str())]
    OrderNotPending { status: OrderStatus },
    #[error("already grabbed this packet")]
    AlreadyGrabbed { amount: Fen },
    #[error("the packet is empty")]
    PacketEmpty,
    #[error("the packet has expired")]
    PacketExpired,
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("too many requests queued for this {0}; retry shortly")]
    Overloaded(&'static str),
    #[error("the store is unavailable; retry shortly")]
    StoreUnavailable,
    /// Redis lost its data and is being rebuilt from the durable store:
    /// nothing is taken until it is (503 `hot_store_recovering`).
    #[error("the hot store lost its data and is being rebuilt; retry shortly")]
    HotStoreRecovering,
    #[error("the outbox is full: events are not reaching the workers; retry shortly")]
    OutboxFull,
    /// This node is shutting down and takes no new work; another node
    /// (or this one, restarted) will.
    #[error("this node is shutting down; retry on another")]
    ShuttingDown,
    /// A wallet risk rule refused the request (422 `risk_refused`).
    #[error("{0}")]
    RiskRefused(String),
    /// A state conflict with its own code (409): `payment_not_pending`,
    /// `order_not_paid`, `refund_in_progress`, `withdrawal_not_pending`…
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A payment channel did not answer; retry shortly.
    #[error("payment channel {0} is unavailable; retry shortly")]
    ChannelUnavailable(&'static str),
    /// A hot-store call failed in a way that leaves open whether it took
    /// effect, and the store could not be asked yet: the client retries
    /// with the same Idempotency-Key, which finds out (503).
    #[error("the outcome of creating this {what} is not known yet; retry with the same Idempotency-Key")]
    OutcomeUnknown { what: &'static str, id: crate::domain::Id },
    #[error("internal error")]
    Internal(String),
}

impl EngineError {
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        EngineError::Conflict { code, message: message.into() }
    }
}
