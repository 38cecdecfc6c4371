use actix_web::{post, web, HttpResponse};
use rush_engine::domain::UserId;

use crate::auth::{now_s, Claims, Keys};
use crate::dto::{DevTokenReq, TokenResp};
use crate::error::ApiError;
use crate::AppState;

/// Development only: a token for any user id and role.
#[utoipa::path(post, path = "/v1/auth/dev-token", request_body = DevTokenReq, security(()),
    responses((status = 200, body = TokenResp), (status = 400, body = crate::dto::ErrorResp)))]
#[post("/v1/auth/dev-token")]
pub async fn dev_token(
    state: web::Data<AppState>,
    keys: web::Data<Keys>,
    body: web::Json<DevTokenReq>,
) -> Result<HttpResponse, ApiError> {
    let cfg = &state.engine.config().auth;
    if !state.engine.config().dev_tokens() {
        return Err(ApiError::no_route());
    }
    UserId::parse(&body.user_id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !matches!(body.role.as_str(), "user" | "admin") {
        return Err(ApiError::bad_request("role must be user or admin"));
    }
    let claims = Claims { sub: body.user_id.clone(), role: body.role.clone(), exp: now_s() + cfg.token_ttl_s };
    // No HS256 key: tokens come from an issuer (and dev tokens are off).
    let token = keys.sign(&claims).ok_or_else(ApiError::no_route)?;
    Ok(HttpResponse::Ok().json(TokenResp { token }))
}
