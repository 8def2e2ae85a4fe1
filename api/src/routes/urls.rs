//! `/urls` (and the `/links` aliases): create, list, read, update, soft-delete, stats.

use crate::auth::Caller;
use crate::db::{self, conflict_or, urls::Inserted, urls::Link, urls::NewLink, urls::UrlFilter};
use crate::error::{ApiError, ApiResult};
use crate::extract::{path_id, Fields, JsonObject, Patch, PathText, Query};
use crate::http_log::RequestId;
use crate::idempotency;
use crate::pagination::Page;
use crate::state::AppState;
use axum::extract::{OriginalUri, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use kurz_common::keys::REDIRECT_TYPES;
use kurz_common::shortcode::ShortCode;
use kurz_common::target::Target;
use serde_json::{json, Value};

/// Longest title accepted, in characters (imports too).
pub(crate) const MAX_TITLE: usize = 512;
/// Attempts at a fresh generated code before giving up. With 62^7 codes a single collision is
/// already rare; five in a row means something else is wrong.
const CODE_ATTEMPTS: usize = 5;

/// The normalised target, or the field's rejection.
fn check_target(state: &AppState, f: &mut Fields, url: &str) -> Option<Target> {
    match state.targets.parse(url) {
        Ok(target) => Some(target),
        Err(why) => {
            f.reject("original_url", why);
            None
        }
    }
}

fn check_title(f: &mut Fields, title: &str) {
    if title.chars().count() > MAX_TITLE {
        f.reject("title", format!("must be at most {MAX_TITLE} characters"));
    }
}

/// Longest link password accepted (in characters): a passphrase fits, a megabyte does not reach
/// the hasher.
const MAX_LINK_PASSWORD: usize = 128;

fn check_link_password(f: &mut Fields, password: &str) {
    let n = password.chars().count();
    if n == 0 || n > MAX_LINK_PASSWORD {
        f.reject(
            "password",
            format!("must be 1 to {MAX_LINK_PASSWORD} characters, or null for none"),
        );
    }
}

fn check_expiry(f: &mut Fields, at: DateTime<Utc>) {
    if at <= Utc::now() {
        f.reject("expires_at", "must be in the future");
    }
}

/// `POST /urls`, `POST /links/create`.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: JsonObject,
) -> ApiResult<Response> {
    caller.acting()?;
    // Keys are per user: one user's key can never replay another's answer.
    let key = idempotency::key_from(&headers)?.map(|k| format!("{}:{k}", caller.scope_id()));
    // Only a keyed create is compared with an earlier one: the others skip copying the body.
    let fingerprint = key.as_ref().map(|_| fingerprint_of(&body.0));
    let idem = key.as_deref().zip(fingerprint.as_ref());
    let (link, replayed) = create_link(&state, &caller, body, idem, false).await?;
    let mut response = (StatusCode::CREATED, Json(link)).into_response();
    if replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// What a keyed create is compared by, kept a day in `idempotency_keys`: the BLAKE2b-256 of its
/// body as JSON text. The digest, not the text: fields the create ignores are compared too, and
/// a body padded with them would otherwise store a megabyte a day per key. A link's password is
/// kept only as its argon2id hash, so the text holds a placeholder in its place (a fast digest
/// of it could be brute-forced): a retry must give a password or none as the first request did,
/// and one that gives another password is answered the first request's link.
pub(crate) fn fingerprint_of(body: &serde_json::Map<String, Value>) -> idempotency::Fingerprint {
    let mut body = body.clone();
    if let Some(password @ Value::String(_)) = body.get_mut("password") {
        *password = Value::String("(a password)".into());
    }
    let text = Value::Object(body).to_string();
    idempotency::Fingerprint {
        digest: crate::auth::sessions::token_hash(&text),
        text,
    }
}

/// Validates, inserts and caches a new link; returns its JSON, and whether it is the answer an
/// earlier request with the same idempotency key (and fingerprint) got. `ownerless`: a link
/// without an owner may be made (an anonymous visitor of the web app in open mode); the API's
/// clients always name one.
pub(crate) async fn create_link(
    state: &AppState,
    caller: &Caller,
    body: JsonObject,
    idem: Option<(&str, &idempotency::Fingerprint)>,
    ownerless: bool,
) -> ApiResult<(Value, bool)> {
    let mut f = Fields::new(body);
    let from_body = match f.opt_id("user_id") {
        Patch::Set(id) => Some(id),
        _ => None,
    };
    let user_id = caller.owner_for_write(from_body)?;
    if user_id.is_none() && !ownerless {
        f.reject("user_id", "is required");
    }
    let original_url = f.string("original_url");
    let title = f.opt_string("title");
    let custom = f.opt_string("short_code");
    let expires_at = f.opt_timestamp("expires_at");
    let redirect_type = f.opt_choice("redirect_type", &REDIRECT_TYPES);
    let max_visits = match f.opt_count("max_visits") {
        Patch::Set(max) => Some(max),
        _ => None,
    };
    let password = f.opt_string("password");
    if let Patch::Set(p) = &password {
        check_link_password(&mut f, p);
    }
    let tags = f
        .opt_string_list("tags")
        .and_then(|t| f.check("tags", crate::tags::normalise_tags(&t)))
        .unwrap_or_default();
    let target = original_url
        .as_deref()
        .and_then(|url| check_target(state, &mut f, url));
    if let Patch::Set(t) = &title {
        check_title(&mut f, t);
    }
    let custom = match custom {
        Patch::Set(code) => f.check("short_code", ShortCode::parse(&code)),
        _ => None,
    };
    // A keyed retry is answered with the link its first try made, however late: an expiry that
    // has passed since is checked only once the key turns out to be new (below).
    if let (Patch::Set(at), None) = (&expires_at, idem) {
        check_expiry(&mut f, *at);
    }
    f.finish()?;
    let (Some(target), true) = (target, user_id.is_some() || ownerless) else {
        return Err(ApiError::BadRequest(
            "user_id and original_url are required".into(),
        ));
    };

    let password_hash = match password {
        Patch::Set(p) => Some(state.auth.passwords.hash(p).await?),
        _ => None,
    };
    let title = match &title {
        Patch::Set(t) => Some(t.as_str()),
        _ => None,
    };
    let expires_at = match expires_at {
        Patch::Set(at) => Some(at),
        _ => None,
    };
    let custom_given = custom.is_some();
    let code = custom.unwrap_or_else(ShortCode::generate);
    let new = NewLink::new(user_id, &code, &target, title, expires_at)
        .with_redirect_type(redirect_type.unwrap_or(302))
        .with_max_visits(max_visits)
        .with_password_hash(password_hash.as_deref())
        .with_tags(&tags);
    let link = match idem {
        None => match state.creates.insert(&new).await? {
            Inserted::Link(link) => link,
            Inserted::CodeTaken if custom_given => return Err(code_taken()),
            first => settle(&state.client().await?, new, first).await?,
        },
        Some((key, fingerprint)) => {
            let mut client = state.client().await?;
            let tx = client.transaction().await?;
            if let Some(earlier) = idempotency::claim(&tx, key, fingerprint).await? {
                drop(tx);
                drop(client);
                // Published again: the first try may have ended between its commit and its
                // publish (its API died, its request was cancelled), and a code looked up
                // before it was made is cached as missing.
                refresh_cache(state, &earlier).await;
                return Ok((earlier.to_json(state.config.base()), true));
            }
            if expires_at.is_some_and(|at| at <= Utc::now()) {
                return Err(ApiError::field("expires_at", "must be in the future"));
            }
            let link = insert(&tx, new, custom_given).await?;
            idempotency::bind(&tx, key, link.id).await?;
            crate::deadline::commit(tx).await?;
            link
        }
    };
    refresh_cache(state, &link).await;
    Ok((link.to_json(state.config.base()), false))
}

/// Inserts `new` under its custom code (a taken one is a 409), or under its generated code
/// (a taken one is replaced by another). The owner is checked by the insert itself: 404 when it
/// is not a live user.
async fn insert(
    c: &impl deadpool_postgres::GenericClient,
    new: NewLink<'_>,
    custom: bool,
) -> ApiResult<Link> {
    let first = if custom {
        db::urls::insert_url(c, &new).await.map_err(conflict_or)?
    } else {
        db::urls::insert_url_unless_taken(c, &new).await?
    };
    settle(c, new, first).await
}

/// The link of a first insert, or the error it calls for; a taken generated code is replaced
/// (a taken custom one never reaches here).
async fn settle(
    c: &impl deadpool_postgres::GenericClient,
    new: NewLink<'_>,
    first: Inserted,
) -> ApiResult<Link> {
    match first {
        Inserted::Link(link) => Ok(link),
        Inserted::NoOwner => Err(no_owner(&new)),
        Inserted::CodeTaken => insert_generated(c, new).await,
    }
}

/// What a create under a custom code that exists gets (the same as the unique violation
/// `db::conflict_or` maps).
fn code_taken() -> ApiError {
    ApiError::Conflict("short_code is already taken".into())
}

fn no_owner(new: &NewLink<'_>) -> ApiError {
    ApiError::NotFound(format!(
        "user {} not found",
        new.user_id().unwrap_or_default()
    ))
}

/// Retries a generated code that collided with fresh ones. The unique index decides; there is
/// no check-then-insert race, and a collision does not abort an enclosing transaction.
async fn insert_generated(
    c: &impl deadpool_postgres::GenericClient,
    new: NewLink<'_>,
) -> ApiResult<Link> {
    for _ in 1..CODE_ATTEMPTS {
        let code = ShortCode::generate();
        log::warn!(code = code.as_str(); "generated short code collided; retrying");
        match db::urls::insert_url_unless_taken(c, &new.with_code(&code)).await? {
            Inserted::Link(link) => return Ok(link),
            Inserted::NoOwner => return Err(no_owner(&new)),
            Inserted::CodeTaken => {}
        }
    }
    // The code space is that full only when codes are too short for the links stored: no bug in
    // the request, and a retry draws again.
    Err(ApiError::Unavailable(format!(
        "{CODE_ATTEMPTS} generated short codes in a row were taken; retry, or give a short_code"
    )))
}

/// Writes a created link's state to Redis and tells the edges; queued for replay if Redis
/// fails (see `cache_sync`).
pub async fn refresh_cache(state: &AppState, link: &Link) {
    crate::cache_sync::after_write(state, link, None).await;
}

/// The `tag` filters of a link list (repeatable: links carrying every one), normalised.
pub(crate) fn tag_filter(q: &Query) -> ApiResult<Vec<String>> {
    let mut tags = Vec::new();
    for (k, v) in q.pairs() {
        if k == "tag" {
            let tag = crate::tags::normalise_tag(v)
                .map_err(|why| ApiError::BadRequest(format!("query parameter tag={v:?}: {why}")))?;
            tags.push(tag);
        }
    }
    tags.sort();
    tags.dedup();
    // Each tag is a clause of the query; no link carries more than this many.
    if tags.len() > crate::tags::MAX_TAGS {
        return Err(ApiError::BadRequest(format!(
            "query parameter tag is given {} times: a link carries at most {} tags",
            tags.len(),
            crate::tags::MAX_TAGS
        )));
    }
    Ok(tags)
}

/// `GET /urls`.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Response> {
    let q = Query::list(raw.as_deref(), &["user_id", "is_active", "tag", "after_id"])?;
    let page = Page::from_query(&q, state.config.limits.list_limit)?;
    let filter = UrlFilter {
        user_id: caller.scope_user_filter(q.id("user_id")?)?,
        is_active: q.bool("is_active")?,
        tags: tag_filter(&q)?,
        search: Vec::new(),
        after_id: page.after,
    };
    let (total, links) = db::total_and_page(
        &mut state.client().await?,
        async |tx| db::urls::count_urls(tx, &filter).await,
        async |tx| db::urls::list_urls(tx, &filter, page.limit, page.offset).await,
    )
    .await?;
    let base = state.config.base();
    Ok(page.respond(
        links.iter().map(|l| l.to_json(base)).collect(),
        total,
        uri.path(),
        &q,
    ))
}

async fn find_live(client: &deadpool_postgres::Client, id: i64) -> ApiResult<Link> {
    db::urls::find_url(client, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("url {id} not found")))
}

/// `GET /urls/<id>`, `GET /links/<id>`. In `required` mode only the owner or an admin may read
/// a link (its target, owner and state are not public; ids are sequential and easy to walk).
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    PathText(id): PathText,
) -> ApiResult<Response> {
    let id = path_id(&id, "url")?;
    let client = state.client().await?;
    let link = find_live(&client, id).await?;
    caller.require_owner_or_admin(link.user_id)?;
    Ok(Json(link.to_json(state.config.base())).into_response())
}

/// `PUT /urls/<id>`: partial update; one `updated` event per field that really changed.
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    PathText(id): PathText,
    body: JsonObject,
) -> ApiResult<Response> {
    let id = path_id(&id, "url")?;
    let mut f = Fields::new(body);
    let title = f.opt_string("title");
    let is_active = f.opt_bool("is_active");
    let original_url = f.opt_string("original_url");
    let expires_at = f.opt_timestamp("expires_at");
    let redirect_type = f.opt_choice("redirect_type", &REDIRECT_TYPES);
    let max_visits = f.opt_count("max_visits");
    let password = f.opt_string("password");
    if let Patch::Set(p) = &password {
        check_link_password(&mut f, p);
    }
    let (code_sent, owner_sent) = (f.raw("short_code"), f.raw("user_id"));
    let tags = f
        .opt_string_list("tags")
        .and_then(|t| f.check("tags", crate::tags::normalise_tags(&t)));
    if matches!(is_active, Patch::Null) {
        f.reject("is_active", "must be true or false");
    }
    if matches!(original_url, Patch::Null) {
        f.reject("original_url", "must not be null");
    }
    let target = match &original_url {
        Patch::Set(url) => check_target(&state, &mut f, url),
        _ => None,
    };
    if let Patch::Set(t) = &title {
        check_title(&mut f, t);
    }
    f.finish()?;
    if matches!(password, Patch::Set(_)) {
        // The hash's few permits are shared with every log-in: a caller who may not change
        // this link is refused before taking one (and checked again under the row lock).
        let client = state.client().await?;
        caller.require_owner_or_admin(find_live(&client, id).await?.user_id)?;
    }
    // Hashed before the transaction: argon2 takes tens of milliseconds, no row lock should.
    let password = match password {
        Patch::Set(p) => Patch::Set(state.auth.passwords.hash(p).await?),
        Patch::Null => Patch::Null,
        Patch::Absent => Patch::Absent,
    };

    let mut client = state.client().await?;
    let tx = client.transaction().await?;
    let mut link = db::urls::find_url_for_update(&tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("url {id} not found")))?;
    // A statement that waited for the row's lock returns the row as the other writer left it,
    // but reads the tags as they were when it started: a PUT that changed them meanwhile would
    // be unseen, and a PUT setting them back taken for no change. Read again, after the lock.
    link.tags = db::urls::tags_of(&tx, id).await?;
    caller.require_owner_or_admin(link.user_id)?;
    // Neither moves by a PUT (the code names the link everywhere it was shared). Sent back as
    // read, they are the link's own; another value is refused, not answered 200 unchanged.
    if code_sent.is_some_and(|c| c != json!(link.short_code)) {
        return Err(ApiError::field(
            "short_code",
            "cannot be changed; a link keeps its code (create a new link for another)",
        ));
    }
    let owner_kept = |sent: &Value| match (sent, link.user_id) {
        (Value::Null, None) => true,
        (Value::Number(n), Some(owner)) => crate::extract::integer(n) == Some(owner),
        _ => false,
    };
    if owner_sent.is_some_and(|u| !owner_kept(&u)) {
        return Err(ApiError::field("user_id", "cannot be changed"));
    }
    let mut changes: Vec<(&str, Value)> = Vec::new();
    match title {
        Patch::Set(t) if link.title.as_deref() != Some(t.as_str()) => {
            changes.push(("title", json!(t)));
            link.title = Some(t);
        }
        Patch::Null if link.title.is_some() => {
            changes.push(("title", Value::Null));
            link.title = None;
        }
        _ => {}
    }
    if let Patch::Set(active) = is_active {
        if active != link.is_active {
            changes.push(("is_active", json!(active)));
            link.is_active = active;
        }
    }
    if let Some(url) = target.map(Target::into_string) {
        if url != link.original_url {
            changes.push(("original_url", json!(url)));
            link.original_url = url;
        }
    }
    // Whole seconds, as a link reads back: a time stored with a fraction and sent back as read
    // is the same time.
    let whole = |t: DateTime<Utc>| t.timestamp();
    match expires_at {
        Patch::Set(at) if link.expires_at.map(whole) == Some(whole(at)) => {}
        Patch::Set(at) if link.expires_at != Some(at) => {
            // Checked only when it changes: a client that reads an expired link and sends it
            // back whole with another title sends its past `expires_at` back too. After the
            // owner check, so the answer tells nobody else anything of the link's expiry.
            if at <= Utc::now() {
                return Err(ApiError::field("expires_at", "must be in the future"));
            }
            changes.push(("expires_at", json!(kurz_common::time::format(at))));
            link.expires_at = Some(at);
        }
        Patch::Null if link.expires_at.is_some() => {
            changes.push(("expires_at", Value::Null));
            link.expires_at = None;
        }
        _ => {}
    }
    if let Some(status) = redirect_type {
        if status != link.redirect_type {
            changes.push(("redirect_type", json!(status)));
            link.redirect_type = status;
        }
    }
    match max_visits {
        Patch::Set(max) if link.max_visits != Some(max) => {
            changes.push(("max_visits", json!(max)));
            link.max_visits = Some(max);
        }
        Patch::Null if link.max_visits.is_some() => {
            changes.push(("max_visits", Value::Null));
            link.max_visits = None;
        }
        _ => {}
    }
    // Only whether there is one: a password (or its hash) never goes into an event.
    let new_password = match &password {
        Patch::Set(hash) => Some(Some(hash.as_str())),
        Patch::Null if link.has_password => Some(None),
        _ => None,
    };
    if let Some(hash) = new_password {
        changes.push(("has_password", json!(hash.is_some())));
    }
    let tags_changed = tags.as_ref().is_some_and(|t| *t != link.tags);
    if let Some(t) = tags.filter(|_| tags_changed) {
        changes.push(("tags", json!(t)));
        link.tags = t;
    }
    if changes.is_empty() {
        tx.rollback().await?;
        return Ok(Json(link.to_json(state.config.base())).into_response());
    }
    if tags_changed {
        db::urls::set_tags(&tx, link.id, &link.tags).await?;
    }
    if let Some(hash) = new_password {
        db::urls::set_password_hash(&tx, link.id, hash).await?;
    }
    let saved = db::urls::save_url(&tx, &link).await?;
    for (field, new_value) in &changes {
        let details = json!({"field": field, "new_value": new_value});
        db::events::insert_event(&tx, saved.id, saved.user_id, "updated", &details).await?;
    }
    let queued = db::outbox::enqueue(&tx, &saved.short_code).await?;
    crate::deadline::commit(tx).await?;
    // Given back first: the cache update takes a connection of its own from the same pool.
    drop(client);
    crate::cache_sync::after_write(&state, &saved, Some(queued)).await;
    Ok(Json(saved.to_json(state.config.base())).into_response())
}

/// `DELETE /urls/<id>`: soft delete, a `deleted` event, and the link stops redirecting at once.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    PathText(id): PathText,
) -> ApiResult<Response> {
    let id = path_id(&id, "url")?;
    let mut client = state.client().await?;
    let tx = client.transaction().await?;
    let current = db::urls::find_url_for_update(&tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("url {id} not found")))?;
    caller.require_owner_or_admin(current.user_id)?;
    let link = db::urls::delete_url(&tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("url {id} not found")))?;
    db::events::insert_event(
        &tx,
        link.id,
        link.user_id,
        "deleted",
        &json!({"reason": "user_requested"}),
    )
    .await?;
    let queued = db::outbox::enqueue(&tx, &link.short_code).await?;
    crate::deadline::commit(tx).await?;
    drop(client);
    crate::cache_sync::after_write(&state, &link, Some(queued)).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A `YYYY-MM-DD` query parameter.
fn query_date(q: &Query, name: &str) -> ApiResult<Option<chrono::NaiveDate>> {
    q.get(name)
        .map(|raw| {
            chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d")
                .ok()
                .filter(|d| kurz_common::time::YEARS.contains(&chrono::Datelike::year(d)))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "query parameter {name}={raw:?} must be a date of the years 1 to 9999 such as 2030-01-31"
                    ))
                })
        })
        .transpose()
}

/// `GET /urls/<id>/stats` (`from`, `to`: UTC days, inclusive; `include_bots`).
pub async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    PathText(id): PathText,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let id = path_id(&id, "url")?;
    let q = Query::parse(raw.as_deref(), &["from", "to", "include_bots"])?;
    let range = db::stats::Range {
        from: query_date(&q, "from")?,
        to: query_date(&q, "to")?,
        include_bots: q.bool("include_bots")?.unwrap_or(false),
    };
    if let (Some(from), Some(to)) = (range.from, range.to) {
        if from > to {
            return Err(ApiError::BadRequest(format!(
                "query parameter from={from} is after to={to}"
            )));
        }
    }
    let link = {
        let client = state.client().await?;
        let link = find_live(&client, id).await?;
        caller.require_owner_or_admin(link.user_id)?;
        link
    };
    // Not holding a connection: the drain stores the clicks through this pool, and a read
    // waiting on it with the connection it needs would starve it (with the pool's last
    // connection, every read answered with its clicks pending).
    let pending = crate::routes::events::drain_clicks(&state).await;
    let mut client = state.client().await?;
    // The totals, the days and the breakdowns are three statements: clicks stored between
    // them would make the total differ from the sum of the days.
    let tx = db::snapshot(&mut client).await?;
    let mut stats = db::stats::url_stats(&tx, id, range).await?;
    tx.commit().await?;
    stats["imported_clicks"] = json!(link.imported_clicks);
    let response = Json(stats).into_response();
    Ok(crate::routes::events::mark_pending(response, pending))
}

/// `GET /tags`: each tag with how many live links carry it (the caller's own in `required`
/// mode, unless an admin), by tag, paginated as every list is: an account may carry millions.
pub async fn tags(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Response> {
    let q = Query::list(raw.as_deref(), &[])?;
    let page = Page::from_query(&q, state.config.limits.list_limit)?;
    let scope = caller.scope_user_filter(None)?;
    let (total, counts) = db::total_and_page(
        &mut state.client().await?,
        async |tx| db::urls::count_tags(tx, scope).await,
        async |tx| db::urls::tag_counts(tx, scope, page.limit, page.offset).await,
    )
    .await?;
    let body: Vec<Value> = counts
        .into_iter()
        .map(|(tag, links)| json!({"tag": tag, "links": links}))
        .collect();
    Ok(page.respond(body, total, uri.path(), &q))
}

/// Links per page of the export's reads: what the export holds in memory at a time.
const EXPORT_PAGE: i64 = 1_000;

/// The export's columns, in the order each row writes them.
const EXPORT_COLUMNS: [&str; 15] = [
    "id",
    "user_id",
    "short_code",
    "original_url",
    "title",
    "is_active",
    "created_at",
    "updated_at",
    "expires_at",
    "redirect_type",
    "max_visits",
    "imported_clicks",
    "tags",
    "clicks",
    "has_password",
];

/// `GET /urls/export?format=csv`: every live link in the caller's scope (the caller's own in
/// `required` mode; `user_id` narrows it), in the columns `POST /urls/bulk` reads, so the file
/// imports back, with `redirect_type`, `max_visits` and `tags` (`;`-separated); plus `clicks`,
/// which the import ignores.
///
/// The file is sent as it is read, a page at a time in id order, each page on a connection of
/// its own: an admin's export of millions of links holds one page in memory, not the file, and
/// a client that reads slowly holds no pool connection. Each page starts after the last id
/// written, so a link created or deleted meanwhile cannot shift the pages: every link that
/// lives through the export is written once.
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
    Extension(RequestId(request_id)): Extension<RequestId>,
) -> ApiResult<Response> {
    let q = Query::parse(raw.as_deref(), &["format", "user_id", "after_id", "limit"])?;
    match q.get("format") {
        None | Some("csv") => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "query parameter format={other:?} must be csv"
            )))
        }
    }
    let filter = UrlFilter {
        user_id: caller.scope_user_filter(q.id("user_id")?)?,
        ..UrlFilter::default()
    };
    // A file of `limit` links from `after_id` on: an export bigger than an import takes is
    // split into files that each import back, each starting after the last id of the one
    // before.
    let start = crate::pagination::after_id(&q)?.unwrap_or(0);
    let limit = q.id("limit")?.unwrap_or(i64::MAX);
    // The first page is read before the answer starts: a database that fails now is a 503,
    // not a 200 cut short.
    let (first, after) = export_page(&state, &filter, (start, limit), true).await?;
    // The pages after the first are read as the client takes them, outside the request's
    // deadline: the same bound holds them, or a client reading slowly would hold a stopping
    // process past the grace period sized for it.
    let until = tokio::time::Instant::now()
        + std::time::Duration::from_millis(state.config.limits.bulk_request_timeout_ms);
    // Its lines come after the access line logged the 200: the request id ties them to it.
    let rest = futures_util::stream::unfold(after, move |last| {
        let (state, filter, request_id) = (state.clone(), filter.clone(), request_id.clone());
        async move {
            let last = last?;
            if tokio::time::Instant::now() >= until {
                log::warn!(request_id = request_id.as_str(), after_id = last.0; "export cut at limits.bulk_request_timeout_ms");
                let late = "the export outlasted limits.bulk_request_timeout_ms";
                return Some((Err(std::io::Error::other(late)), None));
            }
            match export_page(&state, &filter, last, false).await {
                Ok((chunk, next)) => Some((Ok(chunk), next)),
                Err(e) => {
                    // The status is sent: cutting the body short is how the client learns.
                    log::error!(request_id = request_id.as_str(), error = e.cause(), after_id = last.0; "export cut short");
                    Some((Err(std::io::Error::other(e.to_string())), None))
                }
            }
        }
    });
    let body = futures_util::stream::once(async move { Ok(first) }).chain(rest);
    Ok((
        StatusCode::OK,
        [
            (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                axum::http::header::CONTENT_DISPOSITION,
                "attachment; filename=\"kurz-links.csv\"",
            ),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// The CSV of the links after id `after`, at most `left` of them (the header first when
/// `header`), and where the next page starts (the last id written, the links still to
/// write) when another may follow.
async fn export_page(
    state: &AppState,
    filter: &UrlFilter,
    (after, left): (i64, i64),
    header: bool,
) -> ApiResult<(Vec<u8>, Option<(i64, i64)>)> {
    let take = left.min(EXPORT_PAGE);
    let links = {
        let client = state.client().await?;
        db::urls::list_urls_after(&client, filter, after, take).await?
    };
    let written = |e: csv::Error| ApiError::Internal(format!("csv export: {e}"));
    let (defuse, bool_cell) = (crate::csv_cell::defuse, crate::csv_cell::bool_cell);
    let time = kurz_common::time::format;
    let mut out = csv::Writer::from_writer(Vec::new());
    if header {
        out.write_record(EXPORT_COLUMNS).map_err(written)?;
    }
    for l in &links {
        out.write_record([
            l.id.to_string(),
            l.user_id.map(|u| u.to_string()).unwrap_or_default(),
            defuse(l.short_code.clone()),
            l.original_url.clone(),
            defuse(l.title.clone().unwrap_or_default()),
            bool_cell(l.is_active),
            time(l.created_at),
            time(l.updated_at),
            l.expires_at.map(time).unwrap_or_default(),
            l.redirect_type.to_string(),
            l.max_visits.map(|m| m.to_string()).unwrap_or_default(),
            l.imported_clicks.to_string(),
            defuse(l.tags.join(";")),
            l.visits.to_string(),
            bool_cell(l.has_password),
        ])
        .map_err(written)?;
    }
    let chunk = out
        .into_inner()
        .map_err(|e| ApiError::Internal(format!("csv export: {e}")))?;
    let next = match links.last() {
        Some(l) if links.len() as i64 == take && left > take => Some((l.id, left - take)),
        _ => None,
    };
    Ok((chunk, next))
}
