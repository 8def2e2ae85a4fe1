//! One visit of a link in one Redis script, run by the edge and by the API alike: look the
//! link up and, when it redirects, count the visit against the link's `max_visits` and append
//! its click, atomically. Two visitors racing for a link's last visit are serialised by Redis:
//! one gets the redirect, the other the exhausted answer.
//!
//! The count of a limited link lives at [`KeySchema::visits`], without a TTL, beside the
//! link's entry (same hash tag, so the script stays cluster-safe). It is seeded from the
//! clicks PostgreSQL has stored when it is missing ([`seed`]): a script that finds a limited
//! link without its counter answers [`Reply::Unseeded`] and the API seeds it. A write that
//! removes a link's limit drops the counter (the API's cache publish), so a limit set again
//! later counts from the stored clicks rather than from a stale count.
//!
//! A password-protected link is only looked up ([`Record::Unlocked`] aside): the API alone
//! answers it, after the password, and then counts and records its visit like any other.
//!
//! A visit of a limited link can be counted under a visit id (`KEYS[4]`, the mark): the edge
//! mints one for each visit it runs through the script, its run sets the mark when it counts
//! ([`VisitMark::Set`]), and when it forwards the request after all (its Redis call timed out,
//! maybe after the script ran) it passes the id to the API in [`VISIT_ID_HEADER`]. The API's
//! run takes the mark ([`VisitMark::Take`]): the edge's mark found, it neither counts nor
//! appends again, and leaves the API's mark (`a`) in its place. The two runs can reach Redis in either order (the edge's may still
//! be queued when the API's arrives), so an API run that counts leaves a mark of its own, and
//! an edge's run that finds it counts nothing: the visit counts once whichever comes first.
//! Nor does an edge's run that finds its own mark: the cluster client sends a script again when
//! the connection dropped before the reply, after it may have run.
//! An API's mark also passes one API run (it becomes `r`, retried): the edge sends a forwarded
//! GET again to another API when the first died before answering, maybe after its run counted.
//! Only the edge mints ids (it drops the header from clients' requests, the API reads it only
//! from trusted proxies), and an id passes one retry at most: a third run counts.
//!
//! Keys: `KEYS[1]` the entry, `KEYS[2]` the click stream, `KEYS[3]` the visit counter, `KEYS[4]`
//! (optional) the visit's mark. Arguments:
//! `ARGV[1]` what to record ([`Record`]), `ARGV[2]` now in unix seconds (the caller's clock, so
//! caller and script agree on expiry), `ARGV[3..]` the click's values in `clicks::FIELDS` order.
//! The XADD line is generated from that list ([`script_source`]), taking the link's own fields
//! from the entry the script read.

use crate::clicks::{Click, FIELDS};
use crate::keys::{lua_entry_pattern, CachedLink, KeySchema, VISIT_MARK_SECONDS};

/// The header an edge passes a forwarded visit's id in (see the module docs).
pub const VISIT_ID_HEADER: &str = "x-kurz-visit-id";

/// The header an edge passes its click-sampling draw for a forwarded `GET` in (`1` kept, `0`
/// sampled out): one draw per visit, so a redirect the edge could not record (its append
/// failed) is not sampled a second time by the API, keeping `sample_rate` a rate rather than
/// its square. Like the visit id, believed from trusted proxies only.
pub const CLICK_SAMPLED_HEADER: &str = "x-kurz-click-sampled";

/// What the script answers for a limited link whose visits are used up. Not a valid entry, so
/// no decoder can mistake it for one.
pub const EXHAUSTED: &str = "!";
/// What the script answers for a limited link without its counter.
pub const UNSEEDED: &str = "?";

const SOURCE: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return v end
local _, e, url_id, user_id, active, exp, maxv, protected = string.find(v, '__PATTERN__')
if not e or active ~= '1' or (protected == '1' and ARGV[1] ~= '3') then return v end
if exp ~= '' and tonumber(exp) <= tonumber(ARGV[2]) then return v end
if maxv == '' then
  if ARGV[1] ~= '1' and ARGV[1] ~= '3' then return v end
else
  local mark = KEYS[4] and ARGV[1] ~= '0' and redis.call('GET', KEYS[4])
  if mark == '1' and ARGV[__MARK_ARG__] == 'take' then
    redis.call('SET', KEYS[4], 'a', 'KEEPTTL')
    return v
  end
  if mark and ARGV[__MARK_ARG__] == 'set' then return v end
  if mark == 'a' and ARGV[__MARK_ARG__] == 'take' then
    redis.call('SET', KEYS[4], 'r', 'KEEPTTL')
    return v
  end
  local n = tonumber(redis.call('GET', KEYS[3]) or '-1')
  if n < 0 then return '__UNSEEDED__' end
  if n >= tonumber(maxv) then return '__EXHAUSTED__' end
  if ARGV[1] == '0' then return v end
  redis.call('INCR', KEYS[3])
  if KEYS[4] then redis.call('SET', KEYS[4], ARGV[__MARK_ARG__] == 'set' and '1' or 'a', 'EX', __MARK_SECONDS__) end
end
redis.call('XADD', KEYS[2], '*', __FIELDS__)
return v
"#;

/// What a visit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// Nothing: a HEAD, or a lookup before a separate append. A limited link's exhaustion is
    /// still reported.
    Nothing,
    /// The click, and the visit of a limited link.
    Click,
    /// The click only if the link is limited: a GET sampled out by `clicks.sample_rate`, which a
    /// limited link must count all the same.
    IfLimited,
    /// The click, and the visit of a limited link, of a password-protected link whose password
    /// the API has just checked (the other modes only look such a link up).
    Unlocked,
}

impl Record {
    fn arg(self) -> &'static str {
        match self {
            Record::Nothing => "0",
            Record::Click => "1",
            Record::IfLimited => "2",
            Record::Unlocked => "3",
        }
    }
}

/// What the script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// No entry (or one of another format): ask PostgreSQL.
    Miss,
    /// A limited link whose counter is missing: nothing was recorded; seed it and ask again.
    Unseeded,
    /// A limited link with its visits used up: nothing was recorded.
    Exhausted,
    /// The entry; the visit was recorded when it redirects and the mode asked for it.
    Entry(CachedLink),
}

impl Reply {
    pub fn from_raw(raw: Option<&str>) -> Reply {
        match raw {
            Some(EXHAUSTED) => Reply::Exhausted,
            Some(UNSEEDED) => Reply::Unseeded,
            Some(raw) => CachedLink::decode(raw).map_or(Reply::Miss, Reply::Entry),
            None => Reply::Miss,
        }
    }
}

/// The script's source with its XADD arguments derived from [`FIELDS`]: a field added to the
/// click without a value here fails the unit tests (and stops the binaries at start-up) instead
/// of writing entries the consumer cannot read.
pub fn script_source() -> String {
    let pairs: Vec<String> = FIELDS
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let value = match *field {
                // The link's own fields come from the entry the script just read.
                "url_id" => "url_id".to_owned(),
                "user_id" => "user_id".to_owned(),
                "target" => "string.sub(v, e + 1)".to_owned(),
                "id" | "code" | "referrer" | "user_agent" | "ip" | "ts_ms" | "visitor" => {
                    format!("ARGV[{}]", i + 3)
                }
                other => panic!("click field {other:?} has no value in the visit script"),
            };
            format!("'{field}', {value}")
        })
        .collect();
    SOURCE
        .replace("__FIELDS__", &pairs.join(", "))
        .replace(
            "__PATTERN__",
            &lua_entry_pattern(&[
                "url_id",
                "user_id",
                "active",
                "expires_at",
                "max_visits",
                "protected",
            ]),
        )
        .replace("__EXHAUSTED__", EXHAUSTED)
        .replace("__MARK_SECONDS__", &VISIT_MARK_SECONDS.to_string())
        .replace("__MARK_ARG__", &(FIELDS.len() + 3).to_string())
        .replace("__UNSEEDED__", UNSEEDED)
}

/// The visit script, ready to invoke.
pub fn script() -> redis::Script {
    redis::Script::new(&script_source())
}

/// What a visit does with its id's mark (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisitMark<'a> {
    /// The edge's run: marks the visit it counts (`1`); the API's mark found means the API
    /// counted it first.
    Set(&'a str),
    /// The API's run of a visit an edge forwarded: the edge's mark found means the edge counted
    /// it, an API's (`a`) that another API did (the edge retried); otherwise the API counts it
    /// and marks it (`a`) for an edge's run still on its way, or a retry.
    Take(&'a str),
}

/// An invocation of `script` for `code`. `click` is required unless `record` is
/// [`Record::Nothing`] (without one nothing is recorded). `mark` makes a limited link's
/// counted visit count once across the edge's run and the API's.
pub fn invocation<'a>(
    script: &'a redis::Script,
    keys: &KeySchema,
    code: &str,
    record: Record,
    now: i64,
    click: Option<&Click>,
    mark: Option<VisitMark<'_>>,
) -> redis::ScriptInvocation<'a> {
    let mut inv = script.key(keys.link(code));
    inv.key(keys.clicks_for(code)).key(keys.visits(code));
    let mark_mode = match mark {
        Some(VisitMark::Set(id)) => {
            inv.key(keys.visit_mark(code, id));
            "set"
        }
        Some(VisitMark::Take(id)) => {
            inv.key(keys.visit_mark(code, id));
            "take"
        }
        None => "",
    };
    match click {
        Some(c) if record != Record::Nothing => {
            inv.arg(record.arg()).arg(now);
            for value in c.values() {
                inv.arg(value);
            }
            inv.arg(mark_mode);
        }
        _ => {
            inv.arg(Record::Nothing.arg()).arg(now);
        }
    }
    inv
}

/// Sets a limited link's counter to `stored` (its clicks PostgreSQL holds) unless one exists.
pub fn seed(keys: &KeySchema, code: &str, stored: i64) -> redis::Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(keys.visits(code)).arg(stored).arg("NX");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated script appends exactly the click's fields, in their order.
    #[test]
    fn the_script_appends_every_field_of_a_click() {
        let script = script_source();
        let start = script.find("'XADD'").unwrap();
        let end = start + script[start..].find("\nreturn").unwrap();
        // Every single-quoted word of the XADD call: the command, the id, then field names.
        let names: Vec<&str> = script[start..end]
            .split('\'')
            .skip(1)
            .step_by(2)
            .filter(|t| !matches!(*t, "XADD" | "*"))
            .collect();
        assert_eq!(names, FIELDS);
        assert!(!script.contains("__"));
    }

    #[test]
    fn replies_decode() {
        assert_eq!(Reply::from_raw(Some("!")), Reply::Exhausted);
        assert_eq!(Reply::from_raw(Some("?")), Reply::Unseeded);
        assert_eq!(Reply::from_raw(None), Reply::Miss);
        assert_eq!(Reply::from_raw(Some("garbage")), Reply::Miss);
        assert_eq!(
            Reply::from_raw(Some("0")),
            Reply::Entry(CachedLink::Missing)
        );
    }
}
