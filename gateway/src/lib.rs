//! # rush-gateway
//!
//! The HTTP face of rush (actix-web). Only HTTP lives here: routes grouped
//! by resource, DTOs, the error → status mapping, auth, metrics.
//!
//! # Layout
//! - [`auth`]: bearer tokens (an issuer's RS256/ES256 by JWKS, or HS256 in development) and the `Auth` / `Admin` extractors.
//! - [`dto`]: request and response bodies (unknown fields refused).
//! - [`error`]: `ApiError`, the one mapping of failures to HTTP.
//! - [`routes`]: handlers by resource.
//! - [`idempotency`]: `Idempotency-Key` replay for POSTs that create or move money.
//! - [`openapi`]: the generated contract, and the route that serves it.
//! - [`state`]: what every handler shares; connections and requests in flight.
//! - [`middleware`]: what every request passes through (intake, span, metrics).
//! - [`app`]: the API's app with its routes, and the ops server of the background roles.
//! - [`serve`]: runs a node's server and workers; the shutdown protocol.
//! - [`commands`]: the other subcommands (worker, relay, migrate, reconcile, parked).
//! - [`telemetry`]: logs and traces.

pub mod app;
pub mod auth;
pub mod commands;
pub mod dto;
pub mod error;
pub mod idempotency;
pub mod limits;
pub mod middleware;
pub mod openapi;
pub mod push;
pub mod routes;
pub mod serve;
pub mod state;
pub mod telemetry;

pub use state::AppState;
