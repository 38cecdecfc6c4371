//! Snowflake identifiers with a shard gene.
//!
//! Layout of the 63 usable bits, high to low (the sign bit is always 0):
//!
//! | bits | field                                   |
//! |------|-----------------------------------------|
//! | 41   | milliseconds since 2026-01-01T00:00:00Z |
//! | 10   | node id                                 |
//! | 8    | sequence within the millisecond         |
//! | 4    | shard gene                              |
//!
//! The gene sits in the lowest bits so that ids from one node still increase
//! with time whatever their gene. The gene of an order id is
//! [`gene_of_user`] of its buyer, so an order is found from its id or from its
//! user in one of the 16 order tables without touching the others.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// 2026-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: u64 = 1_767_225_600_000;
pub const NODE_BITS: u32 = 10;
pub const SEQ_BITS: u32 = 8;
pub const GENE_BITS: u32 = 4;
pub const NODE_MAX: u16 = (1 << NODE_BITS) - 1;
/// Number of order tables; one per gene value.
pub const GENE_COUNT: u8 = 1 << GENE_BITS;
/// Logical partitions shared by Redis hash tags and Kafka partitions.
pub const PARTITION_COUNT: u16 = 128;

const TIME_SHIFT: u32 = NODE_BITS + SEQ_BITS + GENE_BITS;
const NODE_SHIFT: u32 = SEQ_BITS + GENE_BITS;
const SEQ_SHIFT: u32 = GENE_BITS;

/// A 63-bit snowflake id. Travels as a decimal string in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a valid id: expected a positive decimal integer below 2^63")]
pub struct IdParseError;

impl Id {
    /// Wraps a raw value read back from a store. Refuses the sign bit.
    pub fn from_raw(raw: i64) -> Result<Self, IdParseError> {
        if raw <= 0 {
            return Err(IdParseError);
        }
        Ok(Id(raw as u64))
    }

    pub fn raw(self) -> i64 {
        self.0 as i64
    }

    pub fn gene(self) -> u8 {
        (self.0 & ((1 << GENE_BITS) - 1)) as u8
    }

    pub fn node(self) -> u16 {
        ((self.0 >> NODE_SHIFT) & u64::from(NODE_MAX)) as u16
    }

    pub fn sequence(self) -> u8 {
        ((self.0 >> SEQ_SHIFT) & ((1 << SEQ_BITS) - 1)) as u8
    }

    /// Unix milliseconds at which the id was minted (logical clock: may run a
    /// little ahead of the wall clock under a burst, see [`IdGen::next`]).
    pub fn unix_ms(self) -> u64 {
        (self.0 >> TIME_SHIFT) + EPOCH_MS
    }

    /// The logical partition (0..128) this entity lives in: its Redis hash tag
    /// and its Kafka partition.
    pub fn partition(self) -> u16 {
        (stable_hash(&self.0.to_le_bytes()) % u64::from(PARTITION_COUNT)) as u16
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.0)
    }
}

impl FromStr for Id {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdParseError);
        }
        let raw: i64 = s.parse().map_err(|_| IdParseError)?;
        Id::from_raw(raw)
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// FNV-1a 64: stable across builds, platforms and Rust versions (unlike
/// `std`'s `DefaultHasher`), which matters because genes and partitions are
/// persisted.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The shard gene of a user: which of the 16 order tables holds their orders.
pub fn gene_of_user(user_id: &str) -> u8 {
    (stable_hash(user_id.as_bytes()) % u64::from(GENE_COUNT)) as u8
}

/// Mints ids for one node. Lock-free and safe to share across threads.
#[derive(Debug)]
pub struct IdGen {
    /// Set once at start (see [`IdGen::set_node`]), before any id is minted.
    node: std::sync::atomic::AtomicU16,
    /// `(ms since EPOCH_MS) << SEQ_BITS | sequence` of the last id minted.
    last: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("node id {0} is above the maximum {NODE_MAX}")]
pub struct NodeIdError(pub u16);

impl IdGen {
    pub fn new(node: u16) -> Result<Self, NodeIdError> {
        if node > NODE_MAX {
            return Err(NodeIdError(node));
        }
        Ok(IdGen { node: std::sync::atomic::AtomicU16::new(node), last: AtomicU64::new(0) })
    }

    /// The node id, once leased (`node_id_auto`): called before any id is minted.
    pub fn set_node(&self, node: u16) -> Result<(), NodeIdError> {
        if node > NODE_MAX {
            return Err(NodeIdError(node));
        }
        self.node.store(node, Ordering::SeqCst);
        Ok(())
    }

    pub fn node(&self) -> u16 {
        self.node.load(Ordering::Relaxed)
    }

    /// Next id with the given gene.
    ///
    /// The clock is logical: when the 256 sequence numbers of a millisecond
    /// run out, the id borrows the next millisecond instead of spinning, so a
    /// burst never blocks and ids stay unique and increasing; the logical clock
    /// falls back in step with the wall clock as soon as the burst ends.
    pub fn next(&self, gene: u8) -> Id {
        let now = (now_unix_ms().saturating_sub(EPOCH_MS)) << SEQ_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        let stamp = loop {
            let candidate = if now > last { now } else { last + 1 };
            match self.last.compare_exchange_weak(last, candidate, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break candidate,
                Err(seen) => last = seen,
            }
        };
        let ms = stamp >> SEQ_BITS;
        let seq = stamp & ((1 << SEQ_BITS) - 1);
        let raw = (ms << TIME_SHIFT)
            | (u64::from(self.node()) << NODE_SHIFT)
            | (seq << SEQ_SHIFT)
            | u64::from(gene & (GENE_COUNT - 1));
        debug_assert!(raw < (1 << 63));
        Id(raw)
    }

    /// Next id whose gene is the user's: used for orders.
    pub fn next_for_user(&self, user_id: &str) -> Id {
        self.next(gene_of_user(user_id))
    }
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn ids_are_unique_across_threads_and_increase_per_thread() {
        let gen = Arc::new(IdGen::new(7).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let gen = gen.clone();
                std::thread::spawn(move || {
                    let ids: Vec<Id> = (0..20_000).map(|_| gen.next(t as u8)).collect();
                    assert!(ids.windows(2).all(|w| w[0] < w[1]));
                    ids
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(seen.insert(id), "duplicate id {id}");
                assert_eq!(id.node(), 7);
            }
        }
        assert_eq!(seen.len(), 160_000);
    }

    #[test]
    fn node_id_above_ten_bits_is_refused() {
        assert!(IdGen::new(1024).is_err());
        assert!(IdGen::new(1023).is_ok());
    }

    #[test]
    fn id_time_is_close_to_now() {
        let gen = IdGen::new(0).unwrap();
        let id = gen.next(3);
        assert!(id.unix_ms().abs_diff(now_unix_ms()) < 1_000);
        assert_eq!(id.gene(), 3);
    }

    #[test]
    fn gene_is_stable_for_known_users() {
        // Persisted data depends on these values never changing.
        assert_eq!(gene_of_user("u1"), (stable_hash(b"u1") % 16) as u8);
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn bad_id_strings_are_refused() {
        for bad in ["", "-1", "0", "abc", "1.5", "99999999999999999999", " 1"] {
            assert!(bad.parse::<Id>().is_err(), "{bad:?} parsed");
        }
        assert_eq!("42".parse::<Id>().unwrap().raw(), 42);
    }

    proptest! {
        #[test]
        fn order_ids_carry_the_user_gene(user in "[a-z0-9]{1,24}", node in 0u16..1024) {
            let gen = IdGen::new(node).unwrap();
            let id = gen.next_for_user(&user);
            prop_assert_eq!(id.gene(), gene_of_user(&user));
            prop_assert_eq!(id.node(), node);
            prop_assert!(id.raw() > 0);
            prop_assert!(id.partition() < PARTITION_COUNT);
            prop_assert_eq!(id.to_string().parse::<Id>().unwrap(), id);
        }

        #[test]
        fn ids_from_one_node_strictly_increase(genes in proptest::collection::vec(0u8..16, 1..500)) {
            let gen = IdGen::new(5).unwrap();
            let ids: Vec<Id> = genes.iter().map(|g| gen.next(*g)).collect();
            for (id, g) in ids.iter().zip(&genes) {
                prop_assert_eq!(id.gene(), *g);
            }
            prop_assert!(ids.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
