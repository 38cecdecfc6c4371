//! What the engine's use cases take: inputs validated into domain types,
//! and the limits that are not configuration.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::actors::event::Selection;
use crate::domain::{Attendee, Fen, Id, PacketKind, SeatDef, SectionLayout, UserId};

/// A category id: short, it is repeated on every seat and order line.
pub const CATEGORY_ID_LEN_MAX: usize = 32;
/// An attendee's identity-document number: the longest national format
/// with room to spare.
pub const ID_NUMBER_LEN_MAX: usize = 64;
/// Free-text reasons (credits, withdrawal decisions): a sentence, not a
/// document.
pub const REASON_LEN_MAX: usize = 200;
/// A webhook URL: what browsers and proxies reliably carry.
pub const URL_LEN_MAX: usize = 2000;
/// A webhook's signing secret: 16 characters at least, so it cannot be
/// guessed; 200 at most, a bound on what is stored.
pub const SECRET_LEN_MIN: usize = 16;
pub const SECRET_LEN_MAX: usize = 200;

/// Who is asking.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: UserId,
    pub admin: bool,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NewCategory {
    pub id: String,
    pub name: String,
    pub price: i64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NewLimits {
    pub per_order: Option<u32>,
    pub per_user: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct NewEvent {
    pub name: String,
    pub venue: String,
    pub starts_at: DateTime<Utc>,
    /// Default: now (on sale at once).
    pub on_sale_at: Option<DateTime<Utc>>,
    /// Default: `starts_at`.
    pub sale_ends_at: Option<DateTime<Utc>>,
    pub hold_ttl_s: Option<u32>,
    pub limits: Option<NewLimits>,
    pub categories: Vec<NewCategory>,
    pub layout: Option<Vec<SectionLayout>>,
    pub seats: Option<Vec<SeatDef>>,
    pub waiting_room: Option<NewWaitingRoom>,
}

/// A waiting room as asked for at creation (defaults filled in).
#[derive(Clone, Copy, Debug)]
pub struct NewWaitingRoom {
    pub admit_per_s: u32,
    pub active_max: Option<u32>,
    /// Default 600.
    pub pre_queue_s: Option<u32>,
    /// Default 300.
    pub admission_ttl_s: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct NewHold {
    pub event_id: Id,
    pub selection: Selection,
    pub attendees: Vec<Attendee>,
    /// The `Rush-Admission` token, for an event with a waiting room.
    pub admission: Option<String>,
}

#[derive(Clone, Debug)]
pub struct NewPacket {
    pub kind: PacketKind,
    /// Strictly positive (parsed with `Fen::positive` at the edge).
    pub total_amount: Fen,
    pub count: u32,
    pub greeting: Option<String>,
    pub expires_in_s: Option<u64>,
}
