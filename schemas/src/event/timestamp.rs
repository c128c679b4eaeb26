//! [`Timestamp`]: a UTC instant that always has an RFC 3339 form.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use super::EventFieldError;
use crate::error::excerpt;

/// A UTC instant with nanosecond precision, written as RFC 3339
/// (`2026-11-22T14:30:00Z`, with a fraction only when it is not zero).
///
/// RFC 3339 only has four-digit years, so construction refuses instants outside
/// 0000..=9999: once a `Timestamp` exists, writing it cannot fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(OffsetDateTime::now_utc())
    }

    /// Parses RFC 3339 with any offset; the result is in UTC.
    pub fn parse(text: &str) -> Result<Timestamp, EventFieldError> {
        OffsetDateTime::parse(text, &Rfc3339)
            .ok()
            .and_then(|instant| Timestamp::from_offset_date_time(instant).ok())
            .ok_or_else(|| EventFieldError::Timestamp(excerpt(text)))
    }

    pub fn from_unix_nanos(nanos: i128) -> Result<Timestamp, EventFieldError> {
        OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|instant| Timestamp::from_offset_date_time(instant).ok())
            .ok_or_else(|| EventFieldError::Timestamp(format!("{nanos} ns after the epoch")))
    }

    pub fn from_offset_date_time(instant: OffsetDateTime) -> Result<Timestamp, EventFieldError> {
        // Not `to_offset`, which panics when the instant in UTC is beyond the time
        // crate's years: `9999-12-31T23:59:59-15:00` is in year 10000 (found by fuzzing).
        match instant.checked_to_offset(UtcOffset::UTC) {
            Some(utc) if (0..=9999).contains(&utc.year()) => Ok(Timestamp(utc)),
            Some(utc) => Err(EventFieldError::Timestamp(format!("year {}", utc.year()))),
            None => Err(EventFieldError::Timestamp(format!(
                "{instant}, beyond year 9999 in UTC"
            ))),
        }
    }

    pub fn unix_nanos(&self) -> i128 {
        self.0.unix_timestamp_nanos()
    }

    pub fn as_offset_date_time(&self) -> OffsetDateTime {
        self.0
    }

    pub fn to_rfc3339(&self) -> String {
        self.0
            .format(&Rfc3339)
            .expect("a Timestamp's year is in 0..=9999 and its offset is UTC")
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl std::str::FromStr for Timestamp {
    type Err = EventFieldError;

    fn from_str(text: &str) -> Result<Timestamp, EventFieldError> {
        Timestamp::parse(text)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_fractions_only_when_nonzero() {
        let whole = Timestamp::parse("2026-11-22T14:30:00Z").unwrap();
        assert_eq!(whole.to_string(), "2026-11-22T14:30:00Z");
        let fraction = Timestamp::parse("2026-11-22T14:30:00.120Z").unwrap();
        assert_eq!(fraction.to_string(), "2026-11-22T14:30:00.12Z");
        assert_eq!(fraction.unix_nanos() - whole.unix_nanos(), 120_000_000);
    }

    #[test]
    fn converts_offsets_to_utc() {
        let local = Timestamp::parse("2026-11-22T16:30:00+02:00").unwrap();
        assert_eq!(local.to_string(), "2026-11-22T14:30:00Z");
    }

    #[test]
    fn refuses_what_rfc3339_cannot_write() {
        assert!(Timestamp::parse("yesterday").is_err());
        assert!(Timestamp::parse("2026-11-22 14:30:00").is_err());
        assert!(Timestamp::from_unix_nanos(i128::MAX).is_err());
        let year_10000 = 253_402_300_800 * 1_000_000_000;
        assert!(Timestamp::from_unix_nanos(year_10000).is_err());
        assert!(Timestamp::from_unix_nanos(year_10000 - 1).is_ok());
        assert!(Timestamp::from_unix_nanos(-62_167_219_200 * 1_000_000_000).is_ok());
        assert!(Timestamp::from_unix_nanos(-62_167_219_200 * 1_000_000_000 - 1).is_err());
    }

    #[test]
    fn refuses_offsets_that_leave_the_years_it_can_write() {
        // Found by fuzzing: these used to panic in the time crate.
        for text in [
            "9999-12-31T23:59:59-15:00",
            "9999-12-31T23:59:59.999999999-00:01",
            "9999-12-31T00:01:00-23:59",
            "0000-01-01T00:00:00+00:01",
            "0000-01-01T23:58:59+23:59",
        ] {
            assert!(Timestamp::parse(text).is_err(), "{text}");
        }
        assert_eq!(
            Timestamp::parse("9999-12-31T23:59:59+15:00")
                .unwrap()
                .to_string(),
            "9999-12-31T08:59:59Z"
        );
        assert_eq!(
            Timestamp::parse("0000-01-01T00:00:00-00:01")
                .unwrap()
                .to_string(),
            "0000-01-01T00:01:00Z"
        );
    }

    #[test]
    fn nanos_round_trip() {
        let now = Timestamp::now();
        assert_eq!(Timestamp::from_unix_nanos(now.unix_nanos()), Ok(now));
        assert_eq!(Timestamp::parse(&now.to_string()), Ok(now));
    }
}
