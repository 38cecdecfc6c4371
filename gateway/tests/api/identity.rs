//! Tokens from an identity provider: key pairs made here sign tokens whose
//! public keys a local HTTP server publishes as a JWKS (or a file holds);
//! rush accepts RS256 and ES256 tokens with the right issuer and audience
//! and refuses every forgery below.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;
use reqwest::StatusCode;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const ISS: &str = "https://id.example.test/realms/rush";
const AUD: &str = "rush-api";

struct RsaKey {
    kid: String,
    key: rsa::RsaPrivateKey,
}

impl RsaKey {
    fn new(kid: &str) -> Self {
        let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("rsa key");
        RsaKey { kid: kid.into(), key }
    }
    fn jwk(&self) -> Value {
        let public = self.key.to_public_key();
        json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
               "n": B64.encode(public.n().to_bytes_be()), "e": B64.encode(public.e().to_bytes_be())})
    }
    fn sign(&self, claims: &Value) -> String {
        let der = self.key.to_pkcs1_der().expect("der");
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_rsa_der(der.as_bytes())).expect("sign")
    }
}

struct EcKey {
    kid: String,
    key: p256::SecretKey,
}

impl EcKey {
    fn new(kid: &str) -> Self {
        EcKey { kid: kid.into(), key: p256::SecretKey::random(&mut rand_core::OsRng) }
    }
    fn jwk(&self) -> Value {
        let point = self.key.public_key().to_encoded_point(false);
        json!({"kty": "EC", "kid": self.kid, "crv": "P-256",
               "x": B64.encode(point.x().expect("x")), "y": B64.encode(point.y().expect("y"))})
    }
    fn sign(&self, claims: &Value) -> String {
        let der = self.key.to_pkcs8_der().expect("der");
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_ec_der(der.as_bytes())).expect("sign")
    }
}

/// A one-route HTTP server answering the current JWKS; counts fetches.
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: &[Value]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().expect("addr"));
        let body = Arc::new(Mutex::new(json!({ "keys": keys }).to_string()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (b, f) = (body.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (b, f) = (b.clone(), f.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    f.fetch_add(1, Ordering::SeqCst);
                    let body = b.lock().expect("body").clone();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        JwksServer { url, body, fetches }
    }
    fn publish(&self, keys: &[Value]) {
        *self.body.lock().expect("body") = json!({ "keys": keys }).to_string();
    }
}

fn claims(sub: &str, roles: &[&str]) -> Value {
    let now = rush_gateway::auth::now_s();
    json!({"sub": sub, "iss": ISS, "aud": AUD, "exp": now + 300, "iat": now,
           "realm_access": {"roles": roles}})
}

fn with(mut c: Value, key: &str, v: Value) -> Value {
    c[key] = v;
    c
}

async fn status(app: &TestApp, path: &str, token: &str) -> StatusCode {
    app.get(path, Some(token)).await.0
}

#[tokio::test]
async fn tokens_from_an_issuer_are_accepted_and_forgeries_refused() {
    let (rsa1, ec1) = (RsaKey::new("rsa-1"), EcKey::new("ec-1"));
    // Keys rush cannot use sit beside the good ones and are skipped alone.
    let unusable = [
        json!({"kty": "EC", "crv": "secp256k1", "kid": "k1",
               "x": "gZLDPOGJU2xPZhy-3xF-JKuUB3l9ABTnUB2G9GoAarY", "y": "sG4uAsNKFKaVWvmxnqv5bjGG5vu5IqU4-cCmHEIrEqg"}),
        json!({"kty": "AKP", "alg": "ML-DSA-44", "kid": "pq1", "pub": "AAAA"}),
    ];
    // An encryption key under the signing key's kid, after it: ignored.
    let mut enc = RsaKey::new("rsa-1").jwk();
    enc["use"] = json!("enc");
    enc.as_object_mut().expect("jwk").remove("alg");
    let jwks = JwksServer::start(&[unusable[0].clone(), rsa1.jwk(), unusable[1].clone(), ec1.jwk(), enc]).await;
    let url = jwks.url.clone();
    let app = spawn_with(|c| {
        c.auth.jwks_url = Some(url);
        c.auth.issuer = Some(ISS.into());
        c.auth.audience = Some(AUD.into());
        c.auth.role_claim = "realm_access.roles".into();
        c.auth.jwks_refetch_s_min = 0;
    })
    .await;

    // RS256 user, ES256 admin (the role from the nested claim).
    let user = rsa1.sign(&claims("alice", &["offline_access"]));
    let admin = ec1.sign(&claims("ops", &["offline_access", "admin"]));
    assert_eq!(status(&app, "/v1/wallet", &user).await, StatusCode::OK);
    assert_eq!(status(&app, "/v1/admin/callbacks", &user).await, StatusCode::FORBIDDEN);
    assert_eq!(status(&app, "/v1/admin/callbacks", &admin).await, StatusCode::OK);

    // Refused, each with its reason.
    let now = rush_gateway::auth::now_s();
    let expired = rsa1.sign(&with(claims("alice", &[]), "exp", json!(now - 120)));
    let wrong_aud = rsa1.sign(&with(claims("alice", &[]), "aud", json!("another-api")));
    let wrong_iss = ec1.sign(&with(claims("alice", &[]), "iss", json!("https://evil.test")));
    let iss_array = ec1.sign(&with(claims("alice", &[]), "iss", json!(["https://evil.test", ISS])));
    let no_aud = rsa1.sign(&{
        let mut c = claims("alice", &[]);
        c.as_object_mut().expect("object").remove("aud");
        c
    });
    let unknown_kid = RsaKey { kid: "rsa-9".into(), key: rsa1.key.clone() }.sign(&claims("alice", &[]));
    let other_key =
        RsaKey { kid: "rsa-1".into(), key: rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("rsa") }
            .sign(&claims("alice", &[]));
    let body = B64.encode(claims("alice", &["admin"]).to_string());
    let alg_none = format!("{}.{body}.", B64.encode(r#"{"alg":"none","kid":"rsa-1"}"#));
    // Algorithm confusion: HS256 keyed with the public key's bytes.
    let public_pem = {
        use rsa::pkcs8::EncodePublicKey;
        rsa1.key.to_public_key().to_public_key_pem(rsa::pkcs8::LineEnding::LF).expect("pem")
    };
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("rsa-1".into());
    let confused =
        jsonwebtoken::encode(&hs, &claims("ops", &["admin"]), &EncodingKey::from_secret(public_pem.as_bytes()))
            .expect("sign");
    // An ES256 header over the RSA key's kid.
    let mut es_on_rsa = Header::new(Algorithm::ES256);
    es_on_rsa.kid = Some("rsa-1".into());
    let swapped = jsonwebtoken::encode(
        &es_on_rsa,
        &claims("alice", &[]),
        &EncodingKey::from_ec_der(ec1.key.to_pkcs8_der().expect("der").as_bytes()),
    )
    .expect("sign");
    // A development token: HS256 with the default secret.
    let dev = signed_token(&rush_engine::Config::default().auth.jwt_secret, "ops", "admin");
    for (what, token, reason) in [
        ("expired", &expired, "token expired"),
        ("wrong aud", &wrong_aud, "wrong token audience"),
        ("wrong iss", &wrong_iss, "wrong token issuer"),
        ("iss as an array", &iss_array, "wrong token issuer"),
        ("no aud", &no_aud, "bad token claims"),
        ("unknown kid", &unknown_kid, "unknown token key"),
        ("another key under a known kid", &other_key, "bad token signature"),
        ("alg none", &alg_none, "malformed token"),
        ("HS256 keyed with the public key", &confused, "unsupported token algorithm"),
        ("ES256 header on an RSA key", &swapped, "unsupported token algorithm"),
        ("development HS256", &dev, "unsupported token algorithm"),
    ] {
        let (s, v) = app.get("/v1/wallet", Some(token)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what}: {v}");
        assert_eq!(v["error"]["code"], "invalid_token", "{what}: {v}");
        assert_eq!(v["error"]["message"], reason, "{what}: {v}");
    }
    // Development tokens are off with an issuer.
    let (s, _) = app.post("/v1/auth/dev-token", None, json!({"user_id": "x", "role": "admin"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Rotation: a new key published under a new kid is used at once (an
    // unknown kid fetches again), and the fetch drops the withdrawn key.
    let rsa2 = RsaKey::new("rsa-2");
    let before = jwks.fetches.load(Ordering::SeqCst);
    jwks.publish(&[rsa2.jwk(), ec1.jwk()]);
    assert_eq!(status(&app, "/v1/wallet", &rsa2.sign(&claims("bob", &[]))).await, StatusCode::OK);
    assert!(jwks.fetches.load(Ordering::SeqCst) > before, "the unknown kid fetched the JWKS again");
    let (s, v) = app.get("/v1/wallet", Some(&user)).await;
    assert_eq!((s, v["error"]["message"].as_str()), (StatusCode::UNAUTHORIZED, Some("unknown token key")));
    // Known kids answer from the cache: no fetch per request.
    let fetched = jwks.fetches.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(status(&app, "/v1/admin/callbacks", &admin).await, StatusCode::OK);
    }
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), fetched);

    // A JWKS with no usable key is a broken answer: the cached keys stay.
    jwks.publish(&[]);
    let (s, _) = app
        .get("/v1/wallet", Some(&RsaKey { kid: "rsa-7".into(), key: rsa2.key.clone() }.sign(&claims("x", &[]))))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(jwks.fetches.load(Ordering::SeqCst) > fetched, "the unknown kid fetched");
    assert_eq!(status(&app, "/v1/admin/callbacks", &admin).await, StatusCode::OK);
    assert_eq!(status(&app, "/v1/wallet", &rsa2.sign(&claims("bob", &[]))).await, StatusCode::OK);
}

#[tokio::test]
async fn a_jwks_file_is_read_and_unknown_kids_cannot_flood_the_source() {
    let ec = EcKey::new("ec-file");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, json!({"keys": [ec.jwk()]}).to_string()).expect("write");
    let p = path.clone();
    let app = spawn_with(|c| {
        c.auth.jwks_file = Some(p);
        c.auth.issuer = Some(ISS.into());
        c.auth.audience = Some(AUD.into());
        c.auth.role_claim = "realm_access.roles".into();
        c.auth.jwks_refetch_s_min = 3600;
    })
    .await;
    let admin = ec.sign(&claims("ops", &["admin"]));
    assert_eq!(status(&app, "/v1/admin/callbacks", &admin).await, StatusCode::OK);
    // A key added to the file now is not fetched again for an hour: the
    // refetch floor holds however many unknown kids arrive.
    let ec2 = EcKey::new("ec-new");
    std::fs::write(&path, json!({"keys": [ec.jwk(), ec2.jwk()]}).to_string()).expect("write");
    let (s, v) = app.get("/v1/wallet", Some(&ec2.sign(&claims("bob", &[])))).await;
    assert_eq!((s, v["error"]["message"].as_str()), (StatusCode::UNAUTHORIZED, Some("unknown token key")));
}
