//! Event definitions: what an operator creates, fixed for the event's life.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::id::Id;
use super::money::Fen;
use super::seatmap::{SeatDef, SeatMap, SeatMapError};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    pub id: String,
    pub name: String,
    pub price: Fen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most seats one order may hold.
    pub per_order: u32,
    /// Most seats one user may hold or own in this event at once.
    pub per_user: u32,
}

/// The persisted definition of an event (seats always expanded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDef {
    pub event_id: Id,
    pub name: String,
    pub venue: String,
    pub starts_at: DateTime<Utc>,
    pub hold_ttl_s: u32,
    pub limits: Limits,
    pub categories: Vec<Category>,
    pub seats: Vec<SeatDef>,
    /// The sale window: holds are taken from `on_sale_at` (inclusive)
    /// until `sale_ends_at` (exclusive). Absent in definitions written
    /// before the window existed: on sale from creation, without end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_sale_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sale_ends_at: Option<DateTime<Utc>>,
}

/// Where an event's sale stands on the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SaleStatus {
    Scheduled,
    OnSale,
    Ended,
}

impl SaleStatus {
    pub const ALL: [SaleStatus; 3] = [SaleStatus::Scheduled, SaleStatus::OnSale, SaleStatus::Ended];

    pub fn as_str(self) -> &'static str {
        match self {
            SaleStatus::Scheduled => "scheduled",
            SaleStatus::OnSale => "on_sale",
            SaleStatus::Ended => "ended",
        }
    }
}

fn unix_ms(t: DateTime<Utc>) -> u64 {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

impl EventDef {
    /// The sale window in Unix ms: `[on, ends)`.
    pub fn sale_window_ms(&self) -> (u64, u64) {
        (self.on_sale_at.map(unix_ms).unwrap_or(0), self.sale_ends_at.map(unix_ms).unwrap_or(u64::MAX))
    }

    pub fn sale_status(&self, now_ms: u64) -> SaleStatus {
        let (on, ends) = self.sale_window_ms();
        if now_ms < on {
            SaleStatus::Scheduled
        } else if now_ms < ends {
            SaleStatus::OnSale
        } else {
            SaleStatus::Ended
        }
    }
}

/// A definition with its seat map built: shared read-only by the actor, the
/// store and the gateway.
#[derive(Debug)]
pub struct EventInfo {
    pub def: EventDef,
    pub map: SeatMap,
}

impl EventInfo {
    pub fn build(def: EventDef, seats_max: u32) -> Result<Arc<Self>, SeatMapError> {
        let cats: Vec<&str> = def.categories.iter().map(|c| c.id.as_str()).collect();
        let map = SeatMap::from_seats(def.seats.clone(), &cats, seats_max)?;
        Ok(Arc::new(EventInfo { def, map }))
    }

    pub fn category(&self, id: &str) -> Option<&Category> {
        self.def.categories.iter().find(|c| c.id == id)
    }

    /// Price of a seat; every seat's category exists (checked at build).
    pub fn price_of(&self, category: &str) -> Fen {
        self.category(category).map(|c| c.price).unwrap_or(Fen::ZERO)
    }
}
