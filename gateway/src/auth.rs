//! Bearer tokens: JWT with HS256, `sub` = user id, `role` = user | admin,
//! `exp`. Only HS256 is accepted (no `alg: none`, no key confusion), the
//! signature is compared in constant time, and expiry is always checked.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rush_engine::domain::UserId;
use rush_engine::Caller;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::ApiError;

type HmacSha256 = Hmac<Sha256>;

#[derive(Clone)]
pub struct Keys {
    secret: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub role: String,
    pub exp: u64,
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

impl Keys {
    pub fn new(secret: &str) -> Self {
        Keys { secret: secret.as_bytes().to_vec() }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length.
        HmacSha256::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let body = serde_json::to_vec(claims).unwrap_or_default();
        let signing_input = format!("{}.{}", B64.encode(HEADER), B64.encode(body));
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, &'static str> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err("malformed token");
        };
        #[derive(Deserialize)]
        struct Header {
            alg: String,
        }
        let header: Header =
            B64.decode(h).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or("malformed token header")?;
        if header.alg != "HS256" {
            return Err("unsupported token algorithm");
        }
        let sig = B64.decode(s).map_err(|_| "malformed token signature")?;
        let mut mac = self.mac();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(c.as_bytes());
        mac.verify_slice(&sig).map_err(|_| "bad token signature")?;
        let claims: Claims =
            B64.decode(c).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or("malformed token claims")?;
        if claims.exp <= now_s {
            return Err("token expired");
        }
        // The subject is parsed into a `UserId` by the extractor, once.
        if !matches!(claims.role.as_str(), "user" | "admin") {
            return Err("bad token claims");
        }
        Ok(claims)
    }
}

pub fn now_s() -> u64 {
    rush_engine::domain::now_unix_ms() / 1000
}

/// An authenticated caller of any role.
pub struct Auth(pub Caller);

/// An authenticated admin.
pub struct Admin(pub Caller);

fn caller(req: &HttpRequest) -> Result<Caller, ApiError> {
    let keys = req
        .app_data::<web::Data<Keys>>()
        .ok_or_else(|| ApiError::new(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", "no keys"))?;
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("unauthorized", "send Authorization: Bearer <token>"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("unauthorized", "send Authorization: Bearer <token>"))?;
    let claims = keys.verify(token.trim(), now_s()).map_err(|m| ApiError::unauthorized("invalid_token", m))?;
    let user_id =
        UserId::parse(&claims.sub).map_err(|_| ApiError::unauthorized("invalid_token", "bad token claims"))?;
    Ok(Caller { admin: claims.role == "admin", user_id })
}

impl FromRequest for Auth {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(caller(req).map(Auth))
    }
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(caller(req).and_then(|c| if c.admin { Ok(Admin(c)) } else { Err(ApiError::forbidden()) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims { sub: "u1".into(), role: "user".into(), exp }
    }

    #[test]
    fn a_signed_token_verifies_and_round_trips() {
        let k = Keys::new("0123456789abcdef");
        let t = k.sign(&claims(100));
        assert_eq!(k.verify(&t, 99).unwrap(), claims(100));
    }

    #[test]
    fn forged_expired_and_alg_none_tokens_are_refused() {
        let k = Keys::new("0123456789abcdef");
        let other = Keys::new("fedcba9876543210");
        assert_eq!(k.verify(&other.sign(&claims(100)), 1), Err("bad token signature"));
        assert_eq!(k.verify(&k.sign(&claims(100)), 100), Err("token expired"));
        let none =
            format!("{}.{}.", B64.encode(r#"{"alg":"none"}"#), B64.encode(r#"{"sub":"u1","role":"admin","exp":999}"#));
        assert_eq!(k.verify(&none, 1), Err("unsupported token algorithm"));
        assert!(k.verify("a.b", 1).is_err());
        // A valid signature over claims naming a bad role is still refused.
        let bad = k.sign(&Claims { sub: "u1".into(), role: "root".into(), exp: 100 });
        assert_eq!(k.verify(&bad, 1), Err("bad token claims"));
    }
}
