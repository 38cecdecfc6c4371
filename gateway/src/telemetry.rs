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

use opentelemetry::trace::TracerProvider as _;
use rush_engine::config::LogFormat;
use rush_engine::Config;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Whether the per-request span is created at INFO (traces are exported)
/// or DEBUG (only `RUST_LOG=…debug` turns it on). Measured: at INFO with
/// the log layer on, the span costs about 10% of hot-path throughput
/// (BENCHMARKS.md, "Request spans"), so a node that only logs at info does
/// not create it.
pub static REQUEST_SPANS_AT_INFO: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("rush")).with_filter(filter());
        REQUEST_SPANS_AT_INFO.store(true, std::sync::atomic::Ordering::Relaxed);
        (Some(layer), Some(provider))
    } else {
        (None, None)
    };
    tracing_subscriber::registry().with(fmt.with_filter(filter())).with(otel).try_init()?;
    Ok(Guard { provider })
}
