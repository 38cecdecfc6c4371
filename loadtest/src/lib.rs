//! # rush-loadtest
//!
//! Drives a running rush over HTTP with many keep-alive connections,
//! measures throughput and latency (HDR histograms, per-second timeline),
//! measures the machine's HTTP ceiling in the same run, and checks rush's
//! guarantees through its API afterwards. A violated guarantee fails the
//! run whatever the speed.
//!
//! # Layout
//! - [`client`]: one hyper HTTP/1.1 keep-alive connection per task.
//! - [`load`]: closed- and open-loop drivers, the `Workload` trait, the ceiling.
//! - [`stats`]: latency histograms, outcomes, the per-second timeline.
//! - [`api`]: setup and verification calls through rush's API.
//! - [`scenarios`]: `grab`, `seats`, `mixed`, `pay`, each with its checks.
//! - [`checks`]: the guarantee checks' record.
//! - [`sample`]: rush's `/metrics` sampled during a run (lag, CPU).
//! - [`report`]: JSON result, SVG chart, text summary.

pub mod api;
pub mod checks;
pub mod client;
pub mod load;
pub mod report;
pub mod sample;
pub mod scenarios;
pub mod stats;
pub mod subscribers;

/// A mutex's guard, even if a panicking holder poisoned it (the harness's
/// books stay readable for the checks).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
