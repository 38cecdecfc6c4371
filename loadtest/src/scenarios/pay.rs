//! `pay`: the whole purchase, pipelined: hold one seat (category `a`,
//! quantity 1) → open a payment (wechat, alipay, ecard in turn) → the
//! sandbox buyer pays. Every fourth payment's callback is sent twice, every
//! tenth is dropped (rush's active query must find it). A task always
//! prefers the step furthest along, so orders do not pile up unpaid. When
//! an event sells out the holds move to the next one.
//!
//! A stage's `ok` counts purchases (a payment the buyer completed); the
//! holds and payments opened on the way are in its outcomes.
//!
//! Checked after: every paid payment succeeds and its order is paid; each
//! event's sold seats are exactly its paid orders; rush counted exactly one
//! success per paid payment (`rush_payments_total{outcome="succeeded"}`,
//! read before and after), so no duplicated callback applied twice.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};

use crate::api::Api;
use crate::checks::Checks;
use crate::load::{Next, Req, Workload};
use crate::lock;

const HOLD: u32 = 0;
const OPEN: u32 = 1;
const PAY: u32 = 2;
const CHANNELS: [&str; 3] = ["wechat", "alipay", "ecard"];

#[derive(Default)]
struct Book {
    /// Held orders: (event index, order id, user).
    orders: Vec<(usize, String, usize)>,
    /// Orders waiting for a payment (indexes into `orders`).
    to_open: VecDeque<usize>,
    /// Payments: (order index, payment id, channel).
    payments: Vec<(usize, String, &'static str)>,
    to_pay: VecDeque<usize>,
    /// Payments the sandbox took money for.
    paid: Vec<usize>,
}

pub struct PayLoad {
    events: Vec<String>,
    tokens: Arc<Vec<Arc<str>>>,
    current: AtomicUsize,
    counter: AtomicU64,
    book: Mutex<Book>,
    hold_path: Arc<str>,
}

impl PayLoad {
    pub fn new(events: Vec<String>, tokens: Arc<Vec<Arc<str>>>) -> Self {
        PayLoad {
            events,
            tokens,
            current: AtomicUsize::new(0),
            counter: AtomicU64::new(0),
            book: Mutex::new(Book::default()),
            hold_path: Arc::from("/v1/orders"),
        }
    }
}

impl Workload for PayLoad {
    fn next(&self, _task: usize) -> Next {
        let mut book = lock(&self.book);
        if let Some(p) = book.to_pay.pop_front() {
            let (_, id, channel) = &book.payments[p];
            let body = match p % 10 {
                0 => json!({"callback": "drop"}),
                n if n % 4 == 1 => json!({"duplicates": 1}),
                _ => json!({"callback": "send"}),
            };
            return Next::Send(Req {
                method: Method::POST,
                path: Arc::from(format!("/v1/sandbox/{channel}/payments/{id}/complete")),
                token: None,
                body: Some(Bytes::from(body.to_string())),
                tag: [PAY, 0, p as u32],
                admission: None,
            });
        }
        if let Some(o) = book.to_open.pop_front() {
            let (_, id, user) = &book.orders[o];
            let channel = CHANNELS[o % CHANNELS.len()];
            return Next::Send(Req {
                method: Method::POST,
                path: Arc::from(format!("/v1/orders/{id}/payments")),
                token: Some(self.tokens[*user].clone()),
                body: Some(Bytes::from(json!({"channel": channel}).to_string())),
                tag: [OPEN, *user as u32, o as u32],
                admission: None,
            });
        }
        drop(book);
        let event = self.current.load(Ordering::Acquire);
        if event >= self.events.len() {
            return Next::Wait;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed) as usize;
        let user = n % self.tokens.len();
        let body = json!({"event_id": self.events[event], "category": "a", "quantity": 1});
        Next::Send(Req {
            method: Method::POST,
            path: self.hold_path.clone(),
            token: Some(self.tokens[user].clone()),
            body: Some(Bytes::from(body.to_string())),
            tag: [HOLD, user as u32, event as u32],
            admission: None,
        })
    }

    fn observe(&self, req: &Req, status: u16, body: &[u8]) -> bool {
        let [kind, user, i] = req.tag;
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let mut book = lock(&self.book);
        match (kind, status) {
            (HOLD, 201) => {
                let Some(id) = v["order_id"].as_str() else { return false };
                book.orders.push((i as usize, id.to_string(), user as usize));
                let o = book.orders.len() - 1;
                book.to_open.push_back(o);
                false
            }
            (HOLD, 409) => {
                // Sold out (or the per-user limit): move to the next event.
                let _ = self.current.compare_exchange(i as usize, i as usize + 1, Ordering::AcqRel, Ordering::Relaxed);
                false
            }
            (OPEN, 201) => {
                let Some(id) = v["payment_id"].as_str() else { return false };
                let channel = CHANNELS[i as usize % CHANNELS.len()];
                book.payments.push((i as usize, id.to_string(), channel));
                let p = book.payments.len() - 1;
                book.to_pay.push_back(p);
                false
            }
            (PAY, 200) => {
                book.paid.push(i as usize);
                true
            }
            // Anything else (503 overload, a hold expired before payment) is
            // an outcome in the report; the step is not retried.
            _ => false,
        }
    }
}

/// `count` events of `rows` × `cols` seats, all category `a` (100 fen).
pub async fn events(api: &mut Api, run_id: &str, count: usize, rows: u32, cols: u32) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let sections = json!([{"name": "A", "rows": rows, "cols": cols, "category": "a"}]);
        ids.push(api.create_event(&format!("{run_id}-pay-{i}"), sections).await?);
    }
    Ok(ids)
}

/// rush's count of succeeded payments (0 if the metric is not there yet).
pub async fn succeeded_count(api: &mut Api) -> anyhow::Result<u64> {
    let (_, text) = api.text("/metrics").await?;
    Ok(crate::sample::metric(&text, "rush_payments_total", "outcome=\"succeeded\"").unwrap_or(0.0) as u64)
}

impl PayLoad {
    pub async fn check(&self, api: &mut Api, before: u64, settle_s: u64, checks: &mut Checks) -> anyhow::Result<()> {
        let (orders, payments, paid) = {
            let b = lock(&self.book);
            (b.orders.clone(), b.payments.clone(), b.paid.clone())
        };
        let admin = api.admin.clone();
        // Paid payments succeed (dropped callbacks wait for the active query).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(settle_s);
        let mut not_succeeded;
        loop {
            let paths = paid.iter().map(|p| (format!("/v1/payments/{}", payments[*p].1), admin.clone())).collect();
            not_succeeded = Vec::new();
            for (p, (s, v)) in paid.iter().zip(api.get_many(paths).await?) {
                if s != 200 || v["status"] != "succeeded" {
                    not_succeeded.push(format!("payment {} is {s} {}", payments[*p].1, v["status"]));
                }
            }
            if not_succeeded.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        checks.each("every paid payment succeeded", paid.len(), not_succeeded);
        let paths = paid.iter().map(|p| (format!("/v1/orders/{}", orders[payments[*p].0].1), admin.clone())).collect();
        let unpaid: Vec<String> = api
            .get_many(paths)
            .await?
            .into_iter()
            .filter(|(s, v)| *s != 200 || v["status"] != "paid")
            .map(|(s, v)| format!("order {} is {s} {}", v["order_id"], v["status"]))
            .collect();
        checks.each("every paid payment's order is paid", paid.len(), unpaid);
        let mut paid_per_event = vec![0usize; self.events.len()];
        for p in &paid {
            paid_per_event[orders[payments[*p].0].0] += 1;
        }
        let paths = self.events.iter().map(|e| (format!("/v1/events/{e}/seats"), admin.clone())).collect();
        let mut wrong = Vec::new();
        for (e, (_, v)) in api.get_many(paths).await?.into_iter().enumerate() {
            let sold = v["seats"].as_array().map(|a| a.iter().filter(|s| s["status"] == "sold").count()).unwrap_or(0);
            if sold != paid_per_event[e] {
                wrong.push(format!("event {}: {sold} seats sold, {} orders paid", self.events[e], paid_per_event[e]));
            }
        }
        checks.each("sold seats are exactly the paid orders", self.events.len(), wrong);
        let after = succeeded_count(api).await?;
        let counted = after.saturating_sub(before) as usize;
        let twice = if counted == paid.len() {
            vec![]
        } else {
            vec![format!("rush counted {counted} successes for {} paid payments", paid.len())]
        };
        checks.each("one success per paid payment, duplicates included", paid.len(), twice);
        Ok(())
    }
}
