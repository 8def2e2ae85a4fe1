//! Strict loading of YAML config files.
//!
//! Config structs use `#[serde(default, deny_unknown_fields)]`, so a typo in a key is an error
//! that names the key rather than a silently ignored setting.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Most click stream partitions (`redis.partitions`).
pub const MAX_PARTITIONS: u16 = 1024;

/// Where Redis is and how kurz names its keys there; the same section in the edge's and the
/// API's config, because both must agree on prefix and partitions.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port/db` (`REDIS_URL`).
    pub url: String,
    /// Seed nodes of a Redis Cluster (`redis://host:port` each; `REDIS_CLUSTER_URLS`,
    /// comma-separated). When set, `url` is not used and every key stays within its partition's
    /// hash slot (see `crate::keys`).
    pub cluster_nodes: Vec<String>,
    /// Prefix of every key and channel (see `crate::keys`); lets tenants and tests share one
    /// Redis.
    pub prefix: String,
    /// Click stream partitions. The edge and the API must use the same number: both map codes
    /// to partitions.
    pub partitions: u16,
    /// Upper bound on one Redis command; past it the request takes its Redis-down path.
    pub timeout_ms: u64,
    /// Replicas that must hold a click before its redirect is answered (`WAIT`); 0: the master
    /// alone. Replication is asynchronous: with 0, a master that dies right after acknowledging a
    /// click can take it along. With 1 or more, a click its replicas did not confirm within half
    /// of `timeout_ms` is stored in PostgreSQL directly instead.
    pub replica_acks: u8,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            cluster_nodes: Vec::new(),
            prefix: "kurz".into(),
            partitions: 16,
            timeout_ms: 250,
            replica_acks: 0,
        }
    }
}

impl RedisSettings {
    /// Checks the values; `section` is the key's parent in the file (`redis`), for messages.
    pub fn validate(&self, section: &str) -> Result<(), String> {
        if redis::Client::open(self.url.as_str()).is_err() {
            return Err(format!(
                "config key `{section}.url` is not a valid redis:// URL (REDIS_URL)"
            ));
        }
        for node in &self.cluster_nodes {
            let db = redis::Client::open(node.as_str())
                .map(|c| c.get_connection_info().redis_settings().db());
            match db {
                Ok(0) => {}
                Ok(_) => {
                    return Err(format!(
                        "config key `{section}.cluster_nodes`: {node:?} names a database; a cluster has only database 0 (REDIS_CLUSTER_URLS)"
                    ))
                }
                Err(_) => {
                    return Err(format!(
                        "config key `{section}.cluster_nodes`: {node:?} is not a valid redis:// URL (REDIS_CLUSTER_URLS)"
                    ))
                }
            }
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}', ' ', ':']) {
            return Err(format!(
                "config key `{section}.prefix` must be non-empty without braces, colons or spaces"
            ));
        }
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return Err(format!(
                "config key `{section}.partitions` must be 1..={MAX_PARTITIONS}"
            ));
        }
        if self.replica_acks > 5 {
            return Err(format!("config key `{section}.replica_acks` must be 0..=5"));
        }
        if self.timeout_ms == 0 {
            return Err(format!("config key `{section}.timeout_ms` must be above 0"));
        }
        Ok(())
    }
}

/// Whether two listeners would take one socket: the same port on the same address, or on any
/// address a wildcard of theirs covers (`0.0.0.0` its family's, `[::]` both: Linux binds it
/// dual-stack by default). Port 0 asks the kernel for a free port each time: no clash.
pub fn sockets_clash(a: &std::net::SocketAddr, b: &std::net::SocketAddr) -> bool {
    let covers = |w: &std::net::SocketAddr, o: &std::net::SocketAddr| {
        w.ip().is_unspecified() && (w.is_ipv4() == o.is_ipv4() || w.is_ipv6())
    };
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// Reads and parses `path`. The error names the file and, from serde, the offending key.
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    parse_yaml(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

/// Parses YAML text. A text with no settings at all (empty, or only comments) is refused: it is
/// what a failed template render or a full disk leaves, and taken as "all defaults" it would
/// reload an edge onto the default upstream with no trusted proxies, logged as a success.
pub fn parse_yaml<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    // Parsed as a document first, so every spelling of nothing (a byte order mark, `---`,
    // `...`, directives, comments) is caught, while `{}` is a mapping and passes.
    let doc: serde_norway::Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    if doc.is_null() {
        return Err(
            "holds no settings (it is empty or only comments); write `{}` to run on the defaults"
                .into(),
        );
    }
    serde_norway::from_str(text).map_err(|e| e.to_string())
}

/// Dotted paths of the leaves of a JSON object (`redis.url`, …); lists are leaves. Used by the
/// tests that keep `conf/*.yaml` and `docs/configuration.md` in step with the config structs.
pub fn leaf_keys(value: &serde_json::Value) -> Vec<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out
}

/// The value at dotted `key` in `value`.
pub fn at<'a>(value: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    key.split('.').try_fold(value, |v, k| v.get(k))
}

/// Whether a value read from YAML is the default: numbers compare as numbers (`1` is `1.0`).
fn same_value(file: &serde_json::Value, default: &serde_json::Value) -> bool {
    match (file.as_f64(), default.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => file == default,
    }
}

/// A default as the docs' table writes it (inside backticks): strings bare (`""` when empty),
/// everything else as compact JSON.
fn as_documented(default: &serde_json::Value) -> String {
    match default {
        serde_json::Value::String(s) if s.is_empty() => "\"\"".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The environment variables a docs table names in its third column (`environment`), for the
/// tests that check each one reaches its key. A part such as `_PORT` (short for a variable
/// named before it) is left out.
pub fn documented_env_vars(table: &str) -> Vec<String> {
    let mut vars = Vec::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let Some(cell) = line.split('|').nth(3) else {
            continue;
        };
        for (i, word) in cell.split('`').enumerate() {
            let variable = word.starts_with(|c: char| c.is_ascii_uppercase())
                && word
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if i % 2 == 1 && variable {
                vars.push(word.to_owned());
            }
        }
    }
    vars
}

/// Checks `defaults` (a config struct serialised) against its config file and its docs table:
/// every key is in the YAML file with its default value, and in the docs table (rows
/// `` | `key` | `default` | … ``) with its default; neither names a key the struct lacks.
pub fn check_documented(
    defaults: &serde_json::Value,
    yaml: &str,
    docs: &str,
) -> Result<(), String> {
    let file: serde_json::Value = serde_norway::from_str(yaml).map_err(|e| e.to_string())?;
    let in_file = leaf_keys(&file);
    let keys = leaf_keys(defaults);
    let rows: Vec<(&str, &str)> = docs
        .lines()
        .filter_map(|line| {
            let mut cells = line.strip_prefix("| `")?.split(" | ");
            let key = cells.next()?.strip_suffix('`')?;
            let default = cells.next()?.trim();
            Some((key, default))
        })
        .collect();
    for key in &keys {
        let default = at(defaults, key).expect("a leaf key");
        if !docs.contains(&format!("`{key}`")) {
            return Err(format!("docs/configuration.md lacks `{key}`"));
        }
        if !in_file.contains(key) {
            return Err(format!("the config file lacks {key}"));
        }
        let in_yaml = at(&file, key).expect("a key of the file");
        if !same_value(in_yaml, default) {
            return Err(format!(
                "the config file gives {key} as {in_yaml}, its default is {default}"
            ));
        }
        if let Some((_, documented)) = rows.iter().find(|(k, _)| k == key) {
            let expected = format!("`{}`", as_documented(default));
            let as_number = documented
                .trim_matches('`')
                .parse::<f64>()
                .ok()
                .zip(default.as_f64());
            let same = match as_number {
                Some((a, b)) => a == b,
                None => documented.replace(", ", ",") == expected,
            };
            if !same {
                return Err(format!(
                    "docs/configuration.md gives {key}'s default as {documented}, the code {expected}"
                ));
            }
        }
    }
    // The file's header lists every variable the table gives: an operator reads the file first.
    let header: String = yaml
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for line in docs.lines().filter(|l| l.starts_with("| `")) {
        // `| key | default | variables | what |`: an empty cell is `| |`.
        let env_cell = line.split('|').nth(3).unwrap_or_default();
        for name in env_cell.split('`').skip(1).step_by(2) {
            let variable = name.len() > 1
                && name.starts_with(|c: char| c.is_ascii_uppercase())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if variable && !header.contains(name) {
                return Err(format!("the config file's header does not list {name}"));
            }
        }
    }
    if let Some((stale, _)) = rows.iter().find(|(k, _)| !keys.iter().any(|key| key == k)) {
        return Err(format!(
            "docs/configuration.md documents `{stale}`, which is no key"
        ));
    }
    match in_file.iter().find(|k| !keys.contains(k)) {
        Some(stale) => Err(format!("the config file has a stale key {stale}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        port: u16,
    }

    #[test]
    fn unknown_key_is_rejected_by_name() {
        let err = parse_yaml::<Sample>("prot: 80").unwrap_err();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn docs_and_file_must_give_each_key_with_its_default() {
        let defaults = serde_json::json!({"a": {"b": 1, "c": "x", "d": ["p", "q"]}});
        let yaml = "a:\n  b: 1\n  c: x\n  d: [p, q]\n";
        let docs = "| `a.b` | `1` | | |\n| `a.c` | `x` | | |\n| `a.d` | `[\"p\", \"q\"]` | | |\n";
        assert_eq!(check_documented(&defaults, yaml, docs), Ok(()));
        let err = check_documented(&defaults, yaml, &docs.replace("`1`", "`2`")).unwrap_err();
        assert!(err.contains("a.b"), "{err}");
        let err = check_documented(&defaults, &yaml.replace("c: x", "c: y"), docs).unwrap_err();
        assert!(err.contains("a.c"), "{err}");
        let stale = format!("{docs}| `a.e` | `0` | | |\n");
        let err = check_documented(&defaults, yaml, &stale).unwrap_err();
        assert!(err.contains("a.e"), "{err}");
        // A variable the table gives for a key is in the file's header.
        let with_env = docs.replace(
            "| `a.b` | `1` | |",
            "| `a.b` | `1` | `A_B` (or `A_PART`/`_X`) |",
        );
        let err = check_documented(&defaults, yaml, &with_env).unwrap_err();
        assert!(err.contains("A_B"), "{err}");
        let listed = format!("# Overrides: A_B, A_PART/_X.\n{yaml}");
        assert_eq!(check_documented(&defaults, &listed, &with_env), Ok(()));
        let half = format!("# Overrides: A_B.\n{yaml}");
        let err = check_documented(&defaults, &half, &with_env).unwrap_err();
        assert!(err.contains("A_PART"), "{err}");
    }

    #[test]
    fn a_file_without_settings_is_refused_and_an_empty_map_gives_defaults() {
        for text in [
            "",
            "  \n",
            "# proxy.yaml\n\n  # all commented out\n",
            "---\n",
            "\u{feff}# with a byte order mark\n",
            "--- # a comment\n...\n",
            "%YAML 1.2\n---\n",
        ] {
            let err = parse_yaml::<Sample>(text).unwrap_err();
            assert!(err.contains("holds no settings"), "{text:?}: {err}");
        }
        assert_eq!(parse_yaml::<Sample>("{}").unwrap().port, 0);
        assert_eq!(
            parse_yaml::<Sample>("# the defaults\n{}\n").unwrap().port,
            0
        );
    }

    /// A key a runbook or guide names in backticks (`redis.prefix`) is one the config files
    /// have: an operator following the text sets it, and a misspelt one stops start-up (or, in
    /// a runbook, sends the reader after a setting that does not exist). conf/*.yaml hold every
    /// key of the code (`check_documented`), so they stand for the code here.
    #[test]
    fn every_dotted_key_the_docs_name_exists() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut keys = Vec::new();
        for file in ["conf/api.yaml", "conf/proxy.yaml"] {
            let yaml = std::fs::read_to_string(root.join(file)).unwrap();
            let value: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
            keys.extend(leaf_keys(&value));
        }
        let sections: Vec<&str> = keys.iter().filter_map(|k| k.split('.').next()).collect();
        let known = |name: &str| {
            keys.iter()
                .any(|k| k == name || k.starts_with(&format!("{name}.")))
        };
        // Names of that shape that are no key: a file and a table's column.
        let not_keys = ["events.csv", "events.click_id"];
        let mut texts = vec![root.join("README.md")];
        let mut dirs = vec![root.join("docs")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "md") {
                    texts.push(path);
                }
            }
        }
        let mut unknown = Vec::new();
        for path in &texts {
            let text = std::fs::read_to_string(path).unwrap();
            for name in text.split('`').skip(1).step_by(2) {
                let dotted = name.contains('.')
                    && name.split('.').all(|p| {
                        !p.is_empty()
                            && p.bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    });
                let section = name.split('.').next().unwrap_or_default();
                if dotted
                    && sections.contains(&section)
                    && !known(name)
                    && !not_keys.contains(&name)
                {
                    unknown.push(format!("{}: `{name}`", path.display()));
                }
            }
        }
        assert!(texts.len() > 10, "the docs were found");
        assert!(unknown.is_empty(), "no such config keys: {unknown:#?}");
    }
}
