//! What a client just did, kept in the hot store until the durable side
//! surely has it: a user's recent orders (for their list right after a
//! hold), orders just closed (cancelled, expired, refunded: the hot
//! store drops them at once, the durable store learns of it through the
//! workers) and a user's recent grabs (their credit, for the wallet read
//! right after a grab). Reads merge these over the durable store, so a client reads
//! its own writes on any node however far the workers lag, up to
//! `orders.recent_keep_s`, without waiting for them.
//!
//! The embedded store keeps them in memory ([`Recent`]); the Redis store
//! in keys with a time to live (`redis.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::domain::{Fen, Id, OrderStatus};
use crate::store::{Grab, HotOrder, StoreError};

/// How long orders are remembered by default: minutes of worker lag.
pub const RECENT_KEEP_MS_DEFAULT: u64 = 600_000;
/// Most recent orders (and grabs) remembered per user by default
/// (`orders.recent_per_user_max`).
pub const RECENT_PER_USER_MAX_DEFAULT: usize = 1000;

/// Of a user's recent order ids (any order), the `limit` newest below
/// `before` that the store still knows, newest first: all a list page can
/// take from them. An id may name a hold still in flight (indexed before
/// its script runs) or refused: it is skipped and the next one read, so a
/// page is short only when the ids run out.
pub async fn page_of<F, Fut>(
    mut ids: Vec<Id>,
    before: Option<Id>,
    limit: usize,
    order: F,
) -> Result<Vec<(HotOrder, OrderStatus)>, StoreError>
where
    F: Fn(Id) -> Fut,
    Fut: std::future::Future<Output = Result<Option<(HotOrder, OrderStatus)>, StoreError>>,
{
    ids.retain(|id| before.is_none_or(|b| *id < b));
    ids.sort_unstable_by_key(|id| std::cmp::Reverse(*id));
    let mut out = Vec::with_capacity(limit.min(ids.len()));
    for chunk in ids.chunks(limit.max(1)) {
        // A chunk at once; in order, so the page stays newest first.
        for found in futures_util::future::join_all(chunk.iter().map(|id| order(*id))).await {
            out.extend(found?);
        }
        if out.len() >= limit {
            out.truncate(limit);
            break;
        }
    }
    Ok(out)
}

/// A closed order as the hot store last saw it, with its final status.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Closed {
    pub order: HotOrder,
    pub status: OrderStatus,
}

/// A grab the hot store granted: its id, the amount credited, and whether
/// the grabber sent the packet. The wallet read takes those the durable
/// store has not applied yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecentGrab {
    pub grab_id: Id,
    pub amount: Fen,
    pub own: bool,
}

/// The suffix of a recent-grab member whose grabber sent the packet.
pub const OWN_SUFFIX: &str = ":own";

impl RecentGrab {
    /// A granted grab of a packet `sender` sent.
    pub fn of(grab: &Grab, sender: &str) -> RecentGrab {
        RecentGrab { grab_id: grab.grab_id, amount: grab.amount, own: grab.user_id == sender }
    }

    /// The Redis zset member: `<grab_id>:<amount>`, then `:own` for a
    /// grab of one's own packet.
    pub fn member(&self) -> String {
        format!("{}:{}{}", self.grab_id, self.amount.get(), if self.own { OWN_SUFFIX } else { "" })
    }

    pub fn parse(member: &str) -> Option<RecentGrab> {
        let (rest, own) = match member.strip_suffix(OWN_SUFFIX) {
            Some(rest) => (rest, true),
            None => (member, false),
        };
        let (id, amount) = rest.split_once(':')?;
        Some(RecentGrab { grab_id: id.parse().ok()?, amount: Fen::new(amount.parse().ok()?), own })
    }
}

/// Per user, what they did within `keep_ms` (oldest first), at most
/// `per_user_max` each.
struct PerUser<T>(HashMap<String, VecDeque<(T, u64)>>);

impl<T: Copy> PerUser<T> {
    fn push(&mut self, user_id: &str, item: T, at_ms: u64, per_user_max: usize) {
        let list = self.0.entry(user_id.to_string()).or_default();
        list.push_back((item, at_ms));
        while list.len() > per_user_max {
            list.pop_front();
        }
    }

    /// The user's items since `cutoff`, newest first; older ones forgotten.
    fn since(&mut self, user_id: &str, cutoff: u64) -> Vec<T> {
        let Some(list) = self.0.get_mut(user_id) else { return vec![] };
        while list.front().is_some_and(|(_, at)| *at < cutoff) {
            list.pop_front();
        }
        let items = list.iter().rev().map(|(item, _)| *item).collect();
        if list.is_empty() {
            self.0.remove(user_id);
        }
        items
    }
}

impl<T> Default for PerUser<T> {
    fn default() -> Self {
        PerUser(HashMap::new())
    }
}

#[derive(Default)]
struct Inner {
    closed: HashMap<Id, (Closed, u64)>,
    /// Closing order, for trimming.
    closed_at: VecDeque<(u64, Id)>,
    orders: PerUser<Id>,
    grabs: PerUser<RecentGrab>,
}

/// The embedded store's memory of recent orders.
pub struct Recent {
    keep_ms: u64,
    per_user_max: usize,
    inner: Mutex<Inner>,
}

impl Recent {
    pub fn new(keep_ms: u64, per_user_max: usize) -> Self {
        Recent { keep_ms, per_user_max, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Each change is one insert or removal: a poisoned lock is whole.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A hold, remembered by its creation time (as the Redis zset scores it).
    pub fn held(&self, order: &HotOrder) {
        self.lock().orders.push(&order.user_id, order.order_id, order.created_at_ms, self.per_user_max);
    }

    /// A granted grab, remembered by its time.
    pub fn grabbed(&self, user_id: &str, grab: RecentGrab, at_ms: u64) {
        self.lock().grabs.push(user_id, grab, at_ms, self.per_user_max);
    }

    /// A closed order, kept `keep_ms` from now on the clock (as a Redis
    /// key's time to live runs).
    pub fn closed(&self, order: HotOrder, status: OrderStatus) {
        let now_ms = crate::domain::now_unix_ms();
        let mut inner = self.lock();
        let cutoff = now_ms.saturating_sub(self.keep_ms);
        while inner.closed_at.front().is_some_and(|(at, _)| *at < cutoff) {
            if let Some((at, id)) = inner.closed_at.pop_front() {
                if inner.closed.get(&id).is_some_and(|(_, t)| *t == at) {
                    inner.closed.remove(&id);
                }
            }
        }
        let id = order.order_id;
        inner.closed_at.push_back((now_ms, id));
        inner.closed.insert(id, (Closed { order, status }, now_ms));
    }

    pub fn closed_order(&self, order_id: Id) -> Option<Closed> {
        let now_ms = crate::domain::now_unix_ms();
        let inner = self.lock();
        let (c, at) = inner.closed.get(&order_id)?;
        (now_ms.saturating_sub(*at) <= self.keep_ms).then(|| c.clone())
    }

    /// The user's orders of the last `keep_ms`.
    pub fn of_user(&self, user_id: &str, now_ms: u64) -> Vec<Id> {
        self.lock().orders.since(user_id, now_ms.saturating_sub(self.keep_ms))
    }

    /// The user's grabs of the last `keep_ms`.
    pub fn grabs_of(&self, user_id: &str, now_ms: u64) -> Vec<RecentGrab> {
        self.lock().grabs.since(user_id, now_ms.saturating_sub(self.keep_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: u64) -> HotOrder {
        HotOrder {
            order_id: Id::from_raw(id as i64).unwrap(),
            event_id: Id::from_raw(1).unwrap(),
            user_id: "u".into(),
            seats: vec![0],
            amount: crate::domain::Fen::new(1),
            created_at_ms: id,
            expires_at_ms: 10,
            attendees: vec![],
        }
    }

    #[test]
    fn a_recent_grab_member_reads_back() {
        for own in [false, true] {
            let g = RecentGrab { grab_id: Id::from_raw(42).unwrap(), amount: crate::domain::Fen::new(150), own };
            assert_eq!(RecentGrab::parse(&g.member()), Some(g));
        }
        assert_eq!(RecentGrab::parse("42"), None);
        assert_eq!(RecentGrab::parse("x:1"), None);
    }

    #[tokio::test]
    async fn a_page_skips_ids_the_store_does_not_know_and_stays_full() {
        let ids: Vec<Id> = (1..=10).map(|i| Id::from_raw(i).unwrap()).collect();
        // Even ids are holds in flight (or refused): unknown to the store.
        let known = |id: Id| async move {
            Ok((id.raw() % 2 == 1).then(|| (order(id.raw() as u64), OrderStatus::PendingPayment)))
        };
        let page = page_of(ids.clone(), None, 3, known).await.unwrap();
        let got: Vec<i64> = page.iter().map(|(o, _)| o.order_id.raw()).collect();
        assert_eq!(got, vec![9, 7, 5], "newest first, full although ids were skipped");
        let page = page_of(ids, Some(Id::from_raw(5).unwrap()), 3, known).await.unwrap();
        let got: Vec<i64> = page.iter().map(|(o, _)| o.order_id.raw()).collect();
        assert_eq!(got, vec![3, 1], "short only when the ids run out");
    }
}
