//! Order states and the only transitions allowed between them.

use serde::{Deserialize, Serialize};

use super::Fen;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    PendingPayment,
    Paid,
    Cancelled,
    Expired,
    Refunded,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an order cannot go from {from:?} to {to:?}")]
pub struct TransitionRefused {
    pub from: OrderStatus,
    pub to: OrderStatus,
}

impl OrderStatus {
    /// `pending_payment → paid | cancelled | expired`, `paid → refunded`;
    /// everything else is refused.
    pub fn transition(self, to: OrderStatus) -> Result<OrderStatus, TransitionRefused> {
        use OrderStatus::*;
        match (self, to) {
            (PendingPayment, Paid | Cancelled | Expired) | (Paid, Refunded) => Ok(to),
            _ => Err(TransitionRefused { from: self, to }),
        }
    }

    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::PendingPayment,
        OrderStatus::Paid,
        OrderStatus::Cancelled,
        OrderStatus::Expired,
        OrderStatus::Refunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingPayment => "pending_payment",
            OrderStatus::Paid => "paid",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
            OrderStatus::Refunded => "refunded",
        }
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        Some(match s {
            "pending_payment" => OrderStatus::PendingPayment,
            "paid" => OrderStatus::Paid,
            "cancelled" => OrderStatus::Cancelled,
            "expired" => OrderStatus::Expired,
            "refunded" => OrderStatus::Refunded,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::*;
    use super::*;

    #[test]
    fn only_the_documented_transitions_are_allowed() {
        let all = [PendingPayment, Paid, Cancelled, Expired, Refunded];
        let allowed =
            [(PendingPayment, Paid), (PendingPayment, Cancelled), (PendingPayment, Expired), (Paid, Refunded)];
        for from in all {
            for to in all {
                let ok = from.transition(to).is_ok();
                assert_eq!(ok, allowed.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn status_names_round_trip() {
        for s in [PendingPayment, Paid, Cancelled, Expired, Refunded] {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(OrderStatus::parse("shipped"), None);
    }
}

/// An attendee named on an order (stored in full, shown masked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attendee {
    pub name: String,
    pub id_number: String,
}

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
