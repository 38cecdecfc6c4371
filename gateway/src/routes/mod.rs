//! Routes grouped by resource. Handlers parse, call the engine, shape the
//! answer; no business rule lives here.

pub mod auth;
pub mod events;
pub mod ops;
pub mod orders;
pub mod packets;
pub mod payments;
pub mod wallet;
pub mod webhooks;

use rush_engine::domain::Id;
use rush_engine::error::Entity;

use crate::error::ApiError;

/// An id from a path. One that cannot parse names nothing that exists.
pub fn path_id(raw: &str, what: Entity) -> Result<Id, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found(what))
}
