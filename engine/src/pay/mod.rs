//! Payment channels: one trait, a registry chosen by the request's
//! `channel`, and sandbox implementations of WeChat Pay, Alipay and the
//! campus e-card that sign, call back and answer queries the way the real
//! ones do.
//!
//! # Layout
//! - [`wire`]: each channel's callback shape: how it signs, what it sends,
//!   how rush verifies it and what rush answers.
//! - [`sandbox`]: the sandbox channels' books (their own table) and the
//!   callback sender that can drop, delay or duplicate callbacks.
//! - [`registry`]: the channels rush pays through, and outbound HTTP.
//!
//! What rush does with payments (create, settle exactly once, refund) is
//! the engine's `payments` use case; this module knows nothing of it.

pub mod registry;
pub mod sandbox;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

pub use crate::domain::{ChannelKind, Paid};
use crate::domain::{Fen, Id};
pub use registry::Payments;

/// What the channel says about a payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TradeState {
    /// Created, not paid (yet).
    NotPaid,
    /// The buyer paid: the channel holds the money.
    Paid(Paid),
    /// Closed unpaid; it can no longer be paid.
    Closed,
    /// Paid, then refunded.
    Refunded(Paid),
}

/// A verified callback: the channel says this payment was paid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub payment_id: Id,
    pub paid: Paid,
}

/// One line of a channel's daily bill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BillLine {
    pub payment_id: Id,
    pub txn_id: String,
    pub amount: Fen,
    /// `SUCCESS` or `REFUND` (paid, then refunded).
    pub status: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("payment channel unavailable: {0}")]
    Unavailable(String),
    #[error("payment channel refused: {0}")]
    Refused(String),
    #[error("the channel has no such payment")]
    UnknownTrade,
}

/// Why a callback was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallbackError {
    #[error("signature does not verify: {0}")]
    BadSignature(String),
    #[error("callback is malformed: {0}")]
    Malformed(String),
    #[error("callback was signed too long ago (replay?)")]
    Stale,
}

/// What rush answers a callback, in the channel's own shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// How a callback was taken, which picks the acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckKind {
    /// Processed (or already processed): stop sending it.
    Ok,
    /// Refused for good (bad signature, malformed, wrong amount): a real
    /// channel keeps retrying; each retry is refused and logged again.
    Refused,
    /// rush could not process it now: send it again later.
    Failed,
}

/// A payment channel as rush uses it.
#[async_trait]
pub trait PaymentChannel: Send + Sync {
    fn kind(&self) -> ChannelKind;
    /// Opens a payment at the channel; returns where the buyer pays.
    async fn create(&self, payment_id: Id, amount: Fen, expires_at_ms: u64) -> Result<String, ChannelError>;
    /// The truth about a payment, whatever callbacks said or did not say.
    async fn query(&self, payment_id: Id) -> Result<TradeState, ChannelError>;
    /// Closes an unpaid payment; returns the state after (`Closed`, or
    /// `Paid` when the buyer paid first).
    async fn close(&self, payment_id: Id) -> Result<TradeState, ChannelError>;
    /// Gives a paid payment's money back; idempotent per payment.
    async fn refund(&self, payment_id: Id, amount: Fen) -> Result<(), ChannelError>;
    /// Checks a callback's signature and reads it. `headers` are lowercase.
    fn verify_callback(
        &self,
        headers: &[(String, String)],
        body: &[u8],
        now_ms: u64,
    ) -> Result<Notification, CallbackError>;
    fn acknowledge(&self, kind: AckKind) -> Ack;
    /// The channel's bill of one day (days since 1970-01-01 at the
    /// configured offset): payments taken that day and their state now.
    async fn bill(&self, day: i64) -> Result<Vec<BillLine>, ChannelError>;
}

/// The channels rush can take payments through, by name.
#[derive(Clone)]
pub struct Channels {
    by_kind: HashMap<ChannelKind, Arc<dyn PaymentChannel>>,
}

impl Channels {
    pub fn new(list: Vec<Arc<dyn PaymentChannel>>) -> Self {
        Channels { by_kind: list.into_iter().map(|c| (c.kind(), c)).collect() }
    }

    pub fn get(&self, kind: ChannelKind) -> Option<&Arc<dyn PaymentChannel>> {
        self.by_kind.get(&kind)
    }

    pub fn kinds(&self) -> Vec<ChannelKind> {
        let mut k: Vec<_> = self.by_kind.keys().copied().collect();
        k.sort();
        k
    }
}

/// Days since 1970-01-01 of a Unix time, with days starting at
/// `offset_min` minutes east of UTC.
pub fn day_of(at_ms: u64, offset_min: i32) -> i64 {
    let shifted = at_ms as i64 + i64::from(offset_min) * 60_000;
    shifted.div_euclid(86_400_000)
}

/// The `[start, end)` Unix ms of a day as [`day_of`] numbers them.
pub fn day_bounds_ms(day: i64, offset_min: i32) -> (i64, i64) {
    let start = day * 86_400_000 - i64::from(offset_min) * 60_000;
    (start, start + 86_400_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_start_at_the_configured_offset() {
        // 2026-11-23T16:30:00Z is the 23rd in UTC and the 24th in UTC+8.
        let t = 1_795_451_400_000u64;
        assert_eq!(day_of(t, 480), day_of(t, 0) + 1);
        for off in [-300, 0, 480] {
            let (start, end) = day_bounds_ms(day_of(t, off), off);
            assert!(start <= t as i64 && (t as i64) < end, "offset {off}");
        }
    }

    #[test]
    fn channel_names_round_trip() {
        for c in ChannelKind::ALL {
            assert_eq!(ChannelKind::parse(c.as_str()), Some(c));
        }
        assert_eq!(ChannelKind::parse("paypal"), None);
    }
}
