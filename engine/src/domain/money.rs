//! Money in integer minor units (fen). No floats anywhere.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An amount of money in fen (1/100 yuan). May be negative only as a ledger
/// delta; amounts a user asks for are checked positive at the edge with
/// [`Fen::positive`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Fen(i64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    #[error("amount must be a positive number of fen")]
    NotPositive,
    #[error("amount overflows")]
    Overflow,
}

impl Fen {
    pub const ZERO: Fen = Fen(0);

    pub const fn new(fen: i64) -> Self {
        Fen(fen)
    }

    /// An amount a user asked for: strictly positive.
    pub fn positive(fen: i64) -> Result<Self, MoneyError> {
        if fen <= 0 {
            return Err(MoneyError::NotPositive);
        }
        Ok(Fen(fen))
    }

    pub const fn get(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Fen) -> Result<Fen, MoneyError> {
        self.0.checked_add(other.0).map(Fen).ok_or(MoneyError::Overflow)
    }

    pub fn checked_sub(self, other: Fen) -> Result<Fen, MoneyError> {
        self.0.checked_sub(other.0).map(Fen).ok_or(MoneyError::Overflow)
    }

    pub fn checked_mul(self, n: i64) -> Result<Fen, MoneyError> {
        self.0.checked_mul(n).map(Fen).ok_or(MoneyError::Overflow)
    }

    pub fn checked_neg(self) -> Result<Fen, MoneyError> {
        self.0.checked_neg().map(Fen).ok_or(MoneyError::Overflow)
    }

    /// Sums amounts, refusing overflow.
    pub fn sum<I: IntoIterator<Item = Fen>>(items: I) -> Result<Fen, MoneyError> {
        items.into_iter().try_fold(Fen::ZERO, |acc, x| acc.checked_add(x))
    }
}

impl fmt::Display for Fen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_negative_amounts_are_not_positive() {
        assert_eq!(Fen::positive(0), Err(MoneyError::NotPositive));
        assert_eq!(Fen::positive(-5), Err(MoneyError::NotPositive));
        assert_eq!(Fen::positive(1).unwrap().get(), 1);
    }

    #[test]
    fn arithmetic_refuses_overflow() {
        assert_eq!(Fen::new(i64::MAX).checked_add(Fen::new(1)), Err(MoneyError::Overflow));
        assert_eq!(Fen::new(i64::MIN).checked_sub(Fen::new(1)), Err(MoneyError::Overflow));
        assert_eq!(Fen::new(i64::MAX).checked_mul(2), Err(MoneyError::Overflow));
        assert_eq!(Fen::new(i64::MIN).checked_neg(), Err(MoneyError::Overflow));
        assert_eq!(Fen::sum([Fen::new(1), Fen::new(2)]), Ok(Fen::new(3)));
    }

    #[test]
    fn display_shows_yuan_and_fen() {
        assert_eq!(Fen::new(1999).to_string(), "19.99");
        assert_eq!(Fen::new(-5).to_string(), "-0.05");
    }
}
