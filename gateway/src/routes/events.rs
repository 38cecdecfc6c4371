use actix_web::http::StatusCode;
use actix_web::{get, patch, post, web, HttpResponse};
use rush_engine::domain::SaleStatus;
use rush_engine::domain::{SeatDef, SectionLayout};
use rush_engine::durable::lifecycle::CatalogueQuery;
use rush_engine::engine::{EventPatch, NewCategory, NewEvent, NewLimits, NewWaitingRoom, PriceChange};
use rush_engine::error::Entity;

use super::path_id;
use crate::auth::{Admin, Auth};
use crate::dto::*;
use crate::error::ApiError;
use crate::AppState;

#[utoipa::path(post, path = "/v1/admin/events", request_body = CreateEventReq,
    responses((status = 201, body = CreateEventResp), (status = 400, body = ErrorResp),
              (status = 401, body = ErrorResp), (status = 403, body = ErrorResp)))]
#[post("/v1/admin/events")]
pub async fn create_event(
    state: web::Data<AppState>,
    _admin: Admin,
    body: web::Json<CreateEventReq>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let input = NewEvent {
        name: b.name,
        venue: b.venue,
        starts_at: b.starts_at,
        on_sale_at: b.on_sale_at,
        sale_ends_at: b.sale_ends_at,
        hold_ttl_s: b.hold_ttl_s,
        limits: b.limits.map(|l| NewLimits { per_order: l.per_order, per_user: l.per_user }),
        categories: b.categories.into_iter().map(|c| NewCategory { id: c.id, name: c.name, price: c.price }).collect(),
        layout: b.layout.map(layout_of),
        seats: b.seats.map(seats_of),
        waiting_room: b.waiting_room.map(|w| NewWaitingRoom {
            admit_per_s: w.admit_per_s,
            active_max: w.active_max,
            pre_queue_s: w.pre_queue_s,
            admission_ttl_s: w.admission_ttl_s,
        }),
    };
    let (id, seat_count) = state.engine.create_event(input).await?;
    Ok(HttpResponse::Created().json(CreateEventResp { event_id: id.to_string(), seat_count }))
}

fn layout_of(l: LayoutReq) -> Vec<SectionLayout> {
    l.sections
        .into_iter()
        .map(|s| SectionLayout { name: s.name, rows: s.rows, cols: s.cols, category: s.category })
        .collect()
}

fn seats_of(v: Vec<SeatReq>) -> Vec<SeatDef> {
    v.into_iter().map(|s| SeatDef { section: s.section, row: s.row, col: s.col, category: s.category }).collect()
}

#[utoipa::path(get, path = "/v1/events/{id}",
    responses((status = 200, body = EventResp), (status = 404, body = ErrorResp)))]
#[get("/v1/events/{id}")]
pub async fn get_event(
    state: web::Data<AppState>,
    _auth: Auth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let v = state.engine.event(path_id(&id, Entity::Event)?).await?;
    Ok(HttpResponse::Ok().json(EventResp::of(v)))
}

#[utoipa::path(get, path = "/v1/events/{id}/seats", params(("section" = Option<String>, Query)),
    responses((status = 200, body = SeatsResp), (status = 404, body = ErrorResp)))]
#[get("/v1/events/{id}/seats")]
pub async fn get_seats(
    state: web::Data<AppState>,
    _auth: Auth,
    id: web::Path<String>,
    q: web::Query<SeatsQuery>,
) -> Result<HttpResponse, ApiError> {
    let section = q.into_inner().section;
    if section.as_deref() == Some("") {
        return Err(ApiError::bad_request("section must not be empty"));
    }
    let seats = state.engine.seats(path_id(&id, Entity::Event)?, section).await?;
    Ok(HttpResponse::Ok().json(SeatsResp {
        seats: seats
            .into_iter()
            .map(|s| SeatResp {
                seat_id: s.seat_id,
                section: s.section,
                row: s.row,
                col: s.col,
                category: s.category,
                status: s.status.to_string(),
            })
            .collect(),
    }))
}

#[utoipa::path(get, path = "/v1/events", security(()),
    params(("status" = Option<String>, Query), ("q" = Option<String>, Query), ("from" = Option<String>, Query),
           ("to" = Option<String>, Query), ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = CatalogueResp), (status = 400, body = ErrorResp)))]
#[get("/v1/events")]
pub async fn list_events(
    state: web::Data<AppState>,
    q: web::Query<CatalogueQueryReq>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(SaleStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request("status must be one of scheduled, on_sale, paused, ended, cancelled")
        })?),
    };
    let text_max = state.engine.config().events.name_len_max;
    if q.q.as_ref().is_some_and(|t| t.chars().count() > text_max) {
        return Err(ApiError::bad_request(format!("q must be at most {text_max} characters")));
    }
    let before = PageQuery { limit: q.limit, cursor: q.cursor }.cursor()?;
    let ms = |t: chrono::DateTime<chrono::Utc>| u64::try_from(t.timestamp_millis()).unwrap_or(0);
    let query = CatalogueQuery { status, q: q.q, from_ms: q.from.map(ms), to_ms: q.to.map(ms), before, limit: 0 };
    let (items, next) = state.engine.catalogue(query, q.limit).await?;
    Ok(HttpResponse::Ok().json(CatalogueResp {
        events: items
            .into_iter()
            .map(|i| CatalogueItemResp {
                event_id: i.event_id.to_string(),
                name: i.name,
                venue: i.venue,
                starts_at: i.starts_at,
                on_sale_at: i.on_sale_at,
                status: i.status.as_str(),
                categories: i.categories.into_iter().map(CategoryResp::of).collect(),
            })
            .collect(),
        next_cursor: next.map(|n| n.to_string()),
    }))
}

/// The event as it stands after an operator's change.
async fn event_after(
    state: &AppState,
    id: rush_engine::domain::Id,
    status: StatusCode,
) -> Result<HttpResponse, ApiError> {
    let v = state.engine.event(id).await?;
    Ok(HttpResponse::build(status).json(EventResp::of(v)))
}

#[utoipa::path(patch, path = "/v1/admin/events/{id}", request_body = PatchEventReq,
    responses((status = 200, body = EventResp), (status = 400, body = ErrorResp), (status = 404, body = ErrorResp),
              (status = 409, description = "event_on_sale (prices or seats once on sale), event_has_orders, event_changing", body = ErrorResp),
              (status = 410, description = "event_cancelled", body = ErrorResp)))]
#[patch("/v1/admin/events/{id}")]
pub async fn patch_event(
    state: web::Data<AppState>,
    _admin: Admin,
    id: web::Path<String>,
    body: web::Json<PatchEventReq>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, Entity::Event)?;
    let b = body.into_inner();
    let patch = EventPatch {
        name: b.name,
        venue: b.venue,
        hold_ttl_s: b.hold_ttl_s,
        limits: b.limits.map(|l| NewLimits { per_order: l.per_order, per_user: l.per_user }),
        on_sale_at: b.on_sale_at,
        sale_ends_at: b.sale_ends_at,
        categories: b.categories.map(|v| v.into_iter().map(|c| PriceChange { id: c.id, price: c.price }).collect()),
        layout: b.layout.map(layout_of),
        seats: b.seats.map(seats_of),
    };
    state.engine.patch_event(id, patch).await?;
    event_after(&state, id, StatusCode::OK).await
}

#[utoipa::path(post, path = "/v1/admin/events/{id}/pause",
    responses((status = 200, body = EventResp), (status = 404, body = ErrorResp),
              (status = 409, description = "sale_ended", body = ErrorResp),
              (status = 410, description = "event_cancelled", body = ErrorResp)))]
#[post("/v1/admin/events/{id}/pause")]
pub async fn pause_event(
    state: web::Data<AppState>,
    _admin: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, Entity::Event)?;
    state.engine.pause_event(id).await?;
    event_after(&state, id, StatusCode::OK).await
}

#[utoipa::path(post, path = "/v1/admin/events/{id}/resume",
    responses((status = 200, body = EventResp), (status = 404, body = ErrorResp),
              (status = 410, description = "event_cancelled", body = ErrorResp)))]
#[post("/v1/admin/events/{id}/resume")]
pub async fn resume_event(
    state: web::Data<AppState>,
    _admin: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, Entity::Event)?;
    state.engine.resume_event(id).await?;
    event_after(&state, id, StatusCode::OK).await
}

#[utoipa::path(post, path = "/v1/admin/events/{id}/cancel", request_body = CancelEventReq,
    responses((status = 202, body = EventResp, description = "cancelled; the refund fan-out runs (see cancellation)"),
              (status = 400, body = ErrorResp), (status = 404, body = ErrorResp)))]
#[post("/v1/admin/events/{id}/cancel")]
pub async fn cancel_event(
    state: web::Data<AppState>,
    _admin: Admin,
    id: web::Path<String>,
    body: web::Json<CancelEventReq>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, Entity::Event)?;
    state.engine.cancel_event(id, &body.reason).await?;
    event_after(&state, id, StatusCode::ACCEPTED).await
}

#[utoipa::path(get, path = "/v1/admin/events/{id}/stats",
    responses((status = 200, body = EventStatsResp), (status = 404, body = ErrorResp)))]
#[get("/v1/admin/events/{id}/stats")]
pub async fn event_stats(
    state: web::Data<AppState>,
    _admin: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let s = state.engine.event_stats(path_id(&id, Entity::Event)?).await?;
    Ok(HttpResponse::Ok().json(EventStatsResp {
        categories: s
            .categories
            .into_iter()
            .map(|c| CategoryCountResp { id: c.id, available: c.available, held: c.held, sold: c.sold })
            .collect(),
        orders: OrderCountsResp {
            pending_payment: s.orders.pending_payment,
            paid: s.orders.paid,
            cancelled: s.orders.cancelled,
            expired: s.orders.expired,
            refunded: s.orders.refunded,
        },
        revenue: s.revenue.get(),
        refunded: s.refunded.get(),
        last_minute: LastMinuteResp { holds: s.last_minute_holds, payments: s.last_minute_payments },
    }))
}
