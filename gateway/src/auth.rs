//! Bearer tokens (JWT, verified by `jsonwebtoken`), two setups:
//!
//! - **issuer** (`auth.jwks_url` or `auth.jwks_file`): RS256 or ES256
//!   tokens signed by an identity provider, the key picked by the header's
//!   `kid` from its JWKS (cached, refreshed every `auth.jwks_refresh_s`; an
//!   unknown `kid` fetches again, at most once per `auth.jwks_refetch_s_min`,
//!   so a rotated key is picked up at once). `iss`, `aud`, `exp` and `sub` are
//!   required and checked; the role comes from `auth.role_claim`. HS256 is
//!   refused: no algorithm confusion with a public key used as an HMAC
//!   secret.
//! - **development** (neither set): HS256 with `auth.jwt_secret`, `role` =
//!   `user` | `admin`; `POST /v1/auth/dev-token` signs them.
//!
//! Both: `alg: none` is refused, `exp` is required, `auth.leeway_s` of
//! clock skew is allowed, the subject must be a valid user id.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rush_engine::config::AuthConfig;
use rush_engine::domain::UserId;
use rush_engine::Caller;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;

/// The claims rush signs in development (and reads from any token: `sub`,
/// `exp`; the role claim is configurable).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub role: String,
    pub exp: u64,
}

/// The claims of a development token.
#[derive(Deserialize)]
struct DevClaims {
    sub: String,
    role: String,
}

/// What verifies tokens: one per server, shared by its workers.
#[derive(Clone)]
pub struct Keys {
    inner: Arc<KeysInner>,
}

struct KeysInner {
    /// HS256 (development); None with an issuer.
    secret: Option<(EncodingKey, Arc<DecodingKey>)>,
    issuer: Option<Issuer>,
    /// Built once: HS256 for development, or RS256 and ES256 for the issuer.
    validations: Vec<Validation>,
    role_claim: Vec<String>,
    admin_role: String,
}

/// Why a token is refused (the message of a 401 `invalid_token`).
pub type Refusal = &'static str;

impl Keys {
    /// Development tokens: HS256 with `secret`.
    pub fn new(secret: &str) -> Self {
        Keys::build(Some(secret), None, 0, "role", "admin")
    }

    pub fn from_config(cfg: &AuthConfig) -> Self {
        let issuer = Issuer::from_config(cfg);
        let secret = if issuer.is_some() { None } else { Some(cfg.jwt_secret.as_str()) };
        Keys::build(secret, issuer, cfg.leeway_s, &cfg.role_claim, &cfg.admin_role)
    }

    fn build(secret: Option<&str>, issuer: Option<Issuer>, leeway_s: u64, role_claim: &str, admin: &str) -> Self {
        let secret =
            secret.map(|s| (EncodingKey::from_secret(s.as_bytes()), Arc::new(DecodingKey::from_secret(s.as_bytes()))));
        let mut validations = match &issuer {
            Some(i) => vec![i.validation(Algorithm::RS256), i.validation(Algorithm::ES256)],
            None => {
                let mut v = Validation::new(Algorithm::HS256);
                v.set_required_spec_claims(&["exp", "sub"]);
                vec![v]
            }
        };
        for v in &mut validations {
            v.leeway = leeway_s;
            v.validate_nbf = true;
        }
        Keys {
            inner: Arc::new(KeysInner {
                secret,
                issuer,
                validations,
                role_claim: role_claim.split('.').map(str::to_string).collect(),
                admin_role: admin.to_string(),
            }),
        }
    }

    /// Fetches the issuer's keys (at start: a failure is logged and the
    /// first token fetches again).
    pub async fn warm(&self) {
        if let Some(issuer) = &self.inner.issuer {
            issuer.refresh(true).await;
        }
    }

    /// An HS256 token (development); None with an issuer.
    pub fn sign(&self, claims: &Claims) -> Option<String> {
        let (key, _) = self.inner.secret.as_ref()?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key).ok()
    }

    /// The caller a token names, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<Caller, Refusal> {
        let inner = &self.inner;
        let Some(issuer) = &inner.issuer else {
            // Development: HS256 only (`decode` refuses any other `alg`);
            // the header is read once, by `decode`.
            let (_, key) = inner.secret.as_ref().ok_or("no token keys")?;
            let validation = inner.validations.first().ok_or("no token keys")?;
            let claims =
                jsonwebtoken::decode::<DevClaims>(token, key, validation).map_err(|e| refusal(e.kind()))?.claims;
            // Development tokens name their role exactly.
            let admin = match claims.role.as_str() {
                "admin" => true,
                "user" => false,
                _ => return Err("bad token claims"),
            };
            let user_id = UserId::parse(&claims.sub).map_err(|_| "bad token claims")?;
            return Ok(Caller { admin, user_id });
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err("unsupported token algorithm");
        }
        let kid = header.kid.as_deref().ok_or("token has no kid")?;
        let (key, alg) = issuer.key(kid).await?;
        if header.alg != alg {
            return Err("unsupported token algorithm");
        }
        let validation =
            inner.validations.iter().find(|v| v.algorithms == [alg]).ok_or("unsupported token algorithm")?;
        let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, validation)
            .map_err(|e| refusal(e.kind()))?
            .claims;
        // jsonwebtoken takes an `iss` array holding the issuer; the issuer
        // names itself with one string.
        if claims.get("iss").and_then(Value::as_str) != Some(issuer.iss.as_str()) {
            return Err("wrong token issuer");
        }
        let sub = claims.get("sub").and_then(Value::as_str).ok_or("bad token claims")?;
        let user_id = UserId::parse(sub).map_err(|_| "bad token claims")?;
        Ok(Caller { admin: self.has_admin_role(&claims), user_id })
    }

    /// The role claim (a path into nested objects) holds the admin role,
    /// as a string or in an array.
    fn has_admin_role(&self, claims: &serde_json::Map<String, Value>) -> bool {
        let mut path = self.inner.role_claim.iter();
        let Some(first) = path.next() else { return false };
        let mut at = claims.get(first);
        for part in path {
            at = at.and_then(|v| v.get(part));
        }
        let admin = self.inner.admin_role.as_str();
        match at {
            Some(Value::String(r)) => r == admin,
            Some(Value::Array(rs)) => rs.iter().any(|r| r.as_str() == Some(admin)),
            _ => false,
        }
    }
}

fn refusal(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::InvalidSignature => "bad token signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "unsupported token algorithm",
        ErrorKind::InvalidIssuer => "wrong token issuer",
        ErrorKind::InvalidAudience => "wrong token audience",
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => "bad token claims",
        _ => "malformed token",
    }
}

enum Source {
    Url { url: String, http: reqwest::Client },
    File(PathBuf),
}

/// An issuer's keys by `kid`, with their algorithm.
type KeySet = HashMap<String, (Arc<DecodingKey>, Algorithm)>;

struct Issuer {
    source: Source,
    iss: String,
    aud: String,
    keys: RwLock<Arc<KeySet>>,
    /// When the keys were last fetched (successfully) and last tried.
    fetched: Mutex<Option<Instant>>,
    tried: Mutex<Option<Instant>>,
    /// One fetch at a time; the others wait for its result.
    fetching: tokio::sync::Mutex<()>,
    refresh: Duration,
    refetch_min: Duration,
}

impl Issuer {
    fn from_config(cfg: &AuthConfig) -> Option<Issuer> {
        let source = match (&cfg.jwks_url, &cfg.jwks_file) {
            (Some(url), _) => {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_millis(cfg.jwks_fetch_timeout_ms))
                    .build()
                    .unwrap_or_default();
                Source::Url { url: url.clone(), http }
            }
            (None, Some(path)) => Source::File(path.clone()),
            (None, None) => return None,
        };
        Some(Issuer {
            source,
            iss: cfg.issuer.clone().unwrap_or_default(),
            aud: cfg.audience.clone().unwrap_or_default(),
            keys: RwLock::new(Arc::new(KeySet::new())),
            fetched: Mutex::new(None),
            tried: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            refresh: Duration::from_secs(cfg.jwks_refresh_s),
            refetch_min: Duration::from_secs(cfg.jwks_refetch_s_min),
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.set_issuer(&[&self.iss]);
        v.set_audience(&[&self.aud]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v
    }

    fn cached(&self) -> Arc<KeySet> {
        self.keys.read().map(|k| k.clone()).unwrap_or_default()
    }

    fn since(at: &Mutex<Option<Instant>>) -> Option<Duration> {
        at.lock().ok().and_then(|t| t.map(|t| t.elapsed()))
    }

    /// The key for `kid`: from the cache while it is fresh; a stale cache
    /// or an unknown `kid` fetches first (an unknown one at most once per
    /// `refetch_min`).
    async fn key(&self, kid: &str) -> Result<(Arc<DecodingKey>, Algorithm), Refusal> {
        let stale = Issuer::since(&self.fetched).is_none_or(|d| d >= self.refresh);
        if let Some(k) = self.cached().get(kid) {
            if !stale {
                return Ok(k.clone());
            }
        }
        self.refresh(false).await;
        self.cached().get(kid).cloned().ok_or("unknown token key")
    }

    /// Fetches the JWKS and replaces the cache; a failure keeps the old
    /// keys. Unless `now`, skipped when the last try was under
    /// `refetch_min` ago (someone just fetched, or the source is down).
    async fn refresh(&self, now: bool) {
        let _one = self.fetching.lock().await;
        if !now && Issuer::since(&self.tried).is_some_and(|d| d < self.refetch_min) {
            return;
        }
        if let Ok(mut t) = self.tried.lock() {
            *t = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(set) => {
                tracing::info!(keys = set.len(), "token keys loaded");
                if let Ok(mut k) = self.keys.write() {
                    *k = Arc::new(set);
                }
                if let Ok(mut f) = self.fetched.lock() {
                    *f = Some(Instant::now());
                }
            }
            Err(e) => tracing::warn!(error = %e, "fetching the token keys failed; the cached keys stay in use"),
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let body = match &self.source {
            Source::Url { url, http } => {
                let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("{url} answered {}", resp.status()));
                }
                resp.bytes().await.map_err(|e| e.to_string())?.to_vec()
            }
            Source::File(path) => tokio::fs::read(path).await.map_err(|e| format!("{}: {e}", path.display()))?,
        };
        let doc: Value = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?;
        let Some(Value::Array(entries)) = doc.get("keys") else { return Err("not a JWKS: no keys array".into()) };
        // Each key on its own: one rush cannot read (another curve, a
        // post-quantum key) must not hide the others.
        let keys = entries
            .iter()
            .filter_map(|k| match serde_json::from_value::<Jwk>(k.clone()) {
                Ok(jwk) => Some(jwk),
                Err(e) => {
                    tracing::warn!(kid = ?k.get("kid"), error = %e, "a JWKS key rush cannot read; skipped");
                    None
                }
            })
            .collect();
        let set = key_set(&JwkSet { keys });
        // No usable key at all is a broken answer, not a rotation: the
        // cached keys stay in use.
        if set.is_empty() {
            return Err("the JWKS has no RS256 or ES256 key with a kid".into());
        }
        Ok(set)
    }
}

/// The usable keys of a JWKS: those with a `kid`, RSA (RS256) or EC P-256
/// (ES256), with no `alg` or a matching one; the rest are skipped.
fn key_set(set: &JwkSet) -> KeySet {
    let mut keys = KeySet::new();
    for jwk in &set.keys {
        let Some(kid) = &jwk.common.key_id else { continue };
        // Signing keys only: an encryption key never verifies a token.
        if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != PublicKeyUse::Signature) {
            continue;
        }
        // A kid names one key: a second with the same kid is ambiguous,
        // the first one stays.
        if keys.contains_key(kid) {
            tracing::warn!(%kid, "two JWKS keys share a kid; the first is used");
            continue;
        }
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
            _ => continue,
        };
        let named = match jwk.common.key_algorithm {
            None => true,
            Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
            Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
            Some(_) => false,
        };
        if !named {
            continue;
        }
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid.clone(), (Arc::new(key), alg));
            }
            Err(e) => tracing::warn!(%kid, error = %e, "a JWKS key is unusable; skipped"),
        }
    }
    keys
}

pub fn now_s() -> u64 {
    rush_engine::domain::now_unix_ms() / 1000
}

/// An authenticated caller of any role.
pub struct Auth(pub Caller);

type Verified<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>>>>;

/// An authenticated admin.
pub struct Admin(pub Caller);

async fn caller(req: HttpRequest) -> Result<Caller, ApiError> {
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
    let caller = keys.verify(token.trim()).await.map_err(|m| ApiError::unauthorized("invalid_token", m))?;
    crate::limits::limit_user(&req, &caller)?;
    Ok(caller)
}

impl FromRequest for Auth {
    type Error = ApiError;
    type Future = Verified<Self>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { caller(req).await.map(Auth) })
    }
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Verified<Self>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let c = caller(req).await?;
            if c.admin {
                Ok(Admin(c))
            } else {
                Err(ApiError::forbidden())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;

    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims { sub: "u1".into(), role: "user".into(), exp }
    }

    #[tokio::test]
    async fn a_signed_token_verifies() {
        let k = Keys::new("0123456789abcdef");
        let t = k.sign(&claims(now_s() + 100)).unwrap();
        let c = k.verify(&t).await.unwrap();
        assert_eq!((c.user_id.as_str(), c.admin), ("u1", false));
    }

    #[tokio::test]
    async fn forged_expired_and_alg_none_tokens_are_refused() {
        let k = Keys::new("0123456789abcdef");
        let other = Keys::new("fedcba9876543210");
        let now = now_s();
        assert_eq!(k.verify(&other.sign(&claims(now + 100)).unwrap()).await.err(), Some("bad token signature"));
        assert_eq!(k.verify(&k.sign(&claims(now - 1)).unwrap()).await.err(), Some("token expired"));
        let none = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none"}"#),
            B64.encode(format!(r#"{{"sub":"u1","role":"admin","exp":{}}}"#, now + 99))
        );
        assert_eq!(k.verify(&none).await.err(), Some("malformed token"));
        assert!(k.verify("a.b").await.is_err());
        // A valid signature over claims naming a bad role is still refused.
        let bad = k.sign(&Claims { sub: "u1".into(), role: "root".into(), exp: now + 100 }).unwrap();
        assert_eq!(k.verify(&bad).await.err(), Some("bad token claims"));
    }
}
