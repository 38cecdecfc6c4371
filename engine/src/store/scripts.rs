//! Rust twins of the Lua scripts in `lua/`: each script's source, and the
//! parsing of its reply into a typed verdict. Scripts run by SHA
//! (`EVALSHA`); redis-rs loads a script again when Redis answers NOSCRIPT
//! (after a restart or `SCRIPT FLUSH`), and [`Scripts::load`] loads them all
//! at start so a bad script fails the start, not the first request.

use redis::aio::ConnectionLike;
use redis::Script;

use super::{DirectGrab, Grab, OpOutcome, StoreError};
use crate::domain::{Fen, Id};

pub struct Scripts {
    pub hold: Script,
    pub release: Script,
    pub confirm: Script,
    pub refund: Script,
    pub create_packet: Script,
    pub grab: Script,
    pub expire_packet: Script,
    pub grab_direct: Script,
    pub claim_due: Script,
    pub idempotency: Script,
    pub lease_node: Script,
    pub create_event: Script,
    pub update_event: Script,
    pub replace_seats: Script,
    pub restore_event: Script,
    pub restore_packet: Script,
    pub queue: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            hold: Script::new(include_str!("../../../lua/hold.lua")),
            release: Script::new(include_str!("../../../lua/release.lua")),
            confirm: Script::new(include_str!("../../../lua/confirm.lua")),
            refund: Script::new(include_str!("../../../lua/refund.lua")),
            create_packet: Script::new(include_str!("../../../lua/create_packet.lua")),
            grab: Script::new(include_str!("../../../lua/grab.lua")),
            expire_packet: Script::new(include_str!("../../../lua/expire_packet.lua")),
            grab_direct: Script::new(include_str!("../../../lua/grab_direct.lua")),
            claim_due: Script::new(include_str!("../../../lua/claim_due.lua")),
            idempotency: Script::new(include_str!("../../../lua/idempotency.lua")),
            lease_node: Script::new(include_str!("../../../lua/lease_node.lua")),
            create_event: Script::new(include_str!("../../../lua/create_event.lua")),
            update_event: Script::new(include_str!("../../../lua/update_event.lua")),
            replace_seats: Script::new(include_str!("../../../lua/replace_seats.lua")),
            restore_event: Script::new(include_str!("../../../lua/restore_event.lua")),
            restore_packet: Script::new(include_str!("../../../lua/restore_packet.lua")),
            queue: Script::new(include_str!("../../../lua/queue.lua")),
        }
    }

    pub async fn load(&self, conn: &mut impl ConnectionLike) -> Result<(), StoreError> {
        for s in [
            &self.hold,
            &self.release,
            &self.confirm,
            &self.refund,
            &self.create_packet,
            &self.grab,
            &self.expire_packet,
            &self.grab_direct,
            &self.create_event,
            &self.update_event,
            &self.replace_seats,
            &self.restore_event,
            &self.restore_packet,
            &self.queue,
        ] {
            s.load_async(conn).await.map_err(|e| StoreError::Unavailable(format!("loading a script: {e}")))?;
        }
        Ok(())
    }
}

/// hold / release / confirm / refund: `{-1}` when the event changed since
/// the batch's version (nothing written), else the version after the call
/// and one 1 or 0 per op, in order.
pub fn versioned(reply: Vec<i64>, ops: usize) -> Result<(Option<u64>, Vec<OpOutcome>), StoreError> {
    match reply.split_first() {
        Some((-1, [])) => Ok((None, vec![OpOutcome::Rejected; ops])),
        Some((v, rest)) if *v >= 0 => Ok((Some(*v as u64), verdicts(rest.to_vec(), ops, true)?)),
        _ => Err(StoreError::Corrupt(format!("script answered {reply:?} for {ops} ops"))),
    }
}

/// grab: one 1 or 0 per op, in order.
pub fn outcomes(reply: Vec<i64>, ops: usize) -> Result<Vec<OpOutcome>, StoreError> {
    verdicts(reply, ops, false)
}

/// One verdict per op: 1 applied, 0 rejected, and (seat scripts) 2 off sale.
fn verdicts(reply: Vec<i64>, ops: usize, off_sale: bool) -> Result<Vec<OpOutcome>, StoreError> {
    if reply.len() != ops {
        return Err(StoreError::Corrupt(format!("script answered {} verdicts for {ops} ops", reply.len())));
    }
    reply
        .into_iter()
        .map(|v| match v {
            1 => Ok(OpOutcome::Applied),
            0 => Ok(OpOutcome::Rejected),
            2 if off_sale => Ok(OpOutcome::OffSale),
            other => Err(StoreError::Corrupt(format!("script verdict {other}"))),
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    Created,
    Exists,
}

/// create_packet: 1 created, 0 exists.
pub fn created(reply: i64) -> Result<Created, StoreError> {
    match reply {
        1 => Ok(Created::Created),
        0 => Ok(Created::Exists),
        other => Err(StoreError::Corrupt(format!("create_packet answered {other}"))),
    }
}

/// expire_packet: the remainder, or -1 when nothing was expired.
pub fn expired(reply: i64) -> Result<Option<Fen>, StoreError> {
    match reply {
        -1 => Ok(None),
        r if r >= 0 => Ok(Some(Fen::new(r))),
        other => Err(StoreError::Corrupt(format!("expire_packet answered {other}"))),
    }
}

/// grab_direct: `{1, amount, part}`, `{2, amount}`, `{3}`, `{4}`, `{0}`.
pub fn direct_grab(reply: &[i64], grab_id: Id, user_id: &str, at_ms: u64) -> Result<DirectGrab, StoreError> {
    match reply {
        [1, amount, part] if *amount > 0 && *part >= 0 => Ok(DirectGrab::Granted(Grab {
            grab_id,
            user_id: user_id.to_string(),
            part: *part as u32,
            amount: Fen::new(*amount),
            at_ms,
        })),
        [2, amount] => Ok(DirectGrab::Already(Fen::new(*amount))),
        [3] => Ok(DirectGrab::Empty),
        [4] => Ok(DirectGrab::Expired),
        [0] => Ok(DirectGrab::Unknown),
        other => Err(StoreError::Corrupt(format!("grab_direct answered {other:?}"))),
    }
}

/// queue.lua's reply: state, ticket, admit_no, expires ms, position, now
/// ms, admitted now.
pub type QueueReply = (i64, String, i64, i64, i64, i64, i64);

/// Where queue.lua found the user (see its header).
pub fn queue_ticket(r: &QueueReply) -> Result<Option<super::queue::Ticket>, StoreError> {
    use super::queue::{Standing, Ticket};
    let n = |v: i64| v.max(0) as u64;
    let (state, id, admit_no, expires_ms, position, now_ms, _) = r;
    let standing = match state {
        0 | 4 => return Ok(None),
        1 => Standing::Waiting { position: (*position > 0).then(|| n(*position)) },
        2 => Standing::Admitted { admit_no: n(*admit_no), expires_ms: n(*expires_ms) },
        3 => Standing::Expired { admit_no: n(*admit_no), expires_ms: n(*expires_ms) },
        other => return Err(StoreError::Corrupt(format!("queue.lua answered state {other}"))),
    };
    let ticket_id = id
        .parse::<i64>()
        .ok()
        .and_then(|v| Id::from_raw(v).ok())
        .ok_or_else(|| StoreError::Corrupt(format!("queue.lua answered ticket {id:?}")))?;
    Ok(Some(Ticket { ticket_id, standing, now_ms: n(*now_ms) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_into_verdicts_and_bad_ones_are_refused() {
        assert_eq!(outcomes(vec![1, 0], 2).unwrap(), vec![OpOutcome::Applied, OpOutcome::Rejected]);
        assert!(outcomes(vec![1], 2).is_err());
        assert!(outcomes(vec![2], 1).is_err());
        assert_eq!(versioned(vec![-1], 2).unwrap(), (None, vec![OpOutcome::Rejected; 2]));
        assert_eq!(versioned(vec![7, 1, 0], 2).unwrap(), (Some(7), vec![OpOutcome::Applied, OpOutcome::Rejected]));
        assert!(versioned(vec![7, 1], 2).is_err());
        assert_eq!(versioned(vec![7, 2], 1).unwrap(), (Some(7), vec![OpOutcome::OffSale]), "a hold off sale");
        assert!(versioned(vec![-3, 1], 1).is_err());
        assert!(versioned(vec![], 0).is_err());
        assert_eq!(created(1).unwrap(), Created::Created);
        assert!(created(7).is_err());
        assert_eq!(expired(-1).unwrap(), None);
        assert_eq!(expired(42).unwrap(), Some(Fen::new(42)));
        assert!(expired(-5).is_err());
        let id = Id::from_raw(7).unwrap();
        assert_eq!(direct_grab(&[2, 30], id, "u", 1).unwrap(), DirectGrab::Already(Fen::new(30)));
        assert!(matches!(direct_grab(&[1, 30, 4], id, "u", 1).unwrap(), DirectGrab::Granted(g) if g.part == 4));
        assert!(direct_grab(&[1, -3, 0], id, "u", 1).is_err());
        assert!(direct_grab(&[9], id, "u", 1).is_err());
    }
}
