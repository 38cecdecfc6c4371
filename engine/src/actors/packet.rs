//! The packet actor: one per red packet per node. It hands out the parts
//! split at creation, one per user, and commits each batch of grabs to the
//! hot store with one call. Decisions are plain methods on [`PacketState`].

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Mailbox, STALE_ROUNDS_MAX};
use crate::domain::{Fen, Id, PacketStatus};
use crate::error::EngineError;
use crate::store::{Grab, HotStore, OpOutcome, PacketDef, PacketSnapshot};

/// In-memory state of one packet.
pub struct PacketState {
    /// Definition and parts, shared read-only.
    def: Arc<PacketDef>,
    status: PacketStatus,
    /// Grabs in order; grab `i` took part `i`.
    grabs: Vec<Grab>,
    /// Index into `grabs` per user: one grab per user.
    by_user: HashMap<String, usize>,
    /// Sum of the grabs' amounts.
    granted: Fen,
}

impl PacketState {
    pub fn from_snapshot(s: PacketSnapshot) -> Self {
        let by_user = s.grabs.iter().enumerate().map(|(i, g)| (g.user_id.clone(), i)).collect();
        let granted = Fen::new(s.grabs.iter().map(|g| g.amount.get()).sum());
        PacketState { def: s.def, status: s.status, grabs: s.grabs, by_user, granted }
    }

    /// Decides a grab and applies it to memory. The caller commits it.
    pub fn decide_grab(&mut self, user_id: &str, grab_id: Id, now_ms: u64) -> Result<Grab, EngineError> {
        if let Some(i) = self.by_user.get(user_id) {
            return Err(EngineError::AlreadyGrabbed { amount: self.grabs[*i].amount });
        }
        if self.status == PacketStatus::Expired || now_ms >= self.def.expires_at_ms {
            return Err(EngineError::PacketExpired);
        }
        let part = self.grabs.len();
        let Some(amount) = self.def.parts.get(part).copied() else {
            return Err(EngineError::PacketEmpty);
        };
        let grab = Grab { grab_id, user_id: user_id.to_string(), part: part as u32, amount, at_ms: now_ms };
        self.by_user.insert(grab.user_id.clone(), part);
        self.granted = Fen::new(self.granted.get() + amount.get());
        self.grabs.push(grab.clone());
        if self.grabs.len() == self.def.parts.len() {
            self.status = PacketStatus::Empty;
        }
        Ok(grab)
    }

    pub fn snapshot(&self) -> PacketSnapshot {
        PacketSnapshot { def: self.def.clone(), status: self.status, grabs: self.grabs.clone() }
    }

    pub fn check_invariants(&self) {
        assert!(self.granted <= self.def.total, "grants exceed the packet total");
        assert_eq!(self.by_user.len(), self.grabs.len(), "a user holds two grabs");
    }
}

type GrabReply = oneshot::Sender<Result<Grab, EngineError>>;

pub enum PacketMsg {
    Grab {
        user_id: String,
        grab_id: Id,
        reply: oneshot::Sender<Result<Grab, EngineError>>,
    },
    /// Close the packet if its time is up; answers the remainder returned.
    Expire {
        reply: oneshot::Sender<Result<Option<Fen>, EngineError>>,
    },
    View(oneshot::Sender<PacketSnapshot>),
}

pub async fn run(
    mut state: PacketState,
    mut rx: mpsc::Receiver<PacketMsg>,
    store: Arc<dyn HotStore>,
    mailbox: Mailbox,
) {
    let mut buf = Vec::with_capacity(mailbox.batch_len_max);
    loop {
        match tokio::time::timeout(mailbox.idle, rx.recv_many(&mut buf, mailbox.batch_len_max)).await {
            Ok(0) => break,
            Ok(n) => mailbox.received(n),
            Err(_) => {
                rx.close();
                continue;
            }
        }
        let now_ms = crate::domain::now_unix_ms();
        let mut work: Vec<(String, Id, GrabReply)> = Vec::with_capacity(buf.len());
        let mut later = Vec::new();
        for msg in buf.drain(..) {
            match msg {
                PacketMsg::Grab { user_id, grab_id, reply } => work.push((user_id, grab_id, reply)),
                other => later.push(other),
            }
        }
        if !grab_rounds(&mut state, work, &store, &mailbox, now_ms).await {
            break;
        }
        state.check_invariants();
        if !answer_rest(&mut state, later, &store, &mailbox, now_ms).await {
            break;
        }
    }
    mailbox.stopped();
}

/// Decides and commits a batch's grabs; grabs the store finds stale
/// (another node granted first) are decided again on the reloaded state,
/// at most `STALE_ROUNDS_MAX` times. False when the packet could not be
/// reloaded: the actor stops (the next message starts a new one).
async fn grab_rounds(
    state: &mut PacketState,
    mut work: Vec<(String, Id, GrabReply)>,
    store: &Arc<dyn HotStore>,
    mailbox: &Mailbox,
    now_ms: u64,
) -> bool {
    let packet_id = state.def.packet_id;
    for round in 0..=STALE_ROUNDS_MAX {
        let mut grabs = Vec::with_capacity(work.len());
        let mut waiting = Vec::with_capacity(work.len());
        for (user_id, grab_id, reply) in work.drain(..) {
            match state.decide_grab(&user_id, grab_id, now_ms) {
                Ok(g) => {
                    grabs.push(g);
                    waiting.push((user_id, grab_id, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if grabs.is_empty() {
            break;
        }
        match store.grab_batch(packet_id, &grabs, now_ms).await {
            Ok(outcomes) => {
                for ((g, (user_id, grab_id, reply)), outcome) in grabs.into_iter().zip(waiting).zip(outcomes) {
                    match outcome {
                        OpOutcome::Applied => {
                            let _ = reply.send(Ok(g));
                        }
                        // (Off sale is a hold's outcome; a grab script never answers it.)
                        OpOutcome::Rejected | OpOutcome::OffSale if round < STALE_ROUNDS_MAX => {
                            work.push((user_id, grab_id, reply))
                        }
                        // Still contended by other nodes: retry later.
                        OpOutcome::Rejected | OpOutcome::OffSale => {
                            let _ = reply.send(Err(EngineError::Overloaded("packet")));
                        }
                    }
                }
                if work.is_empty() {
                    break;
                }
                // The only writer never meets a stale decision.
                assert!(!mailbox.sole_owner, "packet {packet_id}: the store rejected the sole owner's grab");
                tracing::warn!(%packet_id, stale = work.len(), "another node granted first; reloading");
            }
            Err(e) => {
                tracing::warn!(%packet_id, error = %e, "grab batch failed");
                for (_, _, reply) in waiting {
                    let _ = reply.send(Err(e.answer()));
                }
            }
        }
        match reload(store, packet_id).await {
            Some(s) => *state = s,
            None => {
                for (_, _, reply) in work.drain(..) {
                    let _ = reply.send(Err(EngineError::StoreUnavailable));
                }
                return false;
            }
        }
        if work.is_empty() {
            break;
        }
    }
    true
}

/// Answers the batch's expiries and views, after its grabs. False when the
/// packet could not be reloaded: the actor stops.
async fn answer_rest(
    state: &mut PacketState,
    later: Vec<PacketMsg>,
    store: &Arc<dyn HotStore>,
    mailbox: &Mailbox,
    now_ms: u64,
) -> bool {
    let packet_id = state.def.packet_id;
    // Reads answer from memory only if it has the store's progress
    // (another node may have granted or expired meanwhile).
    if !mailbox.sole_owner && later.iter().any(|m| matches!(m, PacketMsg::View(_))) {
        let mine = (state.grabs.len() as u32, state.status);
        if store.packet_progress(packet_id).await.ok().flatten() != Some(mine) {
            match reload(store, packet_id).await {
                Some(s) => *state = s,
                None => return false,
            }
        }
    }
    for msg in later {
        match msg {
            PacketMsg::Expire { reply } => {
                let answer = if now_ms < state.def.expires_at_ms || state.status == PacketStatus::Expired {
                    Ok(None)
                } else {
                    match store.expire_packet(packet_id, now_ms).await {
                        Ok(r) => {
                            state.status = PacketStatus::Expired;
                            Ok(r)
                        }
                        Err(e) => Err(e.into()),
                    }
                };
                let _ = reply.send(answer);
            }
            PacketMsg::View(reply) => {
                let _ = reply.send(state.snapshot());
            }
            PacketMsg::Grab { .. } => {}
        }
    }
    true
}

async fn reload(store: &Arc<dyn HotStore>, packet_id: Id) -> Option<PacketState> {
    match store.load_packet(packet_id).await {
        Ok(Some(s)) => Some(PacketState::from_snapshot(s)),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(%packet_id, error = %e, "reload failed; actor stops");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PacketKind;

    fn state(parts: &[i64], expires_at_ms: u64) -> PacketState {
        let parts: Vec<Fen> = parts.iter().map(|p| Fen::new(*p)).collect();
        PacketState::from_snapshot(PacketSnapshot {
            def: Arc::new(PacketDef {
                packet_id: Id::from_raw(9).unwrap(),
                sender: "s".into(),
                kind: PacketKind::Lucky,
                total: Fen::new(parts.iter().map(|p| p.get()).sum()),
                count: parts.len() as u32,
                greeting: String::new(),
                created_at_ms: 0,
                expires_at_ms,
                parts,
            }),
            status: PacketStatus::Active,
            grabs: vec![],
        })
    }

    fn id(n: i64) -> Id {
        Id::from_raw(n).unwrap()
    }

    #[test]
    fn a_user_grabs_once_and_is_told_their_amount_again() {
        let mut s = state(&[30, 70], 10_000);
        let g = s.decide_grab("u", id(1), 5).unwrap();
        assert_eq!(g.amount, Fen::new(30));
        assert!(
            matches!(s.decide_grab("u", id(2), 5), Err(EngineError::AlreadyGrabbed { amount }) if amount == Fen::new(30))
        );
    }

    #[test]
    fn an_empty_packet_answers_empty_and_an_old_one_expired() {
        let mut s = state(&[1], 10_000);
        s.decide_grab("a", id(1), 5).unwrap();
        assert!(matches!(s.decide_grab("b", id(2), 5), Err(EngineError::PacketEmpty)));
        let mut s = state(&[1], 10_000);
        assert!(matches!(s.decide_grab("b", id(2), 10_000), Err(EngineError::PacketExpired)));
    }
}
