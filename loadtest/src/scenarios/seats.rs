//! `seats`: hot events, first by category (quantity 1 or 2, the engine
//! picks adjacent seats), then by named seat with every seat asked for by
//! two users at once. When an event is sold out, every task moves to the
//! next one.
//!
//! Checked after: no seat in two holds; the event's held seats are exactly
//! the holds we were given and never exceed capacity; every `sold_out`,
//! `no_adjacent_seats` and `seat_unavailable` was deserved; no user above
//! the per-user limit.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};

use crate::api::Api;
use crate::checks::Checks;
use crate::load::{Next, Req, Workload};
use crate::lock;

/// The default per-user limit of an event (the scenario relies on it).
pub const PER_USER: usize = 6;

/// What a run saw of one event.
#[derive(Default)]
pub struct EventLog {
    /// (user index, seats) per 201.
    pub holds: Vec<(u32, Vec<String>)>,
    /// (category, quantity, no_adjacent) per 409 sold_out / no_adjacent_seats.
    pub refused: Vec<(String, u32, bool)>,
    pub unavailable: Vec<String>,
}

pub struct Events {
    pub ids: Vec<String>,
    pub rows: u32,
    pub cols: u32,
    pub logs: Vec<Mutex<EventLog>>,
}

impl Events {
    /// Two sections per event: A (category a) and B (category b).
    pub async fn create(api: &mut Api, run_id: &str, count: usize, rows: u32, cols: u32) -> anyhow::Result<Self> {
        Self::create_opening(api, run_id, count, rows, cols, None).await
    }

    /// The same, each on sale from `on_sale_at` (RFC 3339).
    pub async fn create_opening(
        api: &mut Api,
        run_id: &str,
        count: usize,
        rows: u32,
        cols: u32,
        on_sale_at: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut ids = Vec::with_capacity(count);
        for i in 0..count {
            let sections = json!([
                {"name": "A", "rows": rows, "cols": cols, "category": "a"},
                {"name": "B", "rows": rows, "cols": cols, "category": "b"},
            ]);
            let name = format!("{run_id}-event-{i}{}", if on_sale_at.is_some() { "-opening" } else { "" });
            ids.push(api.create_event_opening(&name, sections, on_sale_at).await?);
        }
        Ok(Events { logs: ids.iter().map(|_| Mutex::new(EventLog::default())).collect(), ids, rows, cols })
    }

    pub fn capacity(&self) -> usize {
        2 * (self.rows * self.cols) as usize
    }

    /// The label of seat `i` of an event (A's seats, then B's).
    pub fn label(&self, i: usize) -> String {
        let per = (self.rows * self.cols) as usize;
        let section = if i < per { "A" } else { "B" };
        let j = i % per;
        format!("{section}-{}-{}", j / self.cols as usize + 1, j % self.cols as usize + 1)
    }

    pub fn observe(&self, event: usize, user: u32, wanted: (String, u32), status: u16, body: &[u8]) -> bool {
        let Some(log) = self.logs.get(event) else { return false };
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let mut log = lock(log);
        match (status, v["error"]["code"].as_str()) {
            (201, _) => {
                let seats = v["seats"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s["seat_id"].as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                log.holds.push((user, seats));
                true
            }
            (409, Some(code @ ("sold_out" | "no_adjacent_seats"))) => {
                log.refused.push((wanted.0, wanted.1, code == "no_adjacent_seats"));
                false
            }
            (409, Some("seat_unavailable")) => {
                if let Some(a) = v["error"]["seats"].as_array() {
                    log.unavailable.extend(a.iter().filter_map(|s| s.as_str().map(str::to_string)));
                }
                false
            }
            _ => false,
        }
    }

    pub async fn check(&self, api: &Api, users: &[String], checks: &mut Checks) -> anyhow::Result<()> {
        let admin = api.admin.clone();
        let paths = self.ids.iter().map(|id| (format!("/v1/events/{id}/seats"), admin.clone())).collect();
        let maps = api.get_many(paths).await?;
        let (mut twice, mut exact, mut refused, mut unavailable, mut limit) = (vec![], vec![], vec![], vec![], vec![]);
        for (e, (status, map)) in maps.iter().enumerate() {
            let log = self.logs[e].lock().unwrap_or_else(|x| x.into_inner());
            let id = &self.ids[e];
            if *status != 200 {
                exact.push(format!("event {id} seats read {status}"));
                continue;
            }
            let mut state: HashMap<String, (String, String)> = HashMap::new();
            // Free seats by (category, section, row) → cols, for the pair check.
            let mut free_cols: HashMap<(String, String, u64), Vec<u64>> = HashMap::new();
            for s in map["seats"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let label = s["seat_id"].as_str().unwrap_or("").to_string();
                let st = s["status"].as_str().unwrap_or("").to_string();
                let cat = s["category"].as_str().unwrap_or("").to_string();
                if st == "available" {
                    let key =
                        (cat.clone(), s["section"].as_str().unwrap_or("").to_string(), s["row"].as_u64().unwrap_or(0));
                    free_cols.entry(key).or_default().push(s["col"].as_u64().unwrap_or(0));
                }
                state.insert(label, (st, cat));
            }
            let has_pair = |cat: &str| {
                free_cols.iter().filter(|((c, _, _), _)| c == cat).any(|(_, cols)| {
                    let set: HashSet<u64> = cols.iter().copied().collect();
                    cols.iter().any(|c| set.contains(&(c + 1)))
                })
            };
            let mut ours = HashSet::new();
            let mut per_user: HashMap<u32, usize> = HashMap::new();
            for (u, seats) in &log.holds {
                *per_user.entry(*u).or_default() += seats.len();
                for s in seats {
                    if !ours.insert(s.clone()) {
                        twice.push(format!("seat {s} of event {id} held twice"));
                    }
                }
            }
            let held: HashSet<String> =
                state.iter().filter(|(_, (st, _))| st != "available").map(|(k, _)| k.clone()).collect();
            if held != ours || held.len() > self.capacity() {
                exact.push(format!("event {id}: {} seats taken, {} holds answered", held.len(), ours.len()));
            }
            for (cat, qty, no_adjacent) in &log.refused {
                // Seats are only taken during a run, so a refusal that was
                // deserved then is still deserved now.
                let free = state.values().filter(|(st, c)| st == "available" && c == cat).count();
                let deserved = if *no_adjacent {
                    (*qty == 1 && free == 0) || (*qty == 2 && !has_pair(cat))
                } else {
                    free < *qty as usize
                };
                if !deserved {
                    refused.push(format!(
                        "event {id}: refused {qty} of {cat} (no_adjacent={no_adjacent}) with {free} free"
                    ));
                }
            }
            for s in &log.unavailable {
                if state.get(s).is_none_or(|(st, _)| st == "available") {
                    unavailable.push(format!("event {id}: {s} refused but is free"));
                }
            }
            for (u, n) in per_user {
                if n > PER_USER {
                    limit.push(format!("{} holds {n} seats of event {id}", users[u as usize]));
                }
            }
        }
        let n = self.ids.len();
        checks.each("no seat held twice", n, twice);
        checks.each("held seats are exactly the answered holds, within capacity", n, exact);
        checks.each("every sold_out / no_adjacent_seats was deserved", n, refused);
        checks.each("every seat_unavailable was deserved", n, unavailable);
        checks.each("no user above the per-user limit", n, limit);
        Ok(())
    }
}

/// Stage 1: category holds on the current event.
pub struct CategoryLoad {
    events: Arc<Events>,
    tokens: Arc<Vec<Arc<str>>>,
    end: usize,
    current: AtomicUsize,
    /// Per category of the current event: true once sold out.
    out: [AtomicBool; 2],
    /// Quantity 2 gave no_adjacent_seats: ask for 1 only.
    singles: [AtomicBool; 2],
    counter: AtomicU64,
    paths: Arc<str>,
}

impl CategoryLoad {
    pub fn new(events: Arc<Events>, tokens: Arc<Vec<Arc<str>>>, base: usize, end: usize) -> Self {
        CategoryLoad {
            events,
            tokens,
            end,
            current: AtomicUsize::new(base),
            out: [AtomicBool::new(false), AtomicBool::new(false)],
            singles: [AtomicBool::new(false), AtomicBool::new(false)],
            counter: AtomicU64::new(0),
            paths: Arc::from("/v1/orders"),
        }
    }
}

impl Workload for CategoryLoad {
    fn next(&self, _task: usize) -> Next {
        let event = self.current.load(Ordering::Acquire);
        if event >= self.end {
            return Next::Done;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut cat = (n % 2) as usize;
        if self.out[cat].load(Ordering::Relaxed) {
            cat = 1 - cat;
        }
        let qty = if self.singles[cat].load(Ordering::Relaxed) { 1 } else { 1 + (n / 2 % 2) as u32 };
        let user = (n as usize) % self.tokens.len();
        let category = ["a", "b"][cat];
        let body = json!({"event_id": self.events.ids[event], "category": category, "quantity": qty});
        Next::Send(Req {
            method: Method::POST,
            path: self.paths.clone(),
            token: Some(self.tokens[user].clone()),
            body: Some(Bytes::from(body.to_string())),
            tag: [event as u32, user as u32, (cat as u32) << 8 | qty],
            admission: None,
        })
    }

    fn observe(&self, req: &Req, status: u16, body: &[u8]) -> bool {
        let [event, user, cq] = req.tag;
        let (cat, qty) = ((cq >> 8) as usize, cq & 0xff);
        let cat_name = ["a", "b"][cat].to_string();
        let ok = self.events.observe(event as usize, user, (cat_name, qty), status, body);
        if status == 409 && event as usize == self.current.load(Ordering::Acquire) {
            let code = std::str::from_utf8(body).unwrap_or("");
            if code.contains("no_adjacent_seats") {
                self.singles[cat].store(true, Ordering::Relaxed);
            } else if code.contains("sold_out") && qty == 1 {
                self.out[cat].store(true, Ordering::Relaxed);
            }
            if self.out.iter().all(|o| o.load(Ordering::Relaxed))
                && self
                    .current
                    .compare_exchange(event as usize, event as usize + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                for f in self.out.iter().chain(&self.singles) {
                    f.store(false, Ordering::Relaxed);
                }
            }
        }
        ok
    }
}

/// Stage 2: named seats, each asked for by two users at once.
pub struct NamedLoad {
    events: Arc<Events>,
    tokens: Arc<Vec<Arc<str>>>,
    base: usize,
    end: usize,
    counter: AtomicU64,
    path: Arc<str>,
}

impl NamedLoad {
    pub fn new(events: Arc<Events>, tokens: Arc<Vec<Arc<str>>>, base: usize, end: usize) -> Self {
        NamedLoad { events, tokens, base, end, counter: AtomicU64::new(0), path: Arc::from("/v1/orders") }
    }
}

impl Workload for NamedLoad {
    fn next(&self, _task: usize) -> Next {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) as usize;
        let per_event = 2 * self.events.capacity();
        let event = self.base + n / per_event;
        if event >= self.end {
            return Next::Done;
        }
        let seat = self.events.label((n % per_event) / 2);
        let user = n % self.tokens.len();
        let body = json!({"event_id": self.events.ids[event], "seats": [seat]});
        Next::Send(Req {
            method: Method::POST,
            path: self.path.clone(),
            token: Some(self.tokens[user].clone()),
            body: Some(Bytes::from(body.to_string())),
            tag: [event as u32, user as u32, 1],
            admission: None,
        })
    }

    fn observe(&self, req: &Req, status: u16, body: &[u8]) -> bool {
        let [event, user, _] = req.tag;
        self.events.observe(event as usize, user, (String::new(), 1), status, body)
    }
}

/// Stage `opening`: every connection sends category holds from before the
/// event's opening instant until it is sold out. Checked after: no hold
/// was acknowledged before `on_sale_at`, by the order's creation time nor
/// by when its answer arrived (one machine, one clock); every refusal
/// before it was `not_on_sale` naming the instant; and the seat checks of
/// the `seats` stages.
pub struct OpeningLoad {
    inner: CategoryLoad,
    opens_ms: i64,
    early: Mutex<Vec<String>>,
    /// 409 `not_on_sale` answers, and those that named another instant.
    refused: AtomicU64,
    misnamed: Mutex<Vec<String>>,
}

impl OpeningLoad {
    pub fn new(events: Arc<Events>, tokens: Arc<Vec<Arc<str>>>, event: usize, opens_ms: i64) -> Self {
        OpeningLoad {
            inner: CategoryLoad::new(events, tokens, event, event + 1),
            opens_ms,
            early: Mutex::new(Vec::new()),
            refused: AtomicU64::new(0),
            misnamed: Mutex::new(Vec::new()),
        }
    }

    /// Records the stage's own checks.
    pub fn check(&self, checks: &mut Checks) {
        let early = lock(&self.early).clone();
        let held = self.inner.events.logs.iter().map(|l| lock(l).holds.len()).sum::<usize>();
        checks.each("opening: no hold acknowledged before on_sale_at", held, early);
        let refused = self.refused.load(Ordering::Relaxed) as usize;
        checks.each("opening: every refusal before it named the instant", refused, lock(&self.misnamed).clone());
    }
}

fn ms_of(v: &Value) -> Option<i64> {
    v.as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.timestamp_millis())
}

impl Workload for OpeningLoad {
    fn next(&self, task: usize) -> Next {
        self.inner.next(task)
    }

    fn observe(&self, req: &Req, status: u16, body: &[u8]) -> bool {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        match (status, v["error"]["code"].as_str()) {
            (201, _) => {
                let created = ms_of(&v["created_at"]).unwrap_or(i64::MIN);
                if created < self.opens_ms || now_ms < self.opens_ms {
                    lock(&self.early).push(format!(
                        "order {} created at {created} ms, answered at {now_ms} ms, opening {} ms",
                        v["order_id"], self.opens_ms
                    ));
                }
            }
            (409, Some("not_on_sale")) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                if ms_of(&v["error"]["on_sale_at"]) != Some(self.opens_ms) {
                    lock(&self.misnamed).push(format!("{v}"));
                }
            }
            _ => {}
        }
        self.inner.observe(req, status, body)
    }
}
