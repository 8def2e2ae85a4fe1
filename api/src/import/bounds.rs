//! What reading an upload may cost, held before a parser sees it.
//!
//! The upload's size limit bounds its bytes, not what parsing them costs: the CSV reader keeps
//! an offset per field and the header's cells are indexed one by one, so a 32 MiB header of
//! commas (33 million fields) took gigabytes before the first check could refuse it. And a cell
//! an error quotes back is quoted short: escaped, a 30 MiB cell of control characters became a
//! response of hundreds of megabytes.

use crate::error::{ApiError, ApiResult};

/// The most fields a record may have. Exports have a few dozen columns, and a spreadsheet's
/// re-save adds some blank ones.
pub const MAX_FIELDS: usize = 1_000;

/// Characters of a value an error quotes back.
const SHOWN_CHARS: usize = 64;

/// The first record of `bytes` with more than `max` fields: its number (the header's is 0,
/// the first data row's 1) and the line it starts on. Quoting is read as the `csv` reader
/// reads it: a quote opens a quoted field only at the field's start, `""` inside one is a
/// quote, and blank lines are no records.
fn wider_than(bytes: &[u8], max: usize) -> Option<(usize, u64)> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    let mut state = State::FieldStart;
    let (mut record, mut fields, mut in_record) = (0usize, 0usize, false);
    let (mut line, mut first_line) = (1u64, 1u64);
    for &b in bytes {
        match (state, b) {
            (State::Quoted, b'"') => state = State::QuoteInQuoted,
            (State::Quoted, _) => {}
            (State::QuoteInQuoted, b'"') => state = State::Quoted,
            (_, b'\r' | b'\n') => {
                if in_record {
                    record += 1;
                    in_record = false;
                }
                state = State::FieldStart;
            }
            _ => {
                if !in_record {
                    (in_record, fields, first_line) = (true, 1, line);
                }
                state = match (state, b) {
                    (_, b',') => {
                        fields += 1;
                        if fields > max {
                            return Some((record, first_line));
                        }
                        State::FieldStart
                    }
                    (State::FieldStart, b'"') => State::Quoted,
                    _ => State::Unquoted,
                };
            }
        }
        if b == b'\n' {
            line += 1;
        }
    }
    None
}

/// The first record of a CSV file with more than [`MAX_FIELDS`] fields: its number (the
/// header's is 0) and the line it starts on.
pub fn too_wide(bytes: &[u8]) -> Option<(usize, u64)> {
    wider_than(bytes, MAX_FIELDS)
}

/// [`too_wide`] as the bulk imports answer it: the header's as a bad request, a row's naming
/// the row.
pub fn check_width(bytes: &[u8]) -> ApiResult<()> {
    match too_wide(bytes) {
        None => Ok(()),
        Some((0, _)) => Err(ApiError::BadRequest(format!(
            "CSV header has more than {MAX_FIELDS} columns"
        ))),
        Some((row, line)) => Err(ApiError::BadRow {
            row,
            line,
            column: "*".into(),
            reason: format!("has more than {MAX_FIELDS} fields"),
        }),
    }
}

/// `value` quoted for an error message, cut to its first [`SHOWN_CHARS`] characters.
pub fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        None => format!("{value:?}"),
        Some((end, _)) => format!("{:?}…", &value[..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_fields_as_the_csv_reader_does() {
        assert_eq!(wider_than(b"a,b,c\n1,2,3\n", 3), None);
        assert_eq!(wider_than(b"a,b,c,d\n", 3), Some((0, 1)));
        // Commas and line breaks inside quotes are the cell's.
        assert_eq!(wider_than(b"a,\"b,c,d\ne\",f\n1,2,3\n", 3), None);
        assert_eq!(wider_than(b"a,\"b\"\"c,d\",e\n1,2,3,4\n", 3), Some((1, 2)));
        // A quote past a field's start is text, and opens nothing.
        assert_eq!(wider_than(b"a\",b,c,d\n", 3), Some((0, 1)));
        // Blank lines are no records; CRLF ends one record.
        assert_eq!(
            wider_than(b"a,b\r\n\r\n\n1,2\r\n3,4,5,6\r\n", 3),
            Some((2, 5))
        );
    }

    #[test]
    fn errors_quote_values_short() {
        assert_eq!(shown("abc"), "\"abc\"");
        let long = "\u{1}".repeat(10_000);
        assert_eq!(shown(&long), format!("{:?}…", "\u{1}".repeat(SHOWN_CHARS)));
        assert_eq!(shown(&"é".repeat(100)).chars().count(), SHOWN_CHARS + 3);
    }

    proptest! {
        /// The scan finds the record the `csv` reader would read too wide, never a later one
        /// (nor one the reader reads narrower).
        #[test]
        fn finds_the_first_record_the_reader_reads_too_wide(
            text in "[a,\"\r\n]{0,60}",
            max in 1usize..5,
        ) {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(text.as_bytes());
            let expected = reader
                .records()
                .position(|rec| rec.unwrap().len() > max);
            // The line is for messages (the reader counts skipped blank lines into the next
            // record's; the scan names the record's own).
            prop_assert_eq!(wider_than(text.as_bytes(), max).map(|(r, _)| r), expected);
        }
    }
}
