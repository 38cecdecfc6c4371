//! Request and response bodies. Requests reject unknown fields; each is
//! parsed into the engine's domain input at the edge.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevTokenReq {
    pub user_id: String,
    /// `user` or `admin`.
    pub role: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResp {
    pub token: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CategoryReq {
    pub id: String,
    pub name: String,
    /// Fen, at least 1: free tickets are refused (an order completes through a payment).
    pub price: i64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsReq {
    pub per_order: Option<u32>,
    pub per_user: Option<u32>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SectionReq {
    pub name: String,
    pub rows: u32,
    pub cols: u32,
    pub category: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LayoutReq {
    pub sections: Vec<SectionReq>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeatReq {
    pub section: String,
    pub row: u32,
    pub col: u32,
    pub category: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEventReq {
    pub name: String,
    pub venue: String,
    pub starts_at: DateTime<Utc>,
    /// When holds open (default: now).
    pub on_sale_at: Option<DateTime<Utc>>,
    /// When holds close (default: `starts_at`); after `on_sale_at`, in the future.
    pub sale_ends_at: Option<DateTime<Utc>>,
    pub hold_ttl_s: Option<u32>,
    pub limits: Option<LimitsReq>,
    pub categories: Vec<CategoryReq>,
    pub layout: Option<LayoutReq>,
    pub seats: Option<Vec<SeatReq>>,
    /// A waiting room: holds then need an admission (`Rush-Admission`).
    pub waiting_room: Option<WaitingRoomReq>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitingRoomReq {
    /// Users admitted per second, at least 1.
    pub admit_per_s: u32,
    /// Most users holding unexpired admissions at once (absent: no bound).
    pub active_max: Option<u32>,
    /// How long before `on_sale_at` joining opens (default 600).
    pub pre_queue_s: Option<u32>,
    /// How long an admission is valid (default 300).
    pub admission_ttl_s: Option<u32>,
}

/// A user's ticket in a waiting room.
#[derive(Serialize, ToSchema)]
pub struct TicketResp {
    pub ticket_id: String,
    pub status: rush_engine::engine::queue::TicketStatus,
    /// From 1; absent before the opening (the order is drawn at the opening) and once admitted.
    pub position: Option<u64>,
    /// Seconds until admission, estimated (before the opening: until the opening).
    pub eta_s: Option<u64>,
    /// For `Rush-Admission` on `POST /v1/orders`, while admitted.
    pub admission_token: Option<String>,
    pub admission_expires_at: Option<DateTime<Utc>>,
    /// The order of admission (1 = the event's first admitted user).
    pub admission_no: Option<u64>,
}

impl TicketResp {
    pub fn of(v: rush_engine::engine::queue::TicketView) -> TicketResp {
        TicketResp {
            ticket_id: v.ticket_id.to_string(),
            status: v.status,
            position: v.position,
            eta_s: v.eta_s,
            admission_token: v.admission_token,
            admission_expires_at: v.admission_expires_at,
            admission_no: v.admission_no,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CreateEventResp {
    pub event_id: String,
    pub seat_count: usize,
}

#[derive(Serialize, ToSchema)]
pub struct CategoryResp {
    pub id: String,
    pub name: String,
    pub price: i64,
    pub remaining: u32,
}

#[derive(Serialize, ToSchema)]
pub struct LimitsResp {
    pub per_order: u32,
    pub per_user: u32,
}

#[derive(Serialize, ToSchema)]
pub struct EventResp {
    pub event_id: String,
    pub name: String,
    pub venue: String,
    pub starts_at: DateTime<Utc>,
    pub hold_ttl_s: u32,
    pub categories: Vec<CategoryResp>,
    pub limits: LimitsResp,
    /// `scheduled` before `on_sale_at`, `on_sale` until `sale_ends_at`, then
    /// `ended`; `paused` while an operator has paused it (until it ends);
    /// `cancelled` once cancelled.
    #[schema(value_type = String, example = "on_sale")]
    pub status: &'static str,
    /// Absent only for events created before sale windows existed.
    pub on_sale_at: Option<DateTime<Utc>>,
    pub sale_ends_at: Option<DateTime<Utc>>,
    /// Set once cancelled: the reason and the refund fan-out's progress.
    pub cancellation: Option<CancellationResp>,
    /// The waiting room's settings, or null.
    pub waiting_room: Option<rush_engine::domain::WaitingRoom>,
}

#[derive(Serialize, ToSchema)]
pub struct CancellationResp {
    pub reason: String,
    pub cancelled_at: DateTime<Utc>,
    /// Paid orders to refund, as found so far, and those whose channel has
    /// confirmed the refund.
    pub refunds_total: u64,
    pub refunds_done: u64,
}

impl EventResp {
    pub fn of(v: rush_engine::engine::EventView) -> EventResp {
        EventResp {
            event_id: v.event_id.to_string(),
            name: v.name,
            venue: v.venue,
            starts_at: v.starts_at,
            hold_ttl_s: v.hold_ttl_s,
            categories: v.categories.into_iter().map(CategoryResp::of).collect(),
            limits: LimitsResp { per_order: v.limits.per_order, per_user: v.limits.per_user },
            status: v.status.as_str(),
            on_sale_at: v.on_sale_at,
            sale_ends_at: v.sale_ends_at,
            cancellation: v.cancellation.map(|c| CancellationResp {
                reason: c.reason,
                cancelled_at: c.at,
                refunds_total: c.refunds_total,
                refunds_done: c.refunds_done,
            }),
            waiting_room: v.waiting_room,
        }
    }
}

impl CategoryResp {
    pub fn of(c: rush_engine::engine::CategoryView) -> CategoryResp {
        CategoryResp { id: c.id, name: c.name, price: c.price.get(), remaining: c.remaining }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceReq {
    pub id: String,
    pub price: i64,
}

/// What `PATCH /v1/admin/events/{id}` changes; absent fields stay.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchEventReq {
    pub name: Option<String>,
    pub venue: Option<String>,
    pub hold_ttl_s: Option<u32>,
    pub limits: Option<LimitsReq>,
    pub on_sale_at: Option<DateTime<Utc>>,
    pub sale_ends_at: Option<DateTime<Utc>>,
    /// New prices by category id: only while `scheduled` (else 409 `event_on_sale`).
    pub categories: Option<Vec<PriceReq>>,
    /// A new seat map (one of the two, as on creation): only while
    /// `scheduled` and no seat is held (else 409 `event_on_sale` /
    /// `event_has_orders`).
    pub layout: Option<LayoutReq>,
    pub seats: Option<Vec<SeatReq>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelEventReq {
    pub reason: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogueQueryReq {
    pub status: Option<String>,
    /// A part of the name or venue, any case.
    pub q: Option<String>,
    /// Shows starting at or after `from` and before `to`.
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CatalogueItemResp {
    pub event_id: String,
    pub name: String,
    pub venue: String,
    pub starts_at: DateTime<Utc>,
    pub on_sale_at: DateTime<Utc>,
    #[schema(value_type = String, example = "on_sale")]
    pub status: &'static str,
    pub categories: Vec<CategoryResp>,
}

#[derive(Serialize, ToSchema)]
pub struct CatalogueResp {
    pub events: Vec<CatalogueItemResp>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CategoryCountResp {
    pub id: String,
    pub available: u32,
    pub held: u32,
    pub sold: u32,
}

#[derive(Serialize, ToSchema)]
pub struct OrderCountsResp {
    pub pending_payment: u64,
    pub paid: u64,
    pub cancelled: u64,
    pub expired: u64,
    pub refunded: u64,
}

#[derive(Serialize, ToSchema)]
pub struct LastMinuteResp {
    pub holds: u64,
    pub payments: u64,
}

#[derive(Serialize, ToSchema)]
pub struct EventStatsResp {
    pub categories: Vec<CategoryCountResp>,
    pub orders: OrderCountsResp,
    /// Fen kept from paid orders (refunded ones not counted).
    pub revenue: i64,
    /// Fen given back for refunded orders.
    pub refunded: i64,
    pub last_minute: LastMinuteResp,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminOrdersQuery {
    pub event_id: Option<String>,
    pub user_id: Option<String>,
    pub status: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SeatResp {
    pub seat_id: String,
    pub section: String,
    pub row: u32,
    pub col: u32,
    pub category: String,
    /// `available`, `held` or `sold`.
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct SeatsResp {
    pub seats: Vec<SeatResp>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttendeeReq {
    pub name: String,
    pub id_number: String,
}

/// Either `seats` (named seats) or `category` + `quantity` (the engine
/// picks adjacent seats in one row).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldReq {
    pub event_id: String,
    pub seats: Option<Vec<String>>,
    pub category: Option<String>,
    pub quantity: Option<u32>,
    pub attendees: Option<Vec<AttendeeReq>>,
}

#[derive(Serialize, ToSchema)]
pub struct OrdersResp {
    pub orders: Vec<rush_engine::views::OrderView>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl PageQuery {
    /// The cursor as the id type of the listing; a bad one is a 400. Every
    /// cursor is a positive id, whatever the listing's type.
    pub fn cursor<T: std::str::FromStr>(&self) -> Result<Option<T>, crate::error::ApiError> {
        let bad = || crate::error::ApiError::bad_request("bad cursor");
        self.cursor
            .as_deref()
            .map(|c| c.parse::<rush_engine::domain::Id>().map_err(|_| bad()).and_then(|_| c.parse().map_err(|_| bad())))
            .transpose()
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeatsQuery {
    pub section: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePacketReq {
    /// `normal` or `lucky`.
    pub kind: String,
    /// Fen.
    pub total_amount: i64,
    pub count: u32,
    pub greeting: Option<String>,
    pub expires_in_s: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct GrabResp {
    pub packet_id: String,
    pub grab_id: String,
    pub amount: i64,
}

#[derive(Serialize, ToSchema)]
pub struct WalletResp {
    pub user_id: String,
    /// Fen the user may spend or withdraw: what the ledger has applied.
    pub available: i64,
    pub frozen: i64,
    /// Fen of the user's grabs answered but not applied to the ledger yet:
    /// they join `available` within seconds (the workers' lag).
    pub pending: i64,
}

#[derive(Serialize, ToSchema)]
pub struct LedgerEntryResp {
    pub entry_id: String,
    pub transfer_id: String,
    /// `available` or `frozen`.
    pub bucket: String,
    /// Signed fen: positive in, negative out.
    pub amount: i64,
    pub kind: String,
    pub ref_id: String,
    pub memo: String,
    pub at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct LedgerResp {
    pub entries: Vec<LedgerEntryResp>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditReq {
    pub amount: i64,
    pub reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorResp {
    pub error: ErrorBody,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayReq {
    /// `wechat`, `alipay` or `ecard`.
    pub channel: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RechargeReq {
    /// Fen.
    pub amount: i64,
    /// `wechat`, `alipay` or `ecard`.
    pub channel: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WithdrawReq {
    /// Fen.
    pub amount: i64,
}

#[derive(Serialize, ToSchema)]
pub struct WithdrawalResp {
    pub withdrawal_id: String,
    pub user_id: String,
    pub amount: i64,
    /// `pending`, `approved` or `rejected`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
}

impl From<rush_engine::durable::wallet::WithdrawalRecord> for WithdrawalResp {
    fn from(w: rush_engine::durable::wallet::WithdrawalRecord) -> Self {
        use rush_engine::domain::time_of;
        WithdrawalResp {
            withdrawal_id: w.withdrawal_id.to_string(),
            user_id: w.user_id,
            amount: w.amount.get(),
            status: w.status.as_str().to_string(),
            created_at: time_of(w.created_at_ms),
            decided_at: w.decided_at_ms.map(time_of),
            decided_by: w.decided_by,
            reason: w.reason,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct WithdrawalsResp {
    pub withdrawals: Vec<WithdrawalResp>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WithdrawalsQuery {
    /// `pending` (default), `approved` or `rejected`.
    pub status: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct DecideReq {
    pub reason: Option<String>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SandboxPayReq {
    /// `send` (default: as configured) or `drop`: the callback is never sent.
    pub callback: Option<String>,
    /// Wait before the callback.
    pub delay_ms: Option<u64>,
    /// Extra copies of the callback.
    pub duplicates: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct SandboxPayResp {
    pub payment_id: String,
    pub channel: String,
    /// The channel's transaction id.
    pub txn_id: String,
    pub amount: i64,
    /// `paid`.
    pub status: String,
    /// Whether a callback was sent.
    pub callback: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallbacksQuery {
    pub channel: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct CallbackResp {
    pub callback_id: String,
    pub channel: String,
    pub received_at: DateTime<Utc>,
    pub payment_id: Option<String>,
    /// `applied`, `duplicate`, `late_refunded`, `bad_signature`, `malformed`, `stale`,
    /// `unknown_payment`, `amount_mismatch`, `failed` (or `received` while processing).
    pub outcome: String,
    pub detail: String,
    /// The headers and body exactly as they arrived.
    pub headers: String,
    pub body: String,
}

#[derive(Serialize, ToSchema)]
pub struct CallbacksResp {
    pub callbacks: Vec<CallbackResp>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookReq {
    /// An `http://` URL (see the README on TLS).
    pub url: String,
    /// Event types, or `["*"]` for all.
    pub events: Vec<String>,
    /// 16-200 characters; signs every delivery.
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookResp {
    pub webhook_id: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    pub limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptResp {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryResp {
    pub delivery_id: String,
    pub event_type: String,
    /// `pending`, `delivered`, `failed` or `disabled`.
    pub status: String,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub body: String,
    pub attempt_log: Vec<AttemptResp>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveriesResp {
    pub webhook_id: String,
    pub url: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub deliveries: Vec<DeliveryResp>,
}
