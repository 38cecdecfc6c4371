//! Sampling rush's `/metrics` during a run: how far the outbox's consumer
//! (persist worker, or the relay) and the Kafka worker are behind, how fast
//! they apply, and how much CPU rush's processes spend.
//!
//! Lag is sampled as events (`rush_outbox_lag_events`, the largest over the
//! nodes; `rush_consumer_lag_events`, the worker's) and turned into seconds
//! by Little's law: events behind ÷ the events per second being applied
//! over the last three seconds (a consumer applies in batches; one
//! second may see none of them). A consumer that keeps up has a lag of
//! about one batch's latency; one that falls behind shows the time its
//! backlog takes to drain, growing sample after sample.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use serde::Serialize;

use crate::client::Conn;
use crate::lock;

/// What one scrape of every target gave.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Scrape {
    /// Largest outbox lag over the nodes (they share one outbox).
    pub outbox_lag: f64,
    /// The Kafka worker's consumer lag (0 without a worker).
    pub consumer_lag: f64,
    /// Events applied by the durable projection (the persist worker, or
    /// the Kafka worker in full mode), summed over the targets.
    pub applied: f64,
    /// CPU seconds of every target process (user + system).
    pub cpu_s: f64,
}

impl Scrape {
    /// Events not yet in the durable store.
    pub fn behind(&self) -> f64 {
        self.outbox_lag + self.consumer_lag
    }
}

/// Sums the samples of one metric family whose labels contain `labels`.
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (series, value) = match rest.rsplit_once(' ') {
            Some(p) => p,
            None => continue,
        };
        // `name` must be the whole metric name, not a prefix of another.
        if !(series.is_empty() || series.starts_with('{')) || !series.contains(labels) {
            continue;
        }
        if let Ok(v) = value.trim().parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Reads one target's exposition into a scrape (its share of one).
pub fn parse(text: &str) -> Scrape {
    // The persist worker: in `rush serve` (embedded, Redis mode) or in
    // `rush worker` (full mode), whichever applies to the durable store.
    let applied = metric(text, "rush_worker_events_total", "worker=\"persist\"").unwrap_or(0.0);
    Scrape {
        outbox_lag: metric(text, "rush_outbox_lag_events", "").unwrap_or(0.0),
        consumer_lag: metric(text, "rush_consumer_lag_events", "").unwrap_or(0.0),
        applied,
        cpu_s: metric(text, "rush_process_cpu_seconds_total", "").unwrap_or(0.0),
    }
}

/// Scrapes every target once; `None` if any of them did not answer.
pub async fn scrape(conns: &mut [Conn]) -> Option<Scrape> {
    let mut all = Scrape::default();
    for c in conns.iter_mut() {
        let r = c.send(Method::GET, "/metrics", None, None).await.ok()?;
        if r.status != 200 {
            return None;
        }
        let s = parse(std::str::from_utf8(&r.body).unwrap_or(""));
        all.outbox_lag = all.outbox_lag.max(s.outbox_lag);
        all.consumer_lag = all.consumer_lag.max(s.consumer_lag);
        all.applied += s.applied;
        all.cpu_s += s.cpu_s;
    }
    Some(all)
}

#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Instant,
    pub scrape: Scrape,
}

/// Samples the targets every `every` until dropped.
pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
    targets: Vec<SocketAddr>,
}

impl Sampler {
    pub fn start(targets: Vec<SocketAddr>, every: Duration) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let out = samples.clone();
        let addrs = targets.clone();
        let task = tokio::spawn(async move {
            let mut conns: Vec<Conn> = addrs.iter().map(|a| Conn::new(*a)).collect();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let at = Instant::now();
                if let Some(scrape) = scrape(&mut conns).await {
                    lock(&out).push(Sample { at, scrape });
                }
            }
        });
        Sampler { samples, task, targets }
    }

    /// A scrape now (outside the schedule).
    pub async fn now(&self) -> Option<Scrape> {
        let mut conns: Vec<Conn> = self.targets.iter().map(|a| Conn::new(*a)).collect();
        scrape(&mut conns).await
    }

    /// The samples taken between `from` and `to`.
    pub fn between(&self, from: Instant, to: Instant) -> Vec<Sample> {
        lock(&self.samples).iter().filter(|s| s.at >= from && s.at <= to).copied().collect()
    }

    /// Waits until nothing is behind (outbox and consumer lag both zero in
    /// a fresh scrape), at most `bound`; the time it took, or `None`.
    pub async fn drained(&self, bound: Duration, poll: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut conns: Vec<Conn> = self.targets.iter().map(|a| Conn::new(*a)).collect();
        loop {
            if let Some(s) = scrape(&mut conns).await {
                if s.behind() == 0.0 {
                    return Some(start.elapsed());
                }
            }
            if start.elapsed() >= bound {
                return None;
            }
            tokio::time::sleep(poll).await;
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Lag over a stage: events behind and the seconds they stand for.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LagSummary {
    pub samples: usize,
    pub events_p50: f64,
    pub events_p99: f64,
    pub events_max: f64,
    pub seconds_p50: f64,
    pub seconds_p99: f64,
    pub seconds_max: f64,
    /// Events per second the durable projection applied over the stage.
    pub applied_per_s: f64,
    /// Lag (events) in the last quarter of the stage over the second
    /// quarter: well above 1 is a backlog still growing at the end.
    pub growth: f64,
}

/// The window over which the applying rate is taken.
const RATE_WINDOW: Duration = Duration::from_secs(3);

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

pub fn summarize(samples: &[Sample]) -> LagSummary {
    if samples.len() < 2 {
        return LagSummary { samples: samples.len(), ..LagSummary::default() };
    }
    let mut events: Vec<f64> = samples.iter().map(|s| s.scrape.behind()).collect();
    let mut seconds = Vec::with_capacity(samples.len() - 1);
    let mut from = 0;
    // When nothing was behind last: with nothing applied over the window,
    // the backlog is as old as that (a fresh burst after a quiet spell is
    // not a stall of the window's length).
    let mut last_empty = samples[0].at;
    for (i, now) in samples.iter().enumerate().skip(1) {
        // The rate over the last `RATE_WINDOW` (or since the first sample):
        // a consumer applies in batches, so one short interval may see none.
        while from + 1 < i && now.at.duration_since(samples[from + 1].at) >= RATE_WINDOW {
            from += 1;
        }
        let then = &samples[from];
        let dt = now.at.duration_since(then.at).as_secs_f64().max(1e-3);
        let rate = (now.scrape.applied - then.scrape.applied).max(0.0) / dt;
        let behind = now.scrape.behind();
        seconds.push(if behind == 0.0 {
            last_empty = now.at;
            0.0
        } else if rate > 0.0 {
            behind / rate
        } else {
            now.at.duration_since(last_empty).as_secs_f64()
        });
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let span = last.at.duration_since(first.at).as_secs_f64().max(1e-3);
    let applied_per_s = (last.scrape.applied - first.scrape.applied).max(0.0) / span;
    let q = events.len() / 4;
    let growth = if q == 0 {
        1.0
    } else {
        let early = mean(&events[q..2 * q]);
        let late = mean(&events[events.len() - q..]);
        if early > 0.0 {
            late / early
        } else if late > 0.0 {
            f64::INFINITY
        } else {
            1.0
        }
    };
    events.sort_by(f64::total_cmp);
    seconds.sort_by(f64::total_cmp);
    LagSummary {
        samples: samples.len(),
        events_p50: quantile(&events, 0.5),
        events_p99: quantile(&events, 0.99),
        events_max: events.last().copied().unwrap_or(0.0),
        seconds_p50: quantile(&seconds, 0.5),
        seconds_p99: quantile(&seconds, 0.99),
        seconds_max: seconds.last().copied().unwrap_or(0.0),
        applied_per_s,
        growth,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP rush_outbox_lag_events x\n# TYPE rush_outbox_lag_events gauge\n\
        rush_outbox_lag_events 1200\nrush_outbox_lag_events_other 5\n\
        rush_worker_events_total{worker=\"persist\"} 90\nrush_worker_events_total{worker=\"kafka\"} 7\n\
        rush_process_cpu_seconds_total 2.5\n";

    #[test]
    fn an_exposition_is_read_by_whole_metric_names() {
        let s = parse(TEXT);
        assert_eq!(s.outbox_lag, 1200.0);
        assert_eq!(s.consumer_lag, 0.0);
        assert_eq!(s.applied, 90.0);
        assert_eq!(s.cpu_s, 2.5);
    }

    fn at(base: Instant, ms: u64, behind: f64, applied: f64) -> Sample {
        Sample {
            at: base + Duration::from_millis(ms),
            scrape: Scrape { outbox_lag: behind, consumer_lag: 0.0, applied, cpu_s: 0.0 },
        }
    }

    #[test]
    fn lag_in_seconds_is_the_backlog_over_the_rate_it_drains_at() {
        let t = Instant::now();
        // 1 000 events/s applied, 500 behind: half a second.
        let s = summarize(&[at(t, 0, 500.0, 0.0), at(t, 1000, 500.0, 1000.0), at(t, 2000, 500.0, 2000.0)]);
        assert!((s.seconds_p50 - 0.5).abs() < 1e-9, "{s:?}");
        assert!((s.applied_per_s - 1000.0).abs() < 1e-9);
        // Nothing applied while events wait: as old as the backlog is,
        // growing for as long as the stall lasts.
        let s = summarize(&[at(t, 0, 10.0, 5.0), at(t, 1000, 10.0, 5.0), at(t, 5000, 10.0, 5.0)]);
        assert!((s.seconds_max - 5.0).abs() < 1e-9, "{s:?}");
        // A burst right after a quiet spell is fresh, not a stall.
        let s = summarize(&[at(t, 0, 0.0, 5.0), at(t, 1000, 0.0, 5.0), at(t, 1050, 7.0, 5.0)]);
        assert!((s.seconds_max - 0.05).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn a_growing_backlog_shows_in_growth() {
        let t = Instant::now();
        let grow: Vec<Sample> = (0..40).map(|i| at(t, i * 250, (i * 100) as f64, (i * 10) as f64)).collect();
        assert!(summarize(&grow).growth > 2.0);
        let flat: Vec<Sample> = (0..40).map(|i| at(t, i * 250, 100.0, (i * 1000) as f64)).collect();
        assert!((summarize(&flat).growth - 1.0).abs() < 1e-9);
    }
}
