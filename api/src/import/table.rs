//! The CSV side of imports: the file with its header, rows with typed accessors, and errors
//! that name the row, the file line and the column.

use super::bounds::shown;
use crate::error::{ApiError, ApiResult};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// The largest id a bulk row may carry: 2^52. An import moves the id sequence past its largest
/// id, and every row created after it must still be an integer every JSON client (a JavaScript
/// number) holds exactly, up to 2^53 - 1: this leaves 2^52 ids of room.
pub(super) const MAX_ID: i64 = 1 << 52;

/// The name a CSV header cell stands for: trimmed, without a byte-order mark, lower-cased. Every
/// reader of an uploaded header goes through this, so a column cannot pass one check as `ID`
/// and be read by another as `id`.
pub fn column_name(cell: &str) -> String {
    cell.trim_start_matches('\u{feff}')
        .trim()
        .to_ascii_lowercase()
}

/// A parsed CSV file with its header.
pub(super) struct Table {
    pub(super) columns: HashMap<String, usize>,
    pub(super) records: Vec<csv::StringRecord>,
}

/// Position of a row for error messages: `row` counts data rows from 1, `line` is the file line.
#[derive(Clone, Copy)]
pub(super) struct At {
    pub(super) row: usize,
    pub(super) line: u64,
}

impl At {
    pub(super) fn err(self, column: &str, reason: impl Into<String>) -> ApiError {
        ApiError::BadRow {
            row: self.row,
            line: self.line,
            column: column.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A turn among the imports one API process runs at once (`routes::bulk`).
pub type Turn = tokio::sync::OwnedSemaphorePermit;

impl Table {
    /// Parses on the blocking pool: a 32 MiB upload takes a worker long enough to stall every
    /// other request scheduled on it. The import's `turn` goes along and comes back with the
    /// table: a request dropped meanwhile leaves the parse running, and the turn counts it.
    pub(super) async fn parse_off_worker(
        bytes: &[u8],
        required: &'static [&'static str],
        turn: Turn,
    ) -> ApiResult<(Self, Turn)> {
        let owned = bytes.to_vec();
        let (parsed, turn) =
            tokio::task::spawn_blocking(move || (Self::parse(&owned, required), turn))
                .await
                .map_err(|e| ApiError::Internal(format!("CSV parse task: {e}")))?;
        Ok((parsed?, turn))
    }

    pub(super) fn parse(bytes: &[u8], required: &[&str]) -> ApiResult<Self> {
        super::bounds::check_width(bytes)?;
        // Cells as written: a title may begin or end with spaces, and an export must import
        // back unchanged. Every accessor but [`Row::untrimmed`] trims.
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::Headers)
            .from_reader(bytes);
        let headers = reader
            .headers()
            .map_err(|e| ApiError::BadRequest(format!("CSV header cannot be read: {e}")))?
            .clone();
        // A header name reaches PostgreSQL too (the columns a file names decide what an
        // import updates): refused here, as a record's cell is.
        if let Some(at) = headers.iter().position(|h| h.contains('\0')) {
            return Err(ApiError::BadRequest(format!(
                "CSV header cell {} ({}) must not contain the NUL character",
                at + 1,
                shown(&headers[at].replace('\0', ""))
            )));
        }
        let mut columns: HashMap<String, usize> = HashMap::new();
        for (i, h) in headers.iter().enumerate() {
            // Blank header cells (a spreadsheet's trailing commas) name nothing to read.
            let name = column_name(h);
            if name.is_empty() {
                continue;
            }
            if columns.insert(name, i).is_some() {
                return Err(ApiError::BadRequest(format!(
                    "CSV header names column {} more than once",
                    shown(&column_name(h))
                )));
            }
        }
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|c| !columns.contains_key(*c))
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "CSV header lacks column(s): {}",
                missing.join(", ")
            )));
        }
        let mut records = Vec::new();
        for (i, rec) in reader.records().enumerate() {
            let rec = rec.map_err(|e| {
                let line = e.position().map_or(0, |p| p.line());
                ApiError::BadRow {
                    row: i + 1,
                    line,
                    column: "*".into(),
                    reason: format!("not valid CSV: {e}"),
                }
            })?;
            // PostgreSQL cannot store NUL in text: refuse it here, naming the cell.
            if let Some(col) = rec.iter().position(|v| v.contains('\0')) {
                return Err(ApiError::BadRow {
                    row: i + 1,
                    line: rec.position().map_or(0, |p| p.line()),
                    column: headers.get(col).unwrap_or("*").to_owned(),
                    reason: "must not contain the NUL character".into(),
                });
            }
            records.push(rec);
        }
        Ok(Self { columns, records })
    }

    pub(super) fn rows(&self) -> impl Iterator<Item = (At, Row<'_>)> {
        self.records.iter().enumerate().map(|(i, rec)| {
            let line = rec.position().map_or(0, |p| p.line());
            (
                At { row: i + 1, line },
                Row {
                    table: self,
                    rec,
                    at: At { row: i + 1, line },
                },
            )
        })
    }
}

/// One record with typed accessors whose errors name the row and column.
pub(super) struct Row<'a> {
    table: &'a Table,
    rec: &'a csv::StringRecord,
    at: At,
}

impl Row<'_> {
    pub(super) fn text(&self, col: &str) -> &str {
        self.untrimmed(col).trim()
    }

    /// The cell as written, spaces around it included (a title's).
    pub(super) fn untrimmed(&self, col: &str) -> &str {
        self.table
            .columns
            .get(col)
            .and_then(|i| self.rec.get(*i))
            .unwrap_or("")
    }

    pub(super) fn required(&self, col: &str) -> ApiResult<String> {
        match self.text(col) {
            "" => Err(self.at.err(col, "is required")),
            v => Ok(v.to_owned()),
        }
    }

    /// An id from 1 to [`MAX_ID`]. The ceiling keeps room in the id sequences, which an
    /// import moves past the largest id of its file: an id of 2^63-1 would leave no value for
    /// the next row any other way inserts (every create would fail from then on).
    pub(super) fn opt_id(&self, col: &str) -> ApiResult<Option<i64>> {
        match self.text(col) {
            "" => Ok(None),
            v => v
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_ID).contains(n))
                .map(Some)
                .ok_or_else(|| {
                    self.at
                        .err(col, format!("must be a positive integer up to {MAX_ID}"))
                }),
        }
    }

    pub(super) fn id(&self, col: &str) -> ApiResult<i64> {
        self.opt_id(col)?
            .ok_or_else(|| self.at.err(col, "is required"))
    }

    pub(super) fn opt_time(&self, col: &str) -> ApiResult<Option<DateTime<Utc>>> {
        match self.text(col) {
            "" => Ok(None),
            v => kurz_common::time::parse(v).map(Some).ok_or_else(|| {
                self.at
                    .err(col, "must be a timestamp like 2025-03-26 16:48:24")
            }),
        }
    }

    pub(super) fn bool_or(&self, col: &str, default: bool) -> ApiResult<bool> {
        match self.text(col).to_ascii_lowercase().as_str() {
            "" => Ok(default),
            "true" | "1" | "t" | "yes" => Ok(true),
            "false" | "0" | "f" | "no" => Ok(false),
            _ => Err(self.at.err(col, "must be True or False")),
        }
    }
}

/// Refuses a value seen on an earlier row.
pub(super) fn unique<T: std::hash::Hash + Eq>(
    seen: &mut HashMap<T, usize>,
    value: T,
    at: At,
    col: &str,
) -> ApiResult<()> {
    if let Some(first) = seen.insert(value, at.row) {
        return Err(at.err(col, format!("repeats the value of row {first}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Tools that quote every cell and add a byte-order mark write `\u{feff}"id",…`: the first
    /// column is still `id`, not an unknown column dropped without a word (the CSV reader
    /// takes the mark off before it parses the quotes).
    #[test]
    fn a_byte_order_mark_before_a_quoted_header_is_ignored() {
        let table =
            Table::parse(b"\xEF\xBB\xBF\"id\",\"username\"\n7,ann\n", &["username"]).unwrap();
        assert_eq!(table.columns.get("id"), Some(&0));
        assert_eq!(&table.records[0][0], "7");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Any bytes at all: a table whose cells hold no NUL, or a 400 (never a panic), and a
        /// row error names a row that exists.
        #[test]
        fn any_upload_parses_or_is_refused(body in prop_oneof![
            any::<Vec<u8>>(),
            "[a-z,\"\\n\\r\\x00 ]{0,200}".prop_map(|s| format!("username,email\n{s}").into_bytes()),
            "[a-z,\\x00]{0,20}".prop_map(|h| format!("username,email,{h}\nann,a@b.c,x\n").into_bytes()),
        ]) {
            match Table::parse(&body, &["username", "email"]) {
                Ok(table) => {
                    // Header names reach PostgreSQL as text too.
                    prop_assert!(table.columns.keys().all(|name| !name.contains('\0')));
                    for rec in &table.records {
                        prop_assert!(rec.iter().all(|cell| !cell.contains('\0')));
                    }
                }
                Err(ApiError::BadRow { row, .. }) => prop_assert!(row >= 1),
                Err(ApiError::BadRequest(_)) => {}
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }
}
