//! What a run measures: an HDR histogram per load task (merged at the end)
//! for exact percentiles, outcomes by status and error code, and a
//! per-second timeline of successes, requests and a coarse latency
//! distribution for the p99-over-time chart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds up to this (1 minute).
pub const LATENCY_MAX_US: u64 = 60_000_000;
/// Log-linear buckets for the timeline: exact below 16 µs, then 8 per
/// power of two (≤ 12.5% error), enough for the chart.
const BUCKETS: usize = 16 + 8 * 40;

fn bucket_of(us: u64) -> usize {
    if us < 16 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros() as usize; // ≥ 4
    let sub = ((us >> (exp - 3)) & 7) as usize;
    (16 + (exp - 4) * 8 + sub).min(BUCKETS - 1)
}

fn bucket_upper_us(b: usize) -> u64 {
    if b < 16 {
        return b as u64;
    }
    let exp = (b - 16) / 8 + 4;
    let sub = ((b - 16) % 8) as u64;
    ((8 + sub + 1) << (exp - 3)) - 1
}

pub struct Second {
    pub ok: AtomicU64,
    pub total: AtomicU64,
    buckets: Vec<AtomicU64>,
}

/// Per-second figures shared by all tasks (atomics; no locks on the path).
pub struct Timeline {
    pub seconds: Vec<Second>,
}

impl Timeline {
    pub fn new(seconds: usize) -> Self {
        Timeline {
            seconds: (0..seconds.max(1))
                .map(|_| Second {
                    ok: AtomicU64::new(0),
                    total: AtomicU64::new(0),
                    buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
                })
                .collect(),
        }
    }

    pub fn record(&self, second: usize, ok: bool, latency_us: u64) {
        let s = &self.seconds[second.min(self.seconds.len() - 1)];
        s.total.fetch_add(1, Ordering::Relaxed);
        if ok {
            s.ok.fetch_add(1, Ordering::Relaxed);
        }
        s.buckets[bucket_of(latency_us)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn points(&self, used_seconds: usize) -> Vec<TimelinePoint> {
        self.seconds
            .iter()
            .take(used_seconds.max(1))
            .enumerate()
            .map(|(t, s)| {
                let total = s.total.load(Ordering::Relaxed);
                let target = (total as f64 * 0.99).ceil() as u64;
                let mut seen = 0;
                let mut p99 = 0;
                for (b, c) in s.buckets.iter().enumerate() {
                    seen += c.load(Ordering::Relaxed);
                    if seen >= target && total > 0 {
                        p99 = bucket_upper_us(b);
                        break;
                    }
                }
                TimelinePoint {
                    t_s: t as u64,
                    ok: s.ok.load(Ordering::Relaxed),
                    total,
                    p99_ms: p99 as f64 / 1000.0,
                    outcomes: BTreeMap::new(),
                }
            })
            .collect()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TimelinePoint {
    pub t_s: u64,
    pub ok: u64,
    pub total: u64,
    pub p99_ms: f64,
    /// Answers of this second by status and error code.
    pub outcomes: BTreeMap<String, u64>,
}

/// One load task's private figures.
pub struct Recorder {
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub total: u64,
    /// `"201"`, `"409 sold_out"`, `"transport_error"`, … → count.
    pub outcomes: BTreeMap<String, u64>,
    /// The same, per second of the run.
    pub outcomes_by_second: Vec<BTreeMap<String, u64>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            latency: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).unwrap_or_else(|_| unreachable!("valid bounds")),
            ok: 0,
            total: 0,
            outcomes: BTreeMap::new(),
            outcomes_by_second: Vec::new(),
        }
    }

    pub fn record(&mut self, second: usize, latency_us: u64, ok: bool, outcome: String) {
        self.latency.saturating_record(latency_us.clamp(1, LATENCY_MAX_US));
        self.total += 1;
        if ok {
            self.ok += 1;
        }
        if self.outcomes_by_second.len() <= second {
            self.outcomes_by_second.resize_with(second + 1, BTreeMap::new);
        }
        *self.outcomes_by_second[second].entry(outcome.clone()).or_default() += 1;
        *self.outcomes.entry(outcome).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        self.total += other.total;
        for (k, v) in &other.outcomes {
            *self.outcomes.entry(k.clone()).or_default() += v;
        }
        if self.outcomes_by_second.len() < other.outcomes_by_second.len() {
            self.outcomes_by_second.resize_with(other.outcomes_by_second.len(), BTreeMap::new);
        }
        for (mine, theirs) in self.outcomes_by_second.iter_mut().zip(&other.outcomes_by_second) {
            for (k, v) in theirs {
                *mine.entry(k.clone()).or_default() += v;
            }
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values_within_an_eighth() {
        for us in [0, 1, 15, 16, 17, 100, 1_000, 4_999, 123_456, 59_999_999] {
            let b = bucket_of(us);
            let upper = bucket_upper_us(b);
            assert!(upper >= us, "{us} above its bucket's upper bound {upper}");
            assert!(upper as f64 <= us as f64 * 1.125 + 1.0, "{us}: bucket too wide ({upper})");
        }
    }

    #[test]
    fn timeline_p99_follows_the_slow_tail() {
        let t = Timeline::new(2);
        for _ in 0..990 {
            t.record(0, true, 100);
        }
        for _ in 0..10 {
            t.record(0, false, 50_000);
        }
        let p = t.points(1);
        assert_eq!((p[0].ok, p[0].total), (990, 1000));
        assert!(p[0].p99_ms < 0.2, "{}", p[0].p99_ms);
        t.record(1, true, 50_000);
        assert!(t.points(2)[1].p99_ms >= 50.0);
    }
}
