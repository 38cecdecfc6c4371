//! Building and running the server, and stopping it.
//!
//! # Shutdown protocol
//! On SIGTERM (or Ctrl-C), with `T` = `shutdown.timeout_ms` counted from the
//! signal:
//! 1. **Readiness fails**: `/readyz` answers 503 `shutting_down`; requests
//!    are still served for `shutdown.drain_delay_ms`, while load balancers
//!    take the node out (Kubernetes: the preStop pause does the same).
//! 2. **Intake stops**: every new request (but `/healthz`, `/readyz`,
//!    `/metrics`) gets 503 `shutting_down` with `Retry-After` and
//!    `Connection: close`, and nothing of it is done; the listener stops
//!    accepting. A request already inside the engine either finishes or, if
//!    it reaches an actor after this point, gets the same clean 503.
//! 3. **Mailboxes drain**: each actor decides and commits what its mailbox
//!    holds, answers, and ends; in-flight requests get their answers.
//! 4. **Workers stop and the outbox flushes**: the timeouts, payments and
//!    webhook workers end after their current round; the outbox's consumer
//!    (the persist worker, or the relay in full mode) sends what the outbox
//!    still holds to the durable store (or Kafka) until it is empty.
//! 5. **Exit** 0 when all of that finished, within `T` in any case: what is
//!    left at `T` is already durable (every acknowledged write was in the
//!    outbox before it was acknowledged) and the next reader takes it over.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::{web, App, HttpServer};
use rush_engine::Engine;
use serde_json::json;

use crate::auth::Keys;
use crate::error::{json_error, path_error, query_error, ApiError};
use crate::routes;
use crate::AppState;

/// Builds the HTTP server on an already bound listener.
pub fn http_server(listener: TcpListener, engine: Arc<Engine>) -> std::io::Result<Server> {
    Ok(counted_http_server(listener, engine)?.0)
}

/// Open HTTP connections (counted from accept to close), requests in
/// flight, and when the last request arrived: what shutdown waits on.
#[derive(Clone, Default)]
pub struct Connections(Arc<Traffic>);

pub struct Traffic {
    open: std::sync::atomic::AtomicUsize,
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds from `since` to the last request's arrival (0: none yet).
    last_request_ms: std::sync::atomic::AtomicU64,
    since: Instant,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            open: Default::default(),
            in_flight: Default::default(),
            last_request_ms: Default::default(),
            since: Instant::now(),
        }
    }
}

impl Connections {
    pub fn open(&self) -> usize {
        self.0.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Time since the last request arrived (forever if none did).
    pub fn quiet_for(&self) -> Duration {
        match self.0.last_request_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => Duration::MAX,
            ms => self.0.since.elapsed().saturating_sub(Duration::from_millis(ms)),
        }
    }

    fn started(&self) -> RequestGuard<'_> {
        // +1: 0 means "no request yet".
        let ms = u64::try_from(self.0.since.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        self.0.last_request_ms.fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
        self.0.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        RequestGuard(self)
    }
}

/// Lives in a connection's extensions: counts it while it is open.
struct ConnectionGuard(Connections);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0 .0.open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Counts a request while it is being answered.
struct RequestGuard<'a>(&'a Connections);

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A connection that sent nothing for this long after intake closed is
/// idle: the listener stops without waiting for its keep-alive to run out.
const QUIET_MS: u64 = 250;

/// [`http_server`], and the count of its open connections (actix's own
/// graceful stop drops idle keep-alive connections at once; rush waits for
/// them to close first, see [`shutdown`]).
pub fn counted_http_server(listener: TcpListener, engine: Arc<Engine>) -> std::io::Result<(Server, Connections)> {
    let connections = Connections::default();
    let counter = connections.clone();
    let cfg = engine.config().clone();
    let _ = crate::error::RETRY_AFTER_S.set(cfg.http.retry_after_s);
    let state = web::Data::new(AppState { engine: engine.clone(), traffic: connections.clone() });
    let keys = web::Data::new(Keys::new(&cfg.auth.jwt_secret));
    let body_len_max = cfg.http.body_len_max;
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(keys.clone())
            .app_data(web::JsonConfig::default().limit(body_len_max).error_handler(json_error))
            .app_data(web::PayloadConfig::default().limit(body_len_max))
            .app_data(web::QueryConfig::default().error_handler(query_error))
            .app_data(web::PathConfig::default().error_handler(path_error))
            .wrap(actix_web::middleware::from_fn(observe))
            // Hot routes first: actix tries routes in registration order,
            // and each dynamic route costs a regex match.
            .service(routes::packets::grab)
            .service(routes::orders::create_order)
            .service(routes::auth::dev_token)
            .service(routes::events::create_event)
            .service(routes::events::get_event)
            .service(routes::events::get_seats)
            .service(routes::orders::list_orders)
            .service(routes::orders::get_order)
            .service(routes::orders::cancel_order)
            .service(routes::packets::create_packet)
            .service(routes::packets::get_packet)
            .service(routes::wallet::get_wallet)
            .service(routes::wallet::get_ledger)
            .service(routes::wallet::credit)
            .service(routes::wallet::recharge)
            .service(routes::wallet::withdraw)
            .service(routes::wallet::list_withdrawals)
            .service(routes::wallet::approve_withdrawal)
            .service(routes::wallet::reject_withdrawal)
            .service(routes::payments::pay_order)
            .service(routes::payments::refund_order)
            .service(routes::payments::get_payment)
            .service(routes::payments::notify)
            .service(routes::payments::sandbox_complete)
            .service(routes::payments::list_callbacks)
            .service(routes::webhooks::create_webhook)
            .service(routes::webhooks::deliveries)
            .service(routes::ops::healthz)
            .service(routes::ops::readyz)
            .service(routes::ops::metrics)
            .service(routes::ops::openapi)
            .default_service(web::to(|| async { Err::<actix_web::HttpResponse, _>(ApiError::not_found("route")) }))
    })
    .on_connect(move |_, ext| {
        counter.0.open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ext.insert(ConnectionGuard(counter.clone()));
    })
    .keep_alive(Duration::from_secs(cfg.http.keep_alive_s))
    // Signals are rush's (see [`run`]); actix waits at most the whole budget.
    .disable_signals()
    .shutdown_timeout(cfg.shutdown.timeout_ms.div_ceil(1000))
    .listen(listener)?;
    if cfg.http.workers > 0 {
        server = server.workers(cfg.http.workers);
    }
    Ok((server.run(), connections))
}

/// Paths answered while shutting down (probes and metrics).
fn is_ops_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// The span field a route's `{id}` names.
fn id_field(route: &str) -> Option<&'static str> {
    let rest = route.strip_prefix("/v1/")?;
    match rest.split('/').next()? {
        "orders" => Some("order_id"),
        "events" => Some("event_id"),
        "packets" => Some("packet_id"),
        "payments" | "sandbox" => Some("payment_id"),
        _ => None,
    }
}

/// Counts requests by route pattern and status and times them; once intake
/// is closed, refuses all but the ops paths (shutdown step 2). Each request
/// runs in a span `http` with `route`, `status` and, when known, `order_id`,
/// `event_id`, `packet_id`, `payment_id` (from the path, or recorded by the
/// engine when it creates one), logged at debug when it ends; answers of
/// 5xx are logged at warn with the route, status and path id.
async fn observe(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    use tracing::field::Empty;
    let start = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let _counted = state.as_ref().map(|s| s.traffic.started());
    if let Some(state) = &state {
        if !state.engine.intake_open() && !is_ops_path(req.path()) {
            state
                .engine
                .metrics
                .http_requests
                .with_label_values(&["shutting_down", req.method().as_str(), "503"])
                .inc();
            let resp = actix_web::ResponseError::error_response(&ApiError::shutting_down());
            return Ok(req.into_response(resp).map_into_right_body());
        }
    }
    let method = req.method().as_str().to_string();
    // Same fields either way; INFO for the requests whose traces are
    // exported (see [`crate::telemetry::request_span_at_info`]), else
    // DEBUG, so a node logging at info pays nothing for the others.
    macro_rules! request_span {
        ($level:ident) => {
            tracing::span!(
                tracing::Level::$level,
                "http",
                method = %method,
                route = Empty,
                status = Empty,
                order_id = Empty,
                event_id = Empty,
                packet_id = Empty,
                payment_id = Empty,
            )
        };
    }
    let span = if crate::telemetry::request_span_at_info() { request_span!(INFO) } else { request_span!(DEBUG) };
    let res = tracing::Instrument::instrument(next.call(req), span.clone()).await?;
    let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".into());
    let status = res.status();
    let id = id_field(&route).zip(res.request().match_info().get("id"));
    let elapsed = start.elapsed();
    let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    if !span.is_disabled() {
        span.record("route", route.as_str());
        span.record("status", status.as_u16());
        if let Some((field, id)) = id {
            span.record(field, id);
        }
        span.in_scope(|| tracing::debug!(elapsed_ms, "request"));
    }
    if status.is_server_error() {
        // Carries what it needs whether or not the span is on.
        let (id_name, id) = id.unwrap_or(("id", ""));
        tracing::warn!(method, route, status = status.as_u16(), id_name, id, elapsed_ms, "request failed");
    }
    if let Some(state) = &state {
        let m = &state.engine.metrics;
        m.http_requests.with_label_values(&[&route, &method, status.as_str()]).inc();
        m.http_latency.with_label_values(&[&route]).observe(elapsed.as_secs_f64());
    }
    Ok(res.map_into_left_body())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Serves until SIGTERM/Ctrl-C, then stops by the protocol above. Prints
/// the banner (one JSON line) once listening. Errors if the server fails.
pub async fn run(listener: TcpListener, engine: Arc<Engine>) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers = engine.start_workers(stop_rx)?;
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    engine.set_notify_base(&format!("http://{host}:{}", addr.port()));
    let (server, connections) = counted_http_server(listener, engine.clone())?;
    let http = Http { handle: server.handle(), connections };
    let mut server_task = tokio::spawn(server);
    println!("{}", banner(&addr, &engine));
    tokio::select! {
        _ = terminated() => {},
        ended = &mut server_task => {
            // The server stopped by itself: a failure, not a shutdown.
            let _ = stop_tx.send(true);
            ended??;
            anyhow::bail!("the HTTP server stopped unexpectedly");
        }
    }
    let report = shutdown(&engine, http, server_task, stop_tx, workers).await;
    tracing::info!(
        elapsed_ms = report.elapsed_ms,
        clean = report.clean(),
        http_done = report.http_done,
        actors_drained = report.actors_drained,
        workers_done = report.workers_done,
        "rush stopped"
    );
    Ok(())
}

/// What [`shutdown`] got done before the deadline.
#[derive(Debug)]
pub struct StopReport {
    pub elapsed_ms: u128,
    pub http_done: bool,
    pub actors_drained: bool,
    pub workers_done: bool,
}

impl StopReport {
    pub fn clean(&self) -> bool {
        self.http_done && self.actors_drained && self.workers_done
    }
}

/// The running HTTP server, as [`shutdown`] needs it.
pub struct Http {
    pub handle: actix_web::dev::ServerHandle,
    pub connections: Connections,
}

/// Shutdown steps 1–5 (see the module docs), within `shutdown.timeout_ms`.
pub async fn shutdown(
    engine: &Arc<Engine>,
    http: Http,
    server_task: tokio::task::JoinHandle<std::io::Result<()>>,
    stop_workers: tokio::sync::watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
) -> StopReport {
    let cfg = engine.config().shutdown.clone();
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_millis(cfg.timeout_ms);
    tracing::info!(drain_delay_ms = cfg.drain_delay_ms, timeout_ms = cfg.timeout_ms, "shutting down: readiness fails");
    engine.begin_drain();
    tokio::time::sleep(Duration::from_millis(cfg.drain_delay_ms)).await;
    tracing::info!("shutting down: intake closed");
    engine.close_intake();
    // Requests in flight finish; each busy connection is closed by its
    // next answer (a 503 with `Connection: close`); connections quiet for
    // QUIET_MS are idle. Only then does the listener stop, so no client
    // sees a connection cut under a request. Bounded by the keep-alive
    // timeout and by three quarters of the budget (the flush gets the rest).
    let keep_alive = Duration::from_secs(engine.config().http.keep_alive_s) + Duration::from_millis(100);
    let flush_reserve = Duration::from_millis(cfg.timeout_ms / 4);
    let http_stopped = async {
        let linger = (tokio::time::Instant::now() + keep_alive).min(deadline - flush_reserve);
        let quiet = Duration::from_millis(QUIET_MS);
        while tokio::time::Instant::now() < linger {
            let c = &http.connections;
            if c.in_flight() == 0 && (c.open() == 0 || c.quiet_for() >= quiet) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        http.handle.stop(true).await;
        tokio::time::timeout_at(deadline, server_task).await.is_ok()
    };
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let (http_done, actors_drained) = tokio::join!(
        async { tokio::time::timeout_at(deadline, http_stopped).await.unwrap_or(false) },
        engine.drain_actors(remaining),
    );
    tracing::info!(http_done, actors_drained, "shutting down: flushing the outbox");
    let _ = stop_workers.send(true);
    let mut workers_done = true;
    for w in workers {
        workers_done &= tokio::time::timeout_at(deadline, w).await.is_ok();
    }
    StopReport { elapsed_ms: start.elapsed().as_millis(), http_done, actors_drained, workers_done }
}

/// A JSON line a person reads at start.
pub fn banner(addr: &std::net::SocketAddr, engine: &Engine) -> String {
    json!({
        "msg": "rush listening",
        "url": format!("http://{addr}"),
        "mode": engine.config().mode(),
        "node_id": engine.node_id(),
        "durable": engine.config().durable(),
        "data_dir": engine.config().data_dir.display().to_string(),
    })
    .to_string()
}

/// `/metrics`, `/healthz` and `/readyz` for `rush worker` and `rush relay`
/// (on `telemetry.metrics_addr`). Ready until `stopping` turns true.
pub fn ops_server(
    listener: TcpListener,
    metrics: rush_engine::telemetry::Metrics,
    stopping: Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<Server> {
    let metrics = web::Data::new(metrics);
    let stopping = web::Data::new(stopping);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(metrics.clone())
            .app_data(stopping.clone())
            .route("/healthz", web::get().to(routes::ops::healthz_body))
            .route(
                "/readyz",
                web::get().to(|s: web::Data<Arc<std::sync::atomic::AtomicBool>>| async move {
                    let stopping = s.load(std::sync::atomic::Ordering::SeqCst);
                    routes::ops::readiness(if stopping { &["shutting_down"] } else { &[] })
                }),
            )
            .route(
                "/metrics",
                web::get()
                    .to(|m: web::Data<rush_engine::telemetry::Metrics>| async move { routes::ops::metrics_body(&m) }),
            )
            .default_service(web::to(|| async { Err::<actix_web::HttpResponse, _>(ApiError::not_found("route")) }))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?;
    Ok(server.run())
}
