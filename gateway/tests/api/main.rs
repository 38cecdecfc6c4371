//! HTTP acceptance tests: each spawns the real app on port 0 with its own
//! SQLite file and drives it over HTTP.

mod bad_input;
mod crash;
mod expiry;
mod failover;
mod faults;
mod front;
mod full;
mod helpers;
mod idempotency;
mod identity;
mod lifecycle;
mod multinode;
mod nodes;
mod ops;
mod own_writes;
mod packets;
mod payments;
mod restore;
mod sale;
mod seats;
mod shutdown;
mod telemetry;
mod tls;
mod unknown;
mod wallet;
mod webhooks;
