//! The contract's timestamps: UTC, ISO 8601 to the second, no zone suffix (`2025-09-19T22:25:05`).

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

/// Formats a UTC instant the way every JSON response shows it.
pub fn format(ts: DateTime<Utc>) -> String {
    ts.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Parses what clients and CSV files send: RFC 3339 with a zone, or a naive date-time (taken as
/// UTC) with `T` or a space, with or without fractional seconds, or a bare date (midnight UTC).
pub fn parse(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
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
}
