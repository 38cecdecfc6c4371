//! Putting a lost (or rolled-back) Redis back from the durable store
//! (issue 15): the merge of what the hot store still has with what the
//! workers applied, per event and per packet, and the Redis-only handle
//! the recovery task drives (`crate::recovery`).
//!
//! The merge keeps, for every order, the later of the two states along its
//! one-way life (`pending → paid → refunded`, `pending → cancelled |
//! expired`): Redis is ahead for what it had acknowledged and not yet
//! handed on, the durable store for what Redis lost. A lost order comes
//! back only onto seats nobody else holds by now; one that cannot is a
//! conflict, counted and logged (the durable store's one-live-order-per-seat
//! constraint rejects the double sale when its event arrives).

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;

use super::{Grab, HotOrder, PacketDef, StoreError};
use crate::domain::Attendee;
use crate::domain::{EventDef, EventInfo, Fen, Id, OrderStatus, PacketStatus, SeatIdx};

/// An order as the durable store has applied it, with its seats' labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedOrder {
    pub order_id: Id,
    pub user_id: String,
    pub status: OrderStatus,
    pub amount: Fen,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub seat_labels: Vec<String>,
    pub attendees: Vec<Attendee>,
}

/// A grab as the durable store has applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedGrab {
    pub grab_id: Id,
    pub user_id: String,
    pub amount: Fen,
    pub at_ms: u64,
}

/// A packet as the durable store knows it: its definition, whether it was
/// expired (its remainder returned), and its grabs.
#[derive(Clone, Debug)]
pub struct AppliedPacket {
    pub def: PacketDef,
    pub expired: bool,
    pub grabs: Vec<AppliedGrab>,
}

/// An event's seats after the merge: live holds and paid orders.
#[derive(Debug, Default)]
pub struct MergedEvent {
    pub holds: HashMap<Id, HotOrder>,
    pub paid: HashMap<Id, HotOrder>,
    /// Holds Redis had that the durable store had closed (their due entries go).
    pub closed: Vec<Id>,
    /// Orders put back from the durable store.
    pub restored: usize,
    /// Why an order could not be put back (one line each).
    pub conflicts: Vec<String>,
}

impl MergedEvent {
    /// Seat index → `h:<order>` / `s:<order>`, as the scripts keep them.
    pub fn seats(&self) -> Vec<(SeatIdx, String)> {
        let held = self.holds.values().flat_map(|o| o.seats.iter().map(move |s| (*s, format!("h:{}", o.order_id))));
        let sold = self.paid.values().flat_map(|o| o.seats.iter().map(move |s| (*s, format!("s:{}", o.order_id))));
        let mut all: Vec<_> = held.chain(sold).collect();
        all.sort();
        all
    }

    /// Seats per user (the per-user limit's count).
    pub fn users(&self) -> HashMap<String, u32> {
        let mut per_user: HashMap<String, u32> = HashMap::new();
        for o in self.holds.values().chain(self.paid.values()) {
            *per_user.entry(o.user_id.clone()).or_default() += o.seats.len() as u32;
        }
        per_user
    }
}

fn hot_order(info: &EventInfo, o: &AppliedOrder) -> Result<HotOrder, String> {
    let seats = o
        .seat_labels
        .iter()
        .map(|l| info.map.index_of(l).ok_or_else(|| format!("order {}: seat {l} is not in the map", o.order_id)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HotOrder {
        order_id: o.order_id,
        event_id: info.def.event_id,
        user_id: o.user_id.clone(),
        seats,
        amount: o.amount,
        created_at_ms: o.created_at_ms,
        expires_at_ms: o.expires_at_ms,
        attendees: o.attendees.clone(),
    })
}

/// Merges what Redis still holds for an event (`holds`, `paid`) with the
/// orders the durable store applied.
pub fn merge_event(
    info: &EventInfo,
    mut holds: HashMap<Id, HotOrder>,
    mut paid: HashMap<Id, HotOrder>,
    applied: &[AppliedOrder],
) -> MergedEvent {
    let mut closed = Vec::new();
    let mut conflicts = Vec::new();
    // Orders Redis lost, to put back once every order Redis kept has its seats.
    let mut lost: Vec<(HotOrder, bool)> = Vec::new();
    for o in applied {
        let (in_holds, in_paid) = (holds.contains_key(&o.order_id), paid.contains_key(&o.order_id));
        match o.status {
            OrderStatus::PendingPayment if !in_holds && !in_paid => match hot_order(info, o) {
                Ok(h) => lost.push((h, false)),
                Err(e) => conflicts.push(e),
            },
            OrderStatus::Paid if in_holds => {
                if let Some(h) = holds.remove(&o.order_id) {
                    closed.push(o.order_id);
                    paid.insert(o.order_id, h);
                }
            }
            OrderStatus::Paid if !in_paid => match hot_order(info, o) {
                Ok(h) => lost.push((h, true)),
                Err(e) => conflicts.push(e),
            },
            OrderStatus::Cancelled | OrderStatus::Expired if in_holds => {
                holds.remove(&o.order_id);
                closed.push(o.order_id);
            }
            OrderStatus::Cancelled | OrderStatus::Expired if in_paid => conflicts.push(format!(
                "order {} is {} in the durable store but paid in Redis: kept paid",
                o.order_id,
                o.status.as_str()
            )),
            OrderStatus::Refunded => {
                if holds.remove(&o.order_id).is_some() {
                    closed.push(o.order_id);
                }
                paid.remove(&o.order_id);
            }
            _ => {}
        }
    }
    let restored = put_back(&mut holds, &mut paid, lost, &mut conflicts);
    MergedEvent { holds, paid, closed, restored, conflicts }
}

/// Puts back the orders Redis lost (`true`: paid), in id order, where
/// their seats are still free; a clash is a conflict. How many were put back.
fn put_back(
    holds: &mut HashMap<Id, HotOrder>,
    paid: &mut HashMap<Id, HotOrder>,
    mut lost: Vec<(HotOrder, bool)>,
    conflicts: &mut Vec<String>,
) -> usize {
    let mut taken: HashMap<SeatIdx, Id> = HashMap::new();
    for o in holds.values().chain(paid.values()) {
        for s in &o.seats {
            taken.insert(*s, o.order_id);
        }
    }
    let mut restored = 0;
    lost.sort_by_key(|(h, _)| h.order_id);
    for (h, is_paid) in lost {
        let clash: HashSet<Id> = h.seats.iter().filter_map(|s| taken.get(s).copied()).collect();
        if !clash.is_empty() {
            conflicts.push(format!(
                "order {} ({}) lost by Redis: its seats are held by {:?} since; not put back",
                h.order_id,
                if is_paid { "paid" } else { "pending_payment" },
                clash
            ));
            continue;
        }
        for s in &h.seats {
            taken.insert(*s, h.order_id);
        }
        restored += 1;
        if is_paid {
            paid.insert(h.order_id, h);
        } else {
            holds.insert(h.order_id, h);
        }
    }
    restored
}

/// A packet after the merge: parts in the order taken (grabs first), grabs
/// with their part index, and its status.
#[derive(Debug)]
pub struct MergedPacket {
    pub parts: Vec<Fen>,
    pub grabs: Vec<Grab>,
    pub status: PacketStatus,
    pub restored: usize,
    pub conflicts: Vec<String>,
}

/// Merges what Redis still has of a packet (its grabs and whether it was
/// expired) with what the durable store applied.
pub fn merge_packet(hot_grabs: Vec<Grab>, hot_expired: bool, applied: &AppliedPacket) -> MergedPacket {
    let def = &applied.def;
    let mut left: Vec<Fen> = def.parts.clone();
    let mut take = |amount: Fen| match left.iter().position(|p| *p == amount) {
        Some(i) => {
            left.swap_remove(i);
            true
        }
        None => false,
    };
    let mut grabs: Vec<Grab> = Vec::new();
    let mut conflicts = Vec::new();
    let mut hot_grabs = hot_grabs;
    hot_grabs.sort_by_key(|g| g.part);
    let mut users: HashSet<String> = HashSet::new();
    for g in hot_grabs {
        if take(g.amount) {
            users.insert(g.user_id.clone());
            grabs.push(g);
        } else {
            conflicts.push(format!("packet {}: Redis's grab {} matches no part", def.packet_id, g.grab_id));
        }
    }
    let mut restored = 0;
    for g in &applied.grabs {
        if users.contains(&g.user_id) {
            continue;
        }
        if !take(g.amount) {
            conflicts.push(format!("packet {}: applied grab {} matches no part left", def.packet_id, g.grab_id));
            continue;
        }
        users.insert(g.user_id.clone());
        restored += 1;
        grabs.push(Grab { grab_id: g.grab_id, user_id: g.user_id.clone(), part: 0, amount: g.amount, at_ms: g.at_ms });
    }
    for (i, g) in grabs.iter_mut().enumerate() {
        g.part = i as u32;
    }
    let mut parts: Vec<Fen> = grabs.iter().map(|g| g.amount).collect();
    parts.extend(left);
    let status = if hot_expired || applied.expired {
        PacketStatus::Expired
    } else if grabs.len() >= def.parts.len() {
        PacketStatus::Empty
    } else {
        PacketStatus::Active
    };
    MergedPacket { parts, grabs, status, restored, conflicts }
}

/// What one restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Orders or grabs put back from the durable store.
    pub restored: usize,
    pub conflicts: Vec<String>,
}

/// The identity markers, one per partition (each in its partition's slot,
/// so every script can check its own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Markers {
    /// Every partition has the marker, all with this epoch.
    Intact(String),
    /// Not one partition has a marker: a new or emptied Redis.
    None,
    /// Some partitions lost theirs, or they disagree.
    Broken { missing: usize, epochs: usize },
}

/// The Redis-only side of recovery (`crate::recovery` drives it).
#[async_trait]
pub trait HotRecovery: Send + Sync + 'static {
    async fn markers(&self) -> Result<Markers, StoreError>;
    /// Writes `epoch` as every partition's marker (writes are accepted again).
    async fn set_markers(&self, epoch: &str) -> Result<(), StoreError>;
    /// Removes every marker: from now on every writing script refuses.
    async fn clear_markers(&self) -> Result<(), StoreError>;
    /// Redis's replication id (`master_replid`): it changes when the server
    /// restarts or a replica is promoted. `None` where it is not watched
    /// (Redis Cluster: each shard has its own).
    async fn replication_id(&self) -> Result<Option<String>, StoreError>;
    /// The replication id recorded by the last recovery (or first start).
    async fn recorded_replication_id(&self) -> Result<Option<String>, StoreError>;
    async fn record_replication_id(&self, id: &str) -> Result<(), StoreError>;
    /// Takes or renews the one-rebuilder-at-a-time lease.
    async fn rebuild_lease(&self, token: &str, lease_ms: u64) -> Result<bool, StoreError>;
    /// Merges the durable store's view of an event into Redis.
    async fn restore_event(
        &self,
        def: &EventDef,
        applied: &[AppliedOrder],
        now_ms: u64,
    ) -> Result<Restored, StoreError>;
    /// Merges the durable store's view of a packet into Redis.
    async fn restore_packet(&self, applied: &AppliedPacket, now_ms: u64) -> Result<Restored, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Category, Limits, SeatDef};
    use std::sync::Arc;

    fn info() -> Arc<EventInfo> {
        let seats = (1..=4)
            .map(|c| SeatDef { section: "A".into(), row: 1, col: c, category: "std".into() })
            .collect::<Vec<_>>();
        let def = EventDef {
            event_id: Id::from_raw(1 << 30).unwrap(),
            name: "n".into(),
            venue: "v".into(),
            starts_at: chrono::Utc::now(),
            on_sale_at: None,
            sale_ends_at: None,
            rev: 0,
            map_rev: 0,
            paused: false,
            cancellation: None,
            waiting_room: None,
            hold_ttl_s: 60,
            limits: Limits { per_order: 4, per_user: 4 },
            categories: vec![Category { id: "std".into(), name: "Std".into(), price: Fen::new(100) }],
            seats,
        };
        EventInfo::build(def, 100).unwrap()
    }

    fn applied(id: i64, status: OrderStatus, labels: &[&str]) -> AppliedOrder {
        AppliedOrder {
            order_id: Id::from_raw(id).unwrap(),
            user_id: format!("u{id}"),
            status,
            amount: Fen::new(100),
            created_at_ms: 1,
            expires_at_ms: 2,
            seat_labels: labels.iter().map(|l| l.to_string()).collect(),
            attendees: vec![],
        }
    }

    #[test]
    fn lost_orders_come_back_onto_free_seats_only_and_the_later_state_wins() {
        let info = info();
        let hot = |a: &AppliedOrder| hot_order(&info, a).unwrap();
        let kept_hold = applied(10, OrderStatus::PendingPayment, &["A-1-1"]);
        let paid_in_durable = applied(11, OrderStatus::Paid, &["A-1-2"]);
        let cancelled_in_durable = applied(12, OrderStatus::Cancelled, &["A-1-3"]);
        let lost_clashing = applied(13, OrderStatus::PendingPayment, &["A-1-1"]);
        let lost_free = applied(14, OrderStatus::Paid, &["A-1-4"]);
        let holds: HashMap<Id, HotOrder> =
            [&kept_hold, &paid_in_durable, &cancelled_in_durable].iter().map(|a| (a.order_id, hot(a))).collect();
        let m = merge_event(
            &info,
            holds,
            HashMap::new(),
            &[kept_hold.clone(), paid_in_durable.clone(), cancelled_in_durable.clone(), lost_clashing, lost_free],
        );
        assert!(m.holds.contains_key(&kept_hold.order_id));
        assert!(m.paid.contains_key(&paid_in_durable.order_id), "durable paid wins over Redis held");
        assert!(!m.holds.contains_key(&cancelled_in_durable.order_id), "durable cancel wins");
        assert_eq!(m.restored, 1, "only the order on a free seat comes back");
        assert_eq!(m.conflicts.len(), 1, "{:?}", m.conflicts);
        let seats = m.seats();
        assert_eq!(seats.len(), 3);
        let owners: HashSet<SeatIdx> = seats.iter().map(|(s, _)| *s).collect();
        assert_eq!(owners.len(), 3, "no seat twice");
        assert_eq!(m.closed.len(), 2);
    }

    #[test]
    fn a_packet_gets_back_its_lost_grabs_and_parts_stay_a_permutation() {
        let def = PacketDef {
            packet_id: Id::from_raw(1 << 31).unwrap(),
            sender: "s".into(),
            kind: crate::domain::PacketKind::Lucky,
            total: Fen::new(60),
            count: 3,
            greeting: String::new(),
            created_at_ms: 0,
            expires_at_ms: 10,
            parts: vec![Fen::new(10), Fen::new(20), Fen::new(30)],
        };
        let g = |id: i64, user: &str, amount: i64| AppliedGrab {
            grab_id: Id::from_raw(id).unwrap(),
            user_id: user.into(),
            amount: Fen::new(amount),
            at_ms: 1,
        };
        let applied = AppliedPacket { def, expired: false, grabs: vec![g(100, "a", 10), g(101, "b", 30)] };
        let hot = vec![Grab {
            grab_id: Id::from_raw(100).unwrap(),
            user_id: "a".into(),
            part: 0,
            amount: Fen::new(10),
            at_ms: 1,
        }];
        let m = merge_packet(hot, false, &applied);
        assert_eq!(m.restored, 1);
        assert_eq!(m.grabs.len(), 2);
        assert_eq!(m.parts, vec![Fen::new(10), Fen::new(30), Fen::new(20)]);
        assert_eq!(m.grabs[1].part, 1);
        assert_eq!(m.status, PacketStatus::Active);
        assert!(m.conflicts.is_empty());
        let all = merge_packet(vec![], true, &applied);
        assert_eq!(all.status, PacketStatus::Expired);
    }
}
