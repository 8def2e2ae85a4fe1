//! Bulk CSV imports of users, links and events, in the seed files' formats.
//!
//! All or nothing: every row is parsed and checked before anything is written, and the writes
//! run in one transaction. Rows go in as `UNNEST`ed arrays, thousands per statement, so 100k rows
//! take seconds. Rows with an `id` are upserted by id, and the id sequence is moved past every
//! id in the file first, so rows without one can never take an id the file uses.

use crate::csv_cell::restore;
use crate::db::conflict_or;
use crate::error::{ApiError, ApiResult};
use crate::identity::{Email, Username};
use deadpool_postgres::GenericClient;
use kurz_common::shortcode::ShortCode;
use serde_json::Value;
use std::collections::{HashMap, HashSet};

pub mod bounds;
pub mod foreign;
mod table;

pub use table::{column_name, Turn};

use table::{unique, At, Table};

/// Rows per INSERT statement.
const CHUNK: usize = 5000;

/// Ids of `ids` that exist in `table` (soft-deleted rows count: foreign keys accept them).
async fn existing(
    c: &impl GenericClient,
    table: &str,
    ids: &HashSet<i64>,
) -> ApiResult<HashSet<i64>> {
    let list: Vec<i64> = ids.iter().copied().collect();
    let stmt = c
        .prepare_cached(&format!("SELECT id FROM {table} WHERE id = ANY($1)"))
        .await?;
    Ok(c.query(&stmt, &[&list])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Moves `<table>_id_seq` past every id in the table and in the file. A sequence is not
/// transactional and nothing stops another session's `nextval` between a read of it and a
/// `setval`: setting it back to a value read a moment before handed those ids out again (a
/// click batch then met its own id). So it is moved only when the ids need it, to past a
/// `nextval` taken in the same statement. A narrow window stays: sessions that take more ids
/// than the jump between that `nextval` and the `setval` would see the sequence go back.
async fn reserve_ids(c: &impl GenericClient, table: &str, max_in_file: i64) -> ApiResult<()> {
    let sql = format!(
        "SELECT CASE WHEN t.want > nextval('{table}_id_seq') THEN setval('{table}_id_seq', t.want) END \
         FROM (SELECT GREATEST($1::int8, (SELECT COALESCE(max(id), 1) FROM {table})) AS want) t"
    );
    c.query_one(&sql, &[&max_in_file]).await?;
    Ok(())
}

/// Users: `id,username,email,created_at` (`id`, `created_at` optional).
///
/// A row that gives an existing account another email gives the id to someone else: the
/// account's password, API keys and sessions do not go along (the caller reads the email
/// anew on every request, so a session kept would act as the new email, an admin's
/// included). Sessions end before the commit, or the import fails with a 503.
pub async fn users(
    c: &mut deadpool_postgres::Client,
    bytes: &[u8],
    turn: Turn,
    sessions: &crate::auth::sessions::Sessions,
) -> ApiResult<usize> {
    let (table, _turn) = Table::parse_off_worker(bytes, &["username", "email"], turn).await?;
    let (mut ids, mut names, mut emails, mut created) = (vec![], vec![], vec![], vec![]);
    let (mut seen_id, mut seen_email) = (HashMap::new(), HashMap::new());
    for (at, row) in table.rows() {
        let id = row.opt_id("id")?;
        let name =
            Username::parse(&row.required("username")?).map_err(|why| at.err("username", why))?;
        let email = Email::parse(&row.required("email")?).map_err(|why| at.err("email", why))?;
        if let Some(id) = id {
            unique(&mut seen_id, id, at, "id")?;
        }
        // Usernames may repeat (real exports do); the email is the identity.
        unique(&mut seen_email, email.as_str().to_lowercase(), at, "email")?;
        ids.push(id);
        names.push(name.as_str().to_owned());
        emails.push(email.as_str().to_owned());
        created.push(row.opt_time("created_at")?);
    }
    let tx = c.transaction().await?;
    reserve_ids(
        &tx,
        "users",
        ids.iter().flatten().copied().max().unwrap_or(1),
    )
    .await?;
    let renamed: Vec<i64> = tx
        .query(
            "SELECT u.id FROM users u JOIN UNNEST($1::int8[], $2::text[]) AS t(id, email) ON u.id = t.id \
             WHERE lower(u.email) <> lower(t.email) FOR UPDATE OF u",
            &[&ids, &emails],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO users (id, username, email, created_at) \
             SELECT COALESCE(t.id, nextval('users_id_seq')), t.username, t.email, COALESCE(t.created_at, now()) \
             FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::timestamptz[]) AS t(id, username, email, created_at) \
             ON CONFLICT (id) DO UPDATE SET username = EXCLUDED.username, email = EXCLUDED.email, \
               created_at = CASE WHEN $5 THEN EXCLUDED.created_at ELSE users.created_at END, \
               password_hash = CASE WHEN lower(users.email) = lower(EXCLUDED.email) THEN users.password_hash END, \
               deleted_at = NULL",
        )
        .await?;
    // A file without the column says nothing of it: an updated user keeps theirs.
    let has_created = table.columns.contains_key("created_at");
    for start in (0..ids.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(ids.len());
        tx.execute(
            &stmt,
            &[
                &&ids[start..end],
                &&names[start..end],
                &&emails[start..end],
                &&created[start..end],
                &has_created,
            ],
        )
        .await
        .map_err(conflict_detail)?;
    }
    let sessions_down =
        || ApiError::Unavailable("sessions cannot be ended (Redis is down); retry shortly".into());
    for id in &renamed {
        crate::db::api_keys::revoke_all(&tx, *id).await?;
        sessions
            .revoke_all(*id)
            .await
            .map_err(|_| sessions_down())?;
    }
    crate::deadline::commit(tx).await?;
    // And again: a log-in with the old password before the commit made a session the first
    // round did not see. The new identity is stored by now: logged, not failed.
    for id in renamed {
        if sessions.revoke_all(id).await.is_err() {
            log::warn!(user_id = id; "sessions not ended again after an import gave the account another email");
        }
    }
    Ok(ids.len())
}

/// What a link import changed, for the cache.
pub struct ImportedUrls {
    pub count: usize,
    /// New and replaced codes: their cache entries must go.
    pub codes: Vec<String>,
    /// The codes were queued in `link_outbox` with the import (stamps up to this): once the
    /// cache is cleared, `db::outbox::done_many` removes them; if the process dies first, the
    /// replay clears them.
    pub queued: Option<chrono::DateTime<chrono::Utc>>,
    /// The codes of rows that say `has_password` and came in switched off: an export holds no
    /// password, and the link had none stored to keep.
    pub needs_password: Vec<String>,
    /// The import's turn, held by the caller through the cache update that follows.
    pub turn: Turn,
}

/// Links: `id,user_id,short_code,original_url,title,is_active,created_at,updated_at`
/// (+ optional `expires_at`, `redirect_type`, `max_visits`, `imported_clicks` and `tags` (`;`-separated), as `GET /urls/export`
/// writes them; `id`, `title`, `is_active`, timestamps optional). A row whose `has_password`
/// (the export's column) is true names a protected link but cannot carry its password: unless
/// it updates a link that has one stored (kept, as every upsert keeps it), it is imported
/// switched off, so a target its owner had put behind a password is not opened to everyone.
pub async fn urls(
    c: &mut deadpool_postgres::Client,
    bytes: &[u8],
    policy: &kurz_common::target::TargetPolicy,
    turn: Turn,
) -> ApiResult<ImportedUrls> {
    let (table, turn) =
        Table::parse_off_worker(bytes, &["user_id", "short_code", "original_url"], turn).await?;
    let n = table.records.len();
    let (mut ids, mut users, mut codes, mut targets, mut titles) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut active, mut created, mut updated, mut expires) = (vec![], vec![], vec![], vec![]);
    let (mut statuses, mut tag_lists): (Vec<i16>, Vec<Vec<String>>) = (vec![], vec![]);
    let mut limits: Vec<Option<i32>> = vec![];
    let mut imported_clicks: Vec<i64> = vec![];
    let mut protected: Vec<bool> = vec![];
    let mut rows_at: Vec<At> = vec![];
    let (mut seen_id, mut seen_code) = (HashMap::new(), HashMap::new());
    let mut user_rows: HashMap<i64, At> = HashMap::new();
    for (at, row) in table.rows() {
        let id = row.opt_id("id")?;
        let user = row.opt_id("user_id")?;
        let code = ShortCode::parse(restore(&row.required("short_code")?))
            .map_err(|why| at.err("short_code", why.to_string()))?
            .into_string();
        let url = policy
            .parse(&row.required("original_url")?)
            .map_err(|why| at.err("original_url", why))?
            .into_string();
        if let Some(id) = id {
            unique(&mut seen_id, id, at, "id")?;
        }
        unique(&mut seen_code, code.clone(), at, "short_code")?;
        if let Some(u) = user {
            user_rows.entry(u).or_insert(at);
        }
        let title = restore(row.untrimmed("title"));
        if title.chars().count() > crate::routes::urls::MAX_TITLE {
            return Err(at.err(
                "title",
                format!(
                    "must be at most {} characters",
                    crate::routes::urls::MAX_TITLE
                ),
            ));
        }
        rows_at.push(at);
        ids.push(id);
        users.push(user);
        codes.push(code);
        targets.push(url);
        titles.push((!title.trim().is_empty()).then(|| title.to_owned()));
        active.push(row.bool_or("is_active", true)?);
        protected.push(row.bool_or("has_password", false)?);
        created.push(row.opt_time("created_at")?);
        updated.push(row.opt_time("updated_at")?);
        expires.push(row.opt_time("expires_at")?);
        let status = match row.text("redirect_type") {
            "" => 302,
            raw => raw
                .parse::<u16>()
                .ok()
                .filter(|s| kurz_common::keys::REDIRECT_TYPES.contains(s))
                .ok_or_else(|| at.err("redirect_type", "must be 301, 302, 307 or 308"))?,
        };
        statuses.push(status as i16);
        limits.push(match row.text("max_visits") {
            "" => None,
            raw => Some(raw.parse::<i32>().ok().filter(|m| *m >= 1).ok_or_else(|| {
                at.err(
                    "max_visits",
                    "must be an integer from 1 to 2147483647, or empty",
                )
            })?),
        });
        imported_clicks.push(match row.text("imported_clicks") {
            "" => 0,
            raw => raw
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| at.err("imported_clicks", "must be a non-negative integer"))?,
        });
        let raw_tags = crate::tags::split_bounded(restore(row.text("tags")), &[';']);
        tag_lists.push(crate::tags::normalise_tags(&raw_tags).map_err(|why| at.err("tags", why))?);
    }
    let tx = c.transaction().await?;
    let wanted: HashSet<i64> = user_rows.keys().copied().collect();
    let found = existing(&tx, "users", &wanted).await?;
    if let Some((uid, at)) = user_rows
        .iter()
        .filter(|(u, _)| !found.contains(u))
        .min_by_key(|(_, at)| at.row)
    {
        return Err(at.err("user_id", format!("user {uid} does not exist")));
    }
    // The upserted ids' owners: a link given to someone else takes its events along.
    let file_ids: Vec<i64> = ids.iter().flatten().copied().collect();
    let before = tx
        .query(
            "SELECT id, short_code, user_id FROM urls WHERE id = ANY($1)",
            &[&file_ids],
        )
        .await?;
    // A link keeps its code, deleted or not, as a PUT keeps it: a new one would free the old
    // code for anyone to take, and every link printed with it would lead where the taker says.
    let stored_codes: HashMap<i64, String> = before.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (i, id) in ids.iter().enumerate() {
        let Some(id) = id else { continue };
        if let Some(stored) = stored_codes.get(id).filter(|c| **c != codes[i]) {
            return Err(rows_at[i].err(
                "short_code",
                format!(
                    "link {id} has the code {stored}; a link's code never changes (its old one \
                     would be free for anyone to take)"
                ),
            ));
        }
    }
    let old_owners: HashMap<i64, Option<i64>> =
        before.iter().map(|r| (r.get(0), r.get(2))).collect();
    reserve_ids(&tx, "urls", file_ids.iter().copied().max().unwrap_or(1)).await?;
    let locked: HashSet<i64> = tx
        .query(
            "SELECT id FROM urls WHERE id = ANY($1) AND password_hash IS NOT NULL",
            &[&file_ids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut needs_password = Vec::new();
    for i in 0..n {
        if protected[i] && !ids[i].is_some_and(|id| locked.contains(&id)) {
            active[i] = false;
            needs_password.push(codes[i].clone());
        }
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO urls (id, user_id, short_code, original_url, title, is_active, created_at, updated_at, expires_at, redirect_type, max_visits, imported_clicks) \
             SELECT COALESCE(t.id, nextval('urls_id_seq')), t.user_id, t.code, t.url, t.title, t.active, \
                    COALESCE(t.created, now()), COALESCE(t.updated, t.created, now()), t.expires, t.status, t.max_visits, t.imported \
             FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::bool[], \
                         $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::int2[], $11::int4[], $12::int8[]) \
                  AS t(id, user_id, code, url, title, active, created, updated, expires, status, max_visits, imported) \
             ON CONFLICT (id) DO UPDATE SET user_id = EXCLUDED.user_id, short_code = EXCLUDED.short_code, \
               original_url = EXCLUDED.original_url, \
               title = CASE WHEN 'title' = ANY($13) THEN EXCLUDED.title ELSE urls.title END, \
               is_active = CASE WHEN 'is_active' = ANY($13) OR NOT EXCLUDED.is_active \
                 THEN EXCLUDED.is_active ELSE urls.is_active END, \
               created_at = CASE WHEN 'created_at' = ANY($13) THEN EXCLUDED.created_at ELSE urls.created_at END, \
               updated_at = CASE WHEN 'updated_at' = ANY($13) THEN EXCLUDED.updated_at ELSE now() END, \
               expires_at = CASE WHEN 'expires_at' = ANY($13) THEN EXCLUDED.expires_at ELSE urls.expires_at END, \
               redirect_type = CASE WHEN 'redirect_type' = ANY($13) \
                 THEN EXCLUDED.redirect_type ELSE urls.redirect_type END, \
               max_visits = CASE WHEN 'max_visits' = ANY($13) THEN EXCLUDED.max_visits ELSE urls.max_visits END, \
               imported_clicks = CASE WHEN 'imported_clicks' = ANY($13) \
                 THEN EXCLUDED.imported_clicks ELSE urls.imported_clicks END, \
               deleted_at = NULL, version = nextval('link_versions') \
             WHERE urls.short_code = EXCLUDED.short_code",
        )
        .await?;
    // A column the file lacks says nothing of a re-imported link: it keeps what it had (the
    // seed format has no `expires_at`, and a re-import must not reopen an expired link).
    // `is_active` is also written when a row comes in switched off for its password.
    let present: Vec<&str> = table.columns.keys().map(String::as_str).collect();
    for s in (0..n).step_by(CHUNK) {
        let e = (s + CHUNK).min(n);
        let written = tx
            .execute(
                &stmt,
                &[
                    &&ids[s..e],
                    &&users[s..e],
                    &&codes[s..e],
                    &&targets[s..e],
                    &&titles[s..e],
                    &&active[s..e],
                    &&created[s..e],
                    &&updated[s..e],
                    &&expires[s..e],
                    &&statuses[s..e],
                    &&limits[s..e],
                    &&imported_clicks[s..e],
                    &present,
                ],
            )
            .await
            .map_err(conflict_detail)?;
        // The check of the stored codes above took no lock: a create that took a file's id
        // since (the sequence is moved past the file's ids only now), or another import of the
        // same id, leaves a row of another code, which the upsert skips rather than rename.
        if written != (e - s) as u64 {
            return Err(ApiError::Conflict(
                "a link the file names by id got another code meanwhile (a link's code never \
                 changes); nothing was imported"
                    .into(),
            ));
        }
    }
    // The events of a link that changed hands are its new owner's, as its stats are: in
    // `required` mode the old owner would otherwise go on listing its clicks (and their
    // details), and the new one would not see them.
    let (mut moved, mut new_owners) = (Vec::new(), Vec::new());
    for (id, owner) in ids.iter().zip(&users) {
        if let Some(id) = id {
            if old_owners.get(id).is_some_and(|old| old != owner) {
                moved.push(*id);
                new_owners.push(*owner);
            }
        }
    }
    if !moved.is_empty() {
        tx.execute(
            "UPDATE events e SET user_id = t.owner \
             FROM UNNEST($1::int8[], $2::int8[]) AS t(url_id, owner) \
             WHERE e.url_id = t.url_id AND e.user_id IS DISTINCT FROM t.owner",
            &[&moved, &new_owners],
        )
        .await?;
    }
    // Tags by code (an id may be generated): the file's tags replace a re-imported link's.
    let (mut tag_codes, mut tag_values) = (Vec::new(), Vec::new());
    for (code, tags) in codes.iter().zip(&tag_lists) {
        for tag in tags {
            tag_codes.push(code.as_str());
            tag_values.push(tag.as_str());
        }
    }
    if table.columns.contains_key("tags") {
        tx.execute(
            "DELETE FROM link_tags WHERE url_id IN (SELECT id FROM urls WHERE short_code = ANY($1))",
            &[&codes],
        )
        .await?;
        tx.execute(
            "INSERT INTO link_tags (url_id, tag) SELECT u.id, t.tag \
             FROM UNNEST($1::text[], $2::text[]) AS t(code, tag) JOIN urls u ON u.short_code = t.code",
            &[&tag_codes, &tag_values],
        )
        .await?;
    }
    // In the import's transaction: a crash between the commit and the cache update cannot
    // leave the old entries serving until their TTL.
    let queued = crate::db::outbox::enqueue_many(&tx, &codes).await?;
    crate::deadline::commit(tx).await?;
    Ok(ImportedUrls {
        count: n,
        codes,
        queued,
        needs_password,
        turn,
    })
}

/// The longest `details` cell an events import parses: room for a click's referrer, which is cut
/// after parsing, past `db::events::MAX_DETAILS_BYTES`.
const MAX_DETAILS_CELL: usize = 64 * 1024;

/// Events: `id,url_id,user_id,event_type,timestamp,details` (`details` a JSON object as text).
pub async fn events(
    c: &mut deadpool_postgres::Client,
    bytes: &[u8],
    turn: Turn,
) -> ApiResult<usize> {
    let (table, _turn) = Table::parse_off_worker(bytes, &["url_id", "event_type"], turn).await?;
    let n = table.records.len();
    let (mut ids, mut urls, mut users, mut types, mut times, mut details) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut seen_id = HashMap::new();
    let (mut url_rows, mut user_rows): (HashMap<i64, At>, HashMap<i64, At>) =
        (HashMap::new(), HashMap::new());
    for (at, row) in table.rows() {
        let id = row.opt_id("id")?;
        if let Some(id) = id {
            unique(&mut seen_id, id, at, "id")?;
        }
        let url = row.id("url_id")?;
        url_rows.entry(url).or_insert(at);
        let user = row.opt_id("user_id")?;
        if let Some(u) = user {
            user_rows.entry(u).or_insert(at);
        }
        let kind = row.required("event_type")?;
        if !crate::db::events::TYPES.contains(&kind.as_str()) {
            return Err(at.err(
                "event_type",
                format!("must be one of {}", crate::db::events::TYPES.join(", ")),
            ));
        }
        let mut detail = match row.text("details") {
            "" => Value::Object(Default::default()),
            // Not parsed at all: a cell of a file's size parses into gigabytes of values.
            raw if raw.len() > MAX_DETAILS_CELL => {
                return Err(at.err(
                    "details",
                    format!("must be at most {MAX_DETAILS_CELL} bytes"),
                ))
            }
            raw => match serde_json::from_str::<Value>(raw) {
                // PostgreSQL's jsonb refuses NUL (`\u0000`): refuse it here, by name.
                Ok(Value::Object(map)) => match crate::extract::nul_at(&map, "details") {
                    Some(path) => {
                        return Err(at.err(
                            "details",
                            format!("{path} must not contain the NUL character (\\u0000)"),
                        ))
                    }
                    None => Value::Object(map),
                },
                _ => return Err(at.err("details", "must be a JSON object")),
            },
        };
        if let (Value::Object(map), "click") = (&mut detail, kind.as_str()) {
            if let Err((field, why)) = crate::db::events::check_click_details(map) {
                return Err(at.err(&field, why));
            }
        }
        if let Value::Object(map) = &detail {
            crate::db::events::check_details_size(map).map_err(|why| at.err("details", why))?;
        }
        ids.push(id);
        urls.push(url);
        users.push(user);
        types.push(kind);
        times.push(row.opt_time("timestamp")?);
        details.push(detail);
    }
    let tx = c.transaction().await?;
    for (table, rows, col) in [
        ("urls", &url_rows, "url_id"),
        ("users", &user_rows, "user_id"),
    ] {
        let found = existing(&tx, table, &rows.keys().copied().collect()).await?;
        if let Some((id, at)) = rows
            .iter()
            .filter(|(i, _)| !found.contains(i))
            .min_by_key(|(_, at)| at.row)
        {
            return Err(at.err(
                col,
                format!("{} {id} does not exist", &table[..table.len() - 1]),
            ));
        }
    }
    reserve_ids(
        &tx,
        "events",
        ids.iter().flatten().copied().max().unwrap_or(1),
    )
    .await?;
    let given: Vec<i64> = ids.iter().flatten().copied().collect();
    let mut kept = HashMap::new();
    let mut unrolled = Vec::new();
    for chunk in given.chunks(CHUNK) {
        let (click_ids, days) = replace_events(&tx, chunk).await?;
        kept.extend(click_ids);
        unrolled.extend(days);
    }
    let click_ids: Vec<Option<String>> = ids
        .iter()
        .map(|id| id.and_then(|id| kept.remove(&id)))
        .collect();
    // An event without a user is its link owner's, as a recorded click is: in `required` mode
    // the owner lists events by that, and their stats count the click either way.
    let stmt = tx
        .prepare_cached(
            "INSERT INTO events (id, url_id, user_id, event_type, occurred_at, details, click_id) \
             SELECT COALESCE(t.id, nextval('events_id_seq')), t.url_id, \
                    COALESCE(t.user_id, (SELECT u.user_id FROM urls u WHERE u.id = t.url_id)), \
                    t.kind, COALESCE(t.ts, now()), t.details, t.click_id \
             FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::text[], $5::timestamptz[], $6::jsonb[], $7::text[]) \
                  AS t(id, url_id, user_id, kind, ts, details, click_id)",
        )
        .await?;
    for s in (0..n).step_by(CHUNK) {
        let e = (s + CHUNK).min(n);
        tx.execute(
            &stmt,
            &[
                &&ids[s..e],
                &&urls[s..e],
                &&users[s..e],
                &&types[s..e],
                &&times[s..e],
                &&details[s..e],
                &&click_ids[s..e],
            ],
        )
        .await
        .map_err(conflict_detail)?;
    }
    drop_emptied_days(&tx, unrolled).await?;
    crate::deadline::commit(tx).await?;
    Ok(n)
}

/// Drops the rollup rows of the days replaced events were taken out of that the import left
/// without clicks (a row the unroll inserted, for a click counted nowhere, included): the stats
/// no longer list them. After the import's rows went in, not before: a day they fill again
/// keeps its row, and with it its count of distinct visitors, which the rows going in again
/// do not add to (see [`replace_events`]).
async fn drop_emptied_days(
    tx: &impl GenericClient,
    days: Vec<(i64, chrono::NaiveDate)>,
) -> ApiResult<()> {
    if days.is_empty() {
        return Ok(());
    }
    let (links, days): (Vec<i64>, Vec<chrono::NaiveDate>) = days.into_iter().unzip();
    for table in ["click_daily", "click_day_sources"] {
        let empty = tx
            .prepare_cached(&format!(
                "DELETE FROM {table} WHERE (url_id, day) IN \
                 (SELECT * FROM UNNEST($1::int8[], $2::date[])) AND clicks <= 0"
            ))
            .await?;
        tx.execute(&empty, &[&links, &days]).await?;
    }
    Ok(())
}

/// Deletes the stored events an import replaces (rows are upserted by id) and takes their clicks
/// out of the rollups, which count them by the same rules as `roll_up_clicks` (migration V21);
/// the rows go in again as new and the trigger counts what they are now. An update in place
/// would not fire the trigger, which counts inserts only: a click turned into another type, or
/// moved to another link or day, would have stayed counted where it was. Returns the replaced
/// events' click ids by event id: the new rows keep them, so a copy of the click still in a
/// stream is still recognised as stored; and the days their clicks were taken out of, for
/// [`drop_emptied_days`] once the import's rows are in.
///
/// What the rollups cannot give back: a day's distinct visitors and its last click time keep
/// the replaced click's. So that a click going in again on its day does not count its visitor
/// a second time, the replaced clicks' visitors are marked as seen on their days again (the
/// hourly prune drops those marks for days before yesterday, `db::events::delete_old_visitors`:
/// a re-import of an older click would otherwise find its visitor new). A click stored before V16 was counted as an unknown agent without a
/// bot flag, whatever its details said; taking it out by its details cannot go below zero, and
/// days and sources left without clicks go. Rollup rows are locked in key order within each
/// statement, as the trigger's are, but an import spans several statements: a click batch
/// waiting on the same rows may make PostgreSQL abort one of the two (a deadlock), and the
/// import answers 503 for a retry.
async fn replace_events(
    tx: &impl GenericClient,
    ids: &[i64],
) -> ApiResult<(HashMap<i64, String>, Vec<(i64, chrono::NaiveDate)>)> {
    let unroll = tx
        .prepare_cached(
            "WITH gone AS ( \
                 DELETE FROM events WHERE id = ANY($1::int8[]) \
                 RETURNING id, click_id, url_id, event_type, occurred_at, details, is_bot, \
                           referrer, browser, os, device, visitor \
             ), c AS MATERIALIZED ( \
                 SELECT url_id, (occurred_at AT TIME ZONE 'UTC')::date AS day, \
                        coalesce(is_bot, details->>'is_bot' ~* '^\\s*(t|tr|tru|true|y|ye|yes|on|1)\\s*$', \
                                 false) AS bot, \
                        coalesce(referrer, details->>'referrer', '') AS referrer, \
                        coalesce(browser, details->>'browser', 'unknown') AS browser, \
                        coalesce(os, details->>'os', 'unknown') AS os, \
                        coalesce(device, details->>'device', 'other') AS device, \
                        coalesce(visitor, details->>'visitor') AS visitor \
                 FROM gone WHERE event_type = 'click' \
             ), seen AS ( \
                 INSERT INTO click_day_visitors (url_id, day, visitor) \
                 SELECT DISTINCT url_id, day, visitor FROM c \
                 WHERE visitor IS NOT NULL AND visitor <> '' AND NOT bot \
                 ORDER BY 1, 2, 3 \
                 ON CONFLICT DO NOTHING \
             ), daily AS ( \
                 INSERT INTO click_daily AS d (url_id, day, clicks, bots, visitors, last_click_at) \
                 SELECT url_id, day, -count(*), -count(*) FILTER (WHERE bot), 0, now() \
                 FROM c GROUP BY 1, 2 ORDER BY 1, 2 \
                 ON CONFLICT (url_id, day) DO UPDATE \
                     SET clicks = greatest(d.clicks + excluded.clicks, 0), \
                         bots = greatest(d.bots + excluded.bots, 0) \
             ), sources AS ( \
                 INSERT INTO click_day_sources AS s (url_id, day, referrer, browser, os, device, clicks, bots) \
                 SELECT url_id, day, referrer, browser, os, device, -count(*), -count(*) FILTER (WHERE bot) \
                 FROM c GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6 \
                 ON CONFLICT (url_id, day, referrer, browser, os, device) DO UPDATE \
                     SET clicks = greatest(s.clicks + excluded.clicks, 0), \
                         bots = greatest(s.bots + excluded.bots, 0) \
             ) \
             SELECT id, click_id, NULL::int8, NULL::date FROM gone WHERE click_id IS NOT NULL \
             UNION ALL \
             SELECT NULL, NULL, url_id, day FROM (SELECT DISTINCT url_id, day FROM c) AS t",
        )
        .await?;
    let mut click_ids = HashMap::new();
    let mut days = Vec::new();
    for row in tx.query(&unroll, &[&ids]).await? {
        if let (Some(id), Some(click_id)) = (row.get::<_, Option<i64>>(0), row.get(1)) {
            click_ids.insert(id, click_id);
        }
        if let (Some(link), Some(day)) = (
            row.get::<_, Option<i64>>(2),
            row.get::<_, Option<chrono::NaiveDate>>(3),
        ) {
            days.push((link, day));
        }
    }
    Ok((click_ids, days))
}

/// A unique violation against rows already stored names the value, from PostgreSQL's detail.
fn conflict_detail(e: tokio_postgres::Error) -> ApiError {
    let detail = e.as_db_error().and_then(|d| d.detail()).map(str::to_owned);
    match (conflict_or(e), detail) {
        (ApiError::Conflict(msg), Some(detail)) => {
            ApiError::Conflict(format!("{msg}: {detail}; nothing was imported"))
        }
        (other, _) => other,
    }
}
