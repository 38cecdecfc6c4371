//! Instants as the API shows them.

use chrono::{DateTime, TimeZone, Utc};

/// Unix milliseconds as a UTC time; past what chrono holds, its last instant.
pub fn time_of(ms: u64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(i64::try_from(ms).unwrap_or(i64::MAX)).single().unwrap_or(DateTime::<Utc>::MAX_UTC)
}
