//! `kurz-api sample`: writes a sample data set in the seed CSV formats (users.csv, urls.csv,
//! events.csv), for the quick start, tests and the bench. Deterministic for a given seed, so
//! runs can be compared.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::{BufWriter, Write};
use std::path::Path;

const WORDS: &[&str] = &[
    "amber", "beacon", "cobalt", "delta", "ember", "fjord", "garden", "harbor", "indigo",
    "juniper", "kernel", "lumen", "meadow", "nimbus", "orbit", "prairie", "quartz", "river",
    "summit", "tundra",
];
const HOSTS: &[&str] = &[
    "example.com",
    "example.org",
    "docs.example.net",
    "blog.example.io",
    "shop.example.dev",
];

/// Sizes of the data set.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub users: usize,
    pub urls: usize,
    pub events: usize,
}

fn word(rng: &mut StdRng) -> &'static str {
    WORDS[rng.random_range(0..WORDS.len())]
}

/// Unix seconds within 2025 (300 days from 2025-01-01).
fn instant(rng: &mut StdRng) -> i64 {
    1_735_689_600 + rng.random_range(0..300 * 86_400)
}

fn fmt(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn timestamp(rng: &mut StdRng) -> String {
    fmt(instant(rng))
}

/// A unique code per link id: base62 of a scrambled id, at least 6 characters.
fn code_for(id: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    // Multiplying by an odd constant modulo 2^40 is a bijection, so codes stay unique.
    let mut n = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) & ((1 << 40) - 1);
    let mut out = Vec::new();
    while n > 0 || out.len() < 6 {
        out.push(ALPHABET[(n % 62) as usize]);
        n /= 62;
    }
    String::from_utf8(out).expect("ascii")
}

/// Writes the three files into `dir`.
pub fn write(dir: &Path, sizes: Sizes, seed: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut users = BufWriter::new(std::fs::File::create(dir.join("users.csv"))?);
    writeln!(users, "id,username,email,created_at")?;
    for id in 1..=sizes.users {
        let name = format!("{}{}{}", word(&mut rng), word(&mut rng), id);
        writeln!(
            users,
            "{id},{name},{name}@{},{}",
            HOSTS[id % HOSTS.len()],
            timestamp(&mut rng)
        )?;
    }
    users.flush()?;
    let mut urls = BufWriter::new(std::fs::File::create(dir.join("urls.csv"))?);
    writeln!(
        urls,
        "id,user_id,short_code,original_url,title,is_active,created_at,updated_at"
    )?;
    let mut owners = Vec::with_capacity(sizes.urls);
    for id in 1..=sizes.urls {
        let user = rng.random_range(1..=sizes.users.max(1));
        owners.push(user);
        let active = if rng.random_bool(0.9) {
            "True"
        } else {
            "False"
        };
        let (a, b) = (word(&mut rng), word(&mut rng));
        let created = instant(&mut rng);
        let updated = created + rng.random_range(0..30 * 86_400);
        writeln!(
            urls,
            "{id},{user},{},https://{}/{a}/{b}/{id},Link {a} {b},{active},{},{}",
            code_for(id),
            HOSTS[rng.random_range(0..HOSTS.len())],
            fmt(created),
            fmt(updated)
        )?;
    }
    urls.flush()?;
    let mut events = BufWriter::new(std::fs::File::create(dir.join("events.csv"))?);
    writeln!(events, "id,url_id,user_id,event_type,timestamp,details")?;
    for id in 1..=sizes
        .events
        .min(if sizes.urls == 0 { 0 } else { usize::MAX })
    {
        let url = rng.random_range(1..=sizes.urls);
        let user = owners[url - 1];
        let kind = ["created", "click", "click", "click", "updated"][rng.random_range(0..5)];
        let details = match kind {
            "click" => format!(
                r#"{{""short_code"":""{}"",""referrer"":""https://{}/""}}"#,
                code_for(url),
                HOSTS[id % HOSTS.len()]
            ),
            "updated" => r#"{""field"":""title"",""new_value"":""Renamed""}"#.to_owned(),
            _ => format!(r#"{{""short_code"":""{}""}}"#, code_for(url)),
        };
        writeln!(
            events,
            "{id},{url},{user},{kind},{},\"{details}\"",
            timestamp(&mut rng)
        )?;
    }
    events.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_code_shaped() {
        let codes: std::collections::HashSet<String> = (1..=100_000).map(code_for).collect();
        assert_eq!(codes.len(), 100_000);
        assert!(codes
            .iter()
            .all(|c| kurz_common::shortcode::is_code_shaped(c)));
    }
}
