//! The Redis key schema: every key and channel name kurz uses, in one place, because the edge and
//! the API read and write the same keys.
//!
//! ```text
//! <prefix>:{p<N>}:link:<code>   cached link (see [`CachedLink`]), TTL; negative entries too
//! <prefix>:{p<N>}:clicks        click stream of partition N (see `crate::clicks`)
//! <prefix>:{p<N>}:visits:<code> counted visits of a link with `max_visits` (no TTL; see
//!                               `crate::visit`)
//! <prefix>:{p<N>}:counted:<id>  a limited link's visit counted under visit id `<id>`, 120 s
//!                               (see `crate::visit`)
//! <prefix>:{p<N>}:gen           write generation of partition N's links: bumped by every link
//!                               write, checked by every cache fill (a fill that read PostgreSQL
//!                               before a write committed cannot land after it)
//! <prefix>:invalidations        pub/sub channel: a message is a short code whose entry changed
//! <prefix>:schema               the key schema's fingerprint (see [`KeySchema::fingerprint`])
//! <prefix>:visitor-salt:<day>   the day's salt of visitor ids (`crate::visitors`), 2-day TTL
//! <prefix>:{sessions}:session:<hash>      user id of a session token (hash of the token)
//! <prefix>:{sessions}:user-sessions:<id>  set of a user's session hashes, to revoke them all
//! <prefix>:{login}:<kind>:<who> failed-login counter (kind `fail-pair`, `fail-acct`, `fail-ip`)
//!                               or back-off lock (`lock-pair`, `lock-acct`, `lock-ip`); `<who>` is
//!                               `user:<id>`, `link:<id>`, `<who>@<address>` for a pair,
//!                               an address (an IPv6 one as its /64), or `id:<hash>` of an
//!                               identifier naming no account
//! ```
//!
//! Every command, script and pipeline keeps its keys within one hash tag; what spans partitions
//! goes out as one pipeline per partition on a cluster (`crate::redis_handle`).
//!
//! A link key and the click stream it appends to share the hash tag `{p<N>}`, so one script can
//! look a link up and append its click even on Redis Cluster, which refuses cross-slot scripts.
//! `N` is a stable hash of the code modulo the partition count, so every process, whatever its
//! language or version, maps a code to the same partition. The prefix lets tests and tenants
//! share one Redis.

/// Builds key names for one prefix and partition count.
#[derive(Debug, Clone)]
pub struct KeySchema {
    prefix: String,
    partitions: u16,
}

impl KeySchema {
    /// `partitions` below 1 is treated as 1.
    pub fn new(prefix: &str, partitions: u16) -> Self {
        Self {
            prefix: prefix.to_owned(),
            partitions: partitions.max(1),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// The partition of a code: FNV-1a (32 bit) of its bytes modulo the partition count. FNV is
    /// fixed forever here; changing it would strand every cached link and pending click.
    pub fn partition(&self, code: &str) -> u16 {
        let mut hash: u32 = 0x811c_9dc5;
        for byte in code.as_bytes() {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        (hash % u32::from(self.partitions)) as u16
    }

    /// The cache entry of a link.
    pub fn link(&self, code: &str) -> String {
        format!("{}:{{p{}}}:link:{code}", self.prefix, self.partition(code))
    }

    /// The visit counter of a link with a visit limit (same hash tag as its entry and stream).
    pub fn visits(&self, code: &str) -> String {
        format!(
            "{}:{{p{}}}:visits:{code}",
            self.prefix,
            self.partition(code)
        )
    }

    /// The mark of a limited link's visit counted under a visit id (`crate::visit`): a visit
    /// retried with the same id is not counted again. Expires after [`VISIT_MARK_SECONDS`].
    pub fn visit_mark(&self, code: &str, visit_id: &str) -> String {
        format!(
            "{}:{{p{}}}:counted:{visit_id}",
            self.prefix,
            self.partition(code)
        )
    }

    /// The write generation of one partition's links.
    pub fn generation(&self, partition: u16) -> String {
        format!("{}:{{p{partition}}}:gen", self.prefix)
    }

    /// The write generation guarding a code's cache entry (same hash tag as the entry).
    pub fn generation_for(&self, code: &str) -> String {
        self.generation(self.partition(code))
    }

    /// The click stream of one partition.
    pub fn clicks(&self, partition: u16) -> String {
        format!("{}:{{p{partition}}}:clicks", self.prefix)
    }

    /// The click stream a code's clicks go to.
    pub fn clicks_for(&self, code: &str) -> String {
        self.clicks(self.partition(code))
    }

    /// Every click stream, in partition order.
    pub fn all_clicks(&self) -> Vec<String> {
        (0..self.partitions).map(|p| self.clicks(p)).collect()
    }

    /// What an edge and an API must agree on to share keys: the partition count, the partition
    /// hash, the link entry format and the click stream's entries (packed, with as many values
    /// a click as [`crate::clicks::FIELDS`] names: a consumer of another release drops an entry
    /// it cannot read). The API publishes it under [`Self::schema`] and [`Self::schemas`]; an
    /// edge that finds another value (or none: a different prefix) answers no redirect from
    /// Redis, since its lookups and click appends would miss what the API writes and reads.
    pub fn fingerprint(&self) -> String {
        format!(
            "kurz-keys/1 partitions={} partition-hash=fnv1a32 link-entry={ENTRY_VERSION} click-entry=packed-{} visits=1",
            self.partitions,
            crate::clicks::FIELDS.len()
        )
    }

    /// The fingerprints of the APIs that run: a sorted set, each scored with the time (ms, by
    /// the clock of the Redis holding it) an API last published it. While APIs of two releases
    /// run side by side each rewrites [`Self::schema`], which then holds whichever wrote last:
    /// an edge reading only that key would match half the time, and append clicks the other
    /// release's consumers drop. The set holds both, until the old release's last publish is
    /// [`SCHEMA_ALIVE_MS`] older than the newest.
    pub fn schemas(&self) -> String {
        format!("{}:schemas", self.prefix)
    }

    /// The salt of visitor ids on `day` (`YYYY-MM-DD`, UTC).
    pub fn visitor_salt(&self, day: &str) -> String {
        format!("{}:visitor-salt:{day}", self.prefix)
    }

    /// Where the API publishes [`Self::fingerprint`].
    pub fn schema(&self) -> String {
        format!("{}:schema", self.prefix)
    }

    /// The pub/sub channel announcing changed links.
    pub fn invalidations(&self) -> String {
        format!("{}:invalidations", self.prefix)
    }

    /// A session, by the hash of its token. Sessions and the users' session sets share one
    /// hash slot (`{sessions}`), so creating and revoking a session stays one pipeline on a
    /// cluster too; they are read once per authenticated API call, far below what one Redis
    /// node answers.
    pub fn session(&self, token_hash: &str) -> String {
        format!("{}:{{sessions}}:session:{token_hash}", self.prefix)
    }

    /// The set of a user's session hashes.
    pub fn user_sessions(&self, user_id: i64) -> String {
        format!("{}:{{sessions}}:user-sessions:{user_id}", self.prefix)
    }

    /// A web form already sent, by the one-time token its page carried: sent again (a double
    /// click, a reload of its answer), its work is not done twice.
    pub fn form_sent(&self, user_id: i64, token: &str) -> String {
        format!("{}:form-sent:{user_id}:{token}", self.prefix)
    }

    /// Failed-login bookkeeping: `kind` is `fail-pair`, `fail-acct`, `fail-ip`, `lock-pair`,
    /// `lock-acct` or `lock-ip`.
    /// One hash slot (`{login}`) for all of it: the lock-out script reads an account's and an
    /// address's keys together, and on a cluster a script's keys must share a slot. That also
    /// makes the lock-out global across every API instance.
    pub fn login(&self, kind: &str, who: &str) -> String {
        format!("{}:{{login}}:{kind}:{who}", self.prefix)
    }
}

/// How long a counted visit's mark lasts: longer than any retry of it (an edge's Redis
/// timeout, then the forward to an API).
pub const VISIT_MARK_SECONDS: u64 = 120;

/// How often an API publishes its fingerprint.
pub const SCHEMA_EVERY_MS: i64 = 5_000;

/// How long a fingerprint in [`KeySchema::schemas`] counts as that of an API still running
/// after its last publish: six of the API's publishes, so one missed while Redis was slow does
/// not open an edge's gate with the other release still consuming.
pub const SCHEMA_ALIVE_MS: i64 = 6 * SCHEMA_EVERY_MS;

/// The fingerprints of the APIs that run: those of [`KeySchema::schemas`] (each with its
/// score) published within [`SCHEMA_ALIVE_MS`] of the newest, and the one in
/// [`KeySchema::schema`] (`single`), which an API from before the set writes alone (the only
/// kind left once the set has expired). Measured from the newest, not from a clock of the
/// reader's, so a skewed clock on an edge's machine changes nothing.
pub fn running_fingerprints<'a>(
    scored: &'a [(String, f64)],
    single: Option<&'a str>,
) -> Vec<&'a str> {
    let newest = scored.iter().map(|(_, t)| *t).fold(f64::MIN, f64::max);
    let mut live: Vec<&str> = scored
        .iter()
        .filter(|(_, t)| *t >= newest - SCHEMA_ALIVE_MS as f64)
        .map(|(f, _)| f.as_str())
        .chain(single)
        .collect();
    live.sort_unstable();
    live.dedup();
    live
}

/// What the link cache holds for a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedLink {
    /// No such code (a negative entry, kept briefly so scanners cannot hammer PostgreSQL).
    Missing,
    Found(LinkEntry),
}

/// A cached link: just what a redirect and its click need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEntry {
    pub url_id: i64,
    pub user_id: Option<i64>,
    pub active: bool,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    /// The redirect's status: one of [`REDIRECT_TYPES`].
    pub redirect_type: u16,
    /// Counted redirects allowed in all; `None` for no limit. The count lives in Redis
    /// ([`KeySchema::visits`]), not in the entry: see `crate::visit`.
    pub max_visits: Option<i64>,
    /// Behind a password: only the API answers it (a form, then the redirect), so no edge
    /// redirects it or records its click, from Redis or from its near-cache.
    pub protected: bool,
    pub target: String,
}

/// The statuses a link may redirect with; 302 unless the link says otherwise.
pub const REDIRECT_TYPES: [u16; 4] = [301, 302, 307, 308];

/// What a request for a link gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A redirect with this status.
    Redirect(u16),
    /// 404: unknown, deleted or inactive (as if it did not exist).
    NotFound,
    /// 410: it existed and worked, and no longer does (expired).
    Gone,
}

/// Why a link answers 410.
pub const GONE_EXPIRED: &str = "has expired";
/// Why a link with `max_visits` answers 410 once they are used up.
pub const GONE_EXHAUSTED: &str = "has reached its visit limit";

impl LinkEntry {
    /// Whether a redirect at `now` (unix seconds) should answer with a redirect.
    pub fn redirects_at(&self, now: i64) -> bool {
        matches!(self.verdict_at(now), Verdict::Redirect(_))
    }

    /// What a request at `now` (unix seconds) gets.
    pub fn verdict_at(&self, now: i64) -> Verdict {
        if !self.active {
            Verdict::NotFound
        } else if self.expires_at.is_some_and(|exp| now >= exp) {
            Verdict::Gone
        } else {
            Verdict::Redirect(self.redirect_type)
        }
    }
}

/// The first field of a found entry: the format's version. An entry of another version decodes
/// as a miss, and a cache fill replaces it (`api/src/cache.rs`); edges and APIs of different
/// versions do not share Redis at all (the fingerprint's `link-entry`).
pub const ENTRY_VERSION: &str = "5";

/// A found entry's fields between the format version and the target, in [`CachedLink::encode`]'s
/// order, each with the Lua pattern of its text. The Redis scripts that read entries build their
/// patterns from this list ([`lua_entry_pattern`]), and a unit test holds it against `encode`.
pub const ENTRY_FIELDS: [(&str, &str); 8] = [
    ("url_id", "%d+"),
    ("user_id", "%d*"),
    ("active", "[01]"),
    // Before 1970 (an import may carry such a date) the number is negative.
    ("expires_at", "%-?%d*"),
    ("redirect_type", "%d+"),
    ("max_visits", "%d*"),
    ("protected", "[01]"),
    ("version", "%d+"),
];

/// A Lua pattern for a found entry up to its target, anchored at the start and ending after the
/// `|` before the target, capturing `captured` (names from [`ENTRY_FIELDS`]) in list order.
pub fn lua_entry_pattern(captured: &[&str]) -> String {
    let mut pattern = format!("^{ENTRY_VERSION}|");
    for (name, text) in ENTRY_FIELDS {
        if captured.contains(&name) {
            pattern.push_str(&format!("({text})|"));
        } else {
            pattern.push_str(text);
            pattern.push('|');
        }
    }
    pattern
}

/// A Lua expression for the version of the entry text in `var`, `nil` when it has none (of
/// another format, or a negative entry of a code that never had a row).
pub fn lua_entry_version(var: &str) -> String {
    format!(
        "(string.match({var}, '{}') or string.match({var}, '^[0%-]|(%d+)$'))",
        lua_entry_pattern(&["version"]),
    )
}

/// The version in a stale marker's text, as the fill script reads it.
pub const LUA_STALE_MARKER: &str = "^%-|(%d+)$";

/// An entry that only holds a version: written where a bulk import dropped an entry. Every
/// reader takes it as a miss and reads PostgreSQL (a fill replaces it), while a late publish of
/// a state older than `version` is still refused.
pub fn stale_marker(version: i64) -> String {
    format!("-|{version}")
}

impl CachedLink {
    /// `5|url_id|user_id|active|expires_at|redirect_type|max_visits|protected|version|target`;
    /// for a missing code `0|version` (a deleted row's tombstone), or `0` when the code has no
    /// row and so no version. A flat string rather than JSON: the edge parses it on every
    /// redirect, and the target goes last so it may hold any character. `version` is the
    /// link's state number (`urls.version`): Redis keeps the newest state it was sent.
    pub fn encode(&self, version: i64) -> String {
        match self {
            CachedLink::Missing if version == 0 => "0".to_owned(),
            CachedLink::Missing => format!("0|{version}"),
            CachedLink::Found(l) => format!(
                "{ENTRY_VERSION}|{}|{}|{}|{}|{}|{}|{}|{version}|{}",
                l.url_id,
                l.user_id.map(|u| u.to_string()).unwrap_or_default(),
                u8::from(l.active),
                l.expires_at.map(|e| e.to_string()).unwrap_or_default(),
                l.redirect_type,
                l.max_visits.map(|m| m.to_string()).unwrap_or_default(),
                u8::from(l.protected),
                l.target
            ),
        }
    }

    /// `None` for anything malformed or of another version (a stale marker included): callers
    /// treat that as a miss.
    pub fn decode(raw: &str) -> Option<CachedLink> {
        if raw == "0" || raw.strip_prefix("0|").is_some_and(is_digits) {
            return Some(CachedLink::Missing);
        }
        let mut parts = raw.splitn(10, '|');
        if parts.next()? != ENTRY_VERSION {
            return None;
        }
        let url_id = parts.next()?.parse().ok()?;
        let user_id = optional_i64(parts.next()?)?;
        let active = flag(parts.next()?)?;
        let expires_at = optional_i64(parts.next()?)?;
        let redirect_type = parts.next()?.parse().ok()?;
        if !REDIRECT_TYPES.contains(&redirect_type) {
            return None;
        }
        let max_visits = optional_i64(parts.next()?)?;
        if max_visits.is_some_and(|m| m < 1) {
            return None;
        }
        let protected = flag(parts.next()?)?;
        if !is_digits(parts.next()?) {
            return None;
        }
        let target = parts.next()?.to_owned();
        Some(CachedLink::Found(LinkEntry {
            url_id,
            user_id,
            active,
            expires_at,
            redirect_type,
            max_visits,
            protected,
            target,
        }))
    }
}

fn is_digits(field: &str) -> bool {
    !field.is_empty() && field.bytes().all(|b| b.is_ascii_digit())
}

/// `1` or `0`.
fn flag(field: &str) -> Option<bool> {
    match field {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// `Some(None)` for an empty field, `None` for garbage.
fn optional_i64(field: &str) -> Option<Option<i64>> {
    if field.is_empty() {
        Some(None)
    } else {
        field.parse().ok().map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slot Redis Cluster gives a key: CRC16 (XMODEM) of its hash tag, modulo 16384.
    fn slot(key: &str) -> u16 {
        let tagged = key
            .find('{')
            .and_then(|a| key[a + 1..].find('}').map(|b| &key[a + 1..a + 1 + b]))
            .filter(|t| !t.is_empty())
            .unwrap_or(key);
        let mut crc: u16 = 0;
        for &byte in tagged.as_bytes() {
            crc ^= u16::from(byte) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }

    /// Partitions per master, fewest first, with `masters` holding the slots in the even
    /// ranges `redis-cli --cluster create` gives them.
    fn spread(masters: usize, partitions: u16) -> Vec<usize> {
        let keys = KeySchema::new("kurz", partitions);
        let mut per = vec![0; masters];
        for p in 0..partitions {
            let s = usize::from(slot(&keys.clicks(p)));
            per[(s * masters / 16384).min(masters - 1)] += 1;
        }
        per.sort();
        per
    }

    /// What docs/scaling.md says of how partitions fall on masters: their hash tags land
    /// unevenly, so a count only a few times the masters leaves some masters twice the mean.
    #[test]
    fn partitions_spread_over_masters_as_scaling_md_says() {
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("123456789"), 0x31c3, "CRC16/XMODEM check value");
        let ratio = |m: usize, p: u16| {
            let per = spread(m, p);
            *per.last().unwrap() as f64 / (f64::from(p) / m as f64)
        };
        // The default 16 on the 3 masters of `deploy/dev` and the tests.
        assert_eq!(spread(3, 16), [4, 5, 7]);
        // 64 on 16 masters: the busiest holds 8, twice the mean; 256 holds it to 14–18.
        assert_eq!(spread(16, 64).last(), Some(&8));
        assert_eq!((spread(16, 256)[0], spread(16, 256)[15]), (14, 18));
        assert!(ratio(16, 256) < 1.15 && ratio(3, 256) < 1.15);
    }

    #[test]
    fn link_and_its_click_stream_share_a_hash_tag() {
        let keys = KeySchema::new("kurz", 16);
        let link = keys.link("abc1234");
        let stream = keys.clicks_for("abc1234");
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
        assert_eq!(tag(&link), tag(&stream));
        assert_eq!(tag(&link), tag(&keys.visits("abc1234")));
        assert_eq!(tag(&link), tag(&keys.generation_for("abc1234")));
        assert!(link.starts_with("kurz:{p") && link.ends_with(":link:abc1234"));
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        let keys = KeySchema::new("t", 16);
        // Pinned values (FNV-1a 32 computed independently): a change to the hash would strand
        // every cached link and pending click, and split edges from APIs of another version.
        assert_eq!(keys.partition("abc1234"), 3);
        assert_eq!(keys.partition("zzzzzzz"), 13);
        assert_eq!(keys.partition("A"), 12);
        assert_eq!(keys.partition("0000000"), 7);
        assert_eq!(KeySchema::new("t", 1000).partition("abc1234"), 971);
        assert_eq!(KeySchema::new("t", 1).partition("anything"), 0);
        let spread: std::collections::HashSet<u16> =
            (0..500).map(|i| keys.partition(&format!("c{i}"))).collect();
        assert_eq!(spread.len(), 16);
        assert!(spread.iter().all(|p| *p < 16));
    }

    #[test]
    fn fingerprints_count_as_running_within_a_window_of_the_newest() {
        let scored = |list: &[(&str, f64)]| -> Vec<(String, f64)> {
            list.iter().map(|(f, t)| (f.to_string(), *t)).collect()
        };
        let alive = SCHEMA_ALIVE_MS as f64;
        let both = scored(&[("new", 1e12), ("old", 1e12 - alive)]);
        assert_eq!(running_fingerprints(&both, Some("new")), ["new", "old"]);
        let gone = scored(&[("old", 1e12 - alive - 1.0), ("new", 1e12)]);
        assert_eq!(running_fingerprints(&gone, None), ["new"]);
        // An API from before the set writes only the single key; once the set has expired
        // (a rollback), that key is all there is.
        assert_eq!(running_fingerprints(&gone, Some("old")), ["new", "old"]);
        assert_eq!(running_fingerprints(&[], Some("old")), ["old"]);
        assert!(running_fingerprints(&[], None).is_empty());
    }

    #[test]
    fn fingerprints_differ_when_partitions_do() {
        let a = KeySchema::new("kurz", 16);
        assert_eq!(a.fingerprint(), KeySchema::new("other", 16).fingerprint());
        assert!(a
            .fingerprint()
            .contains(&format!("packed-{}", crate::clicks::FIELDS.len())));
        assert_ne!(a.fingerprint(), KeySchema::new("kurz", 8).fingerprint());
        assert_eq!(a.schema(), "kurz:schema");
    }

    #[test]
    fn cached_link_round_trips() {
        let found = CachedLink::Found(LinkEntry {
            url_id: 42,
            user_id: None,
            active: true,
            expires_at: Some(1_900_000_000),
            redirect_type: 308,
            max_visits: None,
            protected: false,
            target: "https://example.com/a|b?c=1".into(),
        });
        assert_eq!(CachedLink::decode(&found.encode(9)), Some(found.clone()));
        let CachedLink::Found(mut limited) = found else {
            unreachable!()
        };
        limited.max_visits = Some(3);
        limited.protected = true;
        let limited = CachedLink::Found(limited);
        assert_eq!(CachedLink::decode(&limited.encode(1)), Some(limited));
        assert_eq!(CachedLink::decode("0"), Some(CachedLink::Missing));
        assert_eq!(CachedLink::Missing.encode(0), "0");
        assert_eq!(
            CachedLink::decode(&CachedLink::Missing.encode(77)),
            Some(CachedLink::Missing)
        );
        // A stale marker and a version-less format-5 entry are misses.
        assert_eq!(CachedLink::decode(&stale_marker(5)), None);
        assert_eq!(CachedLink::decode("0|"), None);
        assert_eq!(
            CachedLink::decode("5|42||1||302|||https://example.com"),
            None
        );
        assert_eq!(CachedLink::decode("1|x|||"), None);
        assert_eq!(CachedLink::decode("garbage"), None);
        // The previous formats, a status no link may have and a limit below one read as a miss.
        assert_eq!(CachedLink::decode("1|42||1||https://example.com"), None);
        assert_eq!(CachedLink::decode("2|42||1||302|https://example.com"), None);
        assert_eq!(
            CachedLink::decode("3|42||1||303||https://example.com"),
            None
        );
        assert_eq!(
            CachedLink::decode("3|42||1||302|0|https://example.com"),
            None
        );
        assert_eq!(
            CachedLink::decode("4|42||1||302||0|https://example.com"),
            None
        );
    }

    /// Checks `text` against one of the Lua classes `ENTRY_FIELDS` uses.
    fn matches_lua_class(class: &str, text: &str) -> bool {
        let digits = text.bytes().all(|b| b.is_ascii_digit());
        match class {
            "%d+" => digits && !text.is_empty(),
            "%d*" => digits,
            "%-?%d*" => text
                .strip_prefix('-')
                .unwrap_or(text)
                .bytes()
                .all(|b| b.is_ascii_digit()),
            "[01]" => text == "0" || text == "1",
            other => panic!("ENTRY_FIELDS uses {other:?}, which this test does not know"),
        }
    }

    /// The scripts' field list and `encode` agree: same count, same order, each field's text
    /// within its pattern, for entries with every optional field set and none.
    #[test]
    fn entry_fields_describe_what_encode_writes() {
        let full = LinkEntry {
            url_id: 42,
            user_id: Some(7),
            active: false,
            expires_at: Some(1_900_000_000),
            redirect_type: 301,
            max_visits: Some(5),
            protected: true,
            target: "https://example.com/a|b".into(),
        };
        let bare = LinkEntry {
            user_id: None,
            expires_at: None,
            max_visits: None,
            ..full.clone()
        };
        let before_1970 = LinkEntry {
            expires_at: Some(-86_400),
            ..full.clone()
        };
        for (entry, version) in [(full, 123_456_789_i64), (bare, 1), (before_1970, 2)] {
            let text = CachedLink::Found(entry.clone()).encode(version);
            let fields: Vec<&str> = text.splitn(ENTRY_FIELDS.len() + 2, '|').collect();
            assert_eq!(fields[0], ENTRY_VERSION);
            for (i, (name, class)) in ENTRY_FIELDS.iter().enumerate() {
                assert!(
                    matches_lua_class(class, fields[i + 1]),
                    "{name} = {:?}",
                    fields[i + 1]
                );
            }
            assert_eq!(fields[ENTRY_FIELDS.len()], version.to_string());
            assert_eq!(fields[ENTRY_FIELDS.len() + 1], entry.target);
        }
        assert_eq!(
            lua_entry_pattern(&["version"]),
            "^5|%d+|%d*|[01]|%-?%d*|%d+|%d*|[01]|(%d+)|"
        );
    }

    #[test]
    fn inactive_or_expired_links_do_not_redirect() {
        let mut l = LinkEntry {
            url_id: 1,
            user_id: Some(1),
            active: true,
            expires_at: Some(100),
            redirect_type: 307,
            max_visits: None,
            protected: false,
            target: "https://example.com".into(),
        };
        assert_eq!(l.verdict_at(99), Verdict::Redirect(307));
        assert!(l.redirects_at(99));
        // Expired: it worked and no longer does.
        assert_eq!(l.verdict_at(100), Verdict::Gone);
        assert!(!l.redirects_at(100));
        // Inactive: as if it did not exist, expired or not.
        l.active = false;
        assert_eq!(l.verdict_at(100), Verdict::NotFound);
        l.expires_at = None;
        assert_eq!(l.verdict_at(0), Verdict::NotFound);
    }
}
