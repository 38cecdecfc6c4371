//! Routes grouped by resource. Handlers parse, call the engine, shape the
//! answer; no business rule lives here.

pub mod auth;
pub mod events;
pub mod ops;
pub mod orders;
pub mod packets;
pub mod payments;
pub mod queue;
pub mod wallet;
pub mod webhooks;

use rush_engine::domain::{Fen, Id};
use rush_engine::error::Entity;

use crate::error::ApiError;

/// An id from a path. One that cannot parse names nothing that exists.
pub fn path_id(raw: &str, what: Entity) -> Result<Id, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found(what))
}

/// An amount a client asked to move: a strictly positive number of fen.
pub fn positive_fen(field: &str, fen: i64) -> Result<Fen, ApiError> {
    Fen::positive(fen).map_err(|_| ApiError::bad_request(format!("{field} must be a positive number of fen")))
}
