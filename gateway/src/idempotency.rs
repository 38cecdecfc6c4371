//! `Idempotency-Key` on POSTs that create or move money: the same key and
//! body within 24 h get the first answer again (with `Idempotent-Replayed:
//! true`); the same key with another body gets 422 `idempotency_key_reused`;
//! a repeat while the first is still running gets 409
//! `idempotency_in_progress`. Without the header a request just runs.

use std::future::Future;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use rush_engine::idempotency::{Begin, IdempotencyStore, Ttl};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::AppState;

pub const HEADER: &str = "idempotency-key";
/// Longest key accepted; UUIDs and ULIDs fit with room to spare.
pub const KEY_LEN_MAX: usize = 255;

/// Parses a JSON body the way `web::Json` would, with our error shape. A
/// whole number written as a float (`3.0`) is an integer to JSON Schema,
/// so it is taken where an integer is expected (on the error path only:
/// the usual body is parsed once).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).or_else(|first| {
        let invalid = || ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", first.to_string());
        let mut v: Value = serde_json::from_slice(body).map_err(|_| invalid())?;
        if !whole_floats_to_integers(&mut v) {
            return Err(invalid());
        }
        serde_json::from_value(v).map_err(|_| invalid())
    })
}

/// Rewrites every whole-number float within i64/u64 range as an integer;
/// false when there was none (nothing to try again).
fn whole_floats_to_integers(v: &mut Value) -> bool {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // 2^63 and 2^64 are exact as f64: the bounds are exclusive.
            let int = if f.fract() != 0.0 {
                None
            } else if (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) {
                Some(Value::from(f as i64))
            } else if (0.0..1.844_674_407_370_955_2e19).contains(&f) {
                Some(Value::from(f as u64))
            } else {
                None
            };
            match int {
                Some(i) => {
                    *v = i;
                    true
                }
                None => false,
            }
        }
        // Every element is visited (no short cut once one is rewritten).
        Value::Array(items) => {
            let mut any = false;
            for i in items {
                any |= whole_floats_to_integers(i);
            }
            any
        }
        Value::Object(fields) => {
            let mut any = false;
            for f in fields.values_mut() {
                any |= whole_floats_to_integers(f);
            }
            any
        }
        _ => false,
    }
}

/// An optional JSON body: none, or `null`, is `T::default()`.
pub fn parse_json_or_default<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() || body.trim_ascii() == b"null" {
        return Ok(T::default());
    }
    parse_json(body)
}

/// A POST that creates something or moves money: the request and its raw
/// body, so the body can be parsed with our error shape and its effect run
/// at most once per `Idempotency-Key` ([`IdempotentPost::once`]).
pub struct IdempotentPost {
    req: HttpRequest,
    body: web::Bytes,
}

impl FromRequest for IdempotentPost {
    type Error = actix_web::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        // The body limit is `web::PayloadConfig`'s, as for `web::Bytes`.
        let body = web::Bytes::from_request(req, payload);
        let req = req.clone();
        Box::pin(async move { Ok(IdempotentPost { body: body.await?, req }) })
    }
}

impl IdempotentPost {
    /// The body as JSON (400 `invalid_json` if it is not `T`).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        parse_json(&self.body)
    }

    /// The body as JSON, or `T::default()` when there is none (or `null`).
    pub fn json_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        parse_json_or_default(&self.body)
    }

    /// A request header as text (None if absent or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<String> {
        self.req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    /// Runs `f` at most once per (`user_id`, key): see [`once`].
    pub async fn once<F, Fut>(&self, state: &AppState, user_id: &str, f: F) -> Result<HttpResponse, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(StatusCode, Value), ApiError>>,
    {
        once(state, &self.req, user_id, &self.body, f).await
    }
}

fn respond(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status).content_type("application/json").body(body)
}

/// What identifies a request under its key: method, path and body.
fn request_hash(req: &HttpRequest, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(req.method().as_str());
    h.update(b" ");
    h.update(req.path());
    h.update(b"\n");
    h.update(body);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The first request under a key: runs `f` and records its answer, unless
/// it failed for want of a server (then the key is released for a retry).
async fn run_first<F, Fut>(
    records: &dyn IdempotencyStore,
    user_id: &str,
    key: &str,
    f: F,
) -> Result<HttpResponse, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(StatusCode, Value), ApiError>>,
{
    let (status, text) = match f().await {
        Ok((s, v)) => (s, v.to_string()),
        // Kept: a retry under this key finds out what happened.
        Err(e) if e.code == "outcome_unknown" => (e.status, e.body().to_string()),
        Err(e) if e.status.is_server_error() => {
            // Not stored: the client may retry under the same key.
            if let Err(err) = records.abandon(user_id, key).await {
                tracing::warn!(error = %err, "releasing an idempotency key failed");
            }
            return Err(e);
        }
        Err(e) => (e.status, e.body().to_string()),
    };
    if let Err(err) = records.finish(user_id, key, status.as_u16(), &text).await {
        // The effect happened; only the replay record is missing.
        tracing::error!(error = %err, "recording an idempotent answer failed");
    }
    Ok(respond(status, text))
}

/// Runs `f` at most once per (user, key) and answers with its result.
pub async fn once<F, Fut>(
    state: &AppState,
    req: &HttpRequest,
    user_id: &str,
    body: &[u8],
    f: F,
) -> Result<HttpResponse, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(StatusCode, Value), ApiError>>,
{
    let Some(raw) = req.headers().get(HEADER) else {
        let (status, v) = f().await?;
        return Ok(respond(status, v.to_string()));
    };
    let key = raw
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= KEY_LEN_MAX && k.bytes().all(|b| b.is_ascii_graphic()));
    let key = key.ok_or_else(|| {
        ApiError::bad_request(format!("Idempotency-Key must be 1-{KEY_LEN_MAX} visible ASCII characters"))
    })?;
    let hash = request_hash(req, body);
    let cfg = &state.engine.config().orders;
    let records = state.engine.idempotency();
    let now = rush_engine::domain::now_unix_ms();
    let ttl = Ttl { ttl_ms: cfg.idempotency_ttl_s * 1000, stale_ms: cfg.idempotency_stale_s * 1000 };
    let mut begin = records.begin(user_id, key, &hash, now, ttl).await?;
    if let Begin::Replay { status: 503, body } = &begin {
        // The first try's effect was unknown: find out now (still unknown:
        // the same 503 again).
        if let Some(packet_id) = unknown_packet(body) {
            match state.engine.packet_outcome(packet_id).await? {
                Some(view) => {
                    let text = serde_json::json!(view).to_string();
                    if let Err(err) = records.finish(user_id, key, StatusCode::CREATED.as_u16(), &text).await {
                        tracing::error!(error = %err, "recording an idempotent answer failed");
                    }
                    return Ok(respond(StatusCode::CREATED, text));
                }
                // It never came to be: the request may run again.
                None => {
                    records.forget(user_id, key, 503).await?;
                    begin = records.begin(user_id, key, &hash, now, ttl).await?;
                }
            }
        }
    }
    match begin {
        Begin::New => run_first(records, user_id, key, f).await,
        Begin::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut resp = respond(status, body);
            resp.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static("idempotent-replayed"),
                actix_web::http::header::HeaderValue::from_static("true"),
            );
            Ok(resp)
        }
        Begin::Mismatch => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        )),
        Begin::InProgress => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_in_progress",
            "a request with this Idempotency-Key is still running",
        )),
    }
}

/// The packet of a stored `outcome_unknown` answer, if that is what it is.
fn unknown_packet(body: &str) -> Option<rush_engine::domain::Id> {
    let stored: Value = serde_json::from_str(body).ok()?;
    let err = &stored["error"];
    if err["code"] != "outcome_unknown" {
        return None;
    }
    err["packet_id"].as_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    struct Body {
        count: Option<u32>,
        amount: Option<i64>,
    }

    #[test]
    fn whole_floats_are_integers_and_fractions_are_not() {
        let b: Body = parse_json(br#"{"count": 7846.0, "amount": -3.0}"#).unwrap();
        assert_eq!(b, Body { count: Some(7846), amount: Some(-3) });
        // Exactly, however large (float_roundtrip).
        let b: Body = parse_json(br#"{"amount": 3872179528836642.0}"#).unwrap();
        assert_eq!(b.amount, Some(3_872_179_528_836_642));
        let e = parse_json::<Body>(br#"{"count": 1.5}"#).unwrap_err();
        assert_eq!(e.code, "invalid_json");
        // Out of the field's range once whole: still refused.
        assert!(parse_json::<Body>(br#"{"count": 5e9}"#).is_err());
        assert!(parse_json::<Body>(br#"{"count": 1e300}"#).is_err());
    }

    #[test]
    fn an_optional_body_may_be_absent_or_null() {
        assert_eq!(parse_json_or_default::<Body>(b"").unwrap(), Body::default());
        assert_eq!(parse_json_or_default::<Body>(b" null ").unwrap(), Body::default());
        assert_eq!(parse_json_or_default::<Body>(br#"{"count": 2}"#).unwrap().count, Some(2));
        assert!(parse_json_or_default::<Body>(b"[]").is_err());
    }
}
