//! Each channel's callback on the wire. The shapes follow the real
//! channels; the real ones sign with RSA certificates, the sandboxes with
//! HMAC-SHA256 and a per-channel secret, placed where the real signature
//! goes:
//!
//! - **wechat** (WeChat Pay v3): JSON body `{id, create_time, event_type:
//!   "TRANSACTION.SUCCESS", resource: {out_trade_no, transaction_id,
//!   trade_state, amount: {total, currency}, success_time}}`; headers
//!   `Wechatpay-Timestamp` (s), `Wechatpay-Nonce`, `Wechatpay-Signature` =
//!   base64(HMAC(secret, "<timestamp>\n<nonce>\n<body>\n")). Answer: 200
//!   `{"code":"SUCCESS"}`, or 4xx/5xx `{"code":"FAIL","message":…}`.
//! - **alipay**: form-encoded body with `out_trade_no`, `trade_no`,
//!   `total_amount` in yuan (`"19.99"`), `trade_status=TRADE_SUCCESS`,
//!   `notify_time`, …, `sign_type`, `sign` = base64(HMAC(secret, the other
//!   non-empty fields sorted as `k=v&k=v`)). Answer: the text `success`,
//!   anything else means "send again".
//! - **ecard** (campus card): JSON body `{merchant_no, order_no, serial_no,
//!   amount, status: "PAID", paid_at}`; headers `X-Ecard-Timestamp` (ms),
//!   `X-Ecard-Nonce`, `X-Ecard-Signature` = hex(HMAC(secret,
//!   "<timestamp>.<nonce>.<body>")). Answer: `{"retcode":0,"retmsg":"OK"}`.
//!
//! Why one file of ~520 lines: three channels' wire formats (about 130 lines
//! each) and their tests.

use base64::Engine as _;
use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use super::{Ack, AckKind, CallbackError, ChannelKind, Notification, Paid};
use crate::domain::{Fen, Id};

type HmacSha256 = Hmac<Sha256>;

/// A callback as a channel sends it.
#[derive(Clone, Debug)]
pub struct Callback {
    pub headers: Vec<(String, String)>,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// One channel's callback format.
pub trait Wire: Send + Sync {
    fn kind(&self) -> ChannelKind;
    /// The signed callback the channel sends for a paid payment.
    fn callback(&self, n: &Notification, now_ms: u64) -> Callback;
    /// Verifies and reads a callback. `headers` are lowercase.
    fn verify(&self, headers: &[(String, String)], body: &[u8], now_ms: u64) -> Result<Notification, CallbackError>;
    /// rush's answer in the channel's shape.
    fn ack(&self, kind: AckKind) -> Ack;
    /// Whether the channel takes an answer as "received" (the sandbox
    /// sends again otherwise).
    fn acked(&self, status: u16, body: &str) -> bool;
}

pub fn hmac(secret: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key"));
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Constant-time check of an HMAC over `parts`.
pub(crate) fn verify_mac(secret: &[u8], parts: &[&[u8]], expected: &[u8]) -> bool {
    let Ok(mut mac) = <HmacSha256 as Mac>::new_from_slice(secret) else { return false };
    for p in parts {
        mac.update(p);
    }
    mac.verify_slice(expected).is_ok()
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Result<&'a str, CallbackError> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| CallbackError::BadSignature(format!("missing header {name}")))
}

fn nonce() -> String {
    format!("{:016x}", fastrand::u64(..))
}

fn malformed(what: impl std::fmt::Display) -> CallbackError {
    CallbackError::Malformed(what.to_string())
}

fn payment_id(s: &str) -> Result<Id, CallbackError> {
    s.parse().map_err(|_| malformed("unknown trade number"))
}

fn rfc3339(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64).unwrap_or_default().to_rfc3339()
}

fn parse_rfc3339_ms(s: &str) -> Result<u64, CallbackError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis().max(0) as u64).map_err(|_| malformed("bad time"))
}

/// Refuses a callback signed more than `age_ms_max` before `now_ms` (or
/// that far in the future).
fn fresh(signed_ms: u64, now_ms: u64, age_ms_max: u64) -> Result<(), CallbackError> {
    if signed_ms.abs_diff(now_ms) > age_ms_max {
        return Err(CallbackError::Stale);
    }
    Ok(())
}

fn json_ack(status: u16, body: serde_json::Value) -> Ack {
    Ack { status, content_type: "application/json", body: body.to_string() }
}

// ---- WeChat Pay ----

pub struct Wechat {
    pub secret: String,
    pub age_ms_max: u64,
}

#[derive(Deserialize)]
struct WechatBody {
    event_type: String,
    resource: WechatResource,
}

#[derive(Deserialize)]
struct WechatResource {
    out_trade_no: String,
    transaction_id: String,
    trade_state: String,
    amount: WechatAmount,
    success_time: String,
}

#[derive(Deserialize)]
struct WechatAmount {
    total: i64,
}

impl Wire for Wechat {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Wechat
    }

    fn callback(&self, n: &Notification, now_ms: u64) -> Callback {
        let body = json!({
            "id": format!("EV-{}", nonce()),
            "create_time": rfc3339(now_ms),
            "event_type": "TRANSACTION.SUCCESS",
            "resource_type": "plaintext",
            "resource": {
                "out_trade_no": n.payment_id.to_string(),
                "transaction_id": n.paid.txn_id,
                "trade_state": "SUCCESS",
                "amount": {"total": n.paid.amount.get(), "payer_total": n.paid.amount.get(), "currency": "CNY"},
                "success_time": rfc3339(n.paid.paid_at_ms),
            },
        })
        .to_string();
        let (ts, nonce) = ((now_ms / 1000).to_string(), nonce());
        let sig =
            hmac(self.secret.as_bytes(), &[ts.as_bytes(), b"\n", nonce.as_bytes(), b"\n", body.as_bytes(), b"\n"]);
        Callback {
            headers: vec![
                ("wechatpay-timestamp".into(), ts),
                ("wechatpay-nonce".into(), nonce),
                ("wechatpay-signature".into(), base64::engine::general_purpose::STANDARD.encode(sig)),
                ("wechatpay-serial".into(), "SANDBOX".into()),
            ],
            content_type: "application/json",
            body: body.into_bytes(),
        }
    }

    fn verify(&self, headers: &[(String, String)], body: &[u8], now_ms: u64) -> Result<Notification, CallbackError> {
        let ts = header(headers, "wechatpay-timestamp")?;
        let nonce = header(headers, "wechatpay-nonce")?;
        let sig = base64::engine::general_purpose::STANDARD
            .decode(header(headers, "wechatpay-signature")?)
            .map_err(|_| CallbackError::BadSignature("signature is not base64".into()))?;
        let parts: [&[u8]; 6] = [ts.as_bytes(), b"\n", nonce.as_bytes(), b"\n", body, b"\n"];
        if !verify_mac(self.secret.as_bytes(), &parts, &sig) {
            return Err(CallbackError::BadSignature("HMAC mismatch".into()));
        }
        let signed_s: u64 = ts.parse().map_err(|_| malformed("bad timestamp"))?;
        fresh(signed_s.saturating_mul(1000), now_ms, self.age_ms_max)?;
        let b: WechatBody = serde_json::from_slice(body).map_err(malformed)?;
        if b.event_type != "TRANSACTION.SUCCESS" || b.resource.trade_state != "SUCCESS" {
            return Err(malformed(format!("not a success notification: {}", b.resource.trade_state)));
        }
        Ok(Notification {
            payment_id: payment_id(&b.resource.out_trade_no)?,
            paid: Paid {
                txn_id: b.resource.transaction_id,
                amount: Fen::new(b.resource.amount.total),
                paid_at_ms: parse_rfc3339_ms(&b.resource.success_time)?,
            },
        })
    }

    fn ack(&self, kind: AckKind) -> Ack {
        match kind {
            AckKind::Ok => json_ack(200, json!({"code": "SUCCESS", "message": "OK"})),
            AckKind::Refused => json_ack(400, json!({"code": "FAIL", "message": "refused"})),
            AckKind::Failed => json_ack(500, json!({"code": "FAIL", "message": "try again"})),
        }
    }

    fn acked(&self, status: u16, _body: &str) -> bool {
        (200..300).contains(&status)
    }
}

// ---- Alipay ----

pub struct Alipay {
    pub secret: String,
    pub age_ms_max: u64,
}

/// Alipay writes times in Beijing time without a zone.
fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| unreachable!("+08:00 is a valid offset"))
}

fn alipay_time(ms: u64) -> String {
    beijing().timestamp_millis_opt(ms as i64).single().unwrap_or_default().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Alipay's times have whole seconds. When the money was taken decides
/// whether it came before the hold's expiry, so `gmt_payment` is read as
/// the last millisecond of its second: money taken in the second the hold
/// expires counts as late (and is refunded), never as in time.
const ALIPAY_SECOND_END_MS: u64 = 999;

fn parse_alipay_time(s: &str) -> Result<u64, CallbackError> {
    let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").map_err(|_| malformed("bad time"))?;
    let t = beijing().from_local_datetime(&naive).single().ok_or_else(|| malformed("bad time"))?;
    Ok(t.timestamp_millis().max(0) as u64)
}

/// The string Alipay signs: every field but `sign` and `sign_type` with a
/// non-empty value, sorted by name, as `k=v` joined by `&` (values raw, not
/// URL-encoded).
fn alipay_content(fields: &[(String, String)]) -> String {
    let mut f: Vec<_> = fields.iter().filter(|(k, v)| k != "sign" && k != "sign_type" && !v.is_empty()).collect();
    f.sort();
    f.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

impl Wire for Alipay {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Alipay
    }

    fn callback(&self, n: &Notification, now_ms: u64) -> Callback {
        let amount = n.paid.amount.to_string();
        let mut fields: Vec<(String, String)> = [
            ("notify_time", alipay_time(now_ms)),
            ("notify_type", "trade_status_sync".into()),
            ("notify_id", nonce()),
            ("app_id", "2026000000000000".into()),
            ("charset", "utf-8".into()),
            ("version", "1.0".into()),
            ("trade_no", n.paid.txn_id.clone()),
            ("out_trade_no", n.payment_id.to_string()),
            ("total_amount", amount.clone()),
            ("receipt_amount", amount),
            ("trade_status", "TRADE_SUCCESS".into()),
            ("gmt_payment", alipay_time(n.paid.paid_at_ms)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let sig = hmac(self.secret.as_bytes(), &[alipay_content(&fields).as_bytes()]);
        fields.push(("sign_type".into(), "HMAC-SHA256".into()));
        fields.push(("sign".into(), base64::engine::general_purpose::STANDARD.encode(sig)));
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(&fields).finish();
        Callback { headers: vec![], content_type: "application/x-www-form-urlencoded", body: body.into_bytes() }
    }

    fn verify(&self, _headers: &[(String, String)], body: &[u8], now_ms: u64) -> Result<Notification, CallbackError> {
        let fields: Vec<(String, String)> =
            form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let sig = get("sign").ok_or_else(|| CallbackError::BadSignature("missing sign".into()))?;
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .map_err(|_| CallbackError::BadSignature("sign is not base64".into()))?;
        if get("sign_type") != Some("HMAC-SHA256") {
            return Err(CallbackError::BadSignature("unsupported sign_type".into()));
        }
        if !verify_mac(self.secret.as_bytes(), &[alipay_content(&fields).as_bytes()], &sig) {
            return Err(CallbackError::BadSignature("HMAC mismatch".into()));
        }
        let need = |name: &str| get(name).ok_or_else(|| malformed(format!("missing {name}")));
        fresh(parse_alipay_time(need("notify_time")?)?, now_ms, self.age_ms_max)?;
        let status = need("trade_status")?;
        if status != "TRADE_SUCCESS" && status != "TRADE_FINISHED" {
            return Err(malformed(format!("not a success notification: {status}")));
        }
        Ok(Notification {
            payment_id: payment_id(need("out_trade_no")?)?,
            paid: Paid {
                txn_id: need("trade_no")?.to_string(),
                amount: Fen::parse_yuan(need("total_amount")?).ok_or_else(|| malformed("bad total_amount"))?,
                paid_at_ms: parse_alipay_time(need("gmt_payment")?)? + ALIPAY_SECOND_END_MS,
            },
        })
    }

    fn ack(&self, kind: AckKind) -> Ack {
        let body = if kind == AckKind::Ok { "success" } else { "failure" };
        Ack { status: 200, content_type: "text/plain; charset=utf-8", body: body.into() }
    }

    fn acked(&self, status: u16, body: &str) -> bool {
        status == 200 && body.trim() == "success"
    }
}

// ---- campus e-card ----

pub struct Ecard {
    pub secret: String,
    pub age_ms_max: u64,
}

#[derive(Deserialize)]
struct EcardBody {
    order_no: String,
    serial_no: String,
    amount: i64,
    status: String,
    paid_at: u64,
}

impl Wire for Ecard {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Ecard
    }

    fn callback(&self, n: &Notification, now_ms: u64) -> Callback {
        let body = json!({
            "merchant_no": "RUSH",
            "order_no": n.payment_id.to_string(),
            "serial_no": n.paid.txn_id,
            "amount": n.paid.amount.get(),
            "status": "PAID",
            "paid_at": n.paid.paid_at_ms,
        })
        .to_string();
        let (ts, nonce) = (now_ms.to_string(), nonce());
        let sig = hmac(self.secret.as_bytes(), &[ts.as_bytes(), b".", nonce.as_bytes(), b".", body.as_bytes()]);
        Callback {
            headers: vec![
                ("x-ecard-timestamp".into(), ts),
                ("x-ecard-nonce".into(), nonce),
                ("x-ecard-signature".into(), hex(&sig)),
            ],
            content_type: "application/json",
            body: body.into_bytes(),
        }
    }

    fn verify(&self, headers: &[(String, String)], body: &[u8], now_ms: u64) -> Result<Notification, CallbackError> {
        let ts = header(headers, "x-ecard-timestamp")?;
        let nonce = header(headers, "x-ecard-nonce")?;
        let sig = unhex(header(headers, "x-ecard-signature")?)
            .ok_or_else(|| CallbackError::BadSignature("signature is not hex".into()))?;
        if !verify_mac(self.secret.as_bytes(), &[ts.as_bytes(), b".", nonce.as_bytes(), b".", body], &sig) {
            return Err(CallbackError::BadSignature("HMAC mismatch".into()));
        }
        fresh(ts.parse().map_err(|_| malformed("bad timestamp"))?, now_ms, self.age_ms_max)?;
        let b: EcardBody = serde_json::from_slice(body).map_err(malformed)?;
        if b.status != "PAID" {
            return Err(malformed(format!("not a success notification: {}", b.status)));
        }
        Ok(Notification {
            payment_id: payment_id(&b.order_no)?,
            paid: Paid { txn_id: b.serial_no, amount: Fen::new(b.amount), paid_at_ms: b.paid_at },
        })
    }

    fn ack(&self, kind: AckKind) -> Ack {
        match kind {
            AckKind::Ok => json_ack(200, json!({"retcode": 0, "retmsg": "OK"})),
            AckKind::Refused => json_ack(200, json!({"retcode": 1, "retmsg": "refused"})),
            AckKind::Failed => json_ack(200, json!({"retcode": 2, "retmsg": "try again"})),
        }
    }

    fn acked(&self, status: u16, body: &str) -> bool {
        status == 200
            && serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| v.get("retcode")?.as_i64()) == Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_795_451_400_000;

    fn wires() -> Vec<Box<dyn Wire>> {
        let (secret, age_ms_max) = ("sandbox-secret-0123".to_string(), 300_000);
        vec![
            Box::new(Wechat { secret: secret.clone(), age_ms_max }),
            Box::new(Alipay { secret: secret.clone(), age_ms_max }),
            Box::new(Ecard { secret, age_ms_max }),
        ]
    }

    fn note() -> Notification {
        Notification {
            payment_id: Id::from_raw(123_456_789).unwrap(),
            paid: Paid { txn_id: "T-42".into(), amount: Fen::new(1999), paid_at_ms: NOW - 1000 },
        }
    }

    #[test]
    fn every_channel_verifies_what_it_signed() {
        for w in wires() {
            let cb = w.callback(&note(), NOW);
            let mut want = note();
            if w.kind() == ChannelKind::Alipay {
                // Whole seconds on the wire: read as the end of the second.
                want.paid.paid_at_ms = (want.paid.paid_at_ms / 1000) * 1000 + 999;
            }
            assert_eq!(w.verify(&cb.headers, &cb.body, NOW + 1000), Ok(want), "{:?}", w.kind());
        }
    }

    #[test]
    fn an_alipay_payment_in_the_second_of_the_expiry_counts_as_late() {
        let w = Alipay { secret: "sandbox-secret-0123".into(), age_ms_max: 300_000 };
        let expiry = 1_796_167_154_366u64;
        // Taken 151 ms after the expiry; the wire says ...:14 only.
        let mut n = note();
        n.paid.paid_at_ms = expiry + 151;
        let got = w.verify(&[], &w.callback(&n, NOW).body, NOW).unwrap();
        assert!(got.paid.paid_at_ms >= expiry, "read as {} — before the expiry {expiry}", got.paid.paid_at_ms);
        // A whole second earlier is in time.
        n.paid.paid_at_ms = expiry - 1_000;
        let got = w.verify(&[], &w.callback(&n, NOW).body, NOW).unwrap();
        assert!(got.paid.paid_at_ms < expiry);
    }

    #[test]
    fn a_changed_body_or_another_secret_does_not_verify() {
        for w in wires() {
            let cb = w.callback(&note(), NOW);
            let forged = String::from_utf8(cb.body.clone()).unwrap().replace("1999", "1").replace("19.99", "0.01");
            assert_ne!(forged.as_bytes(), cb.body.as_slice());
            assert!(
                matches!(w.verify(&cb.headers, forged.as_bytes(), NOW), Err(CallbackError::BadSignature(_))),
                "{:?} accepted a changed amount",
                w.kind()
            );
        }
        let theirs = Wechat { secret: "someone-elses-secret".into(), age_ms_max: 300_000 };
        let cb = theirs.callback(&note(), NOW);
        let ours = Wechat { secret: "sandbox-secret-0123".into(), age_ms_max: 300_000 };
        assert!(matches!(ours.verify(&cb.headers, &cb.body, NOW), Err(CallbackError::BadSignature(_))));
    }

    #[test]
    fn missing_signatures_and_old_callbacks_are_refused() {
        for w in wires() {
            let cb = w.callback(&note(), NOW);
            assert_eq!(w.verify(&cb.headers, &cb.body, NOW + 301_000), Err(CallbackError::Stale), "{:?}", w.kind());
            if w.kind() != ChannelKind::Alipay {
                assert!(matches!(w.verify(&[], &cb.body, NOW), Err(CallbackError::BadSignature(_))));
            }
        }
        let alipay = Alipay { secret: "sandbox-secret-0123".into(), age_ms_max: 300_000 };
        assert!(matches!(
            alipay.verify(&[], b"out_trade_no=1&total_amount=1.00", NOW),
            Err(CallbackError::BadSignature(_))
        ));
    }

    #[test]
    fn acknowledgements_are_in_each_channels_shape() {
        for w in wires() {
            let ok = w.ack(AckKind::Ok);
            assert!(w.acked(ok.status, &ok.body), "{:?}", w.kind());
            for k in [AckKind::Refused, AckKind::Failed] {
                let a = w.ack(k);
                assert!(!w.acked(a.status, &a.body), "{:?} {k:?}", w.kind());
            }
        }
        let alipay = Alipay { secret: "x".repeat(16), age_ms_max: 1 };
        assert_eq!(alipay.ack(AckKind::Ok).body, "success");
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(&[0, 1, 0xab, 0xff])), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
