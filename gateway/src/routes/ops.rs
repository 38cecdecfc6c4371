use actix_web::{get, web, HttpResponse};
use serde_json::json;

use crate::AppState;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200)))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    healthz_body().await
}

pub async fn healthz_body() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Readiness: the stores answer.
#[utoipa::path(get, path = "/readyz", security(()), responses((status = 200), (status = 503, description = "not ready; `failing` lists shutting_down, outbox, durable_store, hot_store, hot_store_lost")))]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    readiness(&state.engine.not_ready().await)
}

/// 200 `ready`, or 503 `not_ready` with what is `failing`.
pub fn readiness(failing: &[&str]) -> HttpResponse {
    if failing.is_empty() {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"status": "not_ready", "failing": failing}))
    }
}

#[utoipa::path(get, path = "/metrics", security(()), responses((status = 200, description = "Prometheus text")))]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state.engine.metrics.set_writer(state.engine.durable().db().writer.stats());
    metrics_body(&state.engine.metrics)
}

pub fn metrics_body(m: &rush_engine::telemetry::Metrics) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(m.render())
}
