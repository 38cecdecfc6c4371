use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpResponse};
use rush_engine::domain::Attendee;
use rush_engine::engine::NewHold;
use rush_engine::engine::Selection;
use rush_engine::error::Entity;
use rush_engine::views::OrderView;
use serde_json::json;

use super::path_id;
use crate::auth::Auth;
use crate::dto::*;
use crate::error::ApiError;
use crate::idempotency::IdempotentPost;
use crate::AppState;

/// The admission token header of an event with a waiting room.
pub const ADMISSION_HEADER: &str = "rush-admission";

#[utoipa::path(post, path = "/v1/orders", request_body = HoldReq,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first answer for 24 h"),
           ("Rush-Admission" = Option<String>, Header, description = "the admission token, for an event with a waiting room")),
    responses((status = 201, body = OrderView), (status = 400, body = ErrorResp), (status = 404, body = ErrorResp),
              (status = 403, description = "admission_required, admission_invalid", body = ErrorResp),
              (status = 409, description = "seat_unavailable (with seats), sold_out, no_adjacent_seats, not_on_sale (with on_sale_at), sale_ended (with sale_ends_at), sale_paused", body = ErrorResp),
              (status = 410, description = "event_cancelled (with reason)", body = ErrorResp),
              (status = 422, description = "limit_exceeded", body = ErrorResp),
              (status = 503, description = "overloaded, store_unavailable, outbox_full or shutting_down; see Retry-After", body = ErrorResp)))]
#[post("/v1/orders")]
pub async fn create_order(
    state: web::Data<AppState>,
    auth: Auth,
    post: IdempotentPost,
) -> Result<HttpResponse, ApiError> {
    let b: HoldReq = post.json()?;
    let event_id = b.event_id.parse().map_err(|_| ApiError::not_found(Entity::Event))?;
    let selection = match (b.seats, b.category, b.quantity) {
        (Some(seats), None, None) => Selection::Named(seats),
        (None, Some(category), Some(quantity)) => Selection::Category { category, quantity },
        _ => return Err(ApiError::bad_request("give either seats, or category and quantity")),
    };
    let attendees = b
        .attendees
        .unwrap_or_default()
        .into_iter()
        .map(|a| Attendee { name: a.name, id_number: a.id_number })
        .collect();
    let admission = post.header(ADMISSION_HEADER);
    let hold = NewHold { event_id, selection, attendees, admission };
    post.once(&state, &auth.0.user_id, || async {
        let order = state.engine.hold(&auth.0.user_id, hold).await?;
        Ok((StatusCode::CREATED, json!(order)))
    })
    .await
}

#[utoipa::path(get, path = "/v1/orders/{id}",
    responses((status = 200, body = OrderView), (status = 404, body = ErrorResp)))]
#[get("/v1/orders/{id}")]
pub async fn get_order(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let order = state.engine.order(&auth.0, path_id(&id, Entity::Order)?).await?;
    Ok(HttpResponse::Ok().json(order))
}

#[utoipa::path(get, path = "/v1/orders", params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = OrdersResp), (status = 400, body = ErrorResp)))]
#[get("/v1/orders")]
pub async fn list_orders(
    state: web::Data<AppState>,
    auth: Auth,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let before = q.cursor()?;
    let (orders, next) = state.engine.orders(&auth.0.user_id, before, q.limit).await?;
    Ok(HttpResponse::Ok().json(OrdersResp { orders, next_cursor: next.map(|n| n.to_string()) }))
}

#[utoipa::path(post, path = "/v1/orders/{id}/cancel",
    responses((status = 200, body = OrderView), (status = 404, body = ErrorResp),
              (status = 409, description = "order_not_pending", body = ErrorResp)))]
#[post("/v1/orders/{id}/cancel")]
pub async fn cancel_order(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let order = state.engine.cancel(&auth.0, path_id(&id, Entity::Order)?).await?;
    Ok(HttpResponse::Ok().json(order))
}

#[utoipa::path(get, path = "/v1/admin/orders",
    params(("event_id" = Option<String>, Query), ("user_id" = Option<String>, Query), ("status" = Option<String>, Query),
           ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = OrdersResp), (status = 400, body = ErrorResp),
              (status = 401, body = ErrorResp), (status = 403, body = ErrorResp)))]
#[get("/v1/admin/orders")]
pub async fn admin_orders(
    state: web::Data<AppState>,
    admin: crate::auth::Admin,
    q: web::Query<AdminOrdersQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let event_id = match q.event_id.as_deref() {
        None => None,
        Some(e) => Some(e.parse().map_err(|_| ApiError::bad_request("bad event_id"))?),
    };
    if q.user_id.as_deref().is_some_and(|u| !rush_engine::domain::valid_user_id(u)) {
        return Err(ApiError::bad_request("bad user_id"));
    }
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(rush_engine::domain::OrderStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request("status must be one of pending_payment, paid, cancelled, expired, refunded")
        })?),
    };
    let before = PageQuery { limit: q.limit, cursor: q.cursor }.cursor()?;
    let query = rush_engine::durable::lifecycle::OrderQuery { event_id, user_id: q.user_id, status, before, limit: 0 };
    let (orders, next) = state.engine.search_orders(&admin.0, query, q.limit).await?;
    Ok(HttpResponse::Ok().json(OrdersResp { orders, next_cursor: next.map(|n| n.to_string()) }))
}
