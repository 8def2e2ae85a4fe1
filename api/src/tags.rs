//! Link tags as stored: the one normalisation the API, the bulk import and the filters share.

/// Most tags on one link.
pub const MAX_TAGS: usize = 20;

/// The tags of a text separated by any of `seps` as written (trimmed, blanks dropped), each
/// once however it is cased, and no more than one past [`MAX_TAGS`] of them: [`normalise_tags`]
/// refuses that many all the same, and an import cell of 16 million tags must not become 16
/// million strings first.
pub fn split_bounded(text: &str, seps: &[char]) -> Vec<String> {
    let (mut tags, mut keys): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    for tag in text.split(seps).map(str::trim).filter(|t| !t.is_empty()) {
        let key = tag.to_lowercase();
        if !keys.contains(&key) {
            tags.push(tag.to_owned());
            keys.push(key);
            if tags.len() > MAX_TAGS {
                break;
            }
        }
    }
    tags
}

/// A tag as stored: trimmed, lower case, 1–32 letters, digits, spaces, `-`, `_` or `.`.
///
/// Lowering `İ` gives `i` and a combining dot above (U+0307), which is no letter: that mark
/// after a letter is taken as part of it, and not counted, so a tag of letters only is not
/// refused for holding something else, and the stored form reads back as the same tag.
pub fn normalise_tag(raw: &str) -> Result<String, String> {
    let tag = raw.trim().to_lowercase();
    let mut len = 0;
    let mut after_letter = false;
    for c in tag.chars() {
        let part_of_letter = c == DOT_ABOVE && after_letter;
        if !(part_of_letter || c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.')) {
            return Err("a tag holds letters, digits, spaces, '-', '_' and '.' only".into());
        }
        len += usize::from(!part_of_letter);
        after_letter = c.is_alphanumeric();
    }
    if len == 0 || len > 32 {
        return Err("a tag is 1 to 32 characters".into());
    }
    Ok(tag)
}

const DOT_ABOVE: char = '\u{307}';

/// Normalised, sorted, without repeats; at most [`MAX_TAGS`].
pub fn normalise_tags(raw: &[String]) -> Result<Vec<String>, String> {
    let mut tags = raw
        .iter()
        .map(|t| normalise_tag(t))
        .collect::<Result<Vec<_>, _>>()?;
    tags.sort();
    tags.dedup();
    if tags.len() > MAX_TAGS {
        return Err(format!("at most {MAX_TAGS} tags"));
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_normalised_and_bounded() {
        let raw: Vec<String> = ["  Launch ", "launch", "Q3-2026", "été"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            normalise_tags(&raw).unwrap(),
            vec!["launch", "q3-2026", "été"]
        );
        assert!(normalise_tag("").is_err());
        assert!(normalise_tag(&"x".repeat(33)).is_err());
        assert!(normalise_tag("a,b").is_err());
        assert!(normalise_tag("tab\there").is_err());
        // Letters whose lower case holds a combining mark.
        assert_eq!(normalise_tag("İzmir").unwrap(), "i\u{307}zmir");
        assert_eq!(normalise_tag("i\u{307}zmir").unwrap(), "i\u{307}zmir");
        let long = normalise_tag(&"İ".repeat(32)).unwrap();
        assert_eq!(
            normalise_tag(&long).unwrap(),
            long,
            "a stored tag reads back"
        );
        assert!(normalise_tag(&"İ".repeat(33)).is_err());
        assert!(
            normalise_tag("\u{307}zmir").is_err(),
            "the mark alone is no letter"
        );
        assert!(normalise_tag("a \u{307}").is_err());
        let many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
        assert!(normalise_tags(&many).is_err());
    }
}
