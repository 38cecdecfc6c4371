//! Red packet kinds and the split of a total into parts, done at creation.

use serde::{Deserialize, Serialize};

use super::money::Fen;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PacketKind {
    /// Every part equal; the total must divide evenly by the count.
    Normal,
    /// Double-average random parts: each ≥ 1 fen and ≤ 2 × the remaining
    /// average at the moment it is drawn.
    Lucky,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PacketStatus {
    Active,
    Empty,
    Expired,
}

impl PacketStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PacketStatus::Active => "active",
            PacketStatus::Empty => "empty",
            PacketStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => PacketStatus::Active,
            "empty" => PacketStatus::Empty,
            "expired" => PacketStatus::Expired,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SplitError {
    #[error("count must be at least 1")]
    ZeroCount,
    #[error("count {count} is above the maximum {max}")]
    CountTooLarge { count: u32, max: u32 },
    #[error("total must be a positive number of fen")]
    TotalNotPositive,
    #[error("count {count} is above the total of {total} fen: every part is at least 1 fen")]
    CountAboveTotal { count: u32, total: i64 },
    #[error("a normal packet's total of {total} fen does not divide evenly into {count} parts")]
    Uneven { count: u32, total: i64 },
}

/// Splits `total` into `count` parts. `rng` decides the lucky draw, so tests
/// can seed it.
pub fn split(
    kind: PacketKind,
    total: Fen,
    count: u32,
    count_max: u32,
    rng: &mut fastrand::Rng,
) -> Result<Vec<Fen>, SplitError> {
    if count == 0 {
        return Err(SplitError::ZeroCount);
    }
    if count > count_max {
        return Err(SplitError::CountTooLarge { count, max: count_max });
    }
    let total = total.get();
    if total <= 0 {
        return Err(SplitError::TotalNotPositive);
    }
    let n = i64::from(count);
    if n > total {
        return Err(SplitError::CountAboveTotal { count, total });
    }
    match kind {
        PacketKind::Normal => {
            if total % n != 0 {
                return Err(SplitError::Uneven { count, total });
            }
            Ok(vec![Fen::new(total / n); count as usize])
        }
        PacketKind::Lucky => {
            let mut parts = Vec::with_capacity(count as usize);
            let mut remaining = total;
            for left in (1..=n).rev() {
                let part = if left == 1 {
                    remaining
                } else {
                    // ≤ 2 × remaining average, and leave ≥ 1 fen for each
                    // part still to draw.
                    let max = (remaining * 2 / left).min(remaining - (left - 1));
                    rng.i64(1..=max)
                };
                parts.push(Fen::new(part));
                remaining -= part;
            }
            debug_assert_eq!(remaining, 0);
            Ok(parts)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rng() -> fastrand::Rng {
        fastrand::Rng::with_seed(7)
    }

    #[test]
    fn a_normal_packet_splits_into_equal_parts() {
        let parts = split(PacketKind::Normal, Fen::new(1000), 10, 100, &mut rng()).unwrap();
        assert_eq!(parts, vec![Fen::new(100); 10]);
    }

    #[test]
    fn a_normal_packet_that_does_not_divide_is_refused() {
        assert_eq!(
            split(PacketKind::Normal, Fen::new(1000), 3, 100, &mut rng()),
            Err(SplitError::Uneven { count: 3, total: 1000 })
        );
    }

    #[test]
    fn bad_counts_and_totals_are_refused() {
        let k = PacketKind::Lucky;
        assert_eq!(split(k, Fen::new(10), 0, 100, &mut rng()), Err(SplitError::ZeroCount));
        assert_eq!(
            split(k, Fen::new(10), 11, 100, &mut rng()),
            Err(SplitError::CountAboveTotal { count: 11, total: 10 })
        );
        assert_eq!(split(k, Fen::new(0), 1, 100, &mut rng()), Err(SplitError::TotalNotPositive));
        assert_eq!(
            split(k, Fen::new(10_000), 101, 100, &mut rng()),
            Err(SplitError::CountTooLarge { count: 101, max: 100 })
        );
    }

    #[test]
    fn a_lucky_packet_with_count_equal_to_total_is_all_ones() {
        let parts = split(PacketKind::Lucky, Fen::new(50), 50, 100, &mut rng()).unwrap();
        assert!(parts.iter().all(|p| p.get() == 1));
    }

    proptest! {
        #[test]
        fn lucky_parts_respect_the_double_average_bound_and_sum_to_the_total(
            total in 1i64..10_000_000, count in 1u32..2_000, seed in any::<u64>()
        ) {
            prop_assume!(i64::from(count) <= total);
            let mut rng = fastrand::Rng::with_seed(seed);
            let parts = split(PacketKind::Lucky, Fen::new(total), count, 10_000, &mut rng).unwrap();
            prop_assert_eq!(parts.len(), count as usize);
            prop_assert_eq!(parts.iter().map(|p| p.get()).sum::<i64>(), total);
            let mut remaining = total;
            for (i, p) in parts.iter().enumerate() {
                let left = i64::from(count) - i as i64;
                prop_assert!(p.get() >= 1);
                // p ≤ 2 × remaining / left, compared without division.
                prop_assert!(p.get() * left <= 2 * remaining);
                remaining -= p.get();
            }
        }
    }
}
