use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpResponse};
use rush_engine::domain::time_of;
use rush_engine::error::Entity;
use serde_json::json;

use super::path_id;
use crate::auth::Admin;
use crate::dto::*;
use crate::error::ApiError;
use crate::idempotency::IdempotentPost;
use crate::AppState;

#[utoipa::path(post, path = "/v1/admin/webhooks", request_body = WebhookReq,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first answer for 24 h")),
    responses((status = 201, body = WebhookResp), (status = 400, body = ErrorResp), (status = 403, body = ErrorResp),
              (status = 409, description = "too_many_webhooks", body = ErrorResp)))]
#[post("/v1/admin/webhooks")]
pub async fn create_webhook(
    state: web::Data<AppState>,
    admin: Admin,
    post: IdempotentPost,
) -> Result<HttpResponse, ApiError> {
    let b: WebhookReq = post.json()?;
    post.once(&state, &admin.0.user_id, || async {
        let id = state.engine.create_webhook(&b.url, &b.events, &b.secret).await?;
        Ok((StatusCode::CREATED, json!(WebhookResp { webhook_id: id.to_string() })))
    })
    .await
}

#[utoipa::path(get, path = "/v1/admin/webhooks/{id}/deliveries", params(("limit" = Option<u32>, Query)),
    responses((status = 200, body = DeliveriesResp), (status = 403, body = ErrorResp), (status = 404, body = ErrorResp)))]
#[get("/v1/admin/webhooks/{id}/deliveries")]
pub async fn deliveries(
    state: web::Data<AppState>,
    _admin: Admin,
    id: web::Path<String>,
    q: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    let (hook, list) = state.engine.webhook_deliveries(path_id(&id, Entity::Webhook)?, q.limit).await?;
    Ok(HttpResponse::Ok().json(DeliveriesResp {
        webhook_id: hook.webhook_id.to_string(),
        url: hook.url,
        enabled: hook.enabled,
        disabled_reason: hook.disabled_reason,
        deliveries: list
            .into_iter()
            .map(|d| DeliveryResp {
                delivery_id: d.delivery_id,
                event_type: d.event_type,
                next_attempt_at: (d.status == "pending").then(|| time_of(d.next_attempt_at_ms)),
                status: d.status,
                attempts: d.attempts,
                created_at: time_of(d.created_at_ms),
                delivered_at: d.delivered_at_ms.map(time_of),
                body: d.body,
                attempt_log: d
                    .attempt_log
                    .into_iter()
                    .map(|a| AttemptResp {
                        attempt: a.attempt,
                        at: time_of(a.at_ms),
                        status_code: a.status_code,
                        error: a.error,
                        duration_ms: a.duration_ms,
                    })
                    .collect(),
            })
            .collect(),
    }))
}
