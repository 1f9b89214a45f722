//! `ts` as RFC 3339 UTC with exactly six fractional digits
//! (`2026-11-26T21:58:13.123456Z`), the form every record uses.

use serde::{Deserialize, Deserializer, Serializer};

/// The current time, cut to the microseconds a record keeps, so that a record
/// read back equals the record written.
pub fn now() -> jiff::Timestamp {
    truncate_to_micros(jiff::Timestamp::now())
}

/// `ts` without its sub-microsecond part (toward the past).
pub fn truncate_to_micros(ts: jiff::Timestamp) -> jiff::Timestamp {
    let micros = ts.as_microsecond();
    // In range: `micros` came from a valid timestamp.
    jiff::Timestamp::from_microsecond(micros).unwrap_or(ts)
}

/// Serialise a timestamp as RFC 3339 UTC with microseconds.
pub fn serialize<S: Serializer>(ts: &jiff::Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&ts.strftime("%Y-%m-%dT%H:%M:%S.%6fZ"))
}

/// Parse any RFC 3339 timestamp.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<jiff::Timestamp, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}
