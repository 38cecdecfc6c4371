//! What every handler shares: the engine, and the count of connections
//! and requests in flight that shutdown waits on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rush_engine::Engine;

/// Shared by every handler.
pub struct AppState {
    pub engine: Arc<Engine>,
    /// Connections and requests in flight, for shutdown.
    pub traffic: Connections,
    /// Live update streams.
    pub push: Arc<crate::push::Push>,
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

    /// Counts a connection just accepted while the guard lives (kept in the
    /// connection's extensions).
    pub(crate) fn opened(&self) -> ConnectionGuard {
        self.0.open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ConnectionGuard(self.clone())
    }

    pub(crate) fn started(&self) -> RequestGuard<'_> {
        // +1: 0 means "no request yet".
        let ms = u64::try_from(self.0.since.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        self.0.last_request_ms.fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
        self.0.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        RequestGuard(self)
    }
}

/// Lives in a connection's extensions: counts it while it is open.
pub(crate) struct ConnectionGuard(Connections);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0 .0.open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Counts a request while it is being answered.
pub(crate) struct RequestGuard<'a>(&'a Connections);

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
