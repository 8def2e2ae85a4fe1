//! `urls` table: links.

use super::Filter;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use kurz_common::keys::{CachedLink, LinkEntry};
use kurz_common::shortcode::ShortCode;
use kurz_common::target::Target;
use serde_json::{json, Value};
use tokio_postgres::{Error, Row};

/// A link's columns in [`Link::from_row`]'s order, with the expressions for its `visits` and
/// `tags` put in: one list, so the two sets below cannot drift apart.
macro_rules! link_columns {
    ($visits:literal, $tags:literal) => {
        concat!(
            "id, user_id, short_code, original_url, title, is_active, expires_at, created_at, \
             updated_at, deleted_at, redirect_type, max_visits, ",
            $visits,
            " AS visits, password_hash IS NOT NULL AS has_password, imported_clicks, ",
            $tags,
            " AS tags, version"
        )
    };
}

/// A link's columns; the last is its tags, in order (a statement that writes tags cannot see
/// them in its own `RETURNING`: the caller sets them). `visits` are its stored clicks, from the
/// daily rollup (one row per day clicked).
const COLUMNS: &str = link_columns!(
    "(SELECT coalesce(sum(d.clicks), 0)::int8 FROM click_daily d WHERE d.url_id = urls.id)",
    "coalesce((SELECT array_agg(t.tag ORDER BY t.tag) FROM link_tags t WHERE t.url_id = urls.id), '{}')"
);

/// [`COLUMNS`] as a statement inserting a new link returns them: a row this statement made has
/// no clicks rolled up yet and no tags it could see, so two probes per row buy nothing.
const NEW_COLUMNS: &str = link_columns!("0::int8", "'{}'::text[]");

/// How many columns [`COLUMNS`] names: statements that return a link and more put the rest after.
const N_COLUMNS: usize = 17;

#[derive(Debug, Clone)]
pub struct Link {
    pub id: i64,
    pub user_id: Option<i64>,
    pub short_code: String,
    pub original_url: String,
    pub title: Option<String>,
    pub is_active: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted: bool,
    /// One of `kurz_common::keys::REDIRECT_TYPES`.
    pub redirect_type: u16,
    /// Counted visits allowed; `None` for no limit.
    pub max_visits: Option<i32>,
    /// Clicks stored so far (those still in the click stream are not yet in).
    pub visits: i64,
    /// Behind a password (its hash is read only to check one: [`password_hash`]).
    pub has_password: bool,
    /// Clicks the link had in the shortener it was imported from (`POST /urls/import`).
    pub imported_clicks: i64,
    /// Normalised, sorted.
    pub tags: Vec<String>,
    /// The state's number from `link_versions`: every write takes a new one, so Redis can tell
    /// a late publish of an older state from a newer one (`crate::cache`).
    pub version: i64,
}

impl Link {
    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            user_id: row.get(1),
            short_code: row.get(2),
            original_url: row.get(3),
            title: row.get(4),
            is_active: row.get(5),
            expires_at: row.get(6),
            created_at: row.get(7),
            updated_at: row.get(8),
            deleted: row.get::<_, Option<DateTime<Utc>>>(9).is_some(),
            redirect_type: row.get::<_, i16>(10) as u16,
            max_visits: row.get(11),
            visits: row.get(12),
            has_password: row.get(13),
            imported_clicks: row.get(14),
            tags: row.get(15),
            version: row.get(16),
        }
    }

    /// The contract's link object; `base` is `BASE_URL` without a trailing slash.
    pub fn to_json(&self, base: &str) -> Value {
        let mut v = json!({
            "id": self.id,
            "user_id": self.user_id,
            "short_code": self.short_code,
            "short_url": format!("{base}/{}", self.short_code),
            "original_url": self.original_url,
            "title": self.title,
            "is_active": self.is_active,
            "created_at": kurz_common::time::format(self.created_at),
            "updated_at": kurz_common::time::format(self.updated_at),
            "redirect_type": self.redirect_type,
            "max_visits": self.max_visits,
            "visits": self.visits,
            "has_password": self.has_password,
            "imported_clicks": self.imported_clicks,
            "tags": self.tags,
        });
        if let Some(exp) = self.expires_at {
            v["expires_at"] = Value::String(kurz_common::time::format(exp));
        }
        v
    }

    /// What Redis should hold for the link, with its version.
    pub fn cache_state(&self) -> crate::cache::LinkState {
        crate::cache::LinkState {
            entry: self.cache_entry(),
            version: self.version,
            stored_visits: self.visits,
        }
    }

    /// What the link cache keeps for this link: deleted links are cached as missing.
    pub fn cache_entry(&self) -> CachedLink {
        if self.deleted {
            return CachedLink::Missing;
        }
        CachedLink::Found(LinkEntry {
            url_id: self.id,
            user_id: self.user_id,
            active: self.is_active,
            expires_at: self.expires_at.map(|e| e.timestamp()),
            redirect_type: self.redirect_type,
            max_visits: self.max_visits.map(i64::from),
            protected: self.has_password,
            target: self.original_url.clone(),
        })
    }
}

/// Fields of a new link. Its code and target can only come from their checked types.
#[derive(Clone, Copy)]
pub struct NewLink<'a> {
    user_id: Option<i64>,
    short_code: &'a str,
    original_url: &'a str,
    title: Option<&'a str>,
    expires_at: Option<DateTime<Utc>>,
    /// `smallint` in PostgreSQL.
    redirect_type: i16,
    max_visits: Option<i32>,
    /// An argon2id PHC string.
    password_hash: Option<&'a str>,
    tags: &'a [String],
}

impl<'a> NewLink<'a> {
    pub fn new(
        user_id: Option<i64>,
        short_code: &'a ShortCode,
        target: &'a Target,
        title: Option<&'a str>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            user_id,
            short_code: short_code.as_str(),
            original_url: target.as_str(),
            title,
            expires_at,
            redirect_type: 302,
            max_visits: None,
            password_hash: None,
            tags: &[],
        }
    }

    /// The same link behind the password hashed as `hash`.
    pub fn with_password_hash(self, hash: Option<&'a str>) -> Self {
        Self {
            password_hash: hash,
            ..self
        }
    }

    /// The same link answering 410 after `max` counted visits.
    pub fn with_max_visits(self, max: Option<i32>) -> Self {
        Self {
            max_visits: max,
            ..self
        }
    }

    /// The same link with these tags (normalised by the caller).
    pub fn with_tags(self, tags: &'a [String]) -> Self {
        Self { tags, ..self }
    }

    /// The same link redirecting with `status` (one of `REDIRECT_TYPES`, checked by the caller).
    pub fn with_redirect_type(self, status: u16) -> Self {
        Self {
            redirect_type: status as i16,
            ..self
        }
    }

    pub fn user_id(&self) -> Option<i64> {
        self.user_id
    }

    /// The same link under another code.
    pub fn with_code(self, short_code: &'a ShortCode) -> Self {
        Self {
            short_code: short_code.as_str(),
            ..self
        }
    }
}

/// An owned [`NewLink`]: a create waiting for its group commit (`crate::creates`) outlives the
/// request's borrows.
#[derive(Clone, Debug)]
pub struct NewLinkBuf {
    user_id: Option<i64>,
    short_code: String,
    original_url: String,
    title: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    redirect_type: i16,
    max_visits: Option<i32>,
    password_hash: Option<String>,
    tags: Vec<String>,
}

impl NewLink<'_> {
    pub fn to_buf(&self) -> NewLinkBuf {
        NewLinkBuf {
            user_id: self.user_id,
            short_code: self.short_code.to_owned(),
            original_url: self.original_url.to_owned(),
            title: self.title.map(str::to_owned),
            expires_at: self.expires_at,
            redirect_type: self.redirect_type,
            max_visits: self.max_visits,
            password_hash: self.password_hash.map(str::to_owned),
            tags: self.tags.to_vec(),
        }
    }
}

impl NewLinkBuf {
    pub fn as_new(&self) -> NewLink<'_> {
        NewLink {
            user_id: self.user_id,
            short_code: &self.short_code,
            original_url: &self.original_url,
            title: self.title.as_deref(),
            expires_at: self.expires_at,
            redirect_type: self.redirect_type,
            max_visits: self.max_visits,
            password_hash: self.password_hash.as_deref(),
            tags: &self.tags,
        }
    }

    pub fn short_code(&self) -> &str {
        &self.short_code
    }
}

/// What inserting a link found.
#[derive(Debug)]
pub enum Inserted {
    Link(Link),
    /// The code is taken (only with [`insert_url_unless_taken`]).
    CodeTaken,
    /// The owner is not a live user: nothing was inserted.
    NoOwner,
}

/// Inserts a link and its `created` event in one statement, if its owner is a live user:
/// checking the owner in the same statement saves `POST /urls` a round trip. A taken code fails
/// with a unique violation on `urls_short_code_key`, which the caller answers with a 409.
pub async fn insert_url(c: &impl GenericClient, new: &NewLink<'_>) -> Result<Inserted, Error> {
    let row = c
        .query_one(&insert_statement(c, "").await?, &insert_params(new))
        .await?;
    Ok(inserted(&row, new.tags))
}

/// Like [`insert_url`], but `CodeTaken` instead of an error: a generated code that collided can
/// be retried inside a transaction, which a unique violation would abort.
pub async fn insert_url_unless_taken(
    c: &impl GenericClient,
    new: &NewLink<'_>,
) -> Result<Inserted, Error> {
    let stmt = insert_statement(c, "ON CONFLICT (short_code) DO NOTHING").await?;
    Ok(inserted(
        &c.query_one(&stmt, &insert_params(new)).await?,
        new.tags,
    ))
}

/// Inserts several links and their `created` events in one statement, so one commit: the group
/// commit of concurrent creates (`crate::creates`). The codes must be distinct (a second row
/// with a code would be skipped as taken by the first). Each link's outcome comes back in input
/// order, as [`insert_url_unless_taken`] gives it for one. Rows go in in code order, so two
/// batches racing for the same codes wait on each other in one order and cannot deadlock.
pub async fn insert_urls(
    c: &impl GenericClient,
    news: &[NewLink<'_>],
) -> Result<Vec<Inserted>, Error> {
    let stmt = c
        .prepare_cached(&format!(
            "WITH input AS ( \
               SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], \
                                    $6::int2[], $7::int4[], $8::text[]) WITH ORDINALITY \
                 AS i(user_id, short_code, original_url, title, expires_at, redirect_type, max_visits, password_hash, n) \
             ), owned AS ( \
               SELECT i.* FROM input i WHERE i.user_id IS NULL \
                 OR EXISTS (SELECT 1 FROM users u WHERE u.id = i.user_id AND u.deleted_at IS NULL) \
             ), link AS ( \
               INSERT INTO urls (user_id, short_code, original_url, title, expires_at, redirect_type, max_visits, password_hash) \
               SELECT user_id, short_code, original_url, title, expires_at, redirect_type, max_visits, password_hash \
               FROM owned ORDER BY short_code \
               ON CONFLICT (short_code) DO NOTHING RETURNING {NEW_COLUMNS} \
             ), tagged AS ( \
               INSERT INTO link_tags (url_id, tag) SELECT link.id, t.tag \
               FROM unnest($9::text[], $10::text[]) AS t(short_code, tag) JOIN link USING (short_code) \
             ), created AS ( \
               INSERT INTO events (url_id, user_id, event_type, occurred_at, details) \
               SELECT id, user_id, 'created', created_at, \
                      jsonb_build_object('short_code', short_code, 'original_url', original_url) \
               FROM link \
             ) SELECT link.*, (SELECT count(*) FROM owned o WHERE o.n = i.n) \
               FROM input i LEFT JOIN link USING (short_code) ORDER BY i.n"
        ))
        .await?;
    let user_ids: Vec<Option<i64>> = news.iter().map(|n| n.user_id).collect();
    let codes: Vec<&str> = news.iter().map(|n| n.short_code).collect();
    let targets: Vec<&str> = news.iter().map(|n| n.original_url).collect();
    let titles: Vec<Option<&str>> = news.iter().map(|n| n.title).collect();
    let expiries: Vec<Option<DateTime<Utc>>> = news.iter().map(|n| n.expires_at).collect();
    let types: Vec<i16> = news.iter().map(|n| n.redirect_type).collect();
    let max_visits: Vec<Option<i32>> = news.iter().map(|n| n.max_visits).collect();
    let hashes: Vec<Option<&str>> = news.iter().map(|n| n.password_hash).collect();
    let (tag_codes, tags): (Vec<&str>, Vec<&str>) = news
        .iter()
        .flat_map(|n| n.tags.iter().map(move |t| (n.short_code, t.as_str())))
        .unzip();
    let rows = c
        .query(
            &stmt,
            &[
                &user_ids,
                &codes,
                &targets,
                &titles,
                &expiries,
                &types,
                &max_visits,
                &hashes,
                &tag_codes,
                &tags,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .zip(news)
        .map(|(row, new)| inserted(row, new.tags))
        .collect())
}

/// The statement's one row: the link's columns (null when nothing was inserted), then how many
/// owners it found.
fn inserted(row: &Row, tags: &[String]) -> Inserted {
    if row.get::<_, Option<i64>>(0).is_some() {
        let mut link = Link::from_row(row);
        link.tags = tags.to_vec();
        Inserted::Link(link)
    } else if row.get::<_, i64>(N_COLUMNS) == 0 {
        Inserted::NoOwner
    } else {
        Inserted::CodeTaken
    }
}

async fn insert_statement(
    c: &impl GenericClient,
    on_conflict: &str,
) -> Result<tokio_postgres::Statement, Error> {
    // A link without an owner (`$1` null) needs none; otherwise the owner must be live.
    c.prepare_cached(&format!(
        "WITH owner AS ( \
           SELECT 1 WHERE $1::int8 IS NULL \
           UNION ALL SELECT 1 FROM users WHERE id = $1::int8 AND deleted_at IS NULL \
         ), link AS ( \
           INSERT INTO urls (user_id, short_code, original_url, title, expires_at, redirect_type, max_visits, password_hash) \
           SELECT $1::int8, $2::text, $3::text, $4::text, $5::timestamptz, $6::int2, $8::int4, $9::text FROM owner \
           {on_conflict} RETURNING {NEW_COLUMNS} \
         ), tagged AS ( \
           INSERT INTO link_tags (url_id, tag) SELECT link.id, t FROM link, unnest($7::text[]) AS t \
         ), created AS ( \
           INSERT INTO events (url_id, user_id, event_type, occurred_at, details) \
           SELECT id, user_id, 'created', created_at, \
                  jsonb_build_object('short_code', short_code, 'original_url', original_url) \
           FROM link \
         ) SELECT link.*, (SELECT count(*) FROM owner) FROM (SELECT 1) AS one LEFT JOIN link ON true"
    ))
    .await
}

fn insert_params<'a>(new: &'a NewLink<'a>) -> [&'a (dyn tokio_postgres::types::ToSql + Sync); 9] {
    [
        &new.user_id,
        &new.short_code,
        &new.original_url,
        &new.title,
        &new.expires_at,
        &new.redirect_type,
        &new.tags,
        &new.max_visits,
        &new.password_hash,
    ]
}

/// A live (not deleted) link by id.
pub async fn find_url(c: &impl GenericClient, id: i64) -> Result<Option<Link>, Error> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM urls WHERE id = $1 AND deleted_at IS NULL"
        ))
        .await?;
    Ok(c.query_opt(&stmt, &[&id])
        .await?
        .as_ref()
        .map(Link::from_row))
}

/// Any link by id, deleted ones included.
pub async fn find_url_even_deleted(c: &impl GenericClient, id: i64) -> Result<Option<Link>, Error> {
    let stmt = c
        .prepare_cached(&format!("SELECT {COLUMNS} FROM urls WHERE id = $1"))
        .await?;
    Ok(c.query_opt(&stmt, &[&id])
        .await?
        .as_ref()
        .map(Link::from_row))
}

/// Like [`find_url`], locking the row for an update in the same transaction.
pub async fn find_url_for_update(c: &impl GenericClient, id: i64) -> Result<Option<Link>, Error> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM urls WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
        ))
        .await?;
    Ok(c.query_opt(&stmt, &[&id])
        .await?
        .as_ref()
        .map(Link::from_row))
}

/// A link's tags, in order, as committed when this statement starts.
pub async fn tags_of(c: &impl GenericClient, url_id: i64) -> Result<Vec<String>, Error> {
    let stmt = c
        .prepare_cached(
            "SELECT coalesce(array_agg(tag ORDER BY tag), '{}') FROM link_tags WHERE url_id = $1",
        )
        .await?;
    Ok(c.query_one(&stmt, &[&url_id]).await?.get(0))
}

/// Any link by code, deleted ones included (they are cached as missing).
pub async fn find_url_by_code(c: &impl GenericClient, code: &str) -> Result<Option<Link>, Error> {
    let stmt = c
        .prepare_cached(&format!("SELECT {COLUMNS} FROM urls WHERE short_code = $1"))
        .await?;
    Ok(c.query_opt(&stmt, &[&code])
        .await?
        .as_ref()
        .map(Link::from_row))
}

/// Which of `codes` a link holds, deleted links included (a code is never given again).
pub async fn codes_taken(c: &impl GenericClient, codes: &[&str]) -> Result<Vec<String>, Error> {
    let stmt = c
        .prepare_cached("SELECT short_code FROM urls WHERE short_code = ANY($1)")
        .await?;
    let rows = c.query(&stmt, &[&codes]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Gives the live link holding `code` a new version and returns its current state: for a
/// publish Redis refused because it holds a higher number that is not a newer state of this row
/// (a code the replay published as missing while the link was being created). Under the row
/// lock, so the number is above every state of the row. `None` when no live row holds `code`
/// (a deleted link's state is missing, which Redis already says).
pub async fn renumber(c: &impl GenericClient, code: &str) -> Result<Option<Link>, Error> {
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE urls SET version = nextval('link_versions') \
             WHERE short_code = $1 AND deleted_at IS NULL RETURNING {COLUMNS}"
        ))
        .await?;
    Ok(c.query_opt(&stmt, &[&code])
        .await?
        .as_ref()
        .map(Link::from_row))
}

/// A link version above every state committed so far: what a code whose row is gone is
/// published with (`crate::cache_sync`). Taken before that row is looked for.
pub async fn next_version(c: &impl GenericClient) -> Result<i64, Error> {
    let stmt = c.prepare_cached("SELECT nextval('link_versions')").await?;
    Ok(c.query_one(&stmt, &[]).await?.get(0))
}

/// List filters.
#[derive(Clone, Default)]
pub struct UrlFilter {
    pub user_id: Option<i64>,
    pub is_active: Option<bool>,
    /// Links carrying every one of these (normalised) tags.
    pub tags: Vec<String>,
    /// Texts one of which the code, target or title contains (case-insensitive, taken
    /// literally): a search and its spellings in a stored target ([`search_spellings`]).
    pub search: Vec<String>,
    /// Only links with a greater id (`after_id`).
    pub after_id: Option<i64>,
}

/// What a person typed, and how a stored target spells it: targets are stored normalised, a
/// host in punycode (`bücher` is `xn--bcher-kva`) and a path percent-encoded (`a b` is
/// `a%20b`, `ü` is `%C3%BC`), so the text as typed found neither.
pub fn search_spellings(text: &str) -> Vec<String> {
    use percent_encoding::{utf8_percent_encode, CONTROLS};
    // What the URL parser encodes in a path and a query alike (and every byte past ASCII).
    const ENCODED: &percent_encoding::AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'<').add(b'>');
    let mut all = vec![text.to_owned()];
    all.push(utf8_percent_encode(text, ENCODED).to_string());
    if let Ok(url::Host::Domain(host)) = url::Host::parse(text.trim_end_matches('.')) {
        all.push(host);
    }
    all.sort();
    all.dedup();
    all
}

impl UrlFilter {
    fn filter(&self) -> Filter<'_> {
        let mut f = Filter::new(&["deleted_at IS NULL"]);
        f.eq("user_id", &self.user_id);
        f.eq("is_active", &self.is_active);
        if let Some(after) = &self.after_id {
            f.param("id > {}", after);
        }
        // One semi-join per tag, not a grouping of every link carrying one of them: the planner
        // then walks either the owner's links (checking each in the primary key) or the tag's
        // index, whichever is smaller, where the grouping read every tenant's links with a
        // common tag before the owner filter.
        for tag in &self.tags {
            f.param(
                "EXISTS (SELECT 1 FROM link_tags t WHERE t.url_id = urls.id AND t.tag = {})",
                tag,
            );
        }
        if !self.search.is_empty() {
            // strpos, not LIKE: `%` and `_` in the text are literal.
            f.param(
                "EXISTS (SELECT 1 FROM unnest({}::text[]) AS s(text) WHERE \
                 strpos(lower(short_code || ' ' || original_url || ' ' || coalesce(title, '')), \
                 lower(s.text)) > 0)",
                &self.search,
            );
        }
        f
    }
}

/// Replaces a link's tags. One statement's parts see the same snapshot: an insert of a tag
/// the link keeps would find the row its own statement deletes and violate the key, so only
/// the tags that go are deleted and the kept ones are left alone.
pub async fn set_tags(c: &impl GenericClient, url_id: i64, tags: &[String]) -> Result<(), Error> {
    let stmt = c
        .prepare_cached(
            "WITH gone AS (DELETE FROM link_tags WHERE url_id = $1 AND tag <> ALL($2::text[])) \
             INSERT INTO link_tags (url_id, tag) SELECT $1, unnest($2::text[]) \
             ON CONFLICT DO NOTHING",
        )
        .await?;
    c.execute(&stmt, &[&url_id, &tags]).await.map(|_| ())
}

/// A slice of the tags, by tag, each with the number of live links carrying it, of one owner or
/// of everyone.
pub async fn tag_counts(
    c: &impl GenericClient,
    user_id: Option<i64>,
    limit: i64,
    offset: i64,
) -> Result<Vec<(String, i64)>, Error> {
    let stmt = c
        .prepare_cached(
            "SELECT t.tag, count(*) FROM link_tags t JOIN urls u ON u.id = t.url_id \
             WHERE u.deleted_at IS NULL AND ($1::int8 IS NULL OR u.user_id = $1) \
             GROUP BY t.tag ORDER BY t.tag LIMIT $2 OFFSET $3",
        )
        .await?;
    Ok(c.query(&stmt, &[&user_id, &limit, &offset])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// How many tags [`tag_counts`] lists in all.
pub async fn count_tags(c: &impl GenericClient, user_id: Option<i64>) -> Result<i64, Error> {
    let stmt = c
        .prepare_cached(
            "SELECT count(DISTINCT t.tag) FROM link_tags t JOIN urls u ON u.id = t.url_id \
             WHERE u.deleted_at IS NULL AND ($1::int8 IS NULL OR u.user_id = $1)",
        )
        .await?;
    Ok(c.query_one(&stmt, &[&user_id]).await?.get(0))
}

pub async fn list_urls(
    c: &impl GenericClient,
    filter: &UrlFilter,
    limit: i64,
    offset: i64,
) -> Result<Vec<Link>, Error> {
    list_urls_by(c, filter, "id", limit, offset).await
}

/// Up to `limit` links after id `after` under `filter`, in id order: pages that a link created
/// or deleted between two reads cannot shift.
pub async fn list_urls_after(
    c: &impl GenericClient,
    filter: &UrlFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<Link>, Error> {
    let mut f = filter.filter();
    f.param("id > {}", &after);
    let select = format!("SELECT {COLUMNS} FROM urls");
    let rows = f.page_by(c, &select, "id", limit, 0).await?;
    Ok(rows.iter().map(Link::from_row).collect())
}

/// Like [`list_urls`], newest first.
pub async fn list_urls_newest(
    c: &impl GenericClient,
    filter: &UrlFilter,
    limit: i64,
    offset: i64,
) -> Result<Vec<Link>, Error> {
    list_urls_by(c, filter, "id DESC", limit, offset).await
}

async fn list_urls_by(
    c: &impl GenericClient,
    filter: &UrlFilter,
    order_by: &str,
    limit: i64,
    offset: i64,
) -> Result<Vec<Link>, Error> {
    let rows = filter
        .filter()
        .page_by(
            c,
            &format!("SELECT {COLUMNS} FROM urls"),
            order_by,
            limit,
            offset,
        )
        .await?;
    Ok(rows.iter().map(Link::from_row).collect())
}

pub async fn count_urls(c: &impl GenericClient, filter: &UrlFilter) -> Result<i64, Error> {
    filter.filter().count(c, "urls").await
}

/// Writes every mutable field of `link` back, moving `updated_at` forward.
pub async fn save_url(c: &impl GenericClient, link: &Link) -> Result<Link, Error> {
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE urls SET title = $2, is_active = $3, original_url = $4, expires_at = $5, \
             redirect_type = $6, max_visits = $7, updated_at = GREATEST(now(), updated_at + interval '1 second'), \
             version = nextval('link_versions') \
             WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .await?;
    let row = c
        .query_one(
            &stmt,
            &[
                &link.id,
                &link.title,
                &link.is_active,
                &link.original_url,
                &link.expires_at,
                &(link.redirect_type as i16),
                &link.max_visits,
            ],
        )
        .await?;
    Ok(Link::from_row(&row))
}

/// The password hash of a live link (`None` when it has none).
pub async fn password_hash(c: &impl GenericClient, id: i64) -> Result<Option<String>, Error> {
    let stmt = c
        .prepare_cached("SELECT password_hash FROM urls WHERE id = $1 AND deleted_at IS NULL")
        .await?;
    Ok(c.query_opt(&stmt, &[&id])
        .await?
        .and_then(|r| r.get::<_, Option<String>>(0)))
}

/// Sets or removes a link's password (by its hash), in the caller's transaction.
pub async fn set_password_hash(
    c: &impl GenericClient,
    id: i64,
    hash: Option<&str>,
) -> Result<(), Error> {
    let stmt = c
        .prepare_cached(
            "UPDATE urls SET password_hash = $2, version = nextval('link_versions') WHERE id = $1",
        )
        .await?;
    c.execute(&stmt, &[&id, &hash]).await.map(|_| ())
}

/// Soft delete.
pub async fn delete_url(c: &impl GenericClient, id: i64) -> Result<Option<Link>, Error> {
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE urls SET deleted_at = now(), updated_at = now(), version = nextval('link_versions') \
             WHERE id = $1 AND deleted_at IS NULL RETURNING {COLUMNS}"
        ))
        .await?;
    Ok(c.query_opt(&stmt, &[&id])
        .await?
        .as_ref()
        .map(Link::from_row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_is_also_spelled_as_a_stored_target_spells_it() {
        let bucher = search_spellings("bücher");
        assert!(bucher.contains(&"xn--bcher-kva".to_owned()), "{bucher:?}");
        assert!(bucher.contains(&"b%C3%BCcher".to_owned()), "{bucher:?}");
        assert!(search_spellings("a b").contains(&"a%20b".to_owned()));
        assert_eq!(search_spellings("plain"), vec!["plain".to_owned()]);
    }
}
