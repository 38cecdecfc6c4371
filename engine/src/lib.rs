//! # rush-engine
//!
//! The flash-sale engine: actors decide in memory and in batches, the hot
//! store is the atomic arbiter and writes an outbox, workers persist events
//! to the durable store.
//!
//! # Layout
//! - [`domain`]: ids with shard gene, money, seat maps, order states, packet split.
//! - [`actors`]: one actor per event and per packet, bounded mailboxes, batching.
//! - [`store`]: the hot-store trait; `memory` (embedded) and `redis` implement it.
//! - [`redis_io`]: running commands that live in different slots.
//! - [`scripts`]: Rust twins of the Lua scripts in `lua/`.
//! - [`events`]: domain events, the event-log trait, the embedded outbox log.
//! - [`durable`]: sqlx repositories (SQLite or Postgres): ledger, orders by gene, packets, grabs,
//!   payments and callback log, withdrawals, webhooks.
//! - [`workers`]: persist events, expire holds and packets, check payments, deliver webhooks.
//! - [`pay`]: payment channels (trait, sandboxes, callback wire formats) and the payment flow.
//! - [`reconcile`]: the ledger against itself and the channels' bills.
//! - [`recovery`]: finding a lost or failed-over Redis and rebuilding it from the durable store.
//! - [`engine`]: the facade the gateway calls.
//! - [`idempotency`]: Idempotency-Key records (durable store or Redis).
//! - [`views`]: read models shaped as the API answers, with masking.
//! - [`config`]: layered configuration with every limit.
//! - [`error`]: expected failures, mapped to HTTP by the gateway.
//! - [`telemetry`]: Prometheus metrics.
//! - [`testkit`]: scratch Postgres databases and test service addresses.

pub mod actors;
pub mod config;
pub mod domain;
pub mod durable;
pub mod engine;
pub mod error;
pub mod events;
pub mod idempotency;
pub mod node;
pub mod pay;
pub mod reconcile;
pub mod recovery;
pub mod redis_io;
pub mod store;
pub mod telemetry;
pub mod testkit;
pub mod views;
pub mod workers;

pub use config::Config;
pub use engine::{Caller, Engine};
pub use error::EngineError;
pub use node::Node;
