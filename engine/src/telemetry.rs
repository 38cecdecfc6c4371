//! Prometheus metrics, one registry per engine (so tests never share one).

use prometheus::{
    exponential_buckets, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub mailbox_depth: IntGaugeVec,
    pub batch_len: HistogramVec,
    pub actors_live: IntGaugeVec,
    pub holds: IntCounterVec,
    /// The catalogue's cache of remaining seats: `hit` or `miss` per event read.
    pub catalogue_cache: IntCounterVec,
    /// Waiting rooms: joins and leaves through this node (`op`).
    pub queue_ops: IntCounterVec,
    /// Users this node's admission steps admitted.
    pub queue_admitted: IntCounter,
    /// Live update streams open on this node, by `stream` (event, packet, queue).
    pub push_subscribers: IntGaugeVec,
    /// Streams closed by this node: `slow` (fell `push.buffer_msgs` behind)
    /// or `full` (refused at `push.subscribers_max`).
    pub push_dropped: IntCounterVec,
    /// Requests refused with 429, by route `class` and `key` (user, addr).
    pub rate_limited: IntCounterVec,
    /// Refunds a cancellation's fan-out asked for, and the fan-outs finished.
    pub cancel_refunds: IntCounterVec,
    pub grabs: IntCounterVec,
    pub worker_events: IntCounterVec,
    pub worker_failures: IntCounterVec,
    pub parked_events: IntCounter,
    /// Redis lost or rolled back its data (issue 15), per detection.
    pub hot_store_losses: IntCounter,
    /// 1 while this node finds the hot store lost and not yet rebuilt.
    pub hot_store_lost: IntGauge,
    /// Orders or grabs a rebuild could not put back (their seats were
    /// taken since) or that matched nothing.
    pub hot_store_conflicts: IntCounter,
    pub outbox_lag: IntGauge,
    pub store_batch_latency: Histogram,
    pub relay_lag: Histogram,
    pub consumer_lag: IntGauge,
    pub payments: IntCounterVec,
    pub callbacks: IntCounterVec,
    pub withdrawals: IntCounterVec,
    pub webhook_deliveries: IntCounterVec,
    /// Read from `/proc/self/stat` at each render.
    pub process_cpu: Gauge,
    /// The durable store's group commit (`durable/writer.rs`), set from
    /// the writer's counts at each scrape of a node that has one.
    pub writer_units: IntGauge,
    pub writer_commits: IntGauge,
}

fn must<T>(r: Result<T, prometheus::Error>) -> T {
    // Metric definitions are constants of this file; a bad one is a bug
    // found by the first test, never by a request.
    r.unwrap_or_else(|e| panic!("bad metric definition: {e}"))
}

impl Metrics {
    /// Every metric declared and registered. Long (~160 lines) on purpose:
    /// one declaration per metric, in one list, so the README's table and
    /// the dashboard can be checked against a single place.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("rush".into()), None).unwrap_or_default();
        let http_requests = must(IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route pattern, method and status"),
            &["route", "method", "status"],
        ));
        let http_latency = must(HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP latency by route pattern")
                .buckets(must(exponential_buckets(0.000_05, 2.0, 18))),
            &["route"],
        ));
        let mailbox_depth = must(IntGaugeVec::new(
            Opts::new("actor_mailbox_depth", "Requests queued in actor mailboxes, summed per kind"),
            &["kind"],
        ));
        let batch_len = must(HistogramVec::new(
            HistogramOpts::new("actor_batch_len", "Requests decided per actor batch")
                .buckets(must(exponential_buckets(1.0, 2.0, 12))),
            &["kind"],
        ));
        let actors_live = must(IntGaugeVec::new(Opts::new("actors_live", "Running actors per kind"), &["kind"]));
        let holds = must(IntCounterVec::new(Opts::new("holds_total", "Hold requests by outcome"), &["outcome"]));
        let queue_ops = must(IntCounterVec::new(
            Opts::new("queue_ops_total", "Waiting room joins and leaves through this node"),
            &["op"],
        ));
        let queue_admitted = must(IntCounter::new(
            "queue_admitted_total",
            "Users admitted from waiting rooms by this node's admission steps",
        ));
        let push_subscribers = must(IntGaugeVec::new(
            Opts::new("push_subscribers", "Live update (SSE) streams open on this node"),
            &["stream"],
        ));
        let push_dropped = must(IntCounterVec::new(
            Opts::new(
                "push_dropped_total",
                "Live update streams closed by this node: slow (fell behind) or full (refused)",
            ),
            &["reason"],
        ));
        let rate_limited = must(IntCounterVec::new(
            Opts::new("rate_limited_total", "Requests refused with 429 by route class and bucket key (user or addr)"),
            &["class", "key"],
        ));
        let catalogue_cache = must(IntCounterVec::new(
            Opts::new("catalogue_cache_total", "Catalogue reads of an event's remaining seats, hit or miss"),
            &["result"],
        ));
        let cancel_refunds = must(IntCounterVec::new(
            Opts::new("cancel_fanout_total", "Cancellation fan-out steps: refund_asked, refund_done, finished"),
            &["step"],
        ));
        let grabs = must(IntCounterVec::new(Opts::new("grabs_total", "Grab requests by outcome"), &["outcome"]));
        let worker_events =
            must(IntCounterVec::new(Opts::new("worker_events_total", "Events applied by workers"), &["worker"]));
        let worker_failures = must(IntCounterVec::new(
            Opts::new("worker_failures_total", "Failed worker batches (retried); alert when it keeps rising"),
            &["worker"],
        ));
        let parked_events = must(IntCounter::new(
            "parked_events_total",
            "Events the durable store refused (a constraint or invariant): parked in parked_events, the rest \
             applied; alert on any",
        ));
        let hot_store_losses = must(IntCounter::new(
            "hot_store_losses_total",
            "Times this node found Redis lost or rolled back (a partition's identity marker gone, or its \
             replication id changed); the hot state is rebuilt from the durable store; alert on any",
        ));
        let hot_store_lost = must(IntGauge::new(
            "hot_store_lost",
            "1 while the hot store is lost and not yet rebuilt: intake answers 503 hot_store_recovering",
        ));
        let hot_store_conflicts = must(IntCounter::new(
            "hot_store_rebuild_conflicts_total",
            "Orders or grabs a rebuild could not put back into Redis (their seats were taken since the loss); \
             alert on any",
        ));
        let outbox_lag = must(IntGauge::new(
            "outbox_lag_events",
            "Outbox entries not yet taken by its consumer (persist worker, or the relay in full mode); \
             writes are refused at outbox.len_max",
        ));
        let relay_lag = must(Histogram::with_opts(
            HistogramOpts::new("relay_lag_seconds", "From an event happening to Kafka acknowledging it").buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0,
            ]),
        ));
        let consumer_lag =
            must(IntGauge::new("consumer_lag_events", "Kafka messages not yet committed by the worker group"));
        let payments = must(IntCounterVec::new(
            Opts::new(
                "payments_total",
                "Payment transitions: created, succeeded, found_by_query (a lost callback), closed, late (money \
                 after close, refunded), refunded",
            ),
            &["outcome"],
        ));
        let callbacks = must(IntCounterVec::new(
            Opts::new(
                "payment_callbacks_total",
                "Channel callbacks by outcome; alert on bad_signature or amount_mismatch",
            ),
            &["channel", "outcome"],
        ));
        let withdrawals = must(IntCounterVec::new(
            Opts::new(
                "withdrawals_total",
                "Withdrawals: requested, risk_refused, insufficient_funds, approved, rejected",
            ),
            &["outcome"],
        ));
        let webhook_deliveries = must(IntCounterVec::new(
            Opts::new("webhook_attempts_total", "Webhook delivery attempts: delivered, retry, failed, gone"),
            &["outcome"],
        ));
        let store_batch_latency = must(Histogram::with_opts(
            HistogramOpts::new("store_batch_duration_seconds", "Hot store batch commit latency")
                .buckets(must(exponential_buckets(0.000_02, 2.0, 18))),
        ));
        let process_cpu = must(Gauge::new(
            "process_cpu_seconds_total",
            "CPU time of this process, user and system (for cost per request: its rate over requests' rate)",
        ));
        let writer_units = must(IntGauge::new(
            "durable_writer_units_total",
            "Units of work run by the durable store's writer on SQLite (statements or small transactions)",
        ));
        let writer_commits = must(IntGauge::new(
            "durable_writer_commits_total",
            "Transactions the SQLite writer committed them in; units ÷ commits is the group size, and a writer \
             whose units keep rising while requests queue is saturated",
        ));
        for c in [
            Box::new(process_cpu.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(writer_units.clone()),
            Box::new(writer_commits.clone()),
            Box::new(http_requests.clone()),
            Box::new(http_latency.clone()),
            Box::new(mailbox_depth.clone()),
            Box::new(batch_len.clone()),
            Box::new(actors_live.clone()),
            Box::new(holds.clone()),
            Box::new(catalogue_cache.clone()),
            Box::new(queue_ops.clone()),
            Box::new(queue_admitted.clone()),
            Box::new(push_subscribers.clone()),
            Box::new(push_dropped.clone()),
            Box::new(rate_limited.clone()),
            Box::new(cancel_refunds.clone()),
            Box::new(grabs.clone()),
            Box::new(worker_events.clone()),
            Box::new(worker_failures.clone()),
            Box::new(parked_events.clone()),
            Box::new(hot_store_losses.clone()),
            Box::new(hot_store_lost.clone()),
            Box::new(hot_store_conflicts.clone()),
            Box::new(outbox_lag.clone()),
            Box::new(store_batch_latency.clone()),
            Box::new(relay_lag.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(payments.clone()),
            Box::new(callbacks.clone()),
            Box::new(withdrawals.clone()),
            Box::new(webhook_deliveries.clone()),
        ] {
            must(registry.register(c));
        }
        Metrics {
            registry,
            http_requests,
            http_latency,
            mailbox_depth,
            batch_len,
            actors_live,
            holds,
            catalogue_cache,
            queue_ops,
            queue_admitted,
            push_subscribers,
            push_dropped,
            rate_limited,
            cancel_refunds,
            grabs,
            worker_events,
            worker_failures,
            parked_events,
            hot_store_losses,
            hot_store_lost,
            hot_store_conflicts,
            outbox_lag,
            store_batch_latency,
            relay_lag,
            consumer_lag,
            payments,
            callbacks,
            withdrawals,
            webhook_deliveries,
            process_cpu,
            writer_units,
            writer_commits,
        }
    }

    /// The durable writer's counts (see [`crate::durable::writer::Writer::stats`]).
    pub fn set_writer(&self, (units, commits): (u64, u64)) {
        self.writer_units.set(i64::try_from(units).unwrap_or(i64::MAX));
        self.writer_commits.set(i64::try_from(commits).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(s) = process_cpu_seconds() {
            self.process_cpu.set(s);
        }
        let mut buf = Vec::new();
        let enc = prometheus::TextEncoder::new();
        if let Err(e) = prometheus::Encoder::encode(&enc, &self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Clock ticks per second of `/proc`'s CPU times (`USER_HZ`, 100 on every
/// Linux architecture rush builds for).
const USER_HZ: f64 = 100.0;

/// This process's user + system CPU seconds (Linux; `None` elsewhere).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count from its `)`.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    // After `)`: state is field 3, so utime (14) and stime (15) are the
    // 12th and 13th.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Records ids on the current span (the gateway's `http` span declares
/// `order_id`, `event_id`, `packet_id`, `payment_id`; a disabled span or
/// none: nothing, after one lookup).
pub fn record_ids(ids: &[(&'static str, crate::domain::Id)]) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    for (field, id) in ids {
        span.record(*field, tracing::field::display(id));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn process_cpu_is_read_and_grows() {
        let before = super::process_cpu_seconds();
        assert!(before.is_some(), "/proc/self/stat is readable on Linux");
        let before = before.unwrap_or(0.0);
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(60) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = super::process_cpu_seconds().unwrap_or(0.0);
        assert!(after > before, "{before} → {after}");
        assert!(super::Metrics::new().render().contains("rush_process_cpu_seconds_total "));
    }
}
