//! "My links" and a link's own page: list (search, state, tag, pages), activate or deactivate,
//! edit, delete after a confirmation, QR code, and the clicks with their breakdowns. Every
//! change goes through the API's own handlers, so the rules (ownership, validation, cache
//! invalidation at the edges, events) are the API's.

use super::link_pages::Edit;
use super::pages::Refusal;
use super::{field, link_pages, problem, refusal, Visit};
use crate::db::urls::{Link, UrlFilter};
use crate::error::ApiError;
use crate::extract::{JsonObject, PathText, RawBody};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, OriginalUri, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Map, Value};
use std::net::SocketAddr;

/// Links per page of the list.
pub const PER_PAGE: i64 = 20;

/// The list's query: `q` (text in the code, target or title), `state` (`active`/`inactive`),
/// `tag`, `page` (from 1).
#[derive(Default)]
pub struct ListQuery {
    pub q: String,
    pub state: String,
    pub tag: String,
    pub page: i64,
}

impl ListQuery {
    fn parse(raw: Option<&str>) -> Self {
        let mut q = ListQuery {
            page: 1,
            ..ListQuery::default()
        };
        for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                // NUL cannot be in a PostgreSQL text, nor in a link: it matches nothing.
                "q" => q.q = v.trim().chars().filter(|c| *c != '\0').take(200).collect(),
                "state" if v == "active" || v == "inactive" => q.state = v.into_owned(),
                "tag" => q.tag = v.trim().to_owned(),
                "page" => q.page = v.parse().unwrap_or(1).clamp(1, 1_000_000),
                _ => {}
            }
        }
        q
    }

    /// This query at another page, as a link's query string.
    pub fn at_page(&self, page: i64) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("q", &self.q), ("state", &self.state), ("tag", &self.tag)] {
            if !v.is_empty() {
                s.append_pair(k, v);
            }
        }
        s.append_pair("page", &page.to_string());
        s.finish()
    }
}

/// The list's query string filtering by `tag`.
pub fn tag_query(tag: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("tag", tag)
        .finish()
}

/// The visit of a logged-in user, or the answer that sends them to log in.
/// `uri`: the page asked for, which the log-in goes back to.
pub(super) async fn logged_in(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Visit, Response> {
    let visit = super::visit_of(state, peer, headers).await?;
    if visit.user.is_none() {
        let asked = uri.path_and_query().map_or("", |p| p.as_str());
        return Err(match super::page_to_return_to(asked) {
            Some(page) => {
                let page: String = url::form_urlencoded::byte_serialize(page.as_bytes()).collect();
                visit.see_other_to(&format!("/login?{}={page}", super::NEXT_FIELD))
            }
            None => visit.see_other("/login", Vec::new()),
        });
    }
    Ok(visit)
}

/// The link `id` if the visitor may see it (owner or admin); 404 for anyone else, so ids do
/// not tell whose links exist.
async fn own_link(state: &AppState, visit: &Visit, id: &str) -> Result<Link, ApiError> {
    own_link_even_deleted(state, visit, id)
        .await?
        .filter(|l| !l.deleted)
        .ok_or_else(|| ApiError::NotFound(format!("no link {id}")))
}

/// As [`own_link`], a deleted one too (`Ok(None)` for none the visitor may see).
async fn own_link_even_deleted(
    state: &AppState,
    visit: &Visit,
    id: &str,
) -> Result<Option<Link>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no link {id:?}")))?;
    let client = state.client().await?;
    let link = crate::db::urls::find_url_even_deleted(&client, id).await?;
    let user = visit.user.as_ref().expect("logged in");
    Ok(link.filter(|l| l.user_id == Some(user.id) || state.auth.is_admin(user)))
}

/// `GET /ui/links`.
pub async fn list(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Response {
    let visit = match logged_in(&state, peer, &headers, &uri).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let query = ListQuery::parse(raw.as_deref());
    let user = visit.user.as_ref().expect("logged in");
    let tags = match query.tag.as_str() {
        "" => Vec::new(),
        t => match crate::tags::normalise_tag(t) {
            Ok(t) => vec![t],
            // The list page again, its filter as typed and the reason beside it: a page with
            // only the error lost the search and the state with the tag.
            Err(why) => {
                let e = ApiError::field("tag", why);
                let page = visit.page(&state);
                let base = state.config.base();
                let html = link_pages::links(&page, &query, 0, &[], base, &super::messages(&e));
                return super::marked(visit.respond(e.status(), html.into_string()), &e);
            }
        },
    };
    let filter = UrlFilter {
        // Admins see everyone's links.
        user_id: (!state.auth.is_admin(user)).then_some(user.id),
        is_active: match query.state.as_str() {
            "active" => Some(true),
            "inactive" => Some(false),
            _ => None,
        },
        tags,
        search: if query.q.is_empty() {
            Vec::new()
        } else {
            crate::db::urls::search_spellings(&query.q)
        },
        after_id: None,
    };
    let found = async {
        let mut client = state.client().await?;
        // The count and the page in one snapshot, as the API's lists.
        let client = crate::db::snapshot(&mut client).await?;
        let total = crate::db::urls::count_urls(&client, &filter).await?;
        // Past the last page (its last link switched off or deleted, a typed `page`): the last
        // page, rather than an empty list whose page links lead nowhere.
        let last = ((total + PER_PAGE - 1) / PER_PAGE).max(1);
        if query.page > last {
            return Ok(Err(last));
        }
        let offset = (query.page - 1) * PER_PAGE;
        let links = crate::db::urls::list_urls_newest(&client, &filter, PER_PAGE, offset).await?;
        Ok::<_, ApiError>(Ok((total, links)))
    }
    .await;
    match found {
        Ok(Err(last)) => visit.see_other_to(&format!("/ui/links?{}", query.at_page(last))),
        Ok(Ok((total, links))) => {
            let html = link_pages::links(
                &visit.page(&state),
                &query,
                total,
                &links,
                state.config.base(),
                &[],
            )
            .into_string();
            visit.respond(StatusCode::OK, html)
        }
        Err(e) => problem(&visit, &state, &e),
    }
}

/// `GET /ui/links/<id>`: the link, its clicks and breakdowns, its QR code, the edit form.
pub async fn show(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    PathText(id): PathText,
) -> Response {
    let visit = match logged_in(&state, peer, &headers, &uri).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    detail(&state, &visit, &id, &[], &Refusal::default()).await
}

/// `GET /ui/links/<id>/qr`: the link's QR code for its owner (or an admin), whatever its state.
/// The public `/<code>/qr` draws only links that redirect, and the owner's page shows the code
/// of a link they have just switched off too.
pub async fn qr(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    PathText(id): PathText,
    RawQuery(raw): RawQuery,
) -> Response {
    let visit = match logged_in(&state, peer, &headers, &uri).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let drawn = async {
        let (format, size) = crate::routes::qr::options(raw.as_deref())?;
        let link = own_link(&state, &visit, &id).await?;
        // Revalidated on every show (the ETag spares the drawing): a logged-in-only image the
        // browser kept for a day still showed after the log-out, as no page does (`no-store`).
        let cache = "private, no-cache";
        crate::routes::qr::image(&state, &link.short_code, format, size, &headers, cache).await
    };
    match drawn.await {
        Ok(image) => image,
        Err(e) => problem(&visit, &state, &e),
    }
}

/// The link page; when an edit came back invalid, its form holds what was `typed` (the link's
/// own values for fields the post did not carry) and why.
async fn detail(
    state: &AppState,
    visit: &Visit,
    id: &str,
    typed: &[(String, String)],
    refusal: &Refusal,
) -> Response {
    let shown = async {
        let link = own_link(state, visit, id).await?;
        // The clicks answered before this page was asked for are stored first, as for the API.
        crate::routes::events::drain_clicks(state).await;
        let mut client = state.client().await?;
        let range = crate::db::stats::Range {
            from: None,
            to: None,
            include_bots: false,
        };
        // One snapshot, as for `GET /urls/<id>/stats`: the total is the sum of the days shown,
        // and the link (its visits, against `max_visits`) is read again after the drain.
        let client = crate::db::snapshot(&mut client).await?;
        let link = crate::db::urls::find_url(&client, link.id)
            .await?
            .unwrap_or(link);
        let stats = crate::db::stats::url_stats(&client, link.id, range).await?;
        Ok::<_, ApiError>((link, stats))
    }
    .await;
    match shown {
        Ok((link, stats)) => {
            // The hidden copies of a refused post carry on what its page first showed, so the
            // next post still changes only what the visitor changed.
            let own = Edit::of(&link);
            let shown = own.clone().with_posted(typed, link_pages::SHOWN);
            let typed = own.with_posted(typed, "");
            let status = if refusal.messages.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            };
            let html = link_pages::link(
                &visit.page(state),
                &link,
                state.config.base(),
                &stats,
                &typed,
                &shown,
                refusal,
            )
            .into_string();
            visit.respond(status, html)
        }
        Err(e) => problem(visit, state, &e),
    }
}

/// A checked form post of a logged-in visitor: its fields, or the answer to give instead.
pub(super) async fn checked_post(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Visit, Vec<(String, String)>), Response> {
    let (visit, fields) = super::form_post(state, peer, headers, body).await?;
    if visit.user.is_none() {
        return Err(visit.see_other("/login", Vec::new()));
    }
    Ok((visit, fields))
}

/// A checked form post about link `id`, which must be the visitor's (else its 404 page).
async fn post_on_own_link(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    id: &str,
    body: &Bytes,
) -> Result<(Visit, Vec<(String, String)>), Response> {
    let (visit, fields) = checked_post(state, peer, headers, body).await?;
    if let Err(e) = own_link(state, &visit, id).await {
        return Err(problem(&visit, state, &e));
    }
    Ok((visit, fields))
}

/// Where a change sends the visitor back to: the list (keeping its query) or the link page.
fn back(fields: &[(String, String)], id: &str) -> String {
    match field(fields, "back") {
        list if list.starts_with("/ui/links?") || list == "/ui/links" => list.to_owned(),
        _ => format!("/ui/links/{id}"),
    }
}

/// `POST /ui/links/<id>/state`: `active=true|false`.
pub async fn set_state(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    PathText(id): PathText,
    RawBody(body): RawBody,
) -> Response {
    let (visit, fields) = match post_on_own_link(&state, peer, &headers, &id, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let active = match field(&fields, "active") {
        "true" => true,
        "false" => false,
        other => {
            let e = ApiError::field("active", format!("must be true or false, not {other:?}"));
            return problem(&visit, &state, &e);
        }
    };
    let mut change = Map::new();
    change.insert("is_active".into(), Value::Bool(active));
    match update(&state, &visit, &id, change).await {
        Ok(()) => visit.see_other_to(&back(&fields, &id)),
        Err(e) => problem(&visit, &state, &e),
    }
}

/// `POST /ui/links/<id>/edit`: the link's settings. A field the post does not carry (a page
/// shown before the form had it) is left as it is, not cleared.
pub async fn edit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    PathText(id): PathText,
    RawBody(body): RawBody,
) -> Response {
    let (visit, fields) = match post_on_own_link(&state, peer, &headers, &id, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let done = match edit_of(&fields) {
        Ok(change) => update(&state, &visit, &id, change).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => visit.see_other_to(&format!("/ui/links/{id}")),
        Err(e @ (ApiError::Validation(_) | ApiError::BadRequest(_))) => {
            detail(&state, &visit, &id, &fields, &refusal(&e)).await
        }
        Err(e) => problem(&visit, &state, &e),
    }
}

/// The `PUT /urls/<id>` body the edit form's fields ask for; the API's own checks judge the
/// values. Only what the form itself decides is refused here: a new password and its removal
/// together.
///
/// A field left as its page showed it (its hidden `shown_` copy) asks for no change: a change
/// made since the page was shown, in another tab or by an API client, stays. A post without the
/// copies (a page shown before the form had them) asks for what it carries.
fn edit_of(fields: &[(String, String)]) -> Result<Map<String, Value>, ApiError> {
    let posted = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
    };
    let sent = |name: &str| {
        let value = posted(name)?;
        let shown = posted(&format!("{}{name}", link_pages::SHOWN));
        (!shown.is_some_and(|s| same_value(name, s, value))).then_some(value)
    };
    let text_or_null = |v: &str| match v {
        "" => Value::Null,
        v => Value::String(v.to_owned()),
    };
    // A number when it reads as one; else the text, for the API to say what is wrong with it.
    let number_or_text = |v: &str| match v.parse::<i64>() {
        Ok(n) => Value::from(n),
        Err(_) => text_or_null(v),
    };
    let mut change = Map::new();
    if let Some(v) = sent("original_url") {
        change.insert("original_url".into(), Value::String(v.to_owned()));
    }
    if let Some(v) = sent("title") {
        change.insert("title".into(), text_or_null(v));
    }
    if let Some(v) = sent("tags") {
        let tags = crate::tags::split_bounded(v, &[',']);
        change.insert("tags".into(), tags.into_iter().map(Value::String).collect());
    }
    if let Some(v) = sent("expires_at") {
        change.insert("expires_at".into(), text_or_null(&full_time(v)));
    }
    if let Some(v) = sent("max_visits") {
        change.insert("max_visits".into(), number_or_text(v));
    }
    if let Some(v) = sent("redirect_type") {
        change.insert("redirect_type".into(), number_or_text(v));
    }
    // Not trimmed: a password is what was typed. Empty keeps the one the link has.
    let password = fields
        .iter()
        .find(|(k, _)| k == "password")
        .map_or("", |(_, v)| v.as_str());
    let remove = field(fields, "remove_password") == "on";
    match (password.is_empty(), remove) {
        (true, false) => {}
        (true, true) => {
            change.insert("password".into(), Value::Null);
        }
        (false, false) => {
            change.insert("password".into(), Value::String(password.to_owned()));
        }
        (false, true) => {
            return Err(ApiError::field(
                "password",
                "type a new password or remove it, not both",
            ));
        }
    }
    Ok(change)
}

/// Whether the edit form's field `name` says the same in `a` and `b`, as the API would store
/// it: a value typed again in another spelling (`05` for `5`, tags re-spaced or re-cased, an
/// expiry with its zero seconds) is no change. A title's line breaks (an API client may store
/// them) do not count: a text input drops them, its hidden copy keeps them.
fn same_value(name: &str, a: &str, b: &str) -> bool {
    match name {
        "tags" => {
            let stored =
                |v: &str| crate::tags::normalise_tags(&crate::tags::split_bounded(v, &[',']));
            match (stored(a), stored(b)) {
                (Ok(x), Ok(y)) => x == y,
                _ => a == b,
            }
        }
        "max_visits" | "redirect_type" => match (a.parse::<i64>(), b.parse::<i64>()) {
            (Ok(x), Ok(y)) => x == y,
            _ => a == b,
        },
        "expires_at" => {
            let at = |v: &str| kurz_common::time::parse(&full_time(v));
            match (at(a), at(b)) {
                (Some(x), Some(y)) => x == y,
                _ => a == b,
            }
        }
        _ => {
            let flat = |v: &str| v.replace(['\r', '\n'], "");
            flat(a) == flat(b)
        }
    }
}

/// A `datetime-local` value with its seconds: the input leaves out seconds that are zero.
/// Anything else as it is.
fn full_time(v: &str) -> String {
    if v.len() == "2030-01-31T12:00".len() && v.get(13..14) == Some(":") {
        format!("{v}:00")
    } else {
        v.to_owned()
    }
}

/// `GET /ui/links/<id>/delete`: are you sure?
pub async fn confirm_delete(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    PathText(id): PathText,
) -> Response {
    let visit = match logged_in(&state, peer, &headers, &uri).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match own_link(&state, &visit, &id).await {
        Ok(link) => {
            let html = link_pages::confirm_delete(&visit.page(&state), &link, state.config.base())
                .into_string();
            visit.respond(StatusCode::OK, html)
        }
        Err(e) => problem(&visit, &state, &e),
    }
}

/// `POST /ui/links/<id>/delete`.
pub async fn delete(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    PathText(id): PathText,
    RawBody(body): RawBody,
) -> Response {
    let (visit, _) = match checked_post(&state, peer, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match own_link_even_deleted(&state, &visit, &id).await {
        // Deleted already: the same form sent twice (a double click, a reload of the answer)
        // or from two tabs. What was asked is done.
        Ok(Some(link)) if link.deleted => return visit.see_other_to("/ui/links"),
        Ok(Some(_)) => {}
        Ok(None) => {
            let e = ApiError::NotFound(format!("no link {id}"));
            return problem(&visit, &state, &e);
        }
        Err(e) => return problem(&visit, &state, &e),
    }
    let done = crate::routes::urls::delete(
        State(state.clone()),
        visit.caller(&state),
        PathText(id.clone()),
    )
    .await;
    match done {
        Ok(_) => visit.see_other_to("/ui/links"),
        // Deleted meanwhile: a double click's two posts passed the check above together, and
        // the first one's delete committed while this one waited for the row.
        Err(ApiError::NotFound(_)) if matches!(own_link_even_deleted(&state, &visit, &id).await, Ok(Some(l)) if l.deleted) => {
            visit.see_other_to("/ui/links")
        }
        Err(e) => problem(&visit, &state, &e),
    }
}

/// `PUT /urls/<id>` with `change`, as the visitor.
async fn update(
    state: &AppState,
    visit: &Visit,
    id: &str,
    change: Map<String, Value>,
) -> Result<(), ApiError> {
    crate::routes::urls::update(
        State(state.clone()),
        visit.caller(state),
        PathText(id.to_owned()),
        JsonObject(change),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_typed_again_in_another_spelling_is_no_change() {
        for (name, a, b) in [
            ("tags", "a,b", "B, a"),
            ("tags", "launch, q3", "q3,launch,LAUNCH"),
            ("max_visits", "5", "05"),
            ("redirect_type", "302", "0302"),
            ("expires_at", "2030-01-31T12:00", "2030-01-31T12:00:00"),
            ("title", "a\r\nb", "ab"),
        ] {
            assert!(same_value(name, a, b), "{name}: {a:?} {b:?}");
        }
        for (name, a, b) in [
            ("tags", "a", "a, b"),
            ("max_visits", "5", "6"),
            ("expires_at", "2030-01-31T12:00", "2030-01-31T12:01"),
            ("expires_at", "", "2030-01-31T12:00"),
            ("title", "a b", "ab"),
            // What the API refuses is compared as typed: it is sent, and refused.
            ("max_visits", "five", "5"),
        ] {
            assert!(!same_value(name, a, b), "{name}: {a:?} {b:?}");
        }
    }
}
