use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use rush_engine::domain::time_of;
use rush_engine::error::Entity;
use rush_engine::pay::sandbox::PayOutcome;
use rush_engine::pay::ChannelKind;
use rush_engine::views::PaymentView;
use serde_json::json;

use super::path_id;
use crate::auth::{Admin, Auth};
use crate::dto::*;
use crate::error::ApiError;
use crate::idempotency::{parse_json_or_default, IdempotentPost};
use crate::AppState;

pub fn channel_of(raw: &str) -> Result<ChannelKind, ApiError> {
    ChannelKind::parse(raw).ok_or_else(|| ApiError::bad_request("channel must be wechat, alipay or ecard"))
}

#[utoipa::path(post, path = "/v1/orders/{id}/payments", request_body = PayReq,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first answer for 24 h")),
    responses((status = 201, body = PaymentView), (status = 200, description = "the unpaid payment already open on this channel", body = PaymentView),
              (status = 400, body = ErrorResp), (status = 404, body = ErrorResp),
              (status = 409, description = "order_not_pending", body = ErrorResp),
              (status = 410, description = "event_cancelled: the order's event was cancelled", body = ErrorResp),
              (status = 503, description = "channel_unavailable", body = ErrorResp)))]
#[post("/v1/orders/{id}/payments")]
pub async fn pay_order(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<String>,
    post: IdempotentPost,
) -> Result<HttpResponse, ApiError> {
    let b: PayReq = post.json()?;
    let channel = channel_of(&b.channel)?;
    let order_id = path_id(&id, Entity::Order)?;
    post.once(&state, &auth.0.user_id, || async {
        let (view, created) = state.engine.pay_order(&auth.0, order_id, channel).await?;
        Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, json!(view)))
    })
    .await
}

#[utoipa::path(post, path = "/v1/orders/{id}/refund",
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first answer for 24 h")),
    responses((status = 200, description = "the order's payment, now refunded", body = PaymentView), (status = 404, body = ErrorResp),
              (status = 409, description = "order_not_paid, already_refunded, refund_in_progress", body = ErrorResp),
              (status = 503, description = "channel_unavailable: the refund is retried by rush", body = ErrorResp)))]
#[post("/v1/orders/{id}/refund")]
pub async fn refund_order(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<String>,
    post: IdempotentPost,
) -> Result<HttpResponse, ApiError> {
    let order_id = path_id(&id, Entity::Order)?;
    post.once(&state, &auth.0.user_id, || async {
        let view = state.engine.refund_order(&auth.0, order_id).await?;
        Ok((StatusCode::OK, json!(view)))
    })
    .await
}

#[utoipa::path(get, path = "/v1/payments/{id}",
    responses((status = 200, body = PaymentView), (status = 404, body = ErrorResp)))]
#[get("/v1/payments/{id}")]
pub async fn get_payment(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let p = state.engine.payment(&auth.0, path_id(&id, Entity::Payment)?).await?;
    Ok(HttpResponse::Ok().json(p))
}

/// The channel's callback. No bearer token: the channel's signature is the
/// authentication. The answer is in the channel's own shape.
#[utoipa::path(post, path = "/v1/channels/{channel}/notify", security(()),
    responses((status = 200, description = "the channel's acknowledgement (JSON or text, per channel)"),
              (status = 400, description = "wechat: refused (bad signature, unknown payment, wrong amount)"),
              (status = 404, description = "unknown channel")))]
#[post("/v1/channels/{channel}/notify")]
pub async fn notify(
    state: web::Data<AppState>,
    channel: web::Path<String>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let kind = ChannelKind::parse(&channel).ok_or_else(|| ApiError::not_found(Entity::Channel))?;
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_string())))
        .collect();
    let ack = state.engine.take_callback(kind, &headers, &body).await;
    let status = StatusCode::from_u16(ack.status).unwrap_or(StatusCode::OK);
    Ok(HttpResponse::build(status).content_type(ack.content_type).body(ack.body))
}

/// Development only (`payments.sandbox.enabled`): the buyer pays at the
/// sandbox channel, which then calls back (or not, as asked).
#[utoipa::path(post, path = "/v1/sandbox/{channel}/payments/{id}/complete", request_body = Option<SandboxPayReq>, security(()),
    responses((status = 200, body = SandboxPayResp), (status = 404, body = ErrorResp),
              (status = 409, description = "not_payable: closed, refunded or already paid", body = ErrorResp)))]
#[post("/v1/sandbox/{channel}/payments/{id}/complete")]
pub async fn sandbox_complete(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    if !state.engine.config().sandbox() {
        return Err(ApiError::no_route());
    }
    let (channel, id) = path.into_inner();
    let kind = ChannelKind::parse(&channel).ok_or_else(|| ApiError::not_found(Entity::Channel))?;
    let payment_id = path_id(&id, Entity::Payment)?;
    let b: SandboxPayReq = parse_json_or_default(&body)?;
    let drop = match b.callback.as_deref() {
        None => None,
        Some("send") => Some(false),
        Some("drop") => Some(true),
        Some(_) => return Err(ApiError::bad_request("callback must be send or drop")),
    };
    let (outcome, plan) = state.engine.sandbox_pay(kind, payment_id, drop, b.delay_ms, b.duplicates).await?;
    match outcome {
        PayOutcome::Paid(paid) => Ok(HttpResponse::Ok().json(SandboxPayResp {
            payment_id: payment_id.to_string(),
            channel: kind.as_str().into(),
            txn_id: paid.txn_id,
            amount: paid.amount.get(),
            status: "paid".into(),
            callback: if plan.drop { "dropped" } else { "sent" }.into(),
        })),
        PayOutcome::NotPayable(why) => {
            Err(ApiError::new(StatusCode::CONFLICT, "not_payable", format!("the payment cannot be paid: {why}")))
        }
        PayOutcome::UnknownTrade => Err(ApiError::not_found(Entity::Payment)),
    }
}

#[utoipa::path(get, path = "/v1/admin/callbacks", params(("channel" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = CallbacksResp), (status = 403, body = ErrorResp)))]
#[get("/v1/admin/callbacks")]
pub async fn list_callbacks(
    state: web::Data<AppState>,
    _admin: Admin,
    q: web::Query<CallbacksQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let channel = q.channel.as_deref().map(channel_of).transpose()?;
    let callbacks = state.engine.callbacks(channel, q.limit).await?;
    Ok(HttpResponse::Ok().json(CallbacksResp {
        callbacks: callbacks
            .into_iter()
            .map(|c| CallbackResp {
                callback_id: c.callback_id.to_string(),
                channel: c.channel,
                received_at: time_of(c.received_at_ms),
                payment_id: c.payment_id.map(|p| p.to_string()),
                outcome: c.outcome,
                detail: c.detail,
                headers: c.headers,
                body: c.body,
            })
            .collect(),
    }))
}
