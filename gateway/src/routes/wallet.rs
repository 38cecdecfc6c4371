use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use rush_engine::views::time_of;
use serde_json::json;

use crate::auth::{Admin, Auth};
use crate::dto::*;
use crate::error::ApiError;
use crate::idempotency::{once, parse_json};
use crate::AppState;

fn wallet_resp(user_id: &str, b: rush_engine::durable::Balance) -> WalletResp {
    WalletResp { user_id: user_id.to_string(), available: b.available.get(), frozen: b.frozen.get() }
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
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let b: CreditReq = parse_json(&body)?;
    once(&state, &req, &admin.0.user_id, &body, || async {
        let balance = state.engine.credit(&user_id, b.amount, &b.reason).await?;
        Ok((StatusCode::OK, json!(wallet_resp(&user_id, balance))))
    })
    .await
}
