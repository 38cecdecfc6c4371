//! Scenario `opening`: a sale behind a waiting room (issue 19).
//!
//! Every user but a late tenth joins the event's queue before the opening
//! (stage `queue-join`); the opening is then moved to two seconds ahead;
//! the late users join one by one after it; then every user follows their
//! ticket (stage `queue-admit`): polls `…/queue/me` (sooner as the ETA
//! shrinks) and, once admitted, holds one seat with the token. Every
//! connection also sends a hold without an admission and one with a forged
//! token. Checked after:
//! - no hold acknowledged before `on_sale_at`, and none without a valid
//!   admission (the refused probes; the event's held and sold seats are the
//!   acknowledged holds, no more);
//! - the pre-queue joiners' admission order is a uniform shuffle of their
//!   join order: Spearman's rank correlation |ρ|·√(n−1) ≤ 3.29, and the
//!   first tenth of joiners spread over the ten tenths of admissions
//!   (χ², 9 degrees of freedom, ≤ 27.88): each test's false-alarm rate is
//!   0.1 % under a true shuffle;
//! - the late joiners were admitted first in, first out, after every
//!   pre-queue joiner;
//! - admissions (their instants by the server's clock: expiry − ttl) never
//!   more than `admit_per_s × 1.1`, rounded up, plus one, in any second
//!   (the bucket banks 100 ms), none before the opening;
//! - every join and every poll after the opening answered a position.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};

use crate::api::Api;
use crate::checks::Checks;
use crate::load::{Next, Req, Workload};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms_of(v: &Value) -> Option<i64> {
    v.as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.timestamp_millis())
}

/// Admission settings of the scenario's event.
pub const ADMISSION_TTL_S: i64 = 600;

/// Creates the event (its queue open from now, its opening far ahead until
/// [`open_in`] moves it).
pub async fn create_event(
    api: &mut Api,
    run_id: &str,
    rows: u32,
    cols: u32,
    admit_per_s: u32,
) -> anyhow::Result<String> {
    let far = chrono::Utc::now() + chrono::Duration::hours(1);
    let body = json!({
        "name": format!("{run_id}-queued"), "venue": "loadtest", "starts_at": "2030-01-01T20:00:00Z",
        "on_sale_at": far.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "categories": [{"id": "a", "name": "A", "price": 100}],
        "layout": {"sections": [{"name": "S", "rows": rows, "cols": cols, "category": "a"}]},
        "waiting_room": {"admit_per_s": admit_per_s, "pre_queue_s": 7200, "admission_ttl_s": ADMISSION_TTL_S},
    });
    let admin = api.admin.clone();
    let (s, v) = api.call(Method::POST, "/v1/admin/events", Some(&admin), Some(body)).await?;
    anyhow::ensure!(s == 201, "creating the queued event: {s} {v}");
    v["event_id"].as_str().map(str::to_string).ok_or_else(|| anyhow::anyhow!("no event_id in {v}"))
}

/// Moves the opening to `ms` from now; the instant in Unix ms.
pub async fn open_in(api: &mut Api, event: &str, ms: i64) -> anyhow::Result<i64> {
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(ms);
    let at = chrono::DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at);
    let admin = api.admin.clone();
    let body = json!({"on_sale_at": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)});
    let (s, v) = api.call(Method::PATCH, &format!("/v1/admin/events/{event}"), Some(&admin), Some(body)).await?;
    anyhow::ensure!(s == 200, "moving the opening: {s} {v}");
    Ok(at.timestamp_millis())
}

/// What the run learnt about each user.
#[derive(Default)]
struct Seen {
    /// Join order (answers in arrival order), pre-queue joiners.
    joined: HashMap<usize, u64>,
    /// admission_no and admitted-at ms (server clock) per user.
    admitted: HashMap<usize, (u64, i64)>,
    /// Failures of "every join and poll answered a position".
    unanswered: Vec<String>,
    /// Holds acknowledged: (user, created ms, answered ms).
    held: Vec<(usize, i64, i64)>,
    /// An admitted user's hold refused for its admission.
    refused_admitted: Vec<String>,
    /// Probes (no or forged admission) not refused with 403.
    probes_passed: Vec<String>,
    probes: usize,
}

/// Stage `queue-join`: each connection joins its users once.
pub struct JoinLoad {
    path: Arc<str>,
    tokens: Arc<Vec<Arc<str>>>,
    users: usize,
    next: AtomicUsize,
    order: AtomicU64,
    seen: Arc<Mutex<Seen>>,
}

impl Workload for JoinLoad {
    fn next(&self, _task: usize) -> Next {
        let u = self.next.fetch_add(1, Ordering::Relaxed);
        if u >= self.users {
            return Next::Done;
        }
        Next::Send(Req {
            method: Method::POST,
            path: self.path.clone(),
            token: Some(self.tokens[u].clone()),
            body: Some(Bytes::from_static(b"{}")),
            tag: [u as u32, 0, 0],
            admission: None,
        })
    }

    fn observe(&self, req: &Req, status: u16, body: &[u8]) -> bool {
        let u = req.tag[0] as usize;
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let ok = status == 200 && v["status"] == "waiting" && v["ticket_id"].is_string();
        let mut seen = lock(&self.seen);
        if ok {
            let n = self.order.fetch_add(1, Ordering::Relaxed);
            seen.joined.insert(u, n);
        } else {
            seen.unanswered.push(format!("join of user {u}: {status} {v}"));
        }
        ok
    }
}

#[derive(Clone)]
enum UserState {
    Waiting { poll_at: Instant },
    Admitted { token: Arc<str> },
    Done,
}

/// Stage `queue-admit`: every user follows their ticket and holds once
/// admitted.
pub struct AdmitLoad {
    me_path: Arc<str>,
    hold_body: Bytes,
    tokens: Arc<Vec<Arc<str>>>,
    /// Per task: its users (task t: t, t + C, …) and a cursor.
    users: Vec<TaskUsers>,
    /// Per task: the probes still to send (no admission, forged).
    probes: Vec<AtomicUsize>,
    forged: Arc<str>,
    opens_ms: i64,
    seen: Arc<Mutex<Seen>>,
}

type TaskUsers = Mutex<(Vec<(usize, UserState)>, usize)>;

const POLL: u32 = 0;
const HOLD: u32 = 1;
const PROBE: u32 = 2;
/// Polls at most this often per user, at least this often.
const POLL_MIN: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_millis(1_000);

impl AdmitLoad {
    fn new(
        event: &str,
        tokens: Arc<Vec<Arc<str>>>,
        users: usize,
        concurrency: usize,
        opens_ms: i64,
        seen: Arc<Mutex<Seen>>,
    ) -> Self {
        let c = concurrency.max(1);
        let now = Instant::now();
        let users = (0..c)
            .map(|t| {
                let mine = (t..users).step_by(c).map(|u| (u, UserState::Waiting { poll_at: now })).collect();
                Mutex::new((mine, 0))
            })
            .collect();
        AdmitLoad {
            me_path: Arc::from(format!("/v1/events/{event}/queue/me")),
            hold_body: Bytes::from(json!({"event_id": event, "category": "a", "quantity": 1}).to_string()),
            tokens,
            users,
            probes: (0..c).map(|_| AtomicUsize::new(2)).collect(),
            forged: Arc::from(format!("{event}.9999999999999.Zm9yZ2Vk.c2lnbmF0dXJl")),
            opens_ms,
            seen,
        }
    }

    fn set(&self, task: usize, user: usize, state: UserState) {
        let mut g = lock(&self.users[task % self.users.len()]);
        if let Some(s) = g.0.iter_mut().find(|(u, _)| *u == user) {
            s.1 = state;
        }
    }
}

impl Workload for AdmitLoad {
    fn next(&self, task: usize) -> Next {
        let left = self.probes[task].load(Ordering::Relaxed);
        if left > 0 {
            self.probes[task].store(left - 1, Ordering::Relaxed);
            let user = task % self.tokens.len();
            return Next::Send(Req {
                method: Method::POST,
                path: Arc::from("/v1/orders"),
                token: Some(self.tokens[user].clone()),
                body: Some(self.hold_body.clone()),
                tag: [user as u32, PROBE, task as u32],
                admission: (left == 1).then(|| self.forged.clone()),
            });
        }
        let mut g = lock(&self.users[task]);
        let (users, cursor) = &mut *g;
        let now = Instant::now();
        let mut live = false;
        for _ in 0..users.len() {
            *cursor = (*cursor + 1) % users.len();
            let (u, state) = &mut users[*cursor];
            let u = *u;
            match state.clone() {
                UserState::Done => continue,
                UserState::Admitted { token } => {
                    // One hold at a time: answered, it is Done or retried.
                    *state = UserState::Done;
                    return Next::Send(Req {
                        method: Method::POST,
                        path: Arc::from("/v1/orders"),
                        token: Some(self.tokens[u].clone()),
                        body: Some(self.hold_body.clone()),
                        tag: [u as u32, HOLD, task as u32],
                        admission: Some(token),
                    });
                }
                UserState::Waiting { poll_at } => {
                    live = true;
                    if poll_at <= now {
                        // Until answered, not polled again.
                        *state = UserState::Waiting { poll_at: now + Duration::from_secs(3600) };
                        return Next::Send(Req {
                            method: Method::GET,
                            path: self.me_path.clone(),
                            token: Some(self.tokens[u].clone()),
                            body: None,
                            tag: [u as u32, POLL, task as u32],
                            admission: None,
                        });
                    }
                }
            }
        }
        if live {
            Next::Wait
        } else {
            Next::Done
        }
    }

    fn observe(&self, req: &Req, status: u16, body: &[u8]) -> bool {
        let [u, kind, task] = req.tag;
        let (u, task) = (u as usize, task as usize);
        let now_ms = chrono::Utc::now().timestamp_millis();
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        match kind {
            PROBE => {
                let mut seen = lock(&self.seen);
                seen.probes += 1;
                let code = v["error"]["code"].as_str().unwrap_or_default();
                if status != 403 || !matches!(code, "admission_required" | "admission_invalid") {
                    seen.probes_passed.push(format!("user {u}: {status} {v}"));
                }
                false
            }
            POLL => {
                let retry = |after: Duration| UserState::Waiting { poll_at: Instant::now() + after };
                if status != 200 {
                    self.set(task, u, retry(POLL_MAX));
                    return false;
                }
                match v["status"].as_str() {
                    Some("admitted") => {
                        let no = v["admission_no"].as_u64().unwrap_or(0);
                        let at = ms_of(&v["admission_expires_at"]).unwrap_or(0) - ADMISSION_TTL_S * 1000;
                        lock(&self.seen).admitted.insert(u, (no, at));
                        let token = v["admission_token"].as_str().map(Arc::from);
                        self.set(task, u, token.map(|token| UserState::Admitted { token }).unwrap_or(UserState::Done));
                    }
                    Some("waiting") => {
                        if now_ms >= self.opens_ms + 500 && v["position"].as_u64().is_none() {
                            lock(&self.seen).unanswered.push(format!("poll of user {u} after the opening: {v}"));
                        }
                        let eta_ms = v["eta_s"].as_u64().unwrap_or(1) * 1000;
                        self.set(task, u, retry(Duration::from_millis(eta_ms / 2).clamp(POLL_MIN, POLL_MAX)));
                    }
                    _ => self.set(task, u, UserState::Done),
                }
                true
            }
            _ => {
                let mut seen = lock(&self.seen);
                match status {
                    201 => {
                        let created = ms_of(&v["created_at"]).unwrap_or(i64::MIN);
                        seen.held.push((u, created, now_ms));
                        true
                    }
                    403 => {
                        seen.refused_admitted.push(format!("user {u}: {v}"));
                        false
                    }
                    429 | 503 => {
                        drop(seen);
                        if let Some(t) = req.admission.clone() {
                            self.set(task, u, UserState::Admitted { token: t });
                        }
                        false
                    }
                    _ => false,
                }
            }
        }
    }
}

/// The scenario's two stages, their state and its checks.
pub struct QueueRun {
    pub event: String,
    seen: Arc<Mutex<Seen>>,
    /// Users 0..pre joined before the opening; pre..users after, in order.
    pre: usize,
    users: usize,
    late_order: Vec<usize>,
    opens_ms: i64,
    admit_per_s: u32,
}

impl QueueRun {
    pub fn new(event: String, users: usize, admit_per_s: u32) -> Self {
        let late = (users / 10).max(1).min(users);
        QueueRun { event, seen: Arc::default(), pre: users - late, users, late_order: vec![], opens_ms: 0, admit_per_s }
    }

    pub fn join_load(&self, tokens: Arc<Vec<Arc<str>>>) -> JoinLoad {
        JoinLoad {
            path: Arc::from(format!("/v1/events/{}/queue", self.event)),
            tokens,
            users: self.pre,
            next: AtomicUsize::new(0),
            order: AtomicU64::new(0),
            seen: self.seen.clone(),
        }
    }

    /// Opens the sale `ms` from now and joins the late users one by one
    /// just after it.
    pub async fn open_and_join_late(&mut self, api: &mut Api, tokens: &[Arc<str>], ms: i64) -> anyhow::Result<()> {
        self.opens_ms = open_in(api, &self.event, ms).await?;
        let wait = self.opens_ms - chrono::Utc::now().timestamp_millis() + 50;
        tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
        let path = format!("/v1/events/{}/queue", self.event);
        for (u, token) in tokens.iter().enumerate().take(self.users).skip(self.pre) {
            let (s, v) = api.call(Method::POST, &path, Some(token), Some(json!({}))).await?;
            if s == 200 && v["status"].is_string() {
                self.late_order.push(u);
            } else {
                lock(&self.seen).unanswered.push(format!("late join of user {u}: {s} {v}"));
            }
        }
        Ok(())
    }

    pub fn admit_load(&self, tokens: Arc<Vec<Arc<str>>>, concurrency: usize) -> AdmitLoad {
        AdmitLoad::new(&self.event, tokens, self.users, concurrency, self.opens_ms, self.seen.clone())
    }

    /// The scenario's checks (see the module).
    pub async fn check(&self, api: &mut Api, checks: &mut Checks) -> anyhow::Result<()> {
        let admin = api.admin.clone();
        let (s, stats) =
            api.call(Method::GET, &format!("/v1/admin/events/{}/stats", self.event), Some(&admin), None).await?;
        let seen = lock(&self.seen);
        let early: Vec<String> = seen
            .held
            .iter()
            .filter(|(_, created, answered)| *created < self.opens_ms || *answered < self.opens_ms)
            .map(|(u, c, a)| format!("user {u}: created {c} ms, answered {a} ms, opening {} ms", self.opens_ms))
            .collect();
        checks.each("opening+queue: no hold acknowledged before on_sale_at", seen.held.len(), early);
        let mut without = seen.probes_passed.clone();
        without.extend(seen.refused_admitted.iter().map(|r| format!("an admitted user's hold refused: {r}")));
        let taken: u64 = stats["categories"]
            .as_array()
            .map(|c| c.iter().map(|c| c["held"].as_u64().unwrap_or(0) + c["sold"].as_u64().unwrap_or(0)).sum())
            .unwrap_or(u64::MAX);
        if s != 200 || taken != seen.held.len() as u64 {
            without.push(format!("the event holds {taken} seats, {} holds were acknowledged ({s})", seen.held.len()));
        }
        checks.each("opening+queue: no hold without a valid admission", seen.probes + seen.held.len(), without);

        // The shuffle: pre-queue joiners admitted, by join order and admission order.
        let mut pairs: Vec<(u64, u64)> =
            (0..self.pre).filter_map(|u| Some((*seen.joined.get(&u)?, seen.admitted.get(&u)?.0))).collect();
        checks.each(
            "opening+queue: pre-queue admission order is a uniform shuffle",
            pairs.len(),
            shuffle_failures(&mut pairs),
        );

        // FIFO after: late joiners in join order, after every pre-queue joiner.
        let last_pre = (0..self.pre).filter_map(|u| seen.admitted.get(&u).map(|a| a.0)).max().unwrap_or(0);
        let late: Vec<(usize, u64)> =
            self.late_order.iter().filter_map(|u| seen.admitted.get(u).map(|a| (*u, a.0))).collect();
        let mut fifo = vec![];
        for w in late.windows(2) {
            if w[1].1 <= w[0].1 {
                fifo.push(format!("user {} joined after {} but was admitted {} ≤ {}", w[1].0, w[0].0, w[1].1, w[0].1));
            }
        }
        if let Some(first) = late.first().filter(|f| f.1 <= last_pre) {
            fifo.push(format!(
                "late user {} admitted {} before the last pre-queue joiner ({last_pre})",
                first.0, first.1
            ));
        }
        checks.each("opening+queue: FIFO after the opening", late.len(), fifo);

        // The pace: any second's admissions.
        let mut times: Vec<i64> = seen.admitted.values().map(|a| a.1).collect();
        times.sort_unstable();
        let bound = (f64::from(self.admit_per_s) * 1.1).ceil() as usize + 1;
        let mut pace = vec![];
        if let Some(first) = times.first().filter(|t| **t < self.opens_ms) {
            pace.push(format!("an admission at {first} ms, before the opening at {} ms", self.opens_ms));
        }
        let (mut lo, mut worst) = (0, (0, 0));
        for hi in 0..times.len() {
            while times[hi] - times[lo] >= 1000 {
                lo += 1;
            }
            if hi + 1 - lo > worst.0 {
                worst = (hi + 1 - lo, times[lo]);
            }
        }
        if worst.0 > bound {
            pace.push(format!("{} admissions in the second from {} ms (bound {bound})", worst.0, worst.1));
        }
        checks.each(
            &format!("opening+queue: admissions ≤ {bound} in any second (admit_per_s {} + 10 % + 1)", self.admit_per_s),
            times.len(),
            pace,
        );
        checks.each("opening+queue: every join and poll answered a position", self.users, seen.unanswered.clone());
        Ok(())
    }
}

/// Spearman's ρ between join order and admission order, and the spread
/// of the first tenth of joiners over the tenths of admissions; empty when
/// both look like a uniform shuffle (each at a 0.1 % false-alarm rate).
pub fn shuffle_failures(pairs: &mut [(u64, u64)]) -> Vec<String> {
    let n = pairs.len();
    if n < 100 {
        return if n == 0 { vec!["no pre-queue joiner was admitted".into()] } else { vec![] };
    }
    // Ranks of each side (both are distinct numbers).
    pairs.sort_unstable_by_key(|p| p.0);
    let mut by_adm: Vec<usize> = (0..n).collect();
    by_adm.sort_unstable_by_key(|i| pairs[*i].1);
    let mut adm_rank = vec![0usize; n];
    for (r, i) in by_adm.iter().enumerate() {
        adm_rank[*i] = r;
    }
    let d2: f64 = (0..n).map(|i| (i as f64 - adm_rank[i] as f64).powi(2)).sum();
    let nf = n as f64;
    let rho = 1.0 - 6.0 * d2 / (nf * (nf * nf - 1.0));
    let z = rho * (nf - 1.0).sqrt();
    let mut out = vec![];
    if z.abs() > 3.29 {
        out.push(format!("Spearman ρ = {rho:.4} over {n} joiners (|z| = {:.2} > 3.29)", z.abs()));
    }
    // The first tenth of joiners over the ten tenths of admissions.
    let first: Vec<usize> = (0..n / 10).map(|i| adm_rank[i] * 10 / n).collect();
    let expected = first.len() as f64 / 10.0;
    let mut counts = [0f64; 10];
    for d in first {
        counts[d.min(9)] += 1.0;
    }
    let chi2: f64 = counts.iter().map(|c| (c - expected).powi(2) / expected).sum();
    if chi2 > 27.88 {
        out.push(format!(
            "the first tenth of joiners fell {counts:?} over the tenths of admissions (χ² = {chi2:.1} > 27.88)"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shuffle_test_passes_shuffles_and_catches_order() {
        let mut rng = fastrand::Rng::with_seed(19);
        let mut false_alarms = 0;
        for _ in 0..200 {
            let mut adm: Vec<u64> = (0..2_000).collect();
            rng.shuffle(&mut adm);
            let mut pairs: Vec<(u64, u64)> = (0..2_000).zip(adm).collect();
            false_alarms += usize::from(!shuffle_failures(&mut pairs).is_empty());
        }
        // Two tests at 0.1 % each: 200 runs expect 0.4 alarms.
        assert!(false_alarms <= 3, "{false_alarms} false alarms in 200 shuffles");
        // First come, first served is caught; so is a mostly ordered queue.
        let mut fifo: Vec<(u64, u64)> = (0..2_000).map(|i| (i, i)).collect();
        assert_eq!(shuffle_failures(&mut fifo).len(), 2);
        let mut nearly: Vec<(u64, u64)> = (0..2_000).map(|i| (i, i + rng.u64(0..400))).collect();
        assert!(!shuffle_failures(&mut nearly).is_empty());
        // Early joiners favoured only a little: the spread test sees it.
        let mut adm: Vec<u64> = (0..2_000).collect();
        rng.shuffle(&mut adm);
        let mut pairs: Vec<(u64, u64)> = (0..2_000).zip(adm).collect();
        for p in pairs.iter_mut().take(200) {
            p.1 /= 4;
        }
        assert!(!shuffle_failures(&mut pairs).is_empty());
    }
}
