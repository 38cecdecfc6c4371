//! What every request passes through: counted in flight (what shutdown
//! waits on), refused once intake is closed, its span, metrics and
//! failure log; then the front door's rate limits (see `limits`).

use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{web, HttpMessage};

use crate::error::ApiError;
use crate::limits::{client_addr, refusal, Checked, Class, Key, Limits};
use crate::AppState;

/// Rate limits by client address (and, in the production profile, the
/// `Idempotency-Key` every money-moving POST needs), before the handler;
/// the user's bucket is checked once the token is verified
/// ([`crate::limits::limit_user`]); the answer carries the tighter bucket's headers.
pub async fn front_door(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let limits = req.app_data::<web::Data<Limits>>().cloned();
    let class = Class::of(req.method(), req.path());
    if let (Some(limits), Some(class)) = (&limits, class) {
        if class == Class::Money
            && !req.headers().contains_key("idempotency-key")
            && req
                .app_data::<web::Data<AppState>>()
                .is_some_and(|s| s.engine.config().profile == rush_engine::config::Profile::Production)
        {
            let e = ApiError::new(
                actix_web::http::StatusCode::BAD_REQUEST,
                "idempotency_key_required",
                "send an Idempotency-Key header with every request that moves money",
            );
            let resp = actix_web::ResponseError::error_response(&e);
            return Ok(req.into_response(resp).map_into_right_body());
        }
        if limits.enabled() {
            let addr =
                client_addr(req.request(), limits.addr_header()).and_then(|a| limits.check(class, Key::Addr, &a));
            if let Some(v) = addr.as_ref().filter(|v| v.retry_after_s.is_some()) {
                let resp = actix_web::ResponseError::error_response(&refusal(v, class, Key::Addr));
                return Ok(req.into_response(resp).map_into_right_body());
            }
            req.extensions_mut().insert(Checked { class, addr, user: None });
        }
    }
    let mut res = next.call(req).await?;
    let checked = res.request().extensions().get::<Checked>().cloned();
    // A 429 carries its own bucket's headers already.
    if let Some(c) = checked.filter(|_| !res.headers().contains_key("ratelimit")) {
        if let Some(v) = c.user.or(c.addr) {
            let h = res.headers_mut();
            for (name, value) in [("ratelimit-policy", v.policy()), ("ratelimit", v.state())] {
                if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&value) {
                    h.insert(actix_web::http::header::HeaderName::from_static(name), v);
                }
            }
        }
    }
    Ok(res.map_into_left_body())
}

/// Paths answered while shutting down (probes and metrics).
fn is_ops_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// The span field a route's `{id}` names.
fn id_field(route: &str) -> Option<&'static str> {
    let rest = route.strip_prefix("/v1/")?;
    match rest.split('/').next()? {
        "orders" => Some("order_id"),
        "events" => Some("event_id"),
        "packets" => Some("packet_id"),
        "payments" | "sandbox" => Some("payment_id"),
        _ => None,
    }
}

/// Counts requests by route pattern and status and times them; once intake
/// is closed, refuses all but the ops paths (shutdown step 2). Each request
/// runs in a span `http` with `route`, `status` and, when known, `order_id`,
/// `event_id`, `packet_id`, `payment_id` (from the path, or recorded by the
/// engine when it creates one), logged at debug when it ends; answers of
/// 5xx are logged at warn with the route, status and path id.
pub async fn observe(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    use tracing::field::Empty;
    let start = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let _counted = state.as_ref().map(|s| s.traffic.started());
    if let Some(state) = &state {
        if !state.engine.intake_open() && !is_ops_path(req.path()) {
            state
                .engine
                .metrics
                .http_requests
                .with_label_values(&["shutting_down", req.method().as_str(), "503"])
                .inc();
            let resp = actix_web::ResponseError::error_response(&ApiError::shutting_down());
            return Ok(req.into_response(resp).map_into_right_body());
        }
    }
    let method = req.method().as_str().to_string();
    // Same fields either way; INFO for the requests whose traces are
    // exported (see [`crate::telemetry::request_span_at_info`]), else
    // DEBUG, so a node logging at info pays nothing for the others.
    macro_rules! request_span {
        ($level:ident) => {
            tracing::span!(
                tracing::Level::$level,
                "http",
                method = %method,
                route = Empty,
                status = Empty,
                order_id = Empty,
                event_id = Empty,
                packet_id = Empty,
                payment_id = Empty,
            )
        };
    }
    let span = if crate::telemetry::request_span_at_info() { request_span!(INFO) } else { request_span!(DEBUG) };
    let res = tracing::Instrument::instrument(next.call(req), span.clone()).await?;
    let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".into());
    let status = res.status();
    let id = id_field(&route).zip(res.request().match_info().get("id"));
    let elapsed = start.elapsed();
    let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    if !span.is_disabled() {
        span.record("route", route.as_str());
        span.record("status", status.as_u16());
        if let Some((field, id)) = id {
            span.record(field, id);
        }
        span.in_scope(|| tracing::debug!(elapsed_ms, "request"));
    }
    if status.is_server_error() {
        // Carries what it needs whether or not the span is on.
        let (id_name, id) = id.unwrap_or(("id", ""));
        tracing::warn!(method, route, status = status.as_u16(), id_name, id, elapsed_ms, "request failed");
    }
    if let Some(state) = &state {
        let m = &state.engine.metrics;
        m.http_requests.with_label_values(&[&route, &method, status.as_str()]).inc();
        m.http_latency.with_label_values(&[&route]).observe(elapsed.as_secs_f64());
    }
    Ok(res.map_into_left_body())
}
