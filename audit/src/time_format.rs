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

/// RFC 3339 UTC with exactly six fractional digits: jiff's Temporal printer,
/// several times cheaper than the equivalent `strftime` (every record is
/// written through here).
static PRINTER: jiff::fmt::temporal::DateTimePrinter =
    jiff::fmt::temporal::DateTimePrinter::new().precision(Some(6));

/// Append `ts` as RFC 3339 UTC with microseconds to `out` (the journal's
/// line writer; the same text as [`serialize`]).
pub fn print(ts: &jiff::Timestamp, out: &mut Vec<u8>) {
    // Printing a timestamp into a Vec cannot fail.
    let _ = PRINTER.print_timestamp(ts, out);
}

/// Serialise a timestamp as RFC 3339 UTC with microseconds.
pub fn serialize<S: Serializer>(ts: &jiff::Timestamp, s: S) -> Result<S::Ok, S::Error> {
    let mut out = String::with_capacity(32);
    PRINTER
        .print_timestamp(ts, &mut out)
        .map_err(serde::ser::Error::custom)?;
    s.serialize_str(&out)
}

/// Parse any RFC 3339 timestamp.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<jiff::Timestamp, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    #[test]
    fn six_digits_and_z_always() {
        let cases = [
            ("2026-11-26T21:58:13Z", "2026-11-26T21:58:13.000000Z"),
            ("2026-11-26T21:58:13.1Z", "2026-11-26T21:58:13.100000Z"),
            (
                "2026-11-26T21:58:13.123456789Z",
                "2026-11-26T21:58:13.123456Z",
            ),
            (
                "1999-01-02T03:04:05.000007+02:00",
                "1999-01-02T01:04:05.000007Z",
            ),
        ];
        for (input, want) in cases {
            let ts: jiff::Timestamp = input.parse().unwrap();
            let json = serde_json::to_string(&Ts(ts)).unwrap();
            assert_eq!(json, format!("\"{want}\""), "{input}");
            assert_eq!(
                json,
                format!("\"{}\"", ts.strftime("%Y-%m-%dT%H:%M:%S.%6fZ"))
            );
        }
    }

    #[derive(serde::Serialize)]
    struct Ts(#[serde(with = "super")] jiff::Timestamp);
}
