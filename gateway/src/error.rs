//! The one place where failures become HTTP: status, `code`, message and
//! details, in the API's error shape `{"error": {"code", "message", ...}}`.

use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use rush_engine::error::Entity;
use rush_engine::EngineError;
use serde_json::{json, Map, Value};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields beside `code` and `message` (few, so a Vec).
    pub details: Vec<(&'static str, Value)>,
    /// Seconds for `Retry-After` on 503.
    pub retry_after_s: Option<u32>,
    /// Answer with `Connection: close` (see [`ApiError::shutting_down`]).
    pub close: bool,
    /// More headers (the rate limit's on 429).
    pub headers: Vec<(&'static str, String)>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after_s: None,
            close: false,
            headers: Vec::new(),
        }
    }

    pub fn with(mut self, key: &'static str, value: Value) -> Self {
        self.details.push((key, value));
        self
    }

    /// The JSON body: `{"error": {"code", "message", ...details}}`.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("code".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        for (k, v) in &self.details {
            body.insert((*k).to_string(), v.clone());
        }
        json!({ "error": body })
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn unauthorized(code: &'static str, message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "this route needs the admin role")
    }

    pub fn not_found(what: Entity) -> Self {
        Self::new(StatusCode::NOT_FOUND, what.code(), format!("{what} not found"))
    }

    /// No route answers this method and path.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "route not found")
    }
}

/// Retry-After for overload answers; set once at start from config.
pub static RETRY_AFTER_S: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        use StatusCode as S;
        let message = e.to_string();
        match e {
            EngineError::Invalid(_) => ApiError::new(S::BAD_REQUEST, "invalid_request", message),
            EngineError::NotFound(what) => ApiError::not_found(what),
            EngineError::SeatUnavailable(seats) => {
                ApiError::new(S::CONFLICT, "seat_unavailable", message).with("seats", json!(seats))
            }
            EngineError::SoldOut { category, remaining } => ApiError::new(S::CONFLICT, "sold_out", message)
                .with("category", json!(category))
                .with("remaining", json!(remaining)),
            EngineError::NoAdjacentSeats { .. } => ApiError::new(S::CONFLICT, "no_adjacent_seats", message),
            EngineError::LimitExceeded { which, max } => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, "limit_exceeded", message)
                    .with("limit", json!(which))
                    .with("max", json!(max))
            }
            EngineError::NotOnSale { on_sale_at } => {
                ApiError::new(S::CONFLICT, "not_on_sale", message).with("on_sale_at", json!(on_sale_at))
            }
            EngineError::SaleEnded { sale_ends_at } => {
                ApiError::new(S::CONFLICT, "sale_ended", message).with("sale_ends_at", json!(sale_ends_at))
            }
            EngineError::QueueNotOpen { opens_at } => {
                ApiError::new(S::CONFLICT, "queue_not_open", message).with("opens_at", json!(opens_at))
            }
            EngineError::AdmissionRequired => ApiError::new(S::FORBIDDEN, "admission_required", message),
            EngineError::AdmissionInvalid(_) => ApiError::new(S::FORBIDDEN, "admission_invalid", message),
            EngineError::SalePaused => ApiError::new(S::CONFLICT, "sale_paused", message),
            EngineError::EventCancelled { reason } => {
                ApiError::new(S::GONE, "event_cancelled", message).with("reason", json!(reason))
            }
            EngineError::OrderNotPending { status } => {
                ApiError::new(S::CONFLICT, "order_not_pending", message).with("status", json!(status.as_str()))
            }
            EngineError::AlreadyGrabbed { amount } => {
                ApiError::new(S::CONFLICT, "already_grabbed", message).with("amount", json!(amount.get()))
            }
            EngineError::PacketEmpty => ApiError::new(S::GONE, "packet_empty", message),
            EngineError::PacketExpired => ApiError::new(S::GONE, "packet_expired", message),
            EngineError::InsufficientFunds => ApiError::new(S::UNPROCESSABLE_ENTITY, "insufficient_funds", message),
            EngineError::Overloaded(_) => ApiError::retry_later("overloaded", message),
            EngineError::StoreUnavailable => ApiError::retry_later("store_unavailable", message),
            EngineError::HotStoreRecovering => ApiError::retry_later("hot_store_recovering", message),
            EngineError::OutboxFull => ApiError::retry_later("outbox_full", message),
            EngineError::ShuttingDown => ApiError::shutting_down(),
            EngineError::ChannelUnavailable(_) => ApiError::retry_later("channel_unavailable", message),
            EngineError::OutcomeUnknown { what, id } => {
                let key = match what {
                    "packet" => "packet_id",
                    _ => "id",
                };
                ApiError::retry_later("outcome_unknown", message).with(key, json!(id.to_string()))
            }
            EngineError::RiskRefused(_) => ApiError::new(S::UNPROCESSABLE_ENTITY, "risk_refused", message),
            EngineError::Conflict { code, .. } => ApiError::new(S::CONFLICT, code, message),
            EngineError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                ApiError::new(S::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
        }
    }
}

impl ApiError {
    /// 503 with `Retry-After`: the request may succeed shortly.
    fn retry_later(code: &'static str, message: String) -> ApiError {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        e.retry_after_s = Some(*RETRY_AFTER_S.get().unwrap_or(&1));
        e
    }

    /// 503 `shutting_down`: nothing of the request was done; the response
    /// closes the connection so the client's next try goes elsewhere.
    pub fn shutting_down() -> ApiError {
        let mut e = ApiError::retry_later("shutting_down", EngineError::ShuttingDown.to_string());
        e.close = true;
        e
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status).json(self.body());
        if let Some(s) = self.retry_after_s {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(RETRY_AFTER, v);
            }
        }
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                resp.headers_mut().insert(actix_web::http::header::HeaderName::from_static(name), v);
            }
        }
        if self.close {
            resp.head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
        }
        resp
    }
}

/// Turns actix's JSON, path and query extraction failures into our shape.
pub fn json_error(err: actix_web::error::JsonPayloadError, _req: &actix_web::HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as J;
    let e = match &err {
        J::OverflowKnownLength { .. } | J::Overflow { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", err.to_string())
        }
        J::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/json",
        ),
        J::Deserialize(d) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", d.to_string()),
        _ => ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", err.to_string()),
    };
    e.into()
}

pub fn query_error(err: actix_web::error::QueryPayloadError, _req: &actix_web::HttpRequest) -> actix_web::Error {
    ApiError::bad_request(err.to_string()).into()
}

pub fn path_error(err: actix_web::error::PathError, _req: &actix_web::HttpRequest) -> actix_web::Error {
    ApiError::bad_request(err.to_string()).into()
}
