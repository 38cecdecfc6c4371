//! The load driver: `concurrency` tasks, each with its own keep-alive
//! connection, asking a workload for requests.
//!
//! - Closed loop: each task sends its next request as soon as the last one
//!   is answered (fixed concurrency).
//! - Open loop: each task sends on a fixed schedule (rate / concurrency per
//!   task) and latency is measured from the *intended* send time, so a stall
//!   that delays later sends shows up in their latency instead of hiding
//!   (no coordinated omission).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use serde::Serialize;

use crate::client::Conn;
use crate::stats::{Latency, Recorder, Timeline, TimelinePoint};

#[derive(Clone, Copy, Debug, Serialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum Model {
    Closed,
    Open { rate_per_s: f64 },
}

pub struct Req {
    pub method: Method,
    pub path: Arc<str>,
    pub token: Option<Arc<str>>,
    pub body: Option<Bytes>,
    /// Scenario-defined: what the request was, for `observe`.
    pub tag: [u32; 3],
    /// A `Rush-Admission` header (holds on an event with a waiting room).
    pub admission: Option<Arc<str>>,
}

pub enum Next {
    Send(Req),
    /// Nothing to send right now; ask again shortly.
    Wait,
    /// This task is finished.
    Done,
}

pub trait Workload: Send + Sync + 'static {
    fn next(&self, task: usize) -> Next;
    /// Sees every answer; true when it is a successful operation.
    fn observe(&self, req: &Req, status: u16, body: &[u8]) -> bool;
}

#[derive(Clone, Debug, Serialize)]
pub struct StageResult {
    pub name: String,
    pub duration_s: f64,
    pub ok: u64,
    pub total: u64,
    pub ok_per_s: f64,
    pub total_per_s: f64,
    pub latency: Latency,
    pub outcomes: std::collections::BTreeMap<String, u64>,
    pub timeline: Vec<TimelinePoint>,
    /// How far the durable projection was behind during the stage (from
    /// rush's `/metrics`, see `sample.rs`).
    pub lag: Option<crate::sample::LagSummary>,
    /// From the end of the load until nothing was behind; `None`: not
    /// within the settle bound.
    pub drain_s: Option<f64>,
    /// rush's CPU (every sampled process) from the stage's start until it
    /// drained, per successful operation: the persistence included.
    pub cpu_us_per_ok: Option<f64>,
}

pub struct LoadOpts {
    /// Connection `i` goes to `addrs[i % addrs.len()]` (never empty).
    pub addrs: Vec<SocketAddr>,
    pub concurrency: usize,
    pub model: Model,
    pub duration: Duration,
    pub progress: bool,
}

/// Cheap extraction of `"code":"…"` from an error body, without parsing.
fn error_code(body: &[u8]) -> &str {
    let s = std::str::from_utf8(body).unwrap_or("");
    s.split_once("\"code\":\"").and_then(|(_, rest)| rest.split_once('"')).map(|(c, _)| c).unwrap_or("")
}

/// Pause between asks when a workload says `Wait`.
const WAIT_PAUSE: Duration = Duration::from_millis(1);

pub async fn drive(name: &str, opts: &LoadOpts, workload: Arc<dyn Workload>) -> StageResult {
    let seconds = opts.duration.as_secs() as usize + 2;
    let timeline = Arc::new(Timeline::new(seconds));
    let start = Instant::now();
    let end = start + opts.duration;
    let bar = opts.progress.then(|| {
        let bar = indicatif::ProgressBar::new(opts.duration.as_millis() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:30}] {elapsed_precise} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(name.to_string());
        bar
    });
    let ticker = bar.clone().map(|bar| {
        let timeline = timeline.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let el = start.elapsed();
                let ok: u64 = timeline.seconds.iter().map(|s| s.ok.load(Ordering::Relaxed)).sum();
                bar.set_position(el.as_millis() as u64);
                bar.set_message(format!("{ok} ok, {:.0} ok/s", ok as f64 / el.as_secs_f64().max(0.001)));
            }
        })
    });
    let per_task_interval = match opts.model {
        Model::Closed => None,
        Model::Open { rate_per_s } => Some(Duration::from_secs_f64(opts.concurrency as f64 / rate_per_s.max(0.001))),
    };
    let tasks: Vec<_> = (0..opts.concurrency)
        .map(|task| {
            let workload = workload.clone();
            let timeline = timeline.clone();
            let addr = opts.addrs[task % opts.addrs.len().max(1)];
            let concurrency = opts.concurrency;
            tokio::spawn(async move {
                let mut conn = Conn::new(addr);
                let mut rec = Recorder::new();
                // Open loop: tasks' schedules are spread evenly over one
                // interval, so together they send at a steady rate.
                let mut intended = per_task_interval.map(|i| start + i.mul_f64(task as f64 / concurrency as f64));
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    let req = match workload.next(task) {
                        Next::Send(r) => r,
                        Next::Wait => {
                            tokio::time::sleep(WAIT_PAUSE).await;
                            continue;
                        }
                        Next::Done => break,
                    };
                    let send_at = match (intended.as_mut(), per_task_interval) {
                        (Some(t), Some(i)) => {
                            let at = *t;
                            *t += i;
                            if at > now {
                                tokio::time::sleep_until(at.into()).await;
                            }
                            at
                        }
                        _ => now,
                    };
                    let resp = conn
                        .send_with(
                            req.method.clone(),
                            &req.path,
                            req.token.as_deref(),
                            req.body.clone(),
                            req.admission.as_deref().map(|a| ("rush-admission", a)),
                        )
                        .await;
                    let latency_us = send_at.elapsed().as_micros() as u64;
                    let (ok, outcome) = match resp {
                        Ok(r) => {
                            let ok = workload.observe(&req, r.status, &r.body);
                            let outcome = if r.status < 300 {
                                r.status.to_string()
                            } else {
                                format!("{} {}", r.status, error_code(&r.body))
                            };
                            (ok, outcome)
                        }
                        Err(_) => (false, "transport_error".to_string()),
                    };
                    let second = send_at.saturating_duration_since(start).as_secs() as usize;
                    timeline.record(second, ok, latency_us);
                    rec.record(second, latency_us, ok, outcome);
                }
                rec
            })
        })
        .collect();
    let mut all = Recorder::new();
    for t in tasks {
        if let Ok(rec) = t.await {
            all.merge(&rec);
        }
    }
    let elapsed = start.elapsed().min(opts.duration + Duration::from_secs(1));
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let secs = elapsed.as_secs_f64().max(0.001);
    StageResult {
        name: name.to_string(),
        duration_s: secs,
        ok: all.ok,
        total: all.total,
        ok_per_s: all.ok as f64 / secs,
        total_per_s: all.total as f64 / secs,
        latency: Latency::of(&all.latency),
        outcomes: all.outcomes,
        // Whole seconds only: a last partial second would plot as a drop.
        timeline: {
            let mut points = timeline.points(elapsed.as_secs() as usize);
            for (p, o) in points.iter_mut().zip(all.outcomes_by_second.iter_mut()) {
                p.outcomes = std::mem::take(o);
            }
            points
        },
        lag: None,
        drain_s: None,
        cpu_us_per_ok: None,
    }
}

/// The machine's HTTP ceiling: a trivial route at the same concurrency.
pub struct Ceiling {
    path: Arc<str>,
}

impl Ceiling {
    pub fn new() -> Self {
        Ceiling { path: Arc::from("/healthz") }
    }
}

impl Default for Ceiling {
    fn default() -> Self {
        Self::new()
    }
}

impl Workload for Ceiling {
    fn next(&self, _task: usize) -> Next {
        Next::Send(Req {
            method: Method::GET,
            path: self.path.clone(),
            token: None,
            body: None,
            tag: [0; 3],
            admission: None,
        })
    }

    fn observe(&self, _req: &Req, status: u16, _body: &[u8]) -> bool {
        status == 200
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_found_without_parsing() {
        assert_eq!(error_code(br#"{"error":{"code":"sold_out","message":"x"}}"#), "sold_out");
        assert_eq!(error_code(b"not json"), "");
    }
}
