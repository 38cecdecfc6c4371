//! Waiting rooms (join, where I stand by poll and by SSE, leave) and the
//! live update streams of events and packets (see `push`).

use actix_web::{delete, get, post, web, HttpResponse};
use rush_engine::error::Entity;

use super::path_id;
use crate::auth::Auth;
use crate::dto::*;
use crate::error::ApiError;
use crate::push::Topic;
use crate::AppState;

#[utoipa::path(post, path = "/v1/events/{id}/queue",
    responses((status = 200, body = TicketResp), (status = 404, body = ErrorResp),
              (status = 409, description = "queue_not_open (with opens_at), no_waiting_room, sale_ended", body = ErrorResp),
              (status = 410, description = "event_cancelled", body = ErrorResp),
              (status = 429, description = "rate_limited", body = ErrorResp)))]
#[post("/v1/events/{id}/queue")]
pub async fn join_queue(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let t = state.engine.queue_join(&auth.0.user_id, path_id(&id, Entity::Event)?).await?;
    Ok(HttpResponse::Ok().json(TicketResp::of(t)))
}

#[utoipa::path(get, path = "/v1/events/{id}/queue/me",
    responses((status = 200, body = TicketResp), (status = 404, description = "event_not_found, ticket_not_found", body = ErrorResp),
              (status = 409, description = "no_waiting_room", body = ErrorResp)))]
#[get("/v1/events/{id}/queue/me")]
pub async fn my_ticket(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let t = state.engine.queue_me(&auth.0.user_id, path_id(&id, Entity::Event)?).await?;
    Ok(HttpResponse::Ok().json(TicketResp::of(t)))
}

#[utoipa::path(delete, path = "/v1/events/{id}/queue/me",
    responses((status = 204), (status = 404, description = "event_not_found, ticket_not_found", body = ErrorResp),
              (status = 409, description = "no_waiting_room", body = ErrorResp)))]
#[delete("/v1/events/{id}/queue/me")]
pub async fn leave_queue(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.engine.queue_leave(&auth.0.user_id, path_id(&id, Entity::Event)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(get, path = "/v1/events/{id}/queue/me/stream",
    responses((status = 200, description = "text/event-stream: `ticket` messages, the ticket's shape, on every change", content_type = "text/event-stream", body = String),
              (status = 404, body = ErrorResp), (status = 503, description = "too_many_streams", body = ErrorResp)))]
#[get("/v1/events/{id}/queue/me/stream")]
pub async fn queue_stream(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.push.queue(path_id(&id, Entity::Event)?, auth.0.user_id.to_string()).await
}

#[utoipa::path(get, path = "/v1/events/{id}/stream",
    responses((status = 200, description = "text/event-stream: `snapshot` {categories:[{id, remaining}], seats:[{seat_id, status}]}, then `changes` of the same shape (what changed) at most once per push.interval_ms; past push.seats_per_message_max changed seats, `seats` is empty and `seats_omitted` counts them (read GET /v1/events/{id}/seats)", content_type = "text/event-stream", body = String),
              (status = 404, body = ErrorResp), (status = 503, description = "too_many_streams", body = ErrorResp)))]
#[get("/v1/events/{id}/stream")]
pub async fn event_stream(
    state: web::Data<AppState>,
    _auth: Auth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.push.subscribe(Topic::Event(path_id(&id, Entity::Event)?)).await
}

#[utoipa::path(get, path = "/v1/packets/{id}/stream",
    responses((status = 200, description = "text/event-stream: `snapshot` then `changes`, each {remaining_count, remaining_amount, status}", content_type = "text/event-stream", body = String),
              (status = 404, body = ErrorResp), (status = 503, description = "too_many_streams", body = ErrorResp)))]
#[get("/v1/packets/{id}/stream")]
pub async fn packet_stream(
    state: web::Data<AppState>,
    _auth: Auth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.push.subscribe(Topic::Packet(path_id(&id, Entity::Packet)?)).await
}
