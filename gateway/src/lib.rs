//! # rush-gateway
//!
//! The HTTP face of rush (actix-web). Only HTTP lives here: routes grouped
//! by resource, DTOs, the error → status mapping, auth, metrics.
//!
//! # Layout
//! - [`auth`]: HS256 bearer tokens and the `Auth` / `Admin` extractors.
//! - [`dto`]: request and response bodies (unknown fields refused).
//! - [`error`]: `ApiError`, the one mapping of failures to HTTP.
//! - [`routes`]: handlers by resource.
//! - [`idempotency`]: `Idempotency-Key` replay for POSTs that create or move money.
//! - [`openapi`]: the generated contract.
//! - [`serve`]: builds the app, binds, runs workers, shuts down.

pub mod auth;
pub mod dto;
pub mod error;
pub mod idempotency;
pub mod openapi;
pub mod routes;
pub mod serve;
pub mod telemetry;

use std::sync::Arc;

use rush_engine::Engine;

/// Shared by every handler.
pub struct AppState {
    pub engine: Arc<Engine>,
    /// Connections and requests in flight, for shutdown.
    pub traffic: serve::Connections,
}
