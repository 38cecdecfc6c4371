//! Running the server, and stopping it.
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
use std::time::Duration;

use rush_engine::{Engine, Node};
use serde_json::json;

use crate::app::counted_http_server;
use crate::state::Connections;

/// A connection that sent nothing for this long after intake closed is
/// idle: the listener stops without waiting for its keep-alive to run out.
const QUIET_MS: u64 = 250;

/// How often shutdown looks at the connections again while it waits for
/// them to finish or go quiet: well under [`QUIET_MS`].
const CONNECTIONS_POLL: Duration = Duration::from_millis(10);

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
pub async fn run(listener: TcpListener, node: Node) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers = node.start_workers(stop_rx)?;
    let engine = node.engine();
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
            tokio::time::sleep(CONNECTIONS_POLL).await;
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
