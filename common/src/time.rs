//! The contract's timestamps: UTC, ISO 8601 to the second, no zone suffix (`2025-09-19T22:25:05`).

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike, Utc};
use std::ops::RangeInclusive;

/// The years a timestamp or date from a client may fall in: the four digits of the contract's
/// format. chrono reads any number of digits and a sign (`-5000-01-01`), where PostgreSQL's
/// range starts in 4714 BC; without the bound such a value was a 500 from the database.
pub const YEARS: RangeInclusive<i32> = 1..=9999;

/// Whether `ts` is within [`YEARS`].
pub fn in_range(ts: &DateTime<Utc>) -> bool {
    YEARS.contains(&ts.year())
}

/// Formats a UTC instant the way every JSON response shows it.
pub fn format(ts: DateTime<Utc>) -> String {
    ts.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Parses what clients and CSV files send: RFC 3339 with a zone, or a naive date-time (taken as
/// UTC) with `T` or a space, with or without fractional seconds, or a bare date (midnight UTC).
/// Years outside [`YEARS`] are refused, and so is a second 60: chrono takes it as a leap second
/// in any minute, which PostgreSQL stores as the next minute and `format` writes back as `:60`.
/// A fraction of a second is dropped: the contract's instants are whole seconds, and an expiry
/// checked against the clock with its fraction (in the future) was cached and shown without it
/// (already past).
pub fn parse(raw: &str) -> Option<DateTime<Utc>> {
    parse_any_year(raw.trim())
        .filter(in_range)
        .filter(|ts| ts.nanosecond() < 1_000_000_000)
        .and_then(|ts| ts.with_nanosecond(0))
}

fn parse_any_year(raw: &str) -> Option<DateTime<Utc>> {
    if let Ok(ts) = DateTime::parse_from_rfc3339(raw) {
        return Some(ts.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(ts) = NaiveDateTime::parse_from_str(raw, fmt) {
            return Some(ts.and_utc());
        }
    }
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|ts| ts.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_contract_format() {
        let ts = parse("2025-09-19T22:25:05").unwrap();
        assert_eq!(format(ts), "2025-09-19T22:25:05");
    }

    #[test]
    fn accepts_csv_space_form_and_zones() {
        assert_eq!(
            format(parse("2025-03-26 16:48:24").unwrap()),
            "2025-03-26T16:48:24"
        );
        assert_eq!(
            format(parse("2025-03-26T18:48:24+02:00").unwrap()),
            "2025-03-26T16:48:24"
        );
        assert_eq!(format(parse("2025-03-26").unwrap()), "2025-03-26T00:00:00");
        assert!(parse("yesterday").is_none());
    }

    #[test]
    fn drops_fractions_and_refuses_second_sixty() {
        for raw in [
            "2025-09-19T22:25:05.999",
            "2025-09-19 22:25:05.1",
            "2025-09-19T22:25:05.5Z",
        ] {
            assert_eq!(parse(raw), parse("2025-09-19T22:25:05"), "{raw}");
        }
        for raw in [
            "2030-01-01T12:34:60",
            "2016-12-31T23:59:60Z",
            "2030-01-01 12:34:60.5",
        ] {
            assert!(parse(raw).is_none(), "{raw}");
        }
    }

    #[test]
    fn refuses_years_outside_four_digits() {
        for raw in [
            "-5000-01-01",
            "0000-12-31T23:59:59",
            "10000-01-01",
            "+275760-09-13T00:00:00Z",
        ] {
            assert!(parse(raw).is_none(), "{raw}");
        }
        assert_eq!(format(parse("0001-01-01").unwrap()), "0001-01-01T00:00:00");
        assert_eq!(
            format(parse("9999-12-31T23:59:59").unwrap()),
            "9999-12-31T23:59:59"
        );
    }
}
