//! The Redis key schema: every key and channel name kurz uses, in one place, because the edge and
//! the API read and write the same keys.
//!
//! ```text
//! <prefix>:{p<N>}:link:<code>   cached link (see [`CachedLink`]), TTL; negative entries too
//! <prefix>:{p<N>}:clicks        click stream of partition N (see `crate::clicks`)
//! <prefix>:{p<N>}:visits:<code> counted visits of a link with `max_visits` (no TTL; see
//!                               `crate::visit`)
//! <prefix>:{p<N>}:gen           write generation of partition N's links: bumped by every link
//!                               write, checked by every cache fill (a fill that read PostgreSQL
//!                               before a write committed cannot land after it)
//! <prefix>:invalidations        pub/sub channel: a message is a short code whose entry changed
//! <prefix>:schema               the key schema's fingerprint (see [`KeySchema::fingerprint`])
//! <prefix>:visitor-salt:<day>   the day's salt of visitor ids (`crate::visitors`), 2-day TTL
//! <prefix>:{sessions}:session:<hash>      user id of a session token (hash of the token)
//! <prefix>:{sessions}:user-sessions:<id>  set of a user's session hashes, to revoke them all
//! <prefix>:{login}:<kind>:<who> failed-login counter (kind `fail-acct`, `fail-ip`) or back-off
//!                               lock (`lock-acct`, `lock-ip`); `<who>` is `user:<id>`, `link:<id>`,
//!                               an address, or `id:<hash>` of an identifier naming no account
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
    /// hash and the link entry format. The API publishes it under [`Self::schema`]; an edge that
    /// finds another value (or none: a different prefix) answers no redirect from Redis, since
    /// its lookups and click appends would miss what the API writes and reads.
    pub fn fingerprint(&self) -> String {
        format!(
            "kurz-keys/1 partitions={} partition-hash=fnv1a32 link-entry=4 click-fields=3 visits=1",
            self.partitions
        )
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

    /// Failed-login bookkeeping: `kind` is `fail-acct`, `fail-ip`, `lock-acct` or `lock-ip`.
    /// One hash slot (`{login}`) for all of it: the lock-out script reads an account's and an
    /// address's keys together, and on a cluster a script's keys must share a slot. That also
    /// makes the lock-out global across every API instance.
    pub fn login(&self, kind: &str, who: &str) -> String {
        format!("{}:{{login}}:{kind}:{who}", self.prefix)
    }
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
pub const ENTRY_VERSION: &str = "4";

impl CachedLink {
    /// `4|url_id|user_id|active|expires_at|redirect_type|max_visits|protected|target`, or `0`
    /// for a missing code. A
    /// flat string rather than JSON: the edge parses it on every redirect, and the target goes
    /// last so it may hold any character.
    pub fn encode(&self) -> String {
        match self {
            CachedLink::Missing => "0".to_owned(),
            CachedLink::Found(l) => format!(
                "{ENTRY_VERSION}|{}|{}|{}|{}|{}|{}|{}|{}",
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

    /// `None` for anything malformed or of another version: callers treat that as a miss.
    pub fn decode(raw: &str) -> Option<CachedLink> {
        if raw == "0" {
            return Some(CachedLink::Missing);
        }
        let mut parts = raw.splitn(9, '|');
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
    fn fingerprints_differ_when_partitions_do() {
        let a = KeySchema::new("kurz", 16);
        assert_eq!(a.fingerprint(), KeySchema::new("other", 16).fingerprint());
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
        assert_eq!(CachedLink::decode(&found.encode()), Some(found.clone()));
        let CachedLink::Found(mut limited) = found else {
            unreachable!()
        };
        limited.max_visits = Some(3);
        limited.protected = true;
        let limited = CachedLink::Found(limited);
        assert_eq!(CachedLink::decode(&limited.encode()), Some(limited));
        assert_eq!(CachedLink::decode("0"), Some(CachedLink::Missing));
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
