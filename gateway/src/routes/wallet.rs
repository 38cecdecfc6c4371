use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpResponse};
use rush_engine::domain::{time_of, UserId, WithdrawalStatus};
use rush_engine::error::Entity;
use serde_json::json;

use super::payments::channel_of;
use super::{path_id, positive_fen};
use crate::auth::{Admin, Auth};
use crate::dto::*;
use crate::error::ApiError;
use crate::idempotency::IdempotentPost;
use crate::AppState;

fn wallet_resp(user_id: &str, b: rush_engine::durable::Balance) -> WalletResp {
    WalletResp {
        user_id: user_id.to_string(),
        available: b.available.get(),
        frozen: b.frozen.get(),
        pending: b.pending.get(),
    }
}

#[utoipa::path(get, path = "/v1/wallet", responses((status = 200, body = WalletResp)))]
#[get("/v1/wallet")]
pub async fn get_wallet(state: web::Data<AppState>, auth: Auth) -> Result<HttpResponse, ApiError> {
    let b = state.engine.wallet(&auth.0.user_id).await?;
    Ok(HttpResponse::Ok().json(wallet_resp(&auth.0.user_id, b)))
}

#[utoipa::path(get, path = "/v1/wallet/ledger", params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = LedgerResp)))]
#[get("/v1/wallet/ledger")]
pub async fn get_ledger(
    state: web::Data<AppState>,
    auth: Auth,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let before = q.cursor()?;
    let (entries, next) = state.engine.ledger(&auth.0.user_id, before, q.limit).await?;
    Ok(HttpResponse::Ok().json(LedgerResp {
        entries: entries
            .into_iter()
            .map(|e| LedgerEntryResp {
                entry_id: e.entry_id.to_string(),
                transfer_id: e.transfer_id,
                bucket: e.bucket,
                amount: e.amount.get(),
                kind: e.kind,
                ref_id: e.ref_id,
                memo: e.memo,
                at: time_of(e.at_ms),
            })
            .collect(),
        next_cursor: next.map(|n| n.to_string()),
    }))
}

#[utoipa::path(post, path = "/v1/admin/wallet/{user_id}/credit", request_body = CreditReq,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first answer for 24 h")),
    responses((status = 200, body = WalletResp), (status = 400, body = ErrorResp), (status = 403, body = ErrorResp)))]
#[post("/v1/admin/wallet/{user_id}/credit")]
pub async fn credit(
    state: web::Data<AppState>,
    admin: Admin,
    user_id: web::Path<String>,
    post: IdempotentPost,
) -> Result<HttpResponse, ApiError> {
    let b: CreditReq = post.json()?;
    let user_id = UserId::parse(&user_id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let amount = positive_fen("amount", b.amount)?;
    post.once(&state, &admin.0.user_id, || async {
        let balance = state.engine.credit(&user_id, amount, &b.reason).await?;
        Ok((StatusCode::OK, json!(wallet_resp(&user_id, balance))))
    })
    .await
}

#[utoipa::path(post, path = "/v1/wallet/recharge", request_body = RechargeReq,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first answer for 24 h")),
    responses((status = 201, description = "a payment; the wallet is credited once it succeeds", body = rush_engine::views::PaymentView),
              (status = 400, body = ErrorResp), (status = 503, description = "channel_unavailable", body = ErrorResp)))]
#[post("/v1/wallet/recharge")]
pub async fn recharge(state: web::Data<AppState>, auth: Auth, post: IdempotentPost) -> Result<HttpResponse, ApiError> {
    let b: RechargeReq = post.json()?;
    let amount = positive_fen("amount", b.amount)?;
    let channel = channel_of(&b.channel)?;
    post.once(&state, &auth.0.user_id, || async {
        let p = state.engine.recharge(&auth.0.user_id, amount, channel).await?;
        Ok((StatusCode::CREATED, json!(p)))
    })
    .await
}

#[utoipa::path(post, path = "/v1/wallet/withdraw", request_body = WithdrawReq,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first answer for 24 h")),
    responses((status = 201, description = "frozen until an admin approves or rejects", body = WithdrawalResp),
              (status = 400, body = ErrorResp),
              (status = 422, description = "risk_refused (per-day count or amount), insufficient_funds", body = ErrorResp)))]
#[post("/v1/wallet/withdraw")]
pub async fn withdraw(state: web::Data<AppState>, auth: Auth, post: IdempotentPost) -> Result<HttpResponse, ApiError> {
    let b: WithdrawReq = post.json()?;
    let amount = positive_fen("amount", b.amount)?;
    post.once(&state, &auth.0.user_id, || async {
        let w = state.engine.withdraw(&auth.0.user_id, amount).await?;
        Ok((StatusCode::CREATED, json!(WithdrawalResp::from(w))))
    })
    .await
}

#[utoipa::path(get, path = "/v1/admin/withdrawals", params(("status" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = WithdrawalsResp), (status = 400, body = ErrorResp), (status = 403, body = ErrorResp)))]
#[get("/v1/admin/withdrawals")]
pub async fn list_withdrawals(
    state: web::Data<AppState>,
    _admin: Admin,
    q: web::Query<WithdrawalsQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let status = match q.status.as_deref() {
        None => WithdrawalStatus::Pending,
        Some(raw) => WithdrawalStatus::parse(raw)
            .ok_or_else(|| ApiError::bad_request("status must be pending, approved or rejected"))?,
    };
    let list = state.engine.withdrawals(status, q.limit).await?;
    Ok(HttpResponse::Ok().json(WithdrawalsResp { withdrawals: list.into_iter().map(WithdrawalResp::from).collect() }))
}

async fn decide(
    state: &AppState,
    admin: &Admin,
    id: &str,
    approve: bool,
    post: &IdempotentPost,
) -> Result<HttpResponse, ApiError> {
    let b: DecideReq = post.json_or_default()?;
    let withdrawal_id = path_id(id, Entity::Withdrawal)?;
    post.once(state, &admin.0.user_id, || async {
        let w = state.engine.decide_withdrawal(&admin.0, withdrawal_id, approve, b.reason).await?;
        Ok((StatusCode::OK, json!(WithdrawalResp::from(w))))
    })
    .await
}

#[utoipa::path(post, path = "/v1/admin/withdrawals/{id}/approve", request_body = Option<DecideReq>,
    responses((status = 200, description = "approved: the frozen money leaves rush", body = WithdrawalResp), (status = 403, body = ErrorResp),
              (status = 404, body = ErrorResp), (status = 409, description = "withdrawal_not_pending", body = ErrorResp)))]
#[post("/v1/admin/withdrawals/{id}/approve")]
pub async fn approve_withdrawal(
    state: web::Data<AppState>,
    admin: Admin,
    id: web::Path<String>,
    post: IdempotentPost,
) -> Result<HttpResponse, ApiError> {
    decide(&state, &admin, &id, true, &post).await
}

#[utoipa::path(post, path = "/v1/admin/withdrawals/{id}/reject", request_body = Option<DecideReq>,
    responses((status = 200, description = "rejected: the money is unfrozen", body = WithdrawalResp), (status = 403, body = ErrorResp),
              (status = 404, body = ErrorResp), (status = 409, description = "withdrawal_not_pending", body = ErrorResp)))]
#[post("/v1/admin/withdrawals/{id}/reject")]
pub async fn reject_withdrawal(
    state: web::Data<AppState>,
    admin: Admin,
    id: web::Path<String>,
    post: IdempotentPost,
) -> Result<HttpResponse, ApiError> {
    decide(&state, &admin, &id, false, &post).await
}
