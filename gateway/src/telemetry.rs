//! Logs and traces.
//!
//! - Logs go to stderr, filtered by `RUST_LOG` (default `info`): text in
//!   development, one JSON object per line in production
//!   (`telemetry.log_format` overrides). Each line carries the fields of
//!   the spans it happened in (`order_id`, `event_id`, `packet_id`,
//!   `payment_id`, `status`, …).
//! - Traces are exported over OTLP (HTTP/protobuf) when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//!   is set; the standard `OTEL_*` variables apply (`OTEL_SERVICE_NAME`,
//!   default `rush-<role>`; `OTEL_TRACES_SAMPLER` and
//!   `OTEL_TRACES_SAMPLER_ARG`, e.g. `traceidratio` and `0.01` under load;
//!   `OTEL_EXPORTER_OTLP_HEADERS`). Spans are batched and sent from their
//!   own thread; a collector that is down costs dropped spans, not latency.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::trace::TracerProvider as _;
use rush_engine::config::LogFormat;
use rush_engine::Config;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The share of requests whose span is created at INFO, and so exported
/// (f64 bits; 0.0 until traces are exported). The others get it at DEBUG,
/// which only `RUST_LOG=…debug` turns on. Measured: at INFO for every
/// request the span costs about 10% of hot-path throughput (BENCHMARKS.md,
/// "Request spans"), so a node that only logs at info does not create it,
/// and a node that samples traces creates it for the sampled share only.
static REQUEST_SPAN_RATIO: AtomicU64 = AtomicU64::new(0);

/// Whether this request's span is created at INFO (see [`REQUEST_SPAN_RATIO`]).
pub fn request_span_at_info() -> bool {
    let ratio = f64::from_bits(REQUEST_SPAN_RATIO.load(Ordering::Relaxed));
    ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio)
}

/// The share of root spans `OTEL_TRACES_SAMPLER` (and its
/// `OTEL_TRACES_SAMPLER_ARG`) keeps: `always_off` 0, `traceidratio` and
/// `parentbased_traceidratio` their ratio (default 1), anything else 1.
pub fn sampler_ratio(sampler: Option<&str>, arg: Option<&str>) -> f64 {
    match sampler.map(str::trim) {
        Some("always_off" | "parentbased_always_off") => 0.0,
        Some("traceidratio" | "parentbased_traceidratio") => {
            arg.and_then(|a| a.trim().parse::<f64>().ok()).filter(|r| (0.0..=1.0).contains(r)).unwrap_or(1.0)
        }
        _ => 1.0,
    }
}

/// Keeps the trace exporter alive; flushes it when dropped.
pub struct Guard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("flushing traces failed: {e}");
            }
        }
    }
}

/// Whether the environment asks for OTLP trace export.
pub fn otlp_configured() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
}

/// Installs the global subscriber for `role` (`serve`, `worker`, …).
pub fn init(cfg: &Config, role: &str) -> anyhow::Result<Guard> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match cfg.log_format() {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
    };
    let (otel, provider) = if otlp_configured() {
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name(format!("rush-{role}"));
        }
        // Requests are sampled where their span is made (above), so what
        // reaches the SDK is kept; other spans (a payment's settlement) are
        // few and always kept.
        let ratio = sampler_ratio(
            std::env::var("OTEL_TRACES_SAMPLER").ok().as_deref(),
            std::env::var("OTEL_TRACES_SAMPLER_ARG").ok().as_deref(),
        );
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        // INFO spans only: a DEBUG request span (not sampled, or on for the
        // logs by RUST_LOG) is never exported.
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("rush"))
            .with_filter(filter().and(tracing_subscriber::filter::LevelFilter::INFO));
        REQUEST_SPAN_RATIO.store(ratio.to_bits(), Ordering::Relaxed);
        (Some(layer), Some(provider))
    } else {
        (None, None)
    };
    tracing_subscriber::registry().with(fmt.with_filter(filter())).with(otel).try_init()?;
    Ok(Guard { provider })
}

#[cfg(test)]
mod tests {
    use super::sampler_ratio;

    #[test]
    fn sampler_ratio_follows_the_otel_variables() {
        assert_eq!(sampler_ratio(None, None), 1.0);
        assert_eq!(sampler_ratio(Some("always_on"), None), 1.0);
        assert_eq!(sampler_ratio(Some("always_off"), Some("0.5")), 0.0);
        assert_eq!(sampler_ratio(Some("traceidratio"), Some("0.01")), 0.01);
        assert_eq!(sampler_ratio(Some("parentbased_traceidratio"), Some(" 0.25 ")), 0.25);
        assert_eq!(sampler_ratio(Some("traceidratio"), None), 1.0);
        assert_eq!(sampler_ratio(Some("traceidratio"), Some("2")), 1.0);
        assert_eq!(sampler_ratio(Some("traceidratio"), Some("lots")), 1.0);
    }
}
