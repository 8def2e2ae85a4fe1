//! The click stream's entry format, written by whoever answers a redirect (edge or API) and read
//! by the API's consumer group.
//!
//! Each entry is a flat field map (`XADD <stream> * id <click id> url_id 7 code abc …`).
//!
//! Every click carries an identity given when its request arrives: the request id the edge
//! assigns (or the API, for a request that came straight to it). The same id travels through the
//! stream, the edge→API fallback (as `X-Request-Id`) and the API's direct insert, and it is unique
//! in `events.click_id`. So whatever path and however many attempts a click takes — an edge that
//! timed out on an append that did apply and then forwarded the request, a consumer that died
//! between commit and `XACK`, a replay — it is stored once.

use std::net::IpAddr;

/// Longest referrer and user agent kept; longer values are cut (at a char boundary).
pub const MAX_HEADER_LEN: usize = 1024;

/// Longest click id accepted; the same bound as a request id.
pub const MAX_ID_LEN: usize = 128;

/// Whether `id` can serve as a click (and request) id: 1 to [`MAX_ID_LEN`] visible ASCII
/// characters, so it is safe in a header, a log line and a stream field.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// A fresh id (32 hex digits): what the edge or the API assigns to a request, and so the
/// identity of its click.
pub fn new_id() -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    id_at(now_ms, rand::random::<u128>())
}

/// The id made at `now_ms`: the time in milliseconds (48 bits) first, then 80 random bits.
///
/// Ids made later sort later, so the click ids stored in `events.click_id`'s unique index land
/// on its last pages instead of on a random page each. With random ids a batch of 2,000 clicks
/// spent 170–185 ms in the insert on a 3M-event table (every click dirtied its own index page);
/// ordered, 63–65 ms. 80 random bits keep two ids of the same millisecond apart.
fn id_at(now_ms: u64, random: u128) -> String {
    // Made for every redirect: hex digits pushed one by one, not through `format!`.
    let both = (u128::from(now_ms & ((1 << 48) - 1)) << 80) | (random & ((1 << 80) - 1));
    (0..32)
        .rev()
        .map(|nibble| char::from(b"0123456789abcdef"[(both >> (nibble * 4)) as usize & 0xf]))
        .collect()
}

/// `n` in decimal: the digits at the end of `buf`. The click's encoding on the redirect path
/// runs this a dozen times per click, where `write!` cost a formatter each time.
fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

/// One click as it travels through the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    /// The click's identity: the id of the request that made it (see the module docs).
    pub id: String,
    pub url_id: i64,
    pub user_id: Option<i64>,
    pub code: String,
    pub target: String,
    pub referrer: String,
    pub user_agent: String,
    /// The client's address as `privacy.store_ip` keeps it: truncated by default
    /// ([`truncate_ip`]), whole, or empty.
    pub ip: String,
    /// Unix milliseconds when the redirect was answered.
    pub ts_ms: i64,
    /// The day's visitor id (`crate::visitors`); empty when unknown.
    pub visitor: String,
}

/// The stream entry's field names, in the order every writer appends them: the one definition
/// of a click's entry. The edge's Lua script is generated from it (`redirect.rs`), and
/// [`Click::xadd`] writes it.
pub const FIELDS: [&str; 10] = [
    "id",
    "url_id",
    "user_id",
    "code",
    "target",
    "referrer",
    "user_agent",
    "ip",
    "ts_ms",
    "visitor",
];

/// One field's value, borrowed: numbers are formatted straight into the command buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    Text(&'a str),
    Int(i64),
}

impl redis::ToRedisArgs for FieldValue<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        match self {
            FieldValue::Text(s) => s.write_redis_args(out),
            FieldValue::Int(i) => i.write_redis_args(out),
        }
    }
}

impl redis::ToSingleRedisArg for FieldValue<'_> {}

impl Click {
    /// The values of [`FIELDS`], in the same order. A click without an owner has an empty
    /// `user_id`.
    pub fn values(&self) -> [FieldValue<'_>; 10] {
        use FieldValue::{Int, Text};
        [
            Text(&self.id),
            Int(self.url_id),
            self.user_id.map_or(Text(""), Int),
            Text(&self.code),
            Text(&self.target),
            Text(&self.referrer),
            Text(&self.user_agent),
            Text(&self.ip),
            Int(self.ts_ms),
            Text(&self.visitor),
        ]
    }

    /// `XADD <stream> * <field> <value> …`: how every process appends a click.
    pub fn xadd(&self, stream: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream).arg("*");
        for (field, value) in FIELDS.iter().zip(self.values()) {
            cmd.arg(*field).arg(value);
        }
        cmd
    }

    /// Appends this click to a packed entry's value ([`PACKED_FIELD`]): the values of
    /// [`FIELDS`] in order, each as `<byte length>:<bytes>`. Lengths rather than separators, so no value
    /// (a user agent may hold any text) can break the framing.
    pub fn pack_into(&self, out: &mut Vec<u8>) {
        let (mut len, mut digits) = ([0u8; 20], [0u8; 20]);
        for value in self.values() {
            let value = match value {
                FieldValue::Text(s) => s.as_bytes(),
                FieldValue::Int(i) => decimal(i, &mut digits),
            };
            out.extend_from_slice(decimal(value.len() as i64, &mut len));
            out.push(b':');
            out.extend_from_slice(value);
        }
    }

    /// Rebuilds a click from stream fields; `None` when a required field is missing or malformed
    /// (such an entry is acknowledged and dropped by the consumer, with a log line). An entry
    /// without an `id` (written before click ids existed) gets an empty one: the consumer then
    /// uses the entry's stream position, which is as stable.
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Click> {
        let mut click = Click {
            id: String::new(),
            url_id: 0,
            user_id: None,
            code: String::new(),
            target: String::new(),
            referrer: String::new(),
            user_agent: String::new(),
            ip: String::new(),
            ts_ms: 0,
            visitor: String::new(),
        };
        let (mut has_id, mut has_ts) = (false, false);
        for (k, v) in fields {
            match k {
                "id" if is_valid_id(v) => click.id = v.to_owned(),
                "id" => return None,
                "url_id" => {
                    click.url_id = v.parse().ok()?;
                    has_id = true;
                }
                "user_id" if !v.is_empty() => click.user_id = Some(v.parse().ok()?),
                "code" => click.code = v.to_owned(),
                "target" => click.target = v.to_owned(),
                "referrer" => click.referrer = v.to_owned(),
                "user_agent" => click.user_agent = v.to_owned(),
                "ip" => click.ip = v.to_owned(),
                "visitor" => click.visitor = v.to_owned(),
                "ts_ms" => {
                    click.ts_ms = v.parse().ok()?;
                    has_ts = true;
                }
                _ => {}
            }
        }
        (has_id && has_ts).then_some(click)
    }
}

/// The one field of a packed entry: `XADD <stream> * clicks <click><click>…`, each click as
/// [`Click::pack_into`] writes it. The edge appends the clicks of one batch as one such entry, so
/// Redis parses, stores, delivers and acknowledges one entry instead of one per click (2.25 →
/// 0.5 µs of Redis CPU per click for batches of 32, docs/capacity.md).
pub const PACKED_FIELD: &str = "clicks";

/// `XADD <stream> * clicks <packed>`: how the edge appends a batch.
pub fn xadd_packed(stream: &str, packed: &[u8]) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*").arg(PACKED_FIELD).arg(packed);
    cmd
}

/// The clicks of one stream entry, whichever format it has: a packed entry's clicks, or the
/// one click of a flat entry. `malformed` says something in it could not be read (those parts
/// are dropped, with the consumer's log line; the rest is kept).
#[derive(Debug, Default, PartialEq)]
pub struct EntryClicks {
    pub clicks: Vec<Click>,
    pub malformed: bool,
}

impl EntryClicks {
    /// Reads an entry's fields.
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let fields: Vec<(&str, &[u8])> = fields.into_iter().collect();
        if let Some((_, packed)) = fields.iter().find(|(k, _)| *k == PACKED_FIELD) {
            return unpack(packed);
        }
        let text: Vec<(&str, std::borrow::Cow<'_, str>)> = fields
            .iter()
            .map(|(k, v)| (*k, String::from_utf8_lossy(v)))
            .collect();
        match Click::from_fields(text.iter().map(|(k, v)| (*k, v.as_ref()))) {
            Some(click) => EntryClicks {
                clicks: vec![click],
                malformed: false,
            },
            None => EntryClicks {
                clicks: Vec::new(),
                malformed: true,
            },
        }
    }
}

/// The clicks of a packed value. Every packed click carries its id (only flat entries from
/// before click ids exist lack one). Reading stops at the first frame that does not parse: what
/// follows it cannot be found again.
fn unpack(mut rest: &[u8]) -> EntryClicks {
    let mut out = EntryClicks::default();
    while !rest.is_empty() {
        let mut values: [&str; FIELDS.len()] = [""; FIELDS.len()];
        for value in values.iter_mut() {
            let Some((v, after)) = frame(rest) else {
                out.malformed = true;
                return out;
            };
            *value = v;
            rest = after;
        }
        let click =
            Click::from_fields(FIELDS.iter().copied().zip(values)).filter(|c| !c.id.is_empty());
        match click {
            Some(click) => out.clicks.push(click),
            None => out.malformed = true,
        }
    }
    out
}

/// One `<len>:<bytes>` frame of UTF-8 text, and what follows it.
fn frame(buf: &[u8]) -> Option<(&str, &[u8])> {
    let colon = buf.iter().take(11).position(|&b| b == b':')?;
    let digits = &buf[..colon];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let len: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let body = buf.get(colon + 1..)?;
    if body.len() < len {
        return None;
    }
    let (value, rest) = body.split_at(len);
    Some((std::str::from_utf8(value).ok()?, rest))
}

/// How much of a visitor's address a click keeps (`privacy.store_ip`, the same on the edge and
/// the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreIp {
    /// The whole address.
    Full,
    /// The network only: /24 for IPv4, /48 for IPv6 ([`truncate_ip`]).
    #[default]
    Anonymized,
    /// Nothing.
    None,
}

impl StoreIp {
    /// What a click records of `ip`; empty for [`StoreIp::None`].
    pub fn apply(self, ip: IpAddr) -> String {
        match self {
            StoreIp::Full => match ip {
                IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map_or_else(|| v6.to_string(), |v4| v4.to_string()),
                v4 => v4.to_string(),
            },
            StoreIp::Anonymized => truncate_ip(ip),
            StoreIp::None => String::new(),
        }
    }
}

/// The `privacy` config section of both binaries.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacySettings {
    pub store_ip: StoreIp,
}

/// Keeps the network part only: IPv4 to /24 (`203.0.113.0`), IPv6 to /48. Enough for rough
/// geography and abuse analysis, not enough to identify a person.
pub fn truncate_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            // On every redirect (the default `store_ip`): no formatter.
            let mut out = String::with_capacity(15);
            let mut buf = [0u8; 20];
            for octet in &v4.octets()[..3] {
                out.extend(
                    decimal(i64::from(*octet), &mut buf)
                        .iter()
                        .map(|&b| char::from(b)),
                );
                out.push('.');
            }
            out.push('0');
            out
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return truncate_ip(IpAddr::V4(v4));
            }
            let s = v6.segments();
            std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string()
        }
    }
}

/// Cuts a header value to [`MAX_HEADER_LEN`] bytes at a char boundary.
pub fn clip(value: &str) -> String {
    if value.len() <= MAX_HEADER_LEN {
        return value.to_owned();
    }
    let mut end = MAX_HEADER_LEN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn click_round_trips_through_stream_fields() {
        let click = Click {
            id: "4f0c2a".into(),
            url_id: 9,
            user_id: None,
            code: "abc1234".into(),
            target: "https://example.com".into(),
            referrer: "https://ref.example".into(),
            user_agent: "curl/8".into(),
            ip: "10.1.2.0".into(),
            ts_ms: 1_700_000_000_123,
            visitor: "0123456789abcdef".into(),
        };
        for user_id in [None, Some(12)] {
            let click = Click {
                user_id,
                ..click.clone()
            };
            let args: Vec<String> = args_of(&click.xadd("s"))
                .into_iter()
                .map(|a| String::from_utf8(a).unwrap())
                .collect();
            assert_eq!(args[..3], ["XADD", "s", "*"]);
            let pairs: Vec<(&str, &str)> = args[3..]
                .chunks(2)
                .map(|p| (p[0].as_str(), p[1].as_str()))
                .collect();
            let names: Vec<&str> = pairs.iter().map(|(k, _)| *k).collect();
            assert_eq!(names, FIELDS);
            assert_eq!(Click::from_fields(pairs).unwrap(), click);
        }
        assert!(Click::from_fields([("url_id", "x"), ("ts_ms", "1")]).is_none());
        assert!(Click::from_fields([("code", "abc")]).is_none());
        let bad_id = [("id", "a b"), ("url_id", "1"), ("ts_ms", "1")];
        assert!(Click::from_fields(bad_id).is_none());
        let legacy = Click::from_fields([("url_id", "1"), ("ts_ms", "1")]).unwrap();
        assert_eq!(legacy.id, "");
    }

    /// A command's arguments, as Redis receives them.
    fn args_of(cmd: &redis::Cmd) -> Vec<Vec<u8>> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => b.to_vec(),
                _ => unreachable!("an XADD has no cursor"),
            })
            .collect()
    }

    fn sample(id: &str, user_id: Option<i64>) -> Click {
        Click {
            id: id.into(),
            url_id: 9,
            user_id,
            code: "abc1234".into(),
            target: "https://example.com/a?b=1:2".into(),
            referrer: String::new(),
            // Digits and colons inside a value must not confuse the framing.
            user_agent: "12:34 UA/1.0 \"quoted\" ü".into(),
            ip: "10.1.2.0".into(),
            ts_ms: -5,
            visitor: String::new(),
        }
    }

    #[test]
    fn a_packed_entry_holds_its_clicks_in_order() {
        let clicks = vec![
            sample("a", None),
            sample("b", Some(i64::MAX)),
            sample("c", Some(-1)),
        ];
        let mut packed = Vec::new();
        for c in &clicks {
            c.pack_into(&mut packed);
        }
        let args = args_of(&xadd_packed("s", &packed));
        assert_eq!(
            args[..4],
            [&b"XADD"[..], b"s", b"*", PACKED_FIELD.as_bytes()]
        );
        assert_eq!(args.len(), 5, "one value for the whole batch");
        let read = EntryClicks::from_fields([(PACKED_FIELD, args[4].as_slice())]);
        assert_eq!(
            read,
            EntryClicks {
                clicks,
                malformed: false
            }
        );
    }

    #[test]
    fn a_damaged_packed_entry_keeps_what_parses_and_says_so() {
        let mut packed = Vec::new();
        sample("a", None).pack_into(&mut packed);
        let whole = packed.len();
        sample("b", None).pack_into(&mut packed);
        for cut in [whole + 1, packed.len() - 1] {
            let read = EntryClicks::from_fields([(PACKED_FIELD, &packed[..cut])]);
            assert_eq!(read.clicks, vec![sample("a", None)], "cut at {cut}");
            assert!(read.malformed);
        }
        // A click without an id, or with a number that is not one, is dropped alone.
        let mut packed = Vec::new();
        sample("", None).pack_into(&mut packed);
        sample("b", None).pack_into(&mut packed);
        let read = EntryClicks::from_fields([(PACKED_FIELD, packed.as_slice())]);
        assert_eq!(read.clicks, vec![sample("b", None)]);
        assert!(read.malformed);
        for junk in [&b"x:1"[..], b"99999999999999:", b"3:ab", b":"] {
            let read = EntryClicks::from_fields([(PACKED_FIELD, junk)]);
            assert_eq!((read.clicks.len(), read.malformed), (0, true), "{junk:?}");
        }
        let empty = EntryClicks::from_fields([(PACKED_FIELD, &b""[..])]);
        assert_eq!(empty, EntryClicks::default());
    }

    #[test]
    fn a_flat_entry_is_one_click() {
        let click = sample("a", Some(3));
        let args = args_of(&click.xadd("s"));
        let fields: Vec<(&str, &[u8])> = args[3..]
            .chunks(2)
            .map(|p| (std::str::from_utf8(&p[0]).unwrap(), p[1].as_slice()))
            .collect();
        let read = EntryClicks::from_fields(fields);
        assert_eq!(
            read,
            EntryClicks {
                clicks: vec![click],
                malformed: false
            }
        );
        let bad = EntryClicks::from_fields([("code", &b"x"[..])]);
        assert_eq!((bad.clicks.len(), bad.malformed), (0, true));
    }

    #[test]
    fn ids_made_later_sort_later_and_same_millisecond_ones_differ() {
        let early = id_at(1_764_900_000_000, u128::MAX);
        let later = id_at(1_764_900_000_001, 0);
        assert!(early < later, "{early} !< {later}");
        assert_eq!(early.len(), 32);
        assert_eq!(later.len(), 32);
        assert!(early.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id_at(7, 1), id_at(7, 2));
    }

    #[test]
    fn ids_are_bounded_visible_ascii() {
        assert!(is_valid_id(&new_id()));
        assert_eq!(new_id().len(), 32);
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("has space"));
        assert!(!is_valid_id("ctl\u{1}"));
        assert!(!is_valid_id(&"x".repeat(MAX_ID_LEN + 1)));
        assert!(is_valid_id(&"x".repeat(MAX_ID_LEN)));
    }

    #[test]
    fn store_ip_keeps_all_the_network_or_nothing() {
        let v4: IpAddr = "203.0.113.77".parse().unwrap();
        let v6: IpAddr = "2001:db8:1:2:3::4".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert_eq!(StoreIp::Full.apply(v4), "203.0.113.77");
        assert_eq!(StoreIp::Full.apply(v6), "2001:db8:1:2:3::4");
        assert_eq!(StoreIp::Full.apply(mapped), "192.0.2.9");
        assert_eq!(StoreIp::Anonymized.apply(v4), "203.0.113.0");
        assert_eq!(StoreIp::Anonymized.apply(v6), "2001:db8:1::");
        assert_eq!(StoreIp::None.apply(v4), "");
        assert_eq!(StoreIp::default(), StoreIp::Anonymized);
        let parsed: PrivacySettings = serde_norway::from_str("store_ip: none").unwrap();
        assert_eq!(parsed.store_ip, StoreIp::None);
        assert!(serde_norway::from_str::<PrivacySettings>("store_ip: partial").is_err());
    }

    mod without_a_formatter {
        use super::super::{decimal, id_at, truncate_ip};
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            /// The hand-written digits say what `format!` would.
            #[test]
            fn digits_match_the_formatter(n: i64, ms: u64, random: u128, ip: [u8; 4]) {
                let (mut buf, text) = ([0; 20], n.to_string());
                prop_assert_eq!(decimal(n, &mut buf), text.as_bytes());
                let (ms48, rand80) = (ms & ((1 << 48) - 1), random & ((1 << 80) - 1));
                prop_assert_eq!(id_at(ms, random), format!("{ms48:012x}{rand80:020x}"));
                let [a, b, c, _] = ip;
                prop_assert_eq!(truncate_ip(ip.into()), format!("{a}.{b}.{c}.0"));
            }
        }

        #[test]
        fn the_extremes() {
            for n in [0, -1, 9, 10, i64::MIN, i64::MAX] {
                let mut buf = [0; 20];
                assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
            }
        }
    }

    #[test]
    fn addresses_are_truncated() {
        assert_eq!(truncate_ip("203.0.113.77".parse().unwrap()), "203.0.113.0");
        assert_eq!(
            truncate_ip("2001:db8:1:2:3::4".parse().unwrap()),
            "2001:db8:1::"
        );
        assert_eq!(
            truncate_ip("::ffff:192.0.2.9".parse().unwrap()),
            "192.0.2.0"
        );
    }

    #[test]
    fn long_headers_are_clipped_on_char_boundaries() {
        let long = "é".repeat(MAX_HEADER_LEN);
        let cut = clip(&long);
        assert!(cut.len() <= MAX_HEADER_LEN && long.starts_with(&cut));
    }
}
