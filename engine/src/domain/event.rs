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
    /// The definition's revision: 0 as created, one more per operator
    /// change (`PATCH`, pause, resume, cancel). Changes are compare-and-set
    /// on it in the hot store, so two operators never overwrite each other.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rev: u64,
    /// The revision at which the seat map was last set (0: at creation);
    /// it changes only while the event is scheduled and holds nothing.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub map_rev: u64,
    /// Paused by an operator: no holds until resumed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Cancelled by an operator: final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation: Option<Cancellation>,
    /// The event's waiting room, set at creation: holds need an admission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_room: Option<WaitingRoom>,
}

/// A waiting room's settings (see `engine::queue`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WaitingRoom {
    /// Users admitted per second from the head of the queue.
    pub admit_per_s: u32,
    /// Most users holding unexpired admissions at once (None: no bound).
    pub active_max: Option<u32>,
    /// How long before `on_sale_at` the queue opens.
    pub pre_queue_s: u32,
    /// How long an admission is valid.
    pub admission_ttl_s: u32,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancellation {
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// What an operator may change of an event after its creation: everything
/// but its identity, show time and seat map. Kept apart from the (large)
/// definition so that a change writes and reads only this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSettings {
    pub rev: u64,
    /// See [`EventDef::map_rev`]: a reader whose seat map is older reads
    /// the definition again.
    #[serde(default)]
    pub map_rev: u64,
    pub name: String,
    pub venue: String,
    pub hold_ttl_s: u32,
    pub limits: Limits,
    pub categories: Vec<Category>,
    pub on_sale_at: Option<DateTime<Utc>>,
    pub sale_ends_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub cancellation: Option<Cancellation>,
}

/// Where an event's sale stands: on the clock (scheduled, on sale,
/// ended), unless an operator paused or cancelled it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SaleStatus {
    Scheduled,
    OnSale,
    Paused,
    Ended,
    Cancelled,
}

impl SaleStatus {
    pub const ALL: [SaleStatus; 5] =
        [SaleStatus::Scheduled, SaleStatus::OnSale, SaleStatus::Paused, SaleStatus::Ended, SaleStatus::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            SaleStatus::Scheduled => "scheduled",
            SaleStatus::OnSale => "on_sale",
            SaleStatus::Paused => "paused",
            SaleStatus::Ended => "ended",
            SaleStatus::Cancelled => "cancelled",
        }
    }

    /// Where a sale of window `[on, ends)` stands at `now_ms`: cancelled is
    /// final; past its end it is ended, paused or not; otherwise paused,
    /// or where the clock puts it.
    pub fn at(now_ms: u64, (on, ends): (u64, u64), paused: bool, cancelled: bool) -> SaleStatus {
        if cancelled {
            SaleStatus::Cancelled
        } else if now_ms >= ends {
            SaleStatus::Ended
        } else if paused {
            SaleStatus::Paused
        } else if now_ms < on {
            SaleStatus::Scheduled
        } else {
            SaleStatus::OnSale
        }
    }

    pub fn parse(s: &str) -> Option<SaleStatus> {
        SaleStatus::ALL.into_iter().find(|v| v.as_str() == s)
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
        SaleStatus::at(now_ms, self.sale_window_ms(), self.paused, self.cancellation.is_some())
    }

    pub fn settings(&self) -> EventSettings {
        EventSettings {
            rev: self.rev,
            map_rev: self.map_rev,
            name: self.name.clone(),
            venue: self.venue.clone(),
            hold_ttl_s: self.hold_ttl_s,
            limits: self.limits,
            categories: self.categories.clone(),
            on_sale_at: self.on_sale_at,
            sale_ends_at: self.sale_ends_at,
            paused: self.paused,
            cancellation: self.cancellation.clone(),
        }
    }

    /// This definition with `s` applied (when `s` is newer).
    pub fn with_settings(&self, s: &EventSettings) -> EventDef {
        if s.rev <= self.rev {
            return self.clone();
        }
        EventDef {
            name: s.name.clone(),
            venue: s.venue.clone(),
            hold_ttl_s: s.hold_ttl_s,
            limits: s.limits,
            categories: s.categories.clone(),
            on_sale_at: s.on_sale_at,
            sale_ends_at: s.sale_ends_at,
            rev: s.rev,
            map_rev: s.map_rev,
            paused: s.paused,
            cancellation: s.cancellation.clone(),
            ..self.clone()
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

    /// The same seat map under changed settings.
    pub fn with_settings(&self, s: &EventSettings) -> Arc<Self> {
        Arc::new(EventInfo { def: self.def.with_settings(s), map: self.map.clone() })
    }

    pub fn category(&self, id: &str) -> Option<&Category> {
        self.def.categories.iter().find(|c| c.id == id)
    }

    /// Price of a seat; every seat's category exists (checked at build).
    pub fn price_of(&self, category: &str) -> Fen {
        self.category(category).map(|c| c.price).unwrap_or(Fen::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> EventDef {
        let at = |ms: i64| DateTime::from_timestamp_millis(ms);
        EventDef {
            event_id: Id::from_raw(1).unwrap(),
            name: "e".into(),
            venue: "v".into(),
            starts_at: Utc::now(),
            hold_ttl_s: 60,
            limits: Limits { per_order: 2, per_user: 2 },
            categories: vec![Category { id: "c".into(), name: "C".into(), price: Fen::new(100) }],
            seats: vec![],
            on_sale_at: at(1_000),
            sale_ends_at: at(2_000),
            rev: 0,
            map_rev: 0,
            paused: false,
            cancellation: None,
            waiting_room: None,
        }
    }

    #[test]
    fn status_is_the_clock_unless_paused_or_cancelled() {
        let mut d = def();
        let at = |d: &EventDef, ms| d.sale_status(ms);
        assert_eq!(
            (at(&d, 999), at(&d, 1_000), at(&d, 1_999), at(&d, 2_000)),
            (SaleStatus::Scheduled, SaleStatus::OnSale, SaleStatus::OnSale, SaleStatus::Ended)
        );
        d.paused = true;
        assert_eq!(
            (at(&d, 500), at(&d, 1_500), at(&d, 2_000)),
            (SaleStatus::Paused, SaleStatus::Paused, SaleStatus::Ended)
        );
        d.cancellation = Some(Cancellation { reason: "r".into(), at: Utc::now() });
        assert_eq!((at(&d, 500), at(&d, 2_500)), (SaleStatus::Cancelled, SaleStatus::Cancelled));
        for s in SaleStatus::ALL {
            assert_eq!(SaleStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn settings_apply_only_when_newer() {
        let d = def();
        let mut s = d.settings();
        s.name = "new".into();
        assert_eq!(d.with_settings(&s), d, "same revision: unchanged");
        s.rev = 1;
        let n = d.with_settings(&s);
        assert_eq!((n.name.as_str(), n.rev, n.event_id), ("new", 1, d.event_id));
        assert_eq!(n.with_settings(&d.settings()), n, "an older revision never wins");
        assert_eq!(n.settings(), s);
    }
}
