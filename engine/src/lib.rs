//! # rush-engine
//!
//! The flash-sale engine: actors decide in memory and in batches, the hot
//! store is the atomic arbiter and writes an outbox, workers persist events
//! to the durable store.
//!
//! # Layout
//! Lowest layer first; a module imports only its own layer and those below
//! (`scripts/layers.py` checks it). `actors`, `recovery` and `redis_io` are
//! private: the gateway reaches them through [`Engine`] and [`Node`] (the
//! actors' input and view types are re-exported by [`engine`]).
//! - [`domain`]: ids with shard gene, money, seat maps, orders, packets, payments, domain events, time.
//! - [`error`]: expected failures (and [`error::Entity`] for not-found), mapped to HTTP by the gateway.
//! - [`config`]: layered configuration with every limit.
//! - [`telemetry`]: Prometheus metrics.
//! - `redis_io`: running commands that live in different slots.
//! - [`idempotency`]: Idempotency-Key records, a trait both stores implement.
//! - [`store`]: the hot store: trait, `memory` (embedded, over `hot.db`) and `redis`, the Lua twins.
//! - [`events`]: the event logs over the outbox: `hot.db`, Redis streams, Kafka.
//! - [`durable`]: sqlx repositories (SQLite or Postgres): ledger, orders by gene, packets, grabs,
//!   payments and callback log, withdrawals, webhooks.
//! - [`pay`]: payment channels: trait, sandboxes, callback wire formats, the registry.
//! - [`views`]: read models shaped as the API answers, with masking.
//! - `actors`: one actor per event and per packet, bounded mailboxes, batching.
//! - `recovery`: finding a lost or failed-over Redis and rebuilding it from the durable store.
//! - [`reconcile`]: the ledger against itself and the channels' bills.
//! - [`workers`]: persist events, relay to Kafka, expire holds and packets, check payments, deliver webhooks.
//! - [`engine`]: the use cases the gateway calls, one file per capability.
//! - [`node`]: wiring: builds a node for its mode and starts and stops its workers.
//! - `testkit` (feature `testkit`, for this workspace's tests): scratch Postgres databases and test
//!   service addresses.

pub(crate) mod actors;
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
pub(crate) mod recovery;
pub(crate) mod redis_io;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod views;
pub mod workers;

pub use config::Config;
pub use engine::{Caller, Engine};
pub use error::EngineError;
pub use node::Node;
