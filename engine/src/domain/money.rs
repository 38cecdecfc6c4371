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

impl Fen {
    /// A yuan amount as channels such as Alipay write it: `"19.99"`,
    /// `"20"`, `"0.5"`; at most two decimals, no sign, no exponent. Parsed
    /// as integers, never through a float.
    pub fn parse_yuan(s: &str) -> Option<Fen> {
        let (whole, frac) = match s.split_once('.') {
            Some((w, f)) if !f.is_empty() && f.len() <= 2 => (w, f),
            Some(_) => return None,
            None => (s, ""),
        };
        if whole.is_empty() || whole.len() > 15 || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let yuan: i64 = whole.parse().ok()?;
        let fen: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<2}").parse().ok()? };
        yuan.checked_mul(100)?.checked_add(fen).map(Fen)
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
    fn yuan_strings_parse_exactly_or_not_at_all() {
        assert_eq!(Fen::parse_yuan("19.99"), Some(Fen::new(1999)));
        assert_eq!(Fen::parse_yuan("20"), Some(Fen::new(2000)));
        assert_eq!(Fen::parse_yuan("0.5"), Some(Fen::new(50)));
        assert_eq!(Fen::parse_yuan("0.01"), Some(Fen::new(1)));
        for bad in ["", ".5", "1.", "1.234", "-1", "1e3", "1,00", " 1", "0x10", "1.-1", "9999999999999999"] {
            assert_eq!(Fen::parse_yuan(bad), None, "{bad}");
        }
        for fen in [1, 10, 99, 100, 1999, 123456789] {
            assert_eq!(Fen::parse_yuan(&Fen::new(fen).to_string()), Some(Fen::new(fen)));
        }
    }

    #[test]
    fn display_shows_yuan_and_fen() {
        assert_eq!(Fen::new(1999).to_string(), "19.99");
        assert_eq!(Fen::new(-5).to_string(), "-0.05");
    }
}
