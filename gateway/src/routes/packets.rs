use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpResponse};
use rush_engine::domain::PacketKind;
use rush_engine::engine::NewPacket;
use rush_engine::error::Entity;
use rush_engine::views::PacketView;
use serde_json::json;

use super::{path_id, positive_fen};
use crate::auth::Auth;
use crate::dto::*;
use crate::error::ApiError;
use crate::idempotency::IdempotentPost;
use crate::AppState;

#[utoipa::path(post, path = "/v1/packets", request_body = CreatePacketReq,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first answer for 24 h")),
    responses((status = 201, body = PacketView), (status = 400, body = ErrorResp),
              (status = 422, description = "insufficient_funds", body = ErrorResp),
              (status = 503, description = "store_unavailable, outbox_full or shutting_down; outcome_unknown (with packet_id): \
                the hot store could not say whether the packet was created, and its money stays frozen until it can; \
                retry with the same Idempotency-Key to get the packet or, if it never came to be, a new try", body = ErrorResp)))]
#[post("/v1/packets")]
pub async fn create_packet(
    state: web::Data<AppState>,
    auth: Auth,
    post: IdempotentPost,
) -> Result<HttpResponse, ApiError> {
    let b: CreatePacketReq = post.json()?;
    let kind = match b.kind.as_str() {
        "normal" => PacketKind::Normal,
        "lucky" => PacketKind::Lucky,
        _ => return Err(ApiError::bad_request("kind must be normal or lucky")),
    };
    let input = NewPacket {
        kind,
        total_amount: positive_fen("total_amount", b.total_amount)?,
        count: b.count,
        greeting: b.greeting,
        expires_in_s: b.expires_in_s,
    };
    post.once(&state, &auth.0.user_id, || async {
        let packet = state.engine.create_packet(&auth.0.user_id, input).await?;
        Ok((StatusCode::CREATED, json!(packet)))
    })
    .await
}

#[utoipa::path(post, path = "/v1/packets/{id}/grab",
    responses((status = 200, body = GrabResp), (status = 404, body = ErrorResp),
              (status = 409, description = "already_grabbed (with amount)", body = ErrorResp),
              (status = 410, description = "packet_empty or packet_expired", body = ErrorResp),
              (status = 503, description = "overloaded, store_unavailable, outbox_full or shutting_down; see Retry-After", body = ErrorResp)))]
#[post("/v1/packets/{id}/grab")]
pub async fn grab(state: web::Data<AppState>, auth: Auth, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let g = state.engine.grab(&auth.0.user_id, path_id(&id, Entity::Packet)?).await?;
    Ok(HttpResponse::Ok().json(GrabResp {
        packet_id: g.packet_id.to_string(),
        grab_id: g.grab_id.to_string(),
        amount: g.amount.get(),
    }))
}

#[utoipa::path(get, path = "/v1/packets/{id}",
    responses((status = 200, body = PacketView), (status = 404, body = ErrorResp)))]
#[get("/v1/packets/{id}")]
pub async fn get_packet(
    state: web::Data<AppState>,
    _auth: Auth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let p = state.engine.packet(path_id(&id, Entity::Packet)?).await?;
    Ok(HttpResponse::Ok().json(p))
}
