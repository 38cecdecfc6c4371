//! Waiting rooms in the hot store: one order of admission per event for
//! every node.
//!
//! Each joiner gets a score: before the opening a uniformly random one
//! (below every later score), from the opening on the next number of a
//! counter. The queue is the joiners by score, so everyone who joined before
//! the opening stands in a uniformly random order from the opening instant
//! (independent random keys sort into a uniform permutation, whatever the
//! arrival order), and later joiners are first in, first out behind them.
//! Positions are hidden until the opening: there is no order before it.
//!
//! Admission is a token bucket on the store's clock, advanced by every
//! queue call (and each node's ticker): `admit_per_s` tokens a second from
//! the opening, at most `burst` banked; each token admits the head of the
//! queue while fewer than `active_max` admissions are unexpired. Redis runs
//! it in `lua/queue.lua`, under the event's partition tag; the embedded
//! store keeps it here in memory and in `hot.db` (`queue_tickets`), rebuilt
//! from the file after a restart (the bucket starts empty again, so a
//! restart never admits faster).

use std::collections::{BTreeSet, HashMap};

use crate::domain::Id;

/// Scores from the opening on start here: above every pre-queue score
/// (random keys are below 2^52).
pub const FIFO_BASE: u64 = 1 << 52;

/// An event's waiting room, as the store applies it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QueueRules {
    pub opens_ms: u64,
    /// The queue's state is kept until then (Redis: key expiry).
    pub keep_until_ms: u64,
    pub pre_queue_ms: u64,
    pub admit_per_s: u32,
    /// 0: no bound.
    pub active_max: u32,
    pub admission_ttl_ms: u64,
    /// Tokens banked at most (at least 1).
    pub burst: f64,
}

/// Where one user stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// `position` from 1 (None before the opening: no order yet).
    Waiting {
        position: Option<u64>,
    },
    /// The `admit_no`-th admission of the event, valid until `expires_ms`.
    Admitted {
        admit_no: u64,
        expires_ms: u64,
    },
    Expired {
        admit_no: u64,
        expires_ms: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub ticket_id: Id,
    pub standing: Standing,
    /// The store's clock when it answered.
    pub now_ms: u64,
}

/// What a join found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Joined {
    Ticket(Ticket),
    /// Before `opens_ms - pre_queue_ms` by the store's clock.
    NotOpen {
        now_ms: u64,
    },
}

/// One user's ticket as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTicket {
    pub ticket_id: Id,
    pub score: u64,
    /// 0 while waiting.
    pub admit_no: u64,
    pub expires_ms: u64,
}

/// The embedded store's queue of one event (Redis keeps the same in a
/// sorted set and two hashes).
#[derive(Debug, Default)]
pub struct MemQueue {
    pub tickets: HashMap<String, StoredTicket>,
    wait: Waiting,
    /// Unexpired admissions by (expiry, user).
    active: BTreeSet<(u64, String)>,
    seq: u64,
    admitted: u64,
    tokens: f64,
    last_ms: u64,
}

/// What an operation changed, for the file.
#[derive(Debug, Default)]
pub struct QueueWrites {
    pub upsert: Vec<(String, StoredTicket)>,
    pub delete: Vec<String>,
}

impl MemQueue {
    /// The queue from its stored tickets.
    pub fn from_tickets(tickets: HashMap<String, StoredTicket>, now_ms: u64) -> MemQueue {
        let mut q = MemQueue { last_ms: now_ms, ..MemQueue::default() };
        for (user, t) in &tickets {
            if t.admit_no == 0 {
                q.wait.insert(t.score, user);
            } else if t.expires_ms > now_ms {
                q.active.insert((t.expires_ms, user.clone()));
            }
            if t.score >= FIFO_BASE {
                q.seq = q.seq.max(t.score - FIFO_BASE);
            }
            q.admitted = q.admitted.max(t.admit_no);
        }
        q.tickets = tickets;
        q
    }

    /// Admits what the bucket allows at `now_ms` (see the module).
    pub fn advance(&mut self, r: &QueueRules, now_ms: u64, w: &mut QueueWrites) -> u64 {
        if now_ms < r.opens_ms || r.admit_per_s == 0 {
            return 0;
        }
        let last = self.last_ms.max(r.opens_ms);
        if now_ms > last {
            self.tokens = (self.tokens + (now_ms - last) as f64 * f64::from(r.admit_per_s) / 1000.0).min(r.burst);
            self.last_ms = now_ms;
        }
        while let Some(first) = self.active.first() {
            if first.0 > now_ms {
                break;
            }
            self.active.pop_first();
        }
        let mut n = self.tokens.floor() as u64;
        if r.active_max > 0 {
            n = n.min(u64::from(r.active_max).saturating_sub(self.active.len() as u64));
        }
        let mut admitted = 0;
        self.wait.fix_order_once(now_ms >= r.opens_ms);
        while admitted < n {
            let Some(user) = self.wait.pop_first() else { break };
            self.admitted += 1;
            let expires_ms = now_ms + r.admission_ttl_ms;
            if let Some(t) = self.tickets.get_mut(&user) {
                t.admit_no = self.admitted;
                t.expires_ms = expires_ms;
                w.upsert.push((user.clone(), t.clone()));
            }
            self.active.insert((expires_ms, user));
            admitted += 1;
        }
        self.tokens -= admitted as f64;
        admitted
    }

    pub fn standing(&self, user: &str, r: &QueueRules, now_ms: u64) -> Option<Ticket> {
        let t = self.tickets.get(user)?;
        let standing = if t.admit_no > 0 {
            if t.expires_ms > now_ms {
                Standing::Admitted { admit_no: t.admit_no, expires_ms: t.expires_ms }
            } else {
                Standing::Expired { admit_no: t.admit_no, expires_ms: t.expires_ms }
            }
        } else {
            let position = if now_ms >= r.opens_ms { self.wait.position(t.score, user) } else { None };
            Standing::Waiting { position }
        };
        Some(Ticket { ticket_id: t.ticket_id, standing, now_ms })
    }

    /// Joins (idempotent while waiting or admitted; an expired user queues
    /// again at the back).
    pub fn join(
        &mut self,
        user: &str,
        r: &QueueRules,
        now_ms: u64,
        (ticket_id, key): (Id, u64),
        w: &mut QueueWrites,
    ) -> Joined {
        if now_ms < r.opens_ms.saturating_sub(r.pre_queue_ms) {
            return Joined::NotOpen { now_ms };
        }
        self.advance(r, now_ms, w);
        if let Some(t) = self.standing(user, r, now_ms) {
            if !matches!(t.standing, Standing::Expired { .. }) {
                return Joined::Ticket(t);
            }
        }
        let score = if now_ms < r.opens_ms {
            key & (FIFO_BASE - 1)
        } else {
            self.seq += 1;
            FIFO_BASE + self.seq
        };
        let t = StoredTicket { ticket_id, score, admit_no: 0, expires_ms: 0 };
        self.tickets.insert(user.to_string(), t.clone());
        self.wait.insert(score, user);
        w.upsert.push((user.to_string(), t));
        self.advance(r, now_ms, w);
        match self.standing(user, r, now_ms) {
            Some(t) => Joined::Ticket(t),
            None => Joined::NotOpen { now_ms },
        }
    }

    pub fn leave(&mut self, user: &str, w: &mut QueueWrites) -> bool {
        let Some(t) = self.tickets.remove(user) else { return false };
        self.wait.remove(t.score, user);
        self.active.remove(&(t.expires_ms, user.to_string()));
        w.delete.push(user.to_string());
        true
    }
}

/// Waiting users in queue order, with each one's position in O(log n):
/// by (score, user) until the order is fixed at the opening, then in slots
/// (the fixed order, later joiners appended) counted by a Fenwick tree.
#[derive(Debug, Default)]
struct Waiting {
    before: BTreeSet<(u64, String)>,
    fixed: bool,
    slots: Vec<String>,
    slot_of: HashMap<String, usize>,
    present: Fenwick,
    head: usize,
}

impl Waiting {
    fn fix_order_once(&mut self, opened: bool) {
        if opened && !self.fixed {
            self.fixed = true;
            for (_, user) in std::mem::take(&mut self.before) {
                self.append(user);
            }
        }
    }

    fn append(&mut self, user: String) {
        self.slot_of.insert(user.clone(), self.slots.len());
        self.slots.push(user);
        self.present.push(1);
    }

    /// Scores only grow once the order is fixed (the counter).
    fn insert(&mut self, score: u64, user: &str) {
        if self.fixed {
            self.append(user.to_string());
        } else {
            self.before.insert((score, user.to_string()));
        }
    }

    fn remove(&mut self, score: u64, user: &str) {
        if !self.fixed {
            self.before.remove(&(score, user.to_string()));
        } else if let Some(slot) = self.slot_of.remove(user) {
            self.present.add(slot, -1);
        }
    }

    fn pop_first(&mut self) -> Option<String> {
        if !self.fixed {
            return self.before.pop_first().map(|(_, u)| u);
        }
        while self.head < self.slots.len() {
            let slot = self.head;
            self.head += 1;
            let user = &self.slots[slot];
            if self.slot_of.get(user) == Some(&slot) {
                self.slot_of.remove(user);
                self.present.add(slot, -1);
                return Some(std::mem::take(&mut self.slots[slot]));
            }
        }
        None
    }

    fn position(&self, score: u64, user: &str) -> Option<u64> {
        if !self.fixed {
            // Between the opening and the first admission step only.
            return Some(self.before.range(..(score, user.to_string())).count() as u64 + 1);
        }
        let slot = *self.slot_of.get(user)?;
        Some(self.present.prefix(slot) as u64)
    }
}

/// Counts over a growing array: add and prefix sums in O(log n).
#[derive(Debug, Default)]
struct Fenwick(Vec<i64>);

impl Fenwick {
    fn prefix(&self, i: usize) -> i64 {
        let (mut i, mut sum) = (i + 1, 0);
        while i > 0 {
            sum += self.0[i - 1];
            i &= i - 1;
        }
        sum
    }

    fn add(&mut self, i: usize, v: i64) {
        let mut i = i + 1;
        while i <= self.0.len() {
            self.0[i - 1] += v;
            i += i & i.wrapping_neg();
        }
    }

    /// Appends element `len` with value `v`: its node covers
    /// `(i - lowbit(i), i]`, the elements before it read from the prefixes.
    fn push(&mut self, v: i64) {
        let i = self.0.len() + 1;
        let low = i & i.wrapping_neg();
        let covered = if i > 1 { self.prefix(i - 2) } else { 0 } - if i > low { self.prefix(i - low - 1) } else { 0 };
        self.0.push(v + covered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(opens_ms: u64, per_s: u32, active_max: u32) -> QueueRules {
        QueueRules {
            opens_ms,
            keep_until_ms: u64::MAX,
            pre_queue_ms: 1_000,
            admit_per_s: per_s,
            active_max,
            admission_ttl_ms: 500,
            burst: 1.0,
        }
    }

    fn id(n: u64) -> Id {
        Id::from_raw(n as i64).unwrap()
    }

    #[test]
    fn pre_queue_order_is_by_random_key_then_fifo_and_admission_follows_the_bucket() {
        let r = rules(10_000, 10, 0);
        let mut q = MemQueue::default();
        let mut w = QueueWrites::default();
        assert_eq!(q.join("early", &r, 8_999, (id(1), 5), &mut w), Joined::NotOpen { now_ms: 8_999 });
        // Keys decide, not arrival: c (key 1) before a (key 7) before b (key 9).
        for (i, (u, k)) in [("a", 7), ("b", 9), ("c", 1)].into_iter().enumerate() {
            let j = q.join(u, &r, 9_000 + i as u64, (id(10 + i as u64), k), &mut w);
            assert!(matches!(j, Joined::Ticket(Ticket { standing: Standing::Waiting { position: None, .. }, .. })));
        }
        q.join("late1", &r, 10_000, (id(20), 0), &mut w);
        q.join("late2", &r, 10_000, (id(21), 0), &mut w);
        let pos = |q: &MemQueue, u: &str| match q.standing(u, &r, 10_000).unwrap().standing {
            Standing::Waiting { position, .. } => position,
            s => panic!("{s:?}"),
        };
        assert_eq!(
            ["c", "a", "b", "late1", "late2"].map(|u| pos(&q, u)),
            [Some(1), Some(2), Some(3), Some(4), Some(5)]
        );
        // 10 per second, burst 1: one each 100 ms, in queue order.
        let mut order = vec![];
        for t in (10_000..10_600).step_by(50) {
            let mut w = QueueWrites::default();
            q.advance(&r, t, &mut w);
            order.extend(w.upsert.into_iter().map(|(u, t)| (u, t.admit_no)));
        }
        assert_eq!(
            order,
            [("c", 1), ("a", 2), ("b", 3), ("late1", 4), ("late2", 5)].map(|(u, n)| (u.to_string(), n)).to_vec()
        );
        // c, admitted at 10 100 for 500 ms.
        assert!(matches!(q.standing("c", &r, 10_599).unwrap().standing, Standing::Admitted { .. }));
        assert!(matches!(q.standing("c", &r, 10_600).unwrap().standing, Standing::Expired { .. }));
        // Expired: joins again at the back.
        let again = q.join("c", &r, 10_700, (id(30), 0), &mut w);
        assert!(matches!(again, Joined::Ticket(Ticket { ticket_id, .. }) if ticket_id == id(30)));
    }

    #[test]
    fn fenwick_counts_as_a_plain_array_does() {
        let mut f = Fenwick::default();
        let mut plain = vec![];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..500 {
            if plain.is_empty() || rng.bool() {
                let v = rng.i64(0..3);
                f.push(v);
                plain.push(v);
            } else {
                let i = rng.usize(..plain.len());
                f.add(i, -1);
                plain[i] -= 1;
            }
            let i = rng.usize(..plain.len());
            assert_eq!(f.prefix(i), plain[..=i].iter().sum::<i64>());
        }
    }

    #[test]
    fn active_max_holds_admissions_until_one_expires_or_leaves() {
        let r = rules(0, 1_000, 2);
        let mut q = MemQueue::default();
        let mut w = QueueWrites::default();
        for (i, u) in ["a", "b", "c", "d"].into_iter().enumerate() {
            q.join(u, &r, 1, (id(1 + i as u64), 0), &mut w);
        }
        let admitted = |q: &MemQueue, t| {
            ["a", "b", "c", "d"]
                .into_iter()
                .filter(|u| q.standing(u, &r, t).is_some_and(|t| matches!(t.standing, Standing::Admitted { .. })))
                .count()
        };
        q.advance(&r, 100, &mut w);
        assert_eq!(admitted(&q, 100), 2);
        assert!(q.leave("a", &mut w));
        q.advance(&r, 200, &mut w);
        assert_eq!(admitted(&q, 200), 2, "a's slot went to c");
        // b's admission (from t=1) expires at 501.
        q.advance(&r, 600, &mut w);
        assert!(matches!(q.standing("d", &r, 600).unwrap().standing, Standing::Admitted { .. }));
    }

    #[test]
    fn a_rebuilt_queue_keeps_order_and_admission_numbers() {
        let r = rules(0, 1, 0);
        let mut q = MemQueue::default();
        let mut w = QueueWrites::default();
        for (i, u) in ["a", "b", "c"].into_iter().enumerate() {
            q.join(u, &r, 10, (id(1 + i as u64), 0), &mut w);
        }
        q.advance(&r, 2_000, &mut w);
        let q2 = MemQueue::from_tickets(q.tickets.clone(), 2_000);
        for u in ["a", "b", "c"] {
            assert_eq!(q2.standing(u, &r, 2_000), q.standing(u, &r, 2_000));
        }
        let mut q2 = q2;
        let mut w2 = QueueWrites::default();
        q2.join("d", &r, 2_001, (id(9), 0), &mut w2);
        assert_eq!(w2.upsert[0].1.score, FIFO_BASE + 4, "the counter goes on after the last stored score");
    }
}
