//! Payment channels as the domain knows them: which channel, and the money
//! a channel says it took.

use serde::{Deserialize, Serialize};

use super::Fen;

/// A payment channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Wechat,
    Alipay,
    Ecard,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 3] = [ChannelKind::Wechat, ChannelKind::Alipay, ChannelKind::Ecard];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Wechat => "wechat",
            ChannelKind::Alipay => "alipay",
            ChannelKind::Ecard => "ecard",
        }
    }

    pub fn parse(s: &str) -> Option<ChannelKind> {
        ChannelKind::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A payment the channel took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paid {
    /// The channel's own transaction id.
    pub txn_id: String,
    pub amount: Fen,
    pub paid_at_ms: u64,
}

/// Where a withdrawal stands: frozen until an admin decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WithdrawalStatus {
    Pending,
    Approved,
    Rejected,
}

impl WithdrawalStatus {
    pub const ALL: [WithdrawalStatus; 3] =
        [WithdrawalStatus::Pending, WithdrawalStatus::Approved, WithdrawalStatus::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            WithdrawalStatus::Pending => "pending",
            WithdrawalStatus::Approved => "approved",
            WithdrawalStatus::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<WithdrawalStatus> {
        WithdrawalStatus::ALL.into_iter().find(|w| w.as_str() == s)
    }
}

impl std::fmt::Display for WithdrawalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
