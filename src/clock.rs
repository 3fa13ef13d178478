//! The one place ringcast reads the clock. Everything else takes time as an input (a shard's
//! tick, an API request's deadline), so it can be tested with a fake one; clippy's
//! `disallowed-methods` (clippy.toml) holds every other module to that.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The monotonic clock.
#[expect(clippy::disallowed_methods, reason = "the one monotonic clock read")]
pub fn now() -> Instant {
    Instant::now()
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
#[expect(clippy::disallowed_methods, reason = "the one wall-clock read")]
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
