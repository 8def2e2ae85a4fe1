//! The web app for people: pages served by the API, reachable through the edge (which keeps
//! answering `/<code>` itself). Server-rendered HTML from templates compiled into the binary
//! (`pages`); every form works without JavaScript (one small script only adds copy buttons).
//!
//! Browser security. The session is a cookie (`HttpOnly`, `SameSite=Lax`, `Secure` when the
//! request came over HTTPS) that only these pages read: the JSON API takes bearer tokens alone,
//! so a cookie can never authorize an API call another site makes. Every form carries a CSRF
//! token that must equal a second cookie (`csrf`, `SameSite=Lax`; see `csrf`). Pages answer with a strict
//! `Content-Security-Policy` (no inline script, scripts and styles from kurz only, no framing)
//! and `no-store`.
//! Logins go through the same lock-out as `/auth/login`; the edge rate-limits logins and
//! sign-ups in its `auth` class.

mod account;
mod account_pages;
mod assets;
mod csrf;
mod link_pages;
mod links;
mod pages;

use crate::auth::{AuthUser, Caller, Credential};
use crate::config::AuthMode;
use crate::db::users::User;
use crate::error::ApiError;
use crate::extract::{JsonObject, PathText, RawBody};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use pages::{Form, Page, Refusal};
use serde_json::{Map, Value};
use std::net::SocketAddr;

pub use assets::{script, stylesheet};

/// The pages' routes. `/`, `/ui`, `/login`, `/register`, `/logout` and `/static` are reserved
/// words, never short codes, so none of them can shadow a link.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/ui/shorten", get(to_home).post(shorten))
        .route("/login", get(login_page).post(login))
        .route("/register", get(register_page).post(register))
        .route("/logout", get(to_home).post(logout))
        .route("/ui/links", get(links::list))
        .route("/ui/links/{id}", get(links::show))
        .route("/ui/links/{id}/state", get(to_link).post(links::set_state))
        .route("/ui/links/{id}/edit", get(to_link).post(links::edit))
        .route("/ui/links/{id}/qr", get(links::qr))
        .route(
            "/ui/links/{id}/delete",
            get(links::confirm_delete).post(links::delete),
        )
        .route("/ui/keys", get(account::keys).post(account::make_key))
        .route(
            "/ui/keys/{id}/revoke",
            get(account::confirm_revoke).post(account::revoke_key),
        )
        .route("/ui/users", get(account::users))
        .route("/static/{file}", get(asset))
}

/// A form's address opened as a page (from the address bar after the form's answer, a restored
/// tab): the page the form is on, rather than the JSON 405 a browser would show as text.
async fn to_home() -> Response {
    see_other_page("/")
}

async fn to_link(PathText(id): PathText) -> Response {
    // Digits only into `Location`: the id is whatever was typed.
    match id.parse::<u64>() {
        Ok(id) => see_other_page(&format!("/ui/links/{id}")),
        Err(_) => see_other_page("/ui/links"),
    }
}

fn see_other_page(to: &str) -> Response {
    let to = HeaderValue::from_str(to).expect("a path of ours");
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

/// The session cookie.
const SESSION: &str = "kurz_session";

/// Scripts, styles and images from kurz only (no inline script, no eval); forms post only to
/// kurz; never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What a page knows about its request.
struct Visit {
    user: Option<User>,
    session: Option<String>,
    /// The session cookie again with the full TTL, for sliding sessions: the use just extended
    /// the session in Redis, and a cookie that kept the `Max-Age` of the login would end it
    /// in the browser at the first TTL however active the person was.
    renewed: Option<HeaderValue>,
    csrf: csrf::Token,
    https: bool,
    ip: std::net::IpAddr,
}

impl Visit {
    /// Reads the session cookie (a stale or revoked one is ignored: the visitor is anonymous).
    async fn of(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut visit = Visit {
            user: None,
            session: None,
            renewed: None,
            csrf: csrf::Token::of(headers),
            https: over_https(state, peer, headers),
            ip: state.proxies.client_ip(peer.ip(), headers),
        };
        let Some(token) = cookie(headers, SESSION) else {
            return Ok(visit);
        };
        let uid = state.auth.sessions.user_of(token).await.map_err(|_| {
            ApiError::Unavailable("sessions are unavailable right now; retry shortly".into())
        })?;
        if let Some(uid) = uid {
            let client = state.client().await?;
            visit.user = crate::db::users::find_user(&client, uid).await?;
            visit.session = visit.user.as_ref().map(|_| token.to_owned());
            if visit.session.is_some() && state.auth.sessions.sliding() {
                visit.renewed = Some(visit.session_cookie(token, state.auth.sessions.ttl()));
            }
        }
        Ok(visit)
    }

    fn page(&self, state: &AppState) -> Page<'_> {
        Page {
            user: self.user.as_ref().map(|u| u.username.as_str()),
            user_id: self.user.as_ref().map(|u| u.id),
            csrf: self.csrf.value(),
            anonymous_may_shorten: state.auth.mode == AuthMode::Open,
            admin: self.user.as_ref().is_some_and(|u| state.auth.is_admin(u)),
        }
    }

    /// The caller the API's own checks see: this user through their session, or anonymous.
    fn caller(&self, state: &AppState) -> Caller {
        Caller {
            mode: state.auth.mode,
            user: self.user.as_ref().map(|user| AuthUser {
                admin: state.auth.is_admin(user),
                user: user.clone(),
                credential: Credential::Session(self.session.clone().unwrap_or_default()),
            }),
        }
    }

    /// A page answer: the HTML, the security headers, and the CSRF cookie when it is new.
    fn respond(&self, status: StatusCode, html: String) -> Response {
        let mut response = crate::routes::preview::html_page(status, CSP, html);
        let h = response.headers_mut();
        if let Some(set) = self.csrf.set_cookie(self.https) {
            h.append(header::SET_COOKIE, set);
        }
        if let Some(renewed) = &self.renewed {
            h.append(header::SET_COOKIE, renewed.clone());
        }
        response
    }

    /// `303 See Other` to a path of ours.
    fn see_other_to(&self, to: &str) -> Response {
        let mut response = self.see_other("/", Vec::new());
        if let Ok(to) = HeaderValue::from_str(to) {
            response.headers_mut().insert(header::LOCATION, to);
        }
        response
    }

    /// `303 See Other` to `to`, with extra cookies (a login's or logout's session cookie, which
    /// then stands instead of the renewed one).
    fn see_other(&self, to: &'static str, mut cookies: Vec<HeaderValue>) -> Response {
        if cookies.is_empty() {
            cookies.extend(self.renewed.clone());
        }
        let mut response = (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, HeaderValue::from_static(to))],
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for c in cookies {
            response.headers_mut().append(header::SET_COOKIE, c);
        }
        response
    }

    /// A login or sign-up in a browser that was logged in already replaces its cookie: the
    /// session it held is ended too, rather than left valid in Redis with nothing to end it.
    async fn end_replaced_session(&self, state: &AppState) {
        if let (Some(user), Some(token)) = (&self.user, &self.session) {
            if let Err(e) = state.auth.sessions.revoke(token, user.id).await {
                log::warn!(error = e.to_string(); "the replaced web session could not be revoked");
            }
        }
    }

    fn session_cookie(&self, value: &str, max_age: u64) -> HeaderValue {
        cookie_header(SESSION, value, "Lax", max_age, self.https)
    }

    /// The session changes (log-in, log-out): its cookie, and a new form token with it.
    fn session_change(&self, value: &str, max_age: u64) -> Vec<HeaderValue> {
        vec![
            self.session_cookie(value, max_age),
            csrf::Token::fresh_cookie(self.https),
        ]
    }
}

/// Whether the visitor reached kurz over HTTPS: a trusted edge (or load balancer) says so.
fn over_https(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> bool {
    state.proxies.trusts(peer.ip())
        && headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// The CSRF token of a form outside the web app's pages (a protected link's password form):
/// the same `csrf` cookie and the same double-submit check.
pub struct FormToken {
    token: csrf::Token,
    https: bool,
}

impl FormToken {
    /// For the page that shows the form. A visitor who follows a protected link from another
    /// site (`Sec-Fetch-Site: cross-site`) and has no token yet gets one here: without it their
    /// first password post had no cookie to match and was answered "expired".
    pub fn for_page(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Self {
        Self {
            token: csrf::Token::of(headers),
            https: over_https(state, peer, headers),
        }
    }

    /// For a post of the form: one another site made matches nothing and sets no new token
    /// (see [`csrf::Token::posted`]).
    pub fn for_post(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Self {
        let mut form = Self::for_page(state, peer, headers);
        form.token.posted(headers);
        form
    }

    /// For the form's hidden field.
    pub fn value(&self) -> &str {
        self.token.value()
    }

    /// Whether a posted field equals the cookie.
    pub fn matches(&self, field: &str) -> bool {
        self.token.matches(field)
    }

    /// `Set-Cookie` when the token is new.
    pub fn set_cookie(&self) -> Option<HeaderValue> {
        self.token.set_cookie(self.https)
    }
}

/// The form field that carries the token.
pub const FORM_TOKEN_FIELD: &str = csrf::FIELD;

/// `Set-Cookie` for `name=value`. Values are hex tokens, never user text.
fn cookie_header(
    name: &str,
    value: &str,
    same_site: &str,
    max_age: u64,
    https: bool,
) -> HeaderValue {
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite={same_site}{secure}"
    ))
    .expect("cookie of hex")
}

/// The value of cookie `name`, if the request has it once (or more, always the same).
///
/// Another site of the domain can set `name` for all of it with a longer path, and the browser
/// then sends that one first, beside ours. Which is ours cannot be told, so neither is
/// believed: a planted form token would forge the visitor's posts, and a planted session
/// would collect the visitor's links in the planter's account.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    match cookie_values(headers, name)[..] {
        [one] => Some(one).filter(|v| !v.is_empty()),
        _ => None,
    }
}

/// Every distinct value of cookie `name`, in the order sent. Each pair is read on its own:
/// browsers send another site's cookie for the domain as its bytes, and one value that is not
/// ASCII (`pref=José`) must not hide the whole line, and with it the visitor's session and
/// form token (every form would then answer "expired", log-out included).
fn cookie_values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    let mut values: Vec<&str> = Vec::new();
    let pairs = headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| std::str::from_utf8(pair).ok())
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| *k == name);
    for (_, v) in pairs {
        if !values.contains(&v.trim()) {
            values.push(v.trim());
        }
    }
    values
}

/// The fields of a form post, in order. Anything but a urlencoded form is a 415.
fn form_fields(headers: &HeaderMap, body: &Bytes) -> Result<Vec<(String, String)>, ApiError> {
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = kind.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "pages take application/x-www-form-urlencoded forms, not {kind:?}"
        )));
    }
    let mut fields = Vec::new();
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        let name = form_text(name)
            .ok_or_else(|| ApiError::BadRequest("a form field's name is not UTF-8".into()))?;
        // Replaced bytes (`�`) would let two different passwords hash the same, and show the
        // person a field they never typed: refused by name, as the JSON API refuses them.
        let value = form_text(value).ok_or_else(|| ApiError::field(&name, "must be UTF-8 text"))?;
        fields.push((name, value));
    }
    // PostgreSQL cannot store NUL in text: refused here by name, as the JSON API does.
    if let Some((name, _)) = fields
        .iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        return Err(ApiError::field(
            &name.replace('\0', ""),
            "must not contain the NUL character",
        ));
    }
    Ok(fields)
}

/// One name or value of a urlencoded form: `+` is a space, `%XX` a byte (a broken escape stays
/// as it came); `None` when the bytes are not UTF-8.
fn form_text(raw: &[u8]) -> Option<String> {
    let spaced: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let bytes: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
    String::from_utf8(bytes).ok()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// A JSON object of the non-empty named fields, for the API's own validation.
fn json_of(fields: &[(String, String)], names: &[&str]) -> JsonObject {
    let mut map = Map::new();
    for name in names {
        let v = field(fields, name).trim();
        if !v.is_empty() {
            map.insert((*name).to_owned(), Value::String(v.to_owned()));
        }
    }
    JsonObject(map)
}

/// What a form refused by `e` comes back with: its messages, and the fields they are about.
fn refusal(e: &ApiError) -> pages::Refusal {
    pages::Refusal {
        messages: messages(e),
        fields: match e {
            ApiError::Validation(list) => list.iter().map(|(f, _)| f.clone()).collect(),
            _ => Vec::new(),
        },
    }
}

/// What went wrong, as sentences for the page: each invalid field by name.
fn messages(e: &ApiError) -> Vec<String> {
    match e {
        ApiError::Validation(fields) => fields
            .iter()
            .map(|(f, why)| format!("{}: {why}", label_of(f)))
            .collect(),
        ApiError::Internal(_) | ApiError::StoreDown(_) => {
            vec!["Something went wrong on our side; please try again.".into()]
        }
        other => vec![other.to_string()],
    }
}

/// How the forms label field `name` (the API's field names): a message names what the visitor
/// sees, "Long URL", not `original_url`.
fn label_of(name: &str) -> String {
    match name {
        "original_url" => "Long URL".into(),
        "short_code" => "Custom code".into(),
        "account" => "Username or email".into(),
        // As the link page's edit form names them.
        "max_visits" => "Visit limit".into(),
        "redirect_type" => "Redirect".into(),
        other => {
            let spaced = other.replace('_', " ");
            let mut chars = spaced.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_uppercase().chain(chars).collect()
            })
        }
    }
}

/// A page for an error that leaves no form to show again (CSRF, sessions down, 415).
fn problem(visit: &Visit, state: &AppState, e: &ApiError) -> Response {
    let status = e.status();
    let html = pages::problem(&visit.page(state), status, &messages(e)).into_string();
    marked(visit.respond(status, html), e)
}

/// A page answering `e`, with what the JSON answer would carry besides its body: the cause of
/// a 500 for the request log, which otherwise logs a failed page as a plain request, and the
/// `Retry-After` of a 503 or 429.
fn marked(mut response: Response, e: &ApiError) -> Response {
    e.mark(&mut response);
    // A challenge for API tokens: pages log in by their form, not by a header.
    response.headers_mut().remove(header::WWW_AUTHENTICATE);
    response
}

/// Whether `path` is one of the pages' (not their assets): what fails there is told as a page.
pub fn is_page(path: &str) -> bool {
    matches!(path, "/" | "/ui" | "/login" | "/register" | "/logout") || path.starts_with("/ui/")
}

/// An anonymous page for a request whose session could not even be read, or that was abandoned
/// at its deadline (`crate::deadline`).
pub(crate) fn early_problem(headers: &HeaderMap, e: ApiError) -> Response {
    let csrf = csrf::Token::of(headers);
    let page = Page {
        user: None,
        user_id: None,
        csrf: csrf.value(),
        anonymous_may_shorten: false,
        admin: false,
    };
    let status = e.status();
    let html = pages::problem(&page, status, &messages(&e)).into_string();
    let response = crate::routes::preview::html_page(status, CSP, html);
    marked(response, &e)
}

/// The page for a page address that answers `e` (one that does not exist), in the visitor's
/// own header (logged in or not).
pub(crate) async fn not_a_page(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    e: &ApiError,
) -> Response {
    match visit_of(state, peer, headers).await {
        Ok(visit) => problem(&visit, state, e),
        Err(r) => r,
    }
}

/// The visit of a page request, or the page that says why it could not be read.
async fn visit_of(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Visit, Response> {
    Visit::of(state, peer, headers)
        .await
        .map_err(|e| early_problem(headers, e))
}

/// A form post whose CSRF token matches: its visit and fields, or the answer to give instead.
async fn form_post(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Visit, Vec<(String, String)>), Response> {
    checked_form(state, peer, headers, body)
        .await
        .map_err(|refused| match refused {
            Refused::Answer(r) => r,
            Refused::Token(visit, _) => problem(&visit, state, &csrf_refused()),
        })
}

/// Why a form post is not taken.
enum Refused {
    Answer(Response),
    /// Its token does not match: its visit and fields, for a page that shows the form again.
    Token(Visit, Vec<(String, String)>),
}

/// [`form_post`], a mismatched token told apart.
async fn checked_form(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Visit, Vec<(String, String)>), Refused> {
    let mut visit = visit_of(state, peer, headers)
        .await
        .map_err(Refused::Answer)?;
    visit.csrf.posted(headers);
    let fields =
        form_fields(headers, body).map_err(|e| Refused::Answer(problem(&visit, state, &e)))?;
    if !visit.csrf.matches(field(&fields, csrf::FIELD)) {
        return Err(Refused::Token(visit, fields));
    }
    Ok((visit, fields))
}

/// The browser says the post came from one of our own pages (`Sec-Fetch-Site: same-origin`).
fn from_our_page(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"same-origin"))
}

fn csrf_refused() -> ApiError {
    ApiError::Forbidden(
        "This form expired or was not sent from a kurz page. Reload the page and try again.".into(),
    )
}

/// `GET /`: the shorten form.
pub async fn home(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let visit = match visit_of(&state, peer, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let html =
        pages::home(&visit.page(&state), &Form::default(), &Refusal::default()).into_string();
    visit.respond(StatusCode::OK, html)
}

/// The shorten form's field naming the user it was shown to.
pub(crate) const SIGNED_AS_FIELD: &str = "as";
/// The shorten form's field that tells one page's posts from another's.
pub(crate) const FORM_ID_FIELD: &str = "form_id";

/// `POST /ui/shorten`: makes the link and shows it, or the form again with what is wrong.
pub async fn shorten(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let typed = |fields: &[(String, String)]| Form {
        original_url: field(fields, "original_url").to_owned(),
        short_code: field(fields, "short_code").to_owned(),
        signed_as: field(fields, SIGNED_AS_FIELD).to_owned(),
    };
    let (visit, fields) = match checked_form(&state, peer, &headers, &body).await {
        Ok(v) => v,
        Err(Refused::Answer(r)) => return r,
        // Our own page's form whose token changed since it was shown (a log-in or log-out in
        // another tab replaces it): the form again as typed, with the token now in force,
        // rather than a page that loses what was typed. A post another site made gets the
        // bare refusal.
        // Required mode draws no form for a visitor logged out since: to log in, as a post
        // with a good token is sent.
        Err(Refused::Token(visit, _))
            if from_our_page(&headers)
                && visit.user.is_none()
                && state.auth.mode == AuthMode::Required =>
        {
            return visit.see_other("/login", Vec::new());
        }
        Err(Refused::Token(visit, fields)) if from_our_page(&headers) => {
            let e = ApiError::Forbidden(
                "This form expired (you logged in or out since it was shown): check it and send it again."
                    .into(),
            );
            let html = pages::home(&visit.page(&state), &typed(&fields), &refusal(&e));
            return marked(visit.respond(e.status(), html.into_string()), &e);
        }
        Err(Refused::Token(visit, _)) => return problem(&visit, &state, &csrf_refused()),
    };
    if visit.user.is_none() && state.auth.mode == AuthMode::Required {
        return visit.see_other("/login", Vec::new());
    }
    let form = typed(&fields);
    // Filled in logged in, sent after the session ended (it expired, or a password change
    // ended every session of the account): made now, the link would belong to no one and be
    // out of its maker's reach for good. By id: a rename keeps the session.
    let signed_as = field(&fields, SIGNED_AS_FIELD);
    if !signed_as.is_empty()
        && visit.user.as_ref().map(|u| u.id.to_string()) != Some(signed_as.into())
    {
        let e = ApiError::Unauthorized(
            "Your session has ended: log in again, then shorten the link.".into(),
        );
        let html = pages::home(&visit.page(&state), &form, &refusal(&e)).into_string();
        return marked(visit.respond(e.status(), html), &e);
    }
    let mut body = json_of(&fields, &["original_url", "short_code"]);
    // A logged-in visitor's links are theirs, in either mode (open mode takes the owner from
    // the body, required mode checks it is the caller).
    if let Some(user) = &visit.user {
        body.0.insert("user_id".into(), Value::from(user.id));
    }
    let caller = visit.caller(&state);
    // A page's form sent again with the same fields is the same create, answered the same
    // link; changed fields (the page kept by the browser's back button) are a new one.
    let fingerprint = crate::routes::urls::fingerprint_of(&body.0);
    let form_id = field(&fields, FORM_ID_FIELD);
    let key = (!form_id.is_empty() && form_id.len() <= 64)
        .then(|| format!("{}:web:{form_id}:{}", caller.scope_id(), fingerprint.digest));
    let idem = key.as_deref().map(|k| (k, &fingerprint));
    let made =
        crate::routes::urls::create_link(&state, &caller, body, idem, visit.user.is_none()).await;
    match made {
        Ok((link, _)) => {
            let short = link["short_url"].as_str().unwrap_or_default();
            let target = link["original_url"].as_str().unwrap_or_default();
            let html = pages::created(&visit.page(&state), short, target).into_string();
            visit.respond(StatusCode::CREATED, html)
        }
        Err(e) => {
            let html = pages::home(&visit.page(&state), &form, &refusal(&e)).into_string();
            marked(visit.respond(e.status(), html), &e)
        }
    }
}

/// The log-in form's field (and `GET /login`'s parameter) naming the page to go back to.
pub(crate) const NEXT_FIELD: &str = "next";

/// `next` if it is the address of one of our pages (`/ui…`, path and query): a log-in goes
/// back there, never to another site (`//evil.example` and `/\evil.example` are other hosts to
/// a browser) nor to what is no page of ours. A browser resolves dot segments, written or
/// percent-encoded: `/ui/%2e%2e/<code>` is the redirect of `<code>`, wherever its link leads.
pub(crate) fn page_to_return_to(next: &str) -> Option<&str> {
    let ours = next == "/ui" || next.starts_with("/ui/") || next.starts_with("/ui?");
    let plain = next.len() <= 2048 && next.chars().all(|c| c.is_ascii_graphic() && c != '\\');
    let path = next.split(['?', '#']).next().unwrap_or_default();
    let dotted = path.split('/').any(|segment| {
        let segment = segment.to_ascii_lowercase().replace("%2e", ".");
        segment == "." || segment == ".."
    });
    (ours && plain && !dotted).then_some(next)
}

/// `GET /login` (`?next=` the page to go back to once logged in).
pub async fn login_page(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let visit = match visit_of(&state, peer, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let next = url::form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == NEXT_FIELD)
        .map(|(_, v)| v.into_owned());
    let next = next.as_deref().and_then(page_to_return_to);
    let html = pages::login(&visit.page(&state), "", next, &[]).into_string();
    visit.respond(StatusCode::OK, html)
}

/// `POST /login`: a session cookie and back home, or the form with the reason.
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let (visit, fields) = match form_post(&state, peer, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let account = field(&fields, "account").trim();
    let next = page_to_return_to(field(&fields, NEXT_FIELD));
    let mut map = Map::new();
    let key = if account.contains('@') {
        "email"
    } else {
        "username"
    };
    map.insert(key.into(), Value::String(account.to_owned()));
    map.insert(
        "password".into(),
        Value::String(field(&fields, "password").to_owned()),
    );
    match crate::routes::auth::log_in(&state, visit.ip, JsonObject(map)).await {
        Ok((_, token)) => {
            visit.end_replaced_session(&state).await;
            let mut back =
                visit.see_other("/", visit.session_change(&token, state.auth.sessions.ttl()));
            if let Some(Ok(next)) = next.map(HeaderValue::from_str) {
                back.headers_mut().insert(header::LOCATION, next);
            }
            back
        }
        Err(e) => {
            // One field takes either: what the API says of `username` or `email` is said of it.
            let e = match e {
                ApiError::Validation(fields) => {
                    let mut fields: Vec<(String, String)> = fields
                        .into_iter()
                        .map(|(name, why)| match name.as_str() {
                            "username" | "email" => ("account".to_owned(), why),
                            _ => (name, why),
                        })
                        .collect();
                    fields.dedup_by(|a, b| a.0 == b.0);
                    ApiError::Validation(fields)
                }
                other => other,
            };
            let html =
                pages::login(&visit.page(&state), account, next, &messages(&e)).into_string();
            marked(visit.respond(e.status(), html), &e)
        }
    }
}

/// `GET /register`.
pub async fn register_page(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let visit = match visit_of(&state, peer, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let html = pages::register(&visit.page(&state), "", "", &Refusal::default()).into_string();
    visit.respond(StatusCode::OK, html)
}

/// `POST /register`: the account, a session cookie and back home.
pub async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let (visit, fields) = match form_post(&state, peer, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut body = json_of(&fields, &["username", "email"]);
    // The password as typed: spaces are part of it.
    let password = field(&fields, "password");
    if !password.is_empty() {
        body.0
            .insert("password".into(), Value::String(password.to_owned()));
    }
    let made = match crate::routes::auth::register_account(&state, body).await {
        Ok(user) => crate::routes::auth::new_session(&state, &user)
            .await
            .map_err(crate::routes::auth::registered_without_session),
        Err(e) => Err(e),
    };
    match made {
        Ok(token) => {
            visit.end_replaced_session(&state).await;
            visit.see_other("/", visit.session_change(&token, state.auth.sessions.ttl()))
        }
        Err(e) => {
            let html = pages::register(
                &visit.page(&state),
                field(&fields, "username").trim(),
                field(&fields, "email").trim(),
                &refusal(&e),
            )
            .into_string();
            marked(visit.respond(e.status(), html), &e)
        }
    }
}

/// `POST /logout`: ends the session at once and drops the cookie.
pub async fn logout(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let (visit, _) = match form_post(&state, peer, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(e) = end_sessions(&state, &visit, &headers).await {
        log::warn!(error = e.to_string(); "web logout could not revoke the session");
        let e = ApiError::Unavailable(
            "sessions are unavailable right now; you are still logged in; retry shortly".into(),
        );
        return problem(&visit, &state, &e);
    }
    visit.see_other("/", visit.session_change("", 0))
}

/// Revokes the session a log-out ends. With two session cookies (another site of the domain
/// set one beside the visitor's) the page saw no session, yet one of them is the visitor's:
/// each is revoked, so the log-out ends the visitor's session in Redis and not only in the
/// browser; ending a planted one ends only its planter's.
async fn end_sessions(
    state: &AppState,
    visit: &Visit,
    headers: &HeaderMap,
) -> Result<(), kurz_common::redis_handle::RedisDown> {
    if let (Some(user), Some(token)) = (&visit.user, &visit.session) {
        return state.auth.sessions.revoke(token, user.id).await;
    }
    // A few: one planted beside the visitor's is the case; a thousand sent by one post would
    // be a thousand Redis round trips.
    for token in cookie_values(headers, SESSION).into_iter().take(4) {
        if let Some(uid) = state.auth.sessions.user_of(token).await? {
            state.auth.sessions.revoke(token, uid).await?;
        }
    }
    Ok(())
}

/// `GET /static/<file>`: the stylesheet under its content-hashed name, cached for a year.
pub async fn asset(PathText(file): PathText) -> Response {
    assets::serve(&file)
}
