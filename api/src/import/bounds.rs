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

/// The most fields a file may have in all: a 32 MiB file of seed-format clicks (six fields in
/// about 35 bytes a row) fits, and the reader's field offsets stay at most 64 MB (a file of
/// 33,000 rows of 999 commas passed the width alone and held 270 MB).
pub const MAX_CELLS: usize = 8_000_000;

/// Characters of a value an error quotes back.
const SHOWN_CHARS: usize = 64;

/// A record [`too_wide`] stopped at.
#[derive(Debug, PartialEq)]
pub struct Wide {
    /// The record's number: the header's is 0, the first data row's 1.
    pub record: usize,
    /// The line it starts on.
    pub line: u64,
    /// Whether the record itself is too wide (else the file is past its cells there).
    pub own_width: bool,
}

impl Wide {
    pub fn reason(&self) -> String {
        if self.own_width {
            format!("has more than {MAX_FIELDS} fields")
        } else {
            format!("is past {MAX_CELLS} fields in the file; split the file")
        }
    }
}

/// The first record of `bytes` with more than `max` fields, or at which the file passes
/// `max_cells` fields in all. Read as the `csv` reader reads it: one byte-order mark at the
/// start is not data, a quote opens a quoted field only at the field's start, `""` inside one
/// is a quote, and blank lines are no records.
fn wider_than(bytes: &[u8], max: usize, max_cells: usize) -> Option<Wide> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    let mut state = State::FieldStart;
    let (mut record, mut fields, mut in_record, mut cells) = (0usize, 0usize, false, 0usize);
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
                // A record's first byte opens its first field, and a comma the next one.
                let opened = usize::from(!in_record) + usize::from(b == b',');
                if !in_record {
                    (in_record, fields, first_line) = (true, 0, line);
                }
                fields += opened;
                cells += opened;
                if fields > max || cells > max_cells {
                    return Some(Wide {
                        record,
                        line: first_line,
                        own_width: fields > max,
                    });
                }
                state = match (state, b) {
                    (_, b',') => State::FieldStart,
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

/// The first record of a CSV file with more than [`MAX_FIELDS`] fields, or past
/// [`MAX_CELLS`] in all.
pub fn too_wide(bytes: &[u8]) -> Option<Wide> {
    wider_than(bytes, MAX_FIELDS, MAX_CELLS)
}

/// [`too_wide`] as the bulk imports answer it: the header's as a bad request, a row's naming
/// the row.
pub fn check_width(bytes: &[u8]) -> ApiResult<()> {
    match too_wide(bytes) {
        None => Ok(()),
        Some(Wide { record: 0, .. }) => Err(ApiError::BadRequest(format!(
            "CSV header has more than {MAX_FIELDS} columns"
        ))),
        Some(wide) => Err(ApiError::BadRow {
            row: wide.record,
            line: wide.line,
            column: "*".into(),
            reason: wide.reason(),
        }),
    }
}

/// `value` quoted for an error message, cut to its first [`SHOWN_CHARS`] characters.
pub fn shown(value: &str) -> String {
    let (head, more) = head_of(value);
    format!("{head:?}{more}")
}

/// `value` as a report names it: its first [`SHOWN_CHARS`] characters, then `…` if cut.
pub fn cut(value: &str) -> String {
    let (head, more) = head_of(value);
    format!("{head}{more}")
}

/// The first [`SHOWN_CHARS`] characters of `value`, and `…` when that is not all of it.
fn head_of(value: &str) -> (&str, &'static str) {
    match value.char_indices().nth(SHOWN_CHARS) {
        None => (value, ""),
        Some((end, _)) => (&value[..end], "…"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Where the scan stops: (record, line).
    fn wider(bytes: &[u8], max: usize) -> Option<(usize, u64)> {
        wider_than(bytes, max, usize::MAX).map(|w| (w.record, w.line))
    }

    #[test]
    fn counts_fields_as_the_csv_reader_does() {
        assert_eq!(wider(b"a,b,c\n1,2,3\n", 3), None);
        assert_eq!(wider(b"a,b,c,d\n", 3), Some((0, 1)));
        // Commas and line breaks inside quotes are the cell's.
        assert_eq!(wider(b"a,\"b,c,d\ne\",f\n1,2,3\n", 3), None);
        assert_eq!(wider(b"a,\"b\"\"c,d\",e\n1,2,3,4\n", 3), Some((1, 2)));
        // A quote past a field's start is text, and opens nothing.
        assert_eq!(wider(b"a\",b,c,d\n", 3), Some((0, 1)));
        // Blank lines are no records; CRLF ends one record.
        assert_eq!(wider(b"a,b\r\n\r\n\n1,2\r\n3,4,5,6\r\n", 3), Some((2, 5)));
    }

    #[test]
    fn errors_quote_values_short() {
        assert_eq!(cut("abc"), "abc");
        assert_eq!(
            cut(&"é".repeat(100)),
            format!("{}…", "é".repeat(SHOWN_CHARS))
        );
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
            bom in proptest::bool::ANY,
            text in "[a,\"\r\n]{0,60}",
            max in 1usize..5,
            max_cells in 1usize..30,
        ) {
            // A byte-order mark, which the reader skips, must not shift the scan's quoting.
            let bytes = [if bom { "\u{feff}" } else { "" }, text.as_str()].concat();
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(bytes.as_bytes());
            let mut cells = 0;
            let expected = reader.records().position(|rec| {
                let len = rec.unwrap().len();
                cells += len;
                len > max || cells > max_cells
            });
            // The line is for messages (the reader counts skipped blank lines into the next
            // record's; the scan names the record's own).
            let found = wider_than(bytes.as_bytes(), max, max_cells).map(|w| w.record);
            prop_assert_eq!(found, expected);
        }
    }
}
