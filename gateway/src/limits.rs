//! Rate limits (issue 19): token buckets per route class, per user and
//! per client address, on `governor`'s GCRA.
//!
//! - The address is the peer's, or the last entry of
//!   `rate_limits.client_addr_header` (what a trusted proxy appended), and
//!   is checked in the middleware before anything else runs; the user is
//!   checked once the token is verified (admins are not limited per user:
//!   they are the operators).
//! - A refusal is 429 `rate_limited` with `Retry-After`, and every checked
//!   answer carries `RateLimit-Policy` and `RateLimit` (structured fields
//!   of draft-ietf-httpapi-ratelimit-headers): `"<class>-<key>";q=<burst>;
//!   w=<seconds to refill the burst>` and `"<class>-<key>";r=<left>;t=<s>`.
//! - Across nodes (Redis mode) each node enforces its share, the limit ÷
//!   live nodes (counted in Redis every `rate_limits.nodes_check_ms`; the
//!   burst's share rounded down, at least one): a user's total over all
//!   nodes never exceeds the limit (or one request per node at once when
//!   the burst is smaller than the node count), and one whose requests all
//!   reach one node gets that node's share. No Redis round trip per
//!   request.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::http::Method;
use actix_web::{web, HttpMessage};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};
use rush_engine::config::{ClassLimits, RateLimitConfig};
use rush_engine::engine::Caller;
use rush_engine::telemetry::Metrics;

use crate::error::ApiError;

/// The route classes of API.md's "Rate limits".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Holds,
    Money,
    Reads,
    Queue,
}

impl Class {
    const ALL: [Class; 4] = [Class::Holds, Class::Money, Class::Reads, Class::Queue];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Holds => "holds",
            Class::Money => "money",
            Class::Reads => "reads",
            Class::Queue => "queue",
        }
    }

    fn limits(self, cfg: &RateLimitConfig) -> ClassLimits {
        match self {
            Class::Holds => cfg.holds,
            Class::Money => cfg.money,
            Class::Reads => cfg.reads,
            Class::Queue => cfg.queue,
        }
    }

    /// A request's class; None for what is not limited (probes, metrics,
    /// the contract, channel callbacks, operators' writes, dev tokens).
    pub fn of(method: &Method, path: &str) -> Option<Class> {
        let rest = path.strip_prefix("/v1/")?;
        if *method == Method::GET {
            return Some(Class::Reads);
        }
        // At most five segments matter; no allocation on the hot path.
        let mut parts = [""; 5];
        let mut n = 0;
        for p in rest.split('/') {
            if n == parts.len() {
                return None;
            }
            parts[n] = p;
            n += 1;
        }
        match (method.as_str(), &parts[..n]) {
            ("POST", ["orders"]) | ("POST", ["packets", _, "grab"]) => Some(Class::Holds),
            ("POST", ["orders", _, "payments" | "refund"])
            | ("POST", ["packets"])
            | ("POST", ["wallet", "recharge" | "withdraw"])
            | ("POST", ["admin", "wallet", _, "credit"]) => Some(Class::Money),
            ("POST", ["events", _, "queue"]) | ("DELETE", ["events", _, "queue", "me"]) => Some(Class::Queue),
            _ => None,
        }
    }
}

/// Whose bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    User,
    Addr,
}

impl Key {
    fn as_str(self) -> &'static str {
        match self {
            Key::User => "user",
            Key::Addr => "addr",
        }
    }
}

type Keyed =
    RateLimiter<u64, governor::state::keyed::DefaultKeyedStateStore<u64>, DefaultClock, StateInformationMiddleware>;

struct Bucket {
    limiter: Keyed,
    burst: u32,
    /// Seconds to refill the whole burst (the policy's window).
    window_s: u64,
}

impl Bucket {
    /// `per_s` and `burst` shared by `nodes`: this node's part.
    fn new(per_s: u32, burst: u32, nodes: u32) -> Option<Bucket> {
        if per_s == 0 || burst == 0 {
            return None;
        }
        let nodes = nodes.max(1);
        // Rounded down, so the nodes' shares never add up to more than the
        // burst; a burst smaller than the node count still lets one request
        // through per node (the stated tolerance).
        let burst = (burst / nodes).max(1);
        // One token every nodes / per_s seconds.
        let period = Duration::from_nanos((1_000_000_000u64 * u64::from(nodes)).div_ceil(u64::from(per_s)).max(1));
        let quota = Quota::with_period(period)?.allow_burst(std::num::NonZeroU32::new(burst)?);
        let window_s = (period.as_secs_f64() * f64::from(burst)).ceil().max(1.0) as u64;
        Some(Bucket { limiter: RateLimiter::dashmap(quota).with_middleware(), burst, window_s })
    }
}

struct Buckets {
    nodes: u32,
    /// By class (`Class::ALL` order): the user's and the address's.
    by_class: Vec<(Option<Bucket>, Option<Bucket>)>,
}

impl Buckets {
    fn new(cfg: &RateLimitConfig, nodes: u32) -> Buckets {
        let by_class = Class::ALL
            .iter()
            .map(|c| {
                let l = c.limits(cfg);
                (Bucket::new(l.user_per_s, l.user_burst, nodes), Bucket::new(l.addr_per_s, l.addr_burst, nodes))
            })
            .collect();
        Buckets { nodes, by_class }
    }
}

/// What a bucket said: enough for the answer's headers, formatted only
/// for the one bucket an answer names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub class: Class,
    pub key: Key,
    pub burst: u32,
    pub window_s: u64,
    /// Tokens left after this request.
    pub left: u32,
    /// Some: refused, retry after this many seconds.
    pub retry_after_s: Option<u64>,
}

impl Verdict {
    /// `RateLimit-Policy`.
    pub fn policy(&self) -> String {
        format!("\"{}-{}\";q={};w={}", self.class.as_str(), self.key.as_str(), self.burst, self.window_s)
    }

    /// `RateLimit`: tokens left, seconds until the next one (0 while some
    /// are left).
    pub fn state(&self) -> String {
        let t = self.retry_after_s.unwrap_or(u64::from(self.left == 0));
        format!("\"{}-{}\";r={};t={t}", self.class.as_str(), self.key.as_str(), self.left)
    }
}

pub struct Limits {
    cfg: RateLimitConfig,
    buckets: RwLock<Arc<Buckets>>,
    clock: DefaultClock,
    /// Hashes ids into bucket keys (seeded per process).
    hasher: std::collections::hash_map::RandomState,
    metrics: Metrics,
}

impl Limits {
    pub fn new(cfg: &RateLimitConfig, metrics: Metrics) -> Limits {
        Limits {
            cfg: cfg.clone(),
            buckets: RwLock::new(Arc::new(Buckets::new(cfg, 1))),
            clock: DefaultClock::default(),
            hasher: std::collections::hash_map::RandomState::new(),
            metrics,
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    pub fn addr_header(&self) -> Option<&str> {
        self.cfg.client_addr_header.as_deref()
    }

    fn current(&self) -> Arc<Buckets> {
        self.buckets.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Live nodes sharing the limits: buckets are rebuilt for the new share
    /// (they start full again, once per change of the node count).
    pub fn set_nodes(&self, nodes: u32) {
        let nodes = nodes.max(1);
        if self.current().nodes == nodes {
            return;
        }
        *self.buckets.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Buckets::new(&self.cfg, nodes));
    }

    /// Forgets buckets that are full again (bounds memory).
    pub fn forget_idle(&self) {
        for (u, a) in &self.current().by_class {
            for b in [u, a].into_iter().flatten() {
                b.limiter.retain_recent();
                b.limiter.shrink_to_fit();
            }
        }
    }

    /// Takes one token of `key`'s bucket for `class`; None when that bucket
    /// is off.
    pub fn check(&self, class: Class, key: Key, id: &str) -> Option<Verdict> {
        if !self.cfg.enabled {
            return None;
        }
        let buckets = self.current();
        let (user, addr) = &buckets.by_class[Class::ALL.iter().position(|c| *c == class)?];
        let b = match key {
            Key::User => user.as_ref()?,
            Key::Addr => addr.as_ref()?,
        };
        let v = Verdict { class, key, burst: b.burst, window_s: b.window_s, left: 0, retry_after_s: None };
        // Keyed by a 64-bit hash of the id: no allocation per request, and
        // a collision (about 2^-64 a pair) only shares a bucket.
        let hashed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = self.hasher.build_hasher();
            h.write(id.as_bytes());
            h.finish()
        };
        Some(match b.limiter.check_key(&hashed) {
            Ok(snap) => Verdict { left: snap.remaining_burst_capacity(), ..v },
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                self.metrics.rate_limited.with_label_values(&[class.as_str(), key.as_str()]).inc();
                Verdict { retry_after_s: Some(secs.max(1)), ..v }
            }
        })
    }
}

/// What the front door found for a request (in its extensions): its class
/// and the verdicts of its buckets, for the answer's headers.
#[derive(Clone)]
pub struct Checked {
    pub class: Class,
    pub addr: Option<Verdict>,
    pub user: Option<Verdict>,
}

/// The caller's own bucket for the request's class (admins are not
/// limited per user).
pub fn limit_user(req: &actix_web::HttpRequest, caller: &Caller) -> Result<(), ApiError> {
    if caller.admin {
        return Ok(());
    }
    let Some(limits) = req.app_data::<web::Data<Limits>>() else { return Ok(()) };
    let mut ext = req.extensions_mut();
    let Some(checked) = ext.get_mut::<Checked>() else { return Ok(()) };
    if let Some(v) = limits.check(checked.class, Key::User, &caller.user_id) {
        if v.retry_after_s.is_some() {
            return Err(refusal(&v, checked.class, Key::User));
        }
        checked.user = Some(v);
    }
    Ok(())
}

/// 429 `rate_limited` with its headers.
pub fn refusal(v: &Verdict, class: Class, key: Key) -> ApiError {
    let who = match key {
        Key::User => "you",
        Key::Addr => "your address",
    };
    let secs = v.retry_after_s.unwrap_or(1);
    let mut e = ApiError::new(
        actix_web::http::StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many {} requests from {who}; retry in {secs} s", class.as_str()),
    )
    .with("retry_after_s", serde_json::json!(secs));
    e.retry_after_s = Some(u32::try_from(secs).unwrap_or(u32::MAX));
    e.headers.push(("ratelimit-policy", v.policy()));
    e.headers.push(("ratelimit", v.state()));
    e
}

/// The client's address: the last entry of the trusted proxy's header when
/// configured (and present), else the peer's.
pub fn client_addr(req: &actix_web::HttpRequest, header: Option<&str>) -> Option<String> {
    if let Some(h) = header {
        let last = req
            .headers()
            .get_all(h)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .last();
        if let Some(a) = last {
            return Some(a.to_string());
        }
    }
    req.peer_addr().map(|a| a.ip().to_string())
}

/// Counts live nodes every `rate_limits.nodes_check_ms` and forgets idle
/// buckets every `idle_forget_ms`, while `limits` and `engine` live.
pub async fn maintain(limits: std::sync::Weak<Limits>, engine: std::sync::Weak<rush_engine::Engine>) {
    let (check, forget) = match limits.upgrade() {
        Some(l) => (Duration::from_millis(l.cfg.nodes_check_ms), Duration::from_millis(l.cfg.idle_forget_ms)),
        None => return,
    };
    let mut last_forget = tokio::time::Instant::now();
    loop {
        let (Some(l), Some(e)) = (limits.upgrade(), engine.upgrade()) else { return };
        match e.live_nodes(check.as_millis() as u64 * 3).await {
            Ok(n) => l.set_nodes(n),
            Err(err) => tracing::debug!(error = %err, "counting live nodes for rate limits failed"),
        }
        if last_forget.elapsed() >= forget {
            last_forget = tokio::time::Instant::now();
            l.forget_idle();
        }
        drop((l, e));
        tokio::time::sleep(check).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(per_s: u32, burst: u32) -> RateLimitConfig {
        let c = ClassLimits { user_per_s: per_s, user_burst: burst, addr_per_s: 0, addr_burst: 0 };
        RateLimitConfig { holds: c, ..RateLimitConfig::default() }
    }

    #[test]
    fn routes_fall_in_their_classes() {
        let cases = [
            (Method::POST, "/v1/orders", Some(Class::Holds)),
            (Method::POST, "/v1/packets/1/grab", Some(Class::Holds)),
            (Method::POST, "/v1/orders/1/payments", Some(Class::Money)),
            (Method::POST, "/v1/orders/1/refund", Some(Class::Money)),
            (Method::POST, "/v1/packets", Some(Class::Money)),
            (Method::POST, "/v1/wallet/withdraw", Some(Class::Money)),
            (Method::POST, "/v1/admin/wallet/u1/credit", Some(Class::Money)),
            (Method::POST, "/v1/events/1/queue", Some(Class::Queue)),
            (Method::DELETE, "/v1/events/1/queue/me", Some(Class::Queue)),
            (Method::GET, "/v1/events/1/stream", Some(Class::Reads)),
            (Method::POST, "/v1/orders/1/cancel", None),
            (Method::POST, "/v1/channels/wechat/notify", None),
            (Method::GET, "/metrics", None),
        ];
        for (m, p, c) in cases {
            assert_eq!(Class::of(&m, p), c, "{m} {p}");
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_with_the_wait_and_shares_across_nodes() {
        let l = Limits::new(&cfg(2, 4), Metrics::new());
        let verdicts: Vec<_> = (0..5).map(|_| l.check(Class::Holds, Key::User, "u1").unwrap()).collect();
        assert!(verdicts[..4].iter().all(|v| v.retry_after_s.is_none()), "{verdicts:?}");
        assert_eq!(verdicts[0].policy(), "\"holds-user\";q=4;w=2");
        assert_eq!(verdicts[3].state(), "\"holds-user\";r=0;t=1");
        assert_eq!(verdicts[4].state(), "\"holds-user\";r=0;t=1");
        assert_eq!(verdicts[4].retry_after_s, Some(1), "one token every 500 ms");
        assert!(l.check(Class::Holds, Key::User, "u2").unwrap().retry_after_s.is_none(), "per user");
        assert_eq!(l.check(Class::Holds, Key::Addr, "a"), None, "addr bucket off");
        // Two nodes: each allows half the burst.
        l.set_nodes(2);
        let ok = (0..4).filter(|_| l.check(Class::Holds, Key::User, "u3").unwrap().retry_after_s.is_none()).count();
        assert_eq!(ok, 2);
    }
}
