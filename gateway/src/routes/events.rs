use actix_web::{get, post, web, HttpResponse};
use rush_engine::domain::{SeatDef, SectionLayout};
use rush_engine::engine::{NewCategory, NewEvent, NewLimits};
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
        layout: b.layout.map(|l| {
            l.sections
                .into_iter()
                .map(|s| SectionLayout { name: s.name, rows: s.rows, cols: s.cols, category: s.category })
                .collect()
        }),
        seats: b.seats.map(|v| {
            v.into_iter()
                .map(|s| SeatDef { section: s.section, row: s.row, col: s.col, category: s.category })
                .collect()
        }),
    };
    let (id, seat_count) = state.engine.create_event(input).await?;
    Ok(HttpResponse::Created().json(CreateEventResp { event_id: id.to_string(), seat_count }))
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
    Ok(HttpResponse::Ok().json(EventResp {
        event_id: v.event_id.to_string(),
        name: v.name,
        venue: v.venue,
        starts_at: v.starts_at,
        hold_ttl_s: v.hold_ttl_s,
        categories: v
            .categories
            .into_iter()
            .map(|c| CategoryResp { id: c.id, name: c.name, price: c.price.get(), remaining: c.remaining })
            .collect(),
        limits: LimitsResp { per_order: v.limits.per_order, per_user: v.limits.per_user },
        status: v.status.as_str(),
        on_sale_at: v.on_sale_at,
        sale_ends_at: v.sale_ends_at,
    }))
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
    let seats = state.engine.seats(path_id(&id, Entity::Event)?, q.into_inner().section).await?;
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
