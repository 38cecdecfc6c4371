//! Read models the engine answers with, shaped as the API's JSON. Personal
//! data is masked here, so no caller can forget to.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{
    time_of, Attendee, ChannelKind, EventInfo, Fen, Id, OrderSeat, OrderStatus, PacketKind, PacketStatus,
};
use crate::durable::payments::{PaymentRecord, PaymentStatus, Purpose};
use crate::durable::OrderRecord;
use crate::store::{HotOrder, PacketSnapshot};

/// Keeps the first character of a name.
pub fn mask_name(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => std::iter::once(first).chain(chars.map(|_| '*')).collect(),
        None => String::new(),
    }
}

/// Keeps the last four characters of an id number (all masked if it is
/// shorter than eight).
pub fn mask_id_number(id: &str) -> String {
    let n = id.chars().count();
    let keep = if n >= 8 { 4 } else { 0 };
    id.chars().enumerate().map(|(i, c)| if i + keep >= n { c } else { '*' }).collect()
}

#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct SeatOnOrder {
    pub seat_id: String,
    pub section: String,
    pub row: u32,
    pub col: u32,
    pub category: String,
    #[schema(value_type = i64)]
    pub price: Fen,
}

impl From<&OrderSeat> for SeatOnOrder {
    fn from(s: &OrderSeat) -> Self {
        SeatOnOrder {
            seat_id: s.seat_id.clone(),
            section: s.section.clone(),
            row: s.row,
            col: s.col,
            category: s.category.clone(),
            price: s.price,
        }
    }
}

#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct AttendeeView {
    pub name: String,
    pub id_number: String,
}

impl From<&Attendee> for AttendeeView {
    fn from(a: &Attendee) -> Self {
        AttendeeView { name: mask_name(&a.name), id_number: mask_id_number(&a.id_number) }
    }
}

#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct OrderView {
    #[schema(value_type = String)]
    pub order_id: Id,
    #[schema(value_type = String)]
    pub status: OrderStatus,
    #[schema(value_type = String)]
    pub event_id: Id,
    pub user_id: String,
    pub seats: Vec<SeatOnOrder>,
    #[schema(value_type = i64)]
    pub amount: Fen,
    pub attendees: Vec<AttendeeView>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl OrderView {
    pub fn from_hot(o: &HotOrder, info: &EventInfo, status: OrderStatus) -> Self {
        OrderView {
            order_id: o.order_id,
            status,
            event_id: o.event_id,
            user_id: o.user_id.clone(),
            seats: crate::store::order_seats(info, &o.seats).iter().map(SeatOnOrder::from).collect(),
            amount: o.amount,
            attendees: o.attendees.iter().map(AttendeeView::from).collect(),
            created_at: time_of(o.created_at_ms),
            expires_at: time_of(o.expires_at_ms),
        }
    }

    pub fn from_record(r: &OrderRecord) -> Self {
        OrderView {
            order_id: r.order_id,
            status: r.status,
            event_id: r.event_id,
            user_id: r.user_id.clone(),
            seats: r.seats.iter().map(SeatOnOrder::from).collect(),
            amount: r.amount,
            attendees: r.attendees.iter().map(AttendeeView::from).collect(),
            created_at: time_of(r.created_at_ms),
            expires_at: time_of(r.expires_at_ms),
        }
    }
}

#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct GrabView {
    pub user_id: String,
    #[schema(value_type = i64)]
    pub amount: Fen,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct PacketView {
    #[schema(value_type = String)]
    pub packet_id: Id,
    pub sender: String,
    #[schema(value_type = String)]
    pub kind: PacketKind,
    #[schema(value_type = i64)]
    pub total_amount: Fen,
    pub count: u32,
    pub greeting: String,
    #[schema(value_type = i64)]
    pub remaining_amount: Fen,
    pub remaining_count: u32,
    #[schema(value_type = String)]
    pub status: PacketStatus,
    pub expires_at: DateTime<Utc>,
    pub grabs: Vec<GrabView>,
}

impl From<&PacketSnapshot> for PacketView {
    fn from(s: &PacketSnapshot) -> Self {
        PacketView {
            packet_id: s.def.packet_id,
            sender: s.def.sender.clone(),
            kind: s.def.kind,
            total_amount: s.def.total,
            count: s.def.count,
            greeting: s.def.greeting.clone(),
            remaining_amount: s.remaining(),
            remaining_count: s.def.count.saturating_sub(s.grabs.len() as u32),
            status: s.status,
            expires_at: time_of(s.def.expires_at_ms),
            grabs: s
                .grabs
                .iter()
                .map(|g| GrabView { user_id: g.user_id.clone(), amount: g.amount, at: time_of(g.at_ms) })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_data_is_masked() {
        assert_eq!(mask_name("张三丰"), "张**");
        assert_eq!(mask_name(""), "");
        assert_eq!(mask_id_number("110101199003071234"), "**************1234");
        assert_eq!(mask_id_number("12345"), "*****");
    }
}

/// A payment as the API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentView {
    #[schema(value_type = String)]
    pub payment_id: Id,
    #[schema(value_type = Option<String>)]
    pub order_id: Option<Id>,
    pub channel: ChannelKind,
    #[schema(value_type = i64)]
    pub amount: Fen,
    pub status: PaymentStatus,
    /// `order` or `recharge`.
    #[schema(value_type = String)]
    pub purpose: Purpose,
    /// Where the buyer pays (the sandbox's complete URL in development).
    pub pay_url: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

impl PaymentView {
    pub fn of(p: &PaymentRecord) -> Self {
        PaymentView {
            payment_id: p.payment_id,
            order_id: p.order_id,
            channel: p.channel,
            amount: p.amount,
            status: p.status,
            purpose: p.purpose,
            pay_url: crate::pay::sandbox::pay_url(p.channel, p.payment_id),
            created_at: crate::domain::time_of(p.created_at_ms),
            expires_at: crate::domain::time_of(p.expires_at_ms),
        }
    }
}
