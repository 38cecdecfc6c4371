//! `grab`: one hot packet at a time (every task on the same packet; when it
//! empties, all move to the next), then many packets at once (tasks spread
//! over `spread` packets). Each user grabs each packet at most once.
//!
//! Checked after: one grant per user per packet; our 200s are exactly the
//! packet's grabs; grants + remainder = total; every 410 `packet_empty` and
//! 409 `already_grabbed` was deserved; after the workers settle, every
//! grabber's available and the sender's frozen add up to the cent.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper::Method;
use serde_json::Value;

use crate::api::Api;
use crate::checks::Checks;
use crate::load::{Next, Req, Workload};
use crate::lock;

/// What a run saw of one packet.
#[derive(Default)]
pub struct PacketLog {
    /// (user index, amount) per 200.
    pub grants: Vec<(u32, i64)>,
    pub empty_answers: u64,
    /// (user index, amount) per 409 already_grabbed.
    pub already: Vec<(u32, i64)>,
}

pub struct Packets {
    pub ids: Vec<String>,
    pub paths: Vec<Arc<str>>,
    pub logs: Vec<Mutex<PacketLog>>,
    pub totals: Vec<i64>,
}

impl Packets {
    pub fn new(ids: Vec<String>, totals: Vec<i64>) -> Self {
        Packets {
            paths: ids.iter().map(|id| Arc::from(format!("/v1/packets/{id}/grab"))).collect(),
            logs: ids.iter().map(|_| Mutex::new(PacketLog::default())).collect(),
            ids,
            totals,
        }
    }

    /// Records a grab answer; true for a grant.
    pub fn observe(&self, packet: usize, user: u32, status: u16, body: &[u8]) -> bool {
        let Some(log) = self.logs.get(packet) else { return false };
        let mut log = lock(log);
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        match status {
            200 => {
                log.grants.push((user, v["amount"].as_i64().unwrap_or(-1)));
                true
            }
            409 => {
                log.already.push((user, v["error"]["amount"].as_i64().unwrap_or(-1)));
                false
            }
            410 => {
                log.empty_answers += 1;
                false
            }
            _ => false,
        }
    }

    /// Checks every packet against what rush reports of it.
    pub async fn check(
        &self,
        api: &Api,
        users: &[String],
        sender_token: &Arc<str>,
        checks: &mut Checks,
    ) -> anyhow::Result<()> {
        let paths = self.ids.iter().map(|id| (format!("/v1/packets/{id}"), sender_token.clone())).collect();
        let views = api.get_many(paths).await?;
        let (mut unique, mut exact, mut sums, mut empties, mut already) = (vec![], vec![], vec![], vec![], vec![]);
        for (p, (status, view)) in views.iter().enumerate() {
            let log = lock(&self.logs[p]);
            if *status != 200 {
                exact.push(format!("packet {} read {status}", self.ids[p]));
                continue;
            }
            let grabs: Vec<(String, i64)> = view["grabs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|g| (g["user_id"].as_str().unwrap_or("").to_string(), g["amount"].as_i64().unwrap_or(-1)))
                        .collect()
                })
                .unwrap_or_default();
            let distinct: HashSet<&String> = grabs.iter().map(|(u, _)| u).collect();
            if distinct.len() != grabs.len() {
                unique.push(format!("packet {}: {} grabs by {} users", self.ids[p], grabs.len(), distinct.len()));
            }
            let mut ours: Vec<(String, i64)> =
                log.grants.iter().map(|(u, a)| (users[*u as usize].clone(), *a)).collect();
            let mut theirs = grabs.clone();
            ours.sort();
            theirs.sort();
            if ours != theirs {
                exact.push(format!(
                    "packet {}: {} grants answered, {} grabs recorded",
                    self.ids[p],
                    ours.len(),
                    theirs.len()
                ));
            }
            let granted: i64 = grabs.iter().map(|(_, a)| a).sum();
            let remaining = view["remaining_amount"].as_i64().unwrap_or(-1);
            let remaining_count = view["remaining_count"].as_i64().unwrap_or(-1);
            if granted + remaining != self.totals[p] || (remaining_count == 0 && granted != self.totals[p]) {
                sums.push(format!(
                    "packet {}: granted {granted} + remaining {remaining} != {}",
                    self.ids[p], self.totals[p]
                ));
            }
            if log.empty_answers > 0 && remaining_count != 0 {
                empties.push(format!("packet {} answered empty with {remaining_count} parts left", self.ids[p]));
            }
            for (u, amount) in &log.already {
                if !grabs.contains(&(users[*u as usize].clone(), *amount)) {
                    already.push(format!("{} told already_grabbed {amount} on {}", users[*u as usize], self.ids[p]));
                }
            }
        }
        let n = self.ids.len();
        checks.each("one grant per user per packet", n, unique);
        checks.each("answered grants are exactly the recorded grabs", n, exact);
        checks.each("grants + remainder = packet total", n, sums);
        checks.each("every packet_empty was deserved", n, empties);
        checks.each("every already_grabbed was deserved", n, already);
        Ok(())
    }

    /// Sum of grants per user index.
    pub fn granted_per_user(&self) -> HashMap<u32, i64> {
        let mut out = HashMap::new();
        for log in &self.logs {
            for (u, a) in &lock(log).grants {
                *out.entry(*u).or_default() += a;
            }
        }
        out
    }

    pub fn granted_total(&self) -> i64 {
        self.granted_per_user().values().sum()
    }
}

/// Per-task cursor over users for its current packet.
#[derive(Default)]
struct Cursor {
    packet: usize,
    j: usize,
}

pub struct GrabLoad {
    pub packets: Arc<Packets>,
    tokens: Arc<Vec<Arc<str>>>,
    /// Packets `base..base + spread * rounds` belong to this stage.
    base: usize,
    end: usize,
    spread: usize,
    concurrency: usize,
    /// Round per slot: the slot's current packet is base + round*spread + slot.
    rounds: Vec<AtomicUsize>,
    cursors: Vec<Mutex<Cursor>>,
}

impl GrabLoad {
    pub fn new(
        packets: Arc<Packets>,
        tokens: Arc<Vec<Arc<str>>>,
        base: usize,
        end: usize,
        spread: usize,
        concurrency: usize,
    ) -> Self {
        GrabLoad {
            packets,
            tokens,
            base,
            end,
            spread: spread.max(1),
            concurrency,
            rounds: (0..spread.max(1)).map(|_| AtomicUsize::new(0)).collect(),
            cursors: (0..concurrency).map(|_| Mutex::new(Cursor { packet: usize::MAX, j: 0 })).collect(),
        }
    }
}

impl Workload for GrabLoad {
    fn next(&self, task: usize) -> Next {
        let slot = task % self.spread;
        let packet = self.base + self.rounds[slot].load(Ordering::Acquire) * self.spread + slot;
        if packet >= self.end {
            return Next::Done;
        }
        let mut c = lock(&self.cursors[task]);
        if c.packet != packet {
            *c = Cursor { packet, j: 0 };
        }
        // Tasks sharing a slot take disjoint users: k + j * tasks_per_slot.
        let tasks_per_slot = self.concurrency.div_ceil(self.spread);
        let user = task / self.spread + c.j * tasks_per_slot;
        if user >= self.tokens.len() {
            return Next::Wait;
        }
        c.j += 1;
        Next::Send(Req {
            method: Method::POST,
            path: self.packets.paths[packet].clone(),
            token: Some(self.tokens[user].clone()),
            body: None,
            tag: [packet as u32, user as u32, slot as u32],
            admission: None,
        })
    }

    fn observe(&self, req: &Req, status: u16, body: &[u8]) -> bool {
        let [packet, user, slot] = req.tag;
        if status == 410 {
            // Empty: move the slot on (once, whoever sees it first).
            let round = (packet as usize - self.base - slot as usize) / self.spread;
            let _ = self.rounds[slot as usize].compare_exchange(round, round + 1, Ordering::AcqRel, Ordering::Relaxed);
        }
        self.packets.observe(packet as usize, user, status, body)
    }
}

/// The funded user who sent a run's packets.
pub struct Sender {
    pub token: Arc<str>,
    /// Everything credited to them for the run.
    pub credit: i64,
}

/// After the workers settle: each grabber's available is their grants and
/// the sender's frozen is what is left in their packets. Returns how long
/// it took until every wallet was right (`None`: not within `settle_s`).
pub async fn check_balances(
    api: &Api,
    packets: &Packets,
    users: &[String],
    tokens: &[Arc<str>],
    sender: &Sender,
    settle_s: u64,
    checks: &mut Checks,
) -> anyhow::Result<Option<f64>> {
    let start = std::time::Instant::now();
    let (sender_token, sender_credit) = (&sender.token, sender.credit);
    let per_user = packets.granted_per_user();
    let created: i64 = packets.totals.iter().sum();
    let left = created - packets.granted_total();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(settle_s);
    let mut failures;
    loop {
        failures = Vec::new();
        let mut paths: Vec<(String, Arc<str>)> =
            per_user.keys().map(|u| ("/v1/wallet".to_string(), tokens[*u as usize].clone())).collect();
        paths.push(("/v1/wallet".to_string(), sender_token.clone()));
        let wallets = api.get_many(paths).await?;
        for ((u, want), (_, w)) in per_user.iter().zip(&wallets) {
            let got = w["available"].as_i64().unwrap_or(-1);
            if got != *want {
                failures.push(format!("{} has {got}, granted {want}", users[*u as usize]));
            }
        }
        if let Some((_, s)) = wallets.last() {
            let (available, frozen) = (s["available"].as_i64().unwrap_or(-1), s["frozen"].as_i64().unwrap_or(-1));
            if (available, frozen) != (sender_credit - created, left) {
                failures.push(format!(
                    "sender has {available} available / {frozen} frozen, expected {} / {left}",
                    sender_credit - created
                ));
            }
        }
        if failures.is_empty() || std::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let settled = failures.is_empty().then(|| start.elapsed().as_secs_f64());
    checks.each("balances add up to the cent after workers settle", per_user.len() + 1, failures);
    Ok(settled)
}
