//! Domain types: plain data and pure rules, no I/O.

pub mod change;
pub mod event;
pub mod id;
pub mod money;
pub mod order;
pub mod packet;
pub mod payment;
pub mod seatmap;
pub mod time;

pub use change::{DomainEvent, Envelope};
pub use event::{Cancellation, Category, EventDef, EventInfo, EventSettings, Limits, SaleStatus, WaitingRoom};
pub use id::{gene_of_user, now_unix_ms, Id, IdGen};
pub use money::Fen;
pub use order::{Attendee, OrderSeat, OrderStatus};
pub use packet::{PacketKind, PacketStatus};
pub use payment::{ChannelKind, Paid, WithdrawalStatus};
pub use seatmap::{SeatDef, SeatIdx, SeatMap, SectionLayout};
pub use time::time_of;

/// A user id: 1-64 ASCII letters, digits, `_`, `-`, `.`, `@`. Ids starting
/// with `@` are reserved for system accounts (the outside world in the
/// ledger), so a user can never be one.
pub fn valid_user_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('@')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
}

/// A user id that passed [`valid_user_id`]: what the engine's use cases
/// take, parsed once at the edge (a token's subject, a path).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserId(String);

/// Why a user id was refused.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("user_id must be 1-64 letters, digits, _ - . @ and not start with @")]
pub struct BadUserId;

impl UserId {
    pub fn parse(s: &str) -> Result<UserId, BadUserId> {
        if valid_user_id(s) {
            Ok(UserId(s.to_string()))
        } else {
            Err(BadUserId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Read as the string it is (stores and events keep user ids as text).
impl std::ops::Deref for UserId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An owner stored as text is this user.
impl PartialEq<UserId> for String {
    fn eq(&self, other: &UserId) -> bool {
        *self == other.0
    }
}

/// The ledger account standing for money outside rush: credits and deposits
/// come from it, withdrawals go to it. Its balance is minus the money inside.
pub const WORLD_ACCOUNT: &str = "@world";

/// Ticket revenue: order payments come in from the world here, refunds go
/// back out from here.
pub const SALES_ACCOUNT: &str = "@sales";

/// Money a channel took that rush must give back (paid after the order
/// closed, or a second payment of one order): in at the late callback, out
/// when the channel's refund succeeds. Its balance is what is still owed.
pub const SUSPENSE_ACCOUNT: &str = "@suspense";
