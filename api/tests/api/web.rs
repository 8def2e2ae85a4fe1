//! The web app's pages as a browser uses them: cookies, forms with their CSRF token, HTML
//! escaping, the security headers, and the flows register → shorten → log out → log in.

use crate::helpers::{
    expire_behind_the_api, spawn_app, spawn_app_with, spawn_app_with_lockout, TestApp,
};
use reqwest::Response;
use std::collections::HashMap;

/// A browser without JavaScript: keeps the cookies it is given and sends them back.
struct Browser<'a> {
    app: &'a TestApp,
    cookies: HashMap<String, String>,
    /// `Set-Cookie` lines of the last answer.
    last_set: Vec<String>,
    /// Cookies another site of the domain set (`Domain=`, a longer `Path`): sent first, beside
    /// the browser's own of the same name, as browsers order them.
    planted: Vec<(String, String)>,
}

impl<'a> Browser<'a> {
    fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            cookies: HashMap::new(),
            last_set: Vec::new(),
            planted: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.planted
            .iter()
            .map(|(k, v)| (k, v))
            .chain(self.cookies.iter())
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, res: &Response) {
        self.last_set = res
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for line in &self.last_set {
            let pair = line.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            if v.is_empty() || line.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
    }

    async fn get(&mut self, path: &str) -> (u16, String) {
        let res = self.fetch(path).await;
        self.keep_cookies(&res);
        (res.status().as_u16(), res.text().await.unwrap())
    }

    /// `GET path` with the browser's cookies: the whole answer, headers too, redirects not
    /// followed, no cookie kept.
    async fn fetch(&self, path: &str) -> Response {
        self.app
            .client
            .get(self.app.url(path))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap()
    }

    /// Posts `fields` as a form, adding the CSRF token the page carried.
    async fn submit(&mut self, page: &str, path: &str, fields: &[(&str, &str)]) -> Response {
        let token = csrf_of(page);
        let mut all: Vec<(&str, &str)> = vec![("csrf", token.as_str())];
        all.extend_from_slice(fields);
        self.post(path, &all).await
    }

    /// Opens the log-in page and posts `account` and `password` with its form.
    async fn log_in(&mut self, account: &str, password: &str) -> Response {
        let (_, page) = self.get("/login").await;
        self.submit(
            &page,
            "/login",
            &[("account", account), ("password", password)],
        )
        .await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Response {
        let res = self.form_request(path, fields).send().await.unwrap();
        self.keep_cookies(&res);
        res
    }

    /// `fields` posted as a form to `path` with the browser's cookies, to send as it is or
    /// with more headers; no cookie is kept from its answer.
    fn form_request(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::RequestBuilder {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.app
            .client
            .post(self.app.url(path))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    }
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..at + 64].to_owned()
}

async fn link_count(app: &TestApp) -> i64 {
    number(app, "SELECT count(*) FROM urls").await
}

/// What another site would post with a form token it knows: a key named `theirs`. The status.
async fn forged_key_post(b: &mut Browser<'_>, token: &str) -> u16 {
    let fields = [("csrf", token), ("name", "theirs")];
    b.post("/ui/keys", &fields).await.status().as_u16()
}

/// The key a keys page shows once, just made.
fn new_key_on(page: &str) -> &str {
    let tag = "<output id=\"new_key\"><code>";
    let at = page.find(tag).expect("the new key is shown") + tag.len();
    &page[at..at + page[at..].find('<').unwrap()]
}

/// The one number `sql` selects.
async fn number(app: &TestApp, sql: &str) -> i64 {
    app.sql().await.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn the_home_page_is_a_small_html_form_with_strict_browser_headers() {
    let app = spawn_app().await;
    let res = app.get("/").await;
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    for rule in [
        "default-src 'none'",
        "style-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "img-src 'self' data:",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(rule), "{csp}");
    }
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "no inline script can run: {csp}"
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-store");
    let csrf_cookie = h["set-cookie"].to_str().unwrap();
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(csrf_cookie.contains(flag), "{csrf_cookie}");
    }
    assert!(!csrf_cookie.contains("Secure"), "plain HTTP: {csrf_cookie}");
    let html = res.text().await.unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<form") && html.contains("action=\"/ui/shorten\""));

    let at = html.find("/static/app.").expect("the stylesheet link");
    let css_path = &html[at..at + html[at..].find('"').unwrap()];
    let css = app.get(css_path).await;
    assert_eq!(css.status(), 200);
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    assert_eq!(
        css.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let css = css.text().await.unwrap();
    let at = html.find("/static/app.").unwrap() + 1;
    let at = at + html[at..].find("/static/app.").expect("the script");
    let js_path = &html[at..at + html[at..].find('"').unwrap()];
    let js = app.get(js_path).await;
    assert_eq!(js.status(), 200);
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let js = js.text().await.unwrap();
    let weight = html.len() + css.len() + js.len();
    assert!(weight < 50 * 1024, "home page weight {weight} bytes");
    assert_eq!(app.get("/static/app.css").await.status(), 404);
}

#[tokio::test]
async fn an_anonymous_visitor_shortens_a_link_that_redirects() {
    let app = spawn_app().await;
    let mut b = Browser::new(&app);
    let (status, home) = b.get("/").await;
    assert_eq!(status, 200);
    let res = b
        .submit(
            &home,
            "/ui/shorten",
            &[
                ("original_url", "https://example.com/from-the-form"),
                ("short_code", "webform1"),
            ],
        )
        .await;
    assert_eq!(res.status(), 201);
    let page = res.text().await.unwrap();
    assert!(page.contains("http://kurz.test/webform1"), "{page}");
    let redirect = app.get("/webform1").await;
    assert_eq!(redirect.status(), 302);
    assert_eq!(
        redirect.headers()["location"],
        "https://example.com/from-the-form"
    );
    let owner: Option<i64> = app
        .sql()
        .await
        .query_one(
            "SELECT user_id FROM urls WHERE short_code = 'webform1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, None, "an anonymous link has no owner");
}

#[tokio::test]
async fn a_post_without_the_csrf_token_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let mut b = Browser::new(&app);
    let form = [("original_url", "https://example.com/forged")];
    // Another site's form: no cookie, no token.
    let res = b.post("/ui/shorten", &form).await;
    assert_eq!(res.status(), 403);
    let page = res.text().await.unwrap();
    assert!(page.contains("Reload the page"), "{page}");
    // The cookie (the browser has one from a visit) but not the token.
    let (_, home) = b.get("/").await;
    assert_eq!(b.post("/ui/shorten", &form).await.status(), 403);
    let zeros = "0".repeat(64);
    let wrong = [
        ("csrf", zeros.as_str()),
        ("original_url", "https://example.com/forged"),
    ];
    assert_eq!(b.post("/ui/shorten", &wrong).await.status(), 403);
    for path in ["/login", "/register", "/logout"] {
        assert_eq!(b.post(path, &[]).await.status(), 403, "{path}");
    }
    assert_eq!(link_count(&app).await, 0);
    // The same form with the page's token goes through.
    assert_eq!(b.submit(&home, "/ui/shorten", &form).await.status(), 201);
    assert_eq!(link_count(&app).await, 1);
}

/// Another site's post reaches kurz without the visitor's cookies (`SameSite`). Its 403 sets
/// no new token: one would replace the visitor's, and every form they have open would answer
/// "expired". A post without cookies that is not cross-site (a form from an earlier visit
/// whose cookie is gone) does get one, so reloading the page mends it.
#[tokio::test]
async fn a_forged_post_does_not_expire_the_visitors_open_forms() {
    let app = spawn_app().await;
    let mut b = Browser::new(&app);
    let (_, home) = b.get("/").await;
    let form = [
        ("csrf", "0".repeat(64)),
        ("original_url", "https://example.com/forged".to_owned()),
    ];
    let forged = |fetch_site: Option<&'static str>| {
        let mut req = app.client.post(app.url("/ui/shorten")).form(&form);
        if let Some(site) = fetch_site {
            req = req.header("sec-fetch-site", site);
        }
        req.send()
    };
    let res = forged(Some("cross-site")).await.unwrap();
    assert_eq!(res.status(), 403);
    assert!(
        res.headers().get("set-cookie").is_none(),
        "{:?}",
        res.headers().get("set-cookie")
    );
    let res = forged(None).await.unwrap();
    assert_eq!(res.status(), 403);
    assert!(res.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .starts_with("csrf="));
    // The visitor's form, open since before, still posts.
    let done = [("original_url", "https://example.com/mine")];
    assert_eq!(b.submit(&home, "/ui/shorten", &done).await.status(), 201);
    assert_eq!(link_count(&app).await, 1);
}

#[tokio::test]
async fn markup_in_a_target_or_a_name_shows_as_text() {
    let app = spawn_app().await;
    let mut b = Browser::new(&app);
    let (_, home) = b.get("/").await;
    let res = b
        .submit(
            &home,
            "/ui/shorten",
            &[(
                "original_url",
                "https://example.com/?q=<script>alert(1)</script>",
            )],
        )
        .await;
    let status = res.status();
    let page = res.text().await.unwrap();
    assert!(!page.contains("<script>alert"), "{page}");
    if status == 201 {
        assert!(page.contains("&lt;script&gt;") || page.contains("%3Cscript%3E"));
    } else {
        assert_eq!(status, 400, "{page}");
    }
    // A field error repeats what was typed, escaped.
    let res = b
        .submit(
            &home,
            "/ui/shorten",
            &[("original_url", "\"><script>alert(2)</script>")],
        )
        .await;
    assert_eq!(res.status(), 400);
    let page = res.text().await.unwrap();
    assert!(!page.contains("<script>alert(2)"), "{page}");
    assert!(
        page.contains("Long URL:"),
        "the field is named as its label: {page}"
    );
    assert!(page.contains("&quot;&gt;&lt;script&gt;alert(2)"), "{page}");
    let tag = tag_of(&page, "original_url");
    assert!(
        tag.contains("aria-invalid=\"true\"") && tag.contains("autofocus"),
        "{tag}"
    );
    assert!(!tag_of(&page, "short_code").contains("aria-invalid"));
}

#[tokio::test]
async fn register_shorten_log_out_and_log_in_again() {
    let app = spawn_app().await;
    let mut b = Browser::new(&app);
    let (_, page) = b.get("/register").await;
    let res = b
        .submit(
            &page,
            "/register",
            &[
                ("username", "webuser"),
                ("email", "web@example.com"),
                ("password", "correct horse"),
            ],
        )
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/");
    let session = b
        .last_set
        .iter()
        .find(|c| c.starts_with("kurz_session="))
        .expect("a session cookie")
        .clone();
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age="] {
        assert!(session.contains(flag), "{session}");
    }
    let token = b.cookies["kurz_session"].clone();

    // The cookie is for pages only: the JSON API does not take it.
    let me = app
        .client
        .get(app.url("/auth/me"))
        .header("cookie", format!("kurz_session={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401);

    let (_, home) = b.get("/").await;
    assert!(
        home.contains("Logged in as <strong>webuser</strong>"),
        "{home}"
    );
    let res = b
        .submit(
            &home,
            "/ui/shorten",
            &[("original_url", "https://example.com/mine")],
        )
        .await;
    assert_eq!(res.status(), 201);
    let owner: String = app
        .sql()
        .await
        .query_one(
            "SELECT u.username FROM urls l JOIN users u ON u.id = l.user_id \
             WHERE l.original_url = 'https://example.com/mine'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "webuser");

    let res = b.submit(&home, "/logout", &[]).await;
    assert_eq!(res.status(), 303);
    assert!(!b.cookies.contains_key("kurz_session"), "cookie dropped");
    // The session is revoked, not merely forgotten by this browser.
    let me = app
        .client
        .get(app.url("/auth/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401);

    let (_, login) = b.get("/login").await;
    let res = b
        .submit(
            &login,
            "/login",
            &[("account", "webuser"), ("password", "wrong password")],
        )
        .await;
    assert_eq!(res.status(), 401);
    let page = res.text().await.unwrap();
    assert!(page.contains("invalid credentials"), "{page}");
    assert!(
        page.contains("value=\"webuser\""),
        "the account is kept: {page}"
    );
    let res = b
        .submit(
            &login,
            "/login",
            &[
                ("account", "web@example.com"),
                ("password", "correct horse"),
            ],
        )
        .await;
    assert_eq!(res.status(), 303);
    let (_, home) = b.get("/").await;
    assert!(home.contains("webuser"));
}

#[tokio::test]
async fn a_sign_up_with_bad_fields_says_which_and_keeps_what_was_typed() {
    let app = spawn_app().await;
    let mut b = Browser::new(&app);
    let (_, page) = b.get("/register").await;
    let res = b
        .submit(
            &page,
            "/register",
            &[
                ("username", "ok_name"),
                ("email", "not-an-email"),
                ("password", "short"),
            ],
        )
        .await;
    assert_eq!(res.status(), 400);
    let html = res.text().await.unwrap();
    assert!(
        html.contains("Email:") && html.contains("Password:"),
        "{html}"
    );
    assert!(html.contains("value=\"ok_name\""), "{html}");
    // Marked for assistive technology: the refused inputs, the first of them focused.
    assert_marked(
        &html,
        &[
            ("username", false, false),
            ("email", true, true),
            ("password", true, false),
        ],
    );
    assert!(!b.cookies.contains_key("kurz_session"));
}

/// Each `(input, refused, focused)`: a refused input is marked invalid and described by the
/// page's messages, and only the first refused one is focused.
fn assert_marked(page: &str, inputs: &[(&str, bool, bool)]) {
    for (name, invalid, focus) in inputs {
        let tag = tag_of(page, name);
        assert_eq!(tag.contains("aria-invalid=\"true\""), *invalid, "{tag}");
        assert_eq!(tag.contains("aria-describedby=\"errors\""), *invalid);
        assert_eq!(tag.contains("autofocus"), *focus, "{tag}");
    }
    assert!(page.contains("id=\"errors\""), "{page}");
}

/// The opening tag of the input named `name`, from its name on.
fn tag_of<'p>(page: &'p str, name: &str) -> &'p str {
    let at = page
        .find(&format!("name=\"{name}\""))
        .unwrap_or_else(|| panic!("no input {name} in {page}"));
    &page[at..at + page[at..].find('>').unwrap()]
}

#[tokio::test]
async fn in_required_mode_anonymous_visitors_are_sent_to_log_in() {
    let app = spawn_app_with(|c| c.auth.mode = kurz_api::config::AuthMode::Required).await;
    let mut b = Browser::new(&app);
    let (status, home) = b.get("/").await;
    assert_eq!(status, 200);
    assert!(!home.contains("action=\"/ui/shorten\""), "{home}");
    assert!(home.contains("href=\"/login\""));
    // A form crafted with the visitor's own token still makes nothing.
    let token = b.cookies["csrf"].clone();
    let res = b
        .post(
            "/ui/shorten",
            &[
                ("csrf", &token),
                ("original_url", "https://example.com/anon"),
            ],
        )
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/login");
    // A stale form of their own page (logged out in another tab since) likewise: to log in,
    // not a refusal on a page with no form to show.
    let res = b
        .form_request(
            "/ui/shorten",
            &[
                ("csrf", "stale"),
                ("original_url", "https://example.com/anon"),
            ],
        )
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/login");
    assert_eq!(link_count(&app).await, 0);
}

#[tokio::test]
async fn cookies_are_secure_behind_an_https_edge() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let set = res.headers()["set-cookie"].to_str().unwrap();
    assert!(set.contains("; Secure"), "{set}");
}

/// With sliding sessions each page a logged-in person opens renews the session cookie's
/// `Max-Age` along with the session in Redis, so an active person stays logged in; with fixed
/// sessions the cookie keeps the `Max-Age` of the login.
#[tokio::test]
async fn a_sliding_session_renews_its_cookie_on_use_and_a_fixed_one_does_not() {
    for sliding in [true, false] {
        let app = spawn_app_with(|c| {
            c.auth.session_ttl_seconds = 3600;
            c.auth.sliding_sessions = sliding;
        })
        .await;
        let mut b = signed_up(&app, "slider").await;
        let token = b.cookies["kurz_session"].clone();
        for path in ["/", "/ui/links"] {
            let (status, _) = b.get(path).await;
            assert_eq!(status, 200);
            let renewed: Vec<&String> = b
                .last_set
                .iter()
                .filter(|c| c.starts_with("kurz_session="))
                .collect();
            if sliding {
                assert_eq!(renewed.len(), 1, "{path}: {:?}", b.last_set);
                assert!(renewed[0].starts_with(&format!("kurz_session={token};")));
                assert!(renewed[0].contains("Max-Age=3600"), "{}", renewed[0]);
            } else {
                assert!(renewed.is_empty(), "{path}: {:?}", b.last_set);
            }
        }
        // Logging out still ends it: the cleared cookie is the only one.
        let (_, home) = b.get("/").await;
        let res = b.submit(&home, "/logout", &[]).await;
        assert_eq!(res.status(), 303);
        let sessions: Vec<&String> = b
            .last_set
            .iter()
            .filter(|c| c.starts_with("kurz_session="))
            .collect();
        assert_eq!(sessions.len(), 1, "{:?}", b.last_set);
        assert!(!b.cookies.contains_key("kurz_session"));
    }
}

/// Logging in again in a browser that is logged in already ends the session its cookie held:
/// the browser forgets it, so nothing else would.
#[tokio::test]
async fn a_new_login_in_the_same_browser_ends_the_session_it_replaces() {
    let app = spawn_app().await;
    let mut b = signed_up(&app, "twice").await;
    let first = b.cookies["kurz_session"].clone();
    let res = b.log_in("twice@example.com", "long enough pw").await;
    assert_eq!(res.status(), 303);
    let second = b.cookies["kurz_session"].clone();
    assert_ne!(first, second);
    let me = |token: String| {
        app.client
            .get(app.url("/auth/me"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        me(first).await.unwrap().status(),
        401,
        "the replaced session lives on"
    );
    assert_eq!(me(second).await.unwrap().status(), 200);
}

/// A registered, logged-in browser.
/// A username may hold an '@': the form's one field is tried as an email first, then as the
/// name, so such a user logs in by name too (and by email, as anyone).
#[tokio::test]
async fn a_name_with_an_at_sign_logs_in_from_the_form() {
    let app = spawn_app().await;
    let body = serde_json::json!({"username": "bob@home", "email": "bob@example.com", "password": "long enough pw"});
    assert_eq!(app.post_json("/auth/register", &body).await.status(), 201);
    for account in ["bob@home", "BOB@example.com"] {
        let mut b = Browser::new(&app);
        let res = b.log_in(account, "long enough pw").await;
        assert_eq!(res.status(), 303, "{account}");
    }
    // The form's one field for either is named as it is labelled, whichever the API refused.
    let res = Browser::new(&app).log_in("   ", "long enough pw").await;
    assert_eq!(res.status(), 400);
    let page = res.text().await.unwrap();
    assert!(page.contains("Username or email:"), "{page}");
    assert!(
        !page.contains("Username:") && !page.contains("Email:"),
        "{page}"
    );
    // An email that is someone's wins over a name that spells it.
    let other = serde_json::json!({"username": "bob@example.com", "email": "b2@example.com", "password": "other long pw"});
    assert_eq!(app.post_json("/auth/register", &other).await.status(), 201);
    let res = app
        .post_json(
            "/auth/login",
            &serde_json::json!({"email": "bob@example.com", "password": "long enough pw"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let user: serde_json::Value = res.json().await.unwrap();
    assert_eq!(user["user"]["username"], "bob@home");
}

async fn signed_up<'a>(app: &'a TestApp, name: &str) -> Browser<'a> {
    let mut b = Browser::new(app);
    let (_, page) = b.get("/register").await;
    let email = format!("{name}@example.com");
    let res = b
        .submit(
            &page,
            "/register",
            &[
                ("username", name),
                ("email", email.as_str()),
                ("password", "long enough pw"),
            ],
        )
        .await;
    assert_eq!(res.status(), 303);
    b
}

/// Makes a link for each code through the home page's form, to `https://example.com/<code>`.
async fn shorten_on_the_home_page(b: &mut Browser<'_>, codes: &[&str]) {
    for code in codes {
        let (_, home) = b.get("/").await;
        let target = format!("https://example.com/{code}");
        let res = b
            .submit(
                &home,
                "/ui/shorten",
                &[("original_url", target.as_str()), ("short_code", code)],
            )
            .await;
        assert_eq!(res.status(), 201);
    }
}

async fn id_of(app: &TestApp, code: &str) -> i64 {
    app.sql()
        .await
        .query_one("SELECT id FROM urls WHERE short_code = $1", &[&code])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn my_links_are_listed_searched_switched_edited_and_deleted() {
    let app = spawn_app().await;
    let mut b = signed_up(&app, "lister").await;
    let (status, _) = Browser::new(&app).get("/ui/links").await;
    assert_eq!(status, 303, "anonymous visitors are sent to log in");
    shorten_on_the_home_page(&mut b, &["webalpha", "webbeta", "webgamma"]).await;
    // Someone else's link is neither listed nor reachable by id.
    let other = app.create_user("someoneelse").await;
    let theirs = app.create_url(other, "https://example.com/theirs").await;
    let (status, list) = b.get("/ui/links").await;
    assert_eq!(status, 200);
    assert!(list.contains("3 links"), "{list}");
    assert!(!list.contains("example.com/theirs"));
    let (status, _) = b
        .get(&format!("/ui/links/{}", theirs["id"].as_i64().unwrap()))
        .await;
    assert_eq!(status, 404);

    let (_, found) = b.get("/ui/links?q=BETA").await;
    assert!(
        found.contains("1 link<") && found.contains("webbeta"),
        "{found}"
    );
    assert!(!found.contains("webalpha"));

    // Deactivate from the list: the link stops redirecting; the list filters by state.
    let beta = id_of(&app, "webbeta").await;
    let res = b
        .submit(
            &found,
            &format!("/ui/links/{beta}/state"),
            &[("active", "false"), ("back", "/ui/links?q=BETA&page=1")],
        )
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/ui/links?q=BETA&page=1");
    assert_eq!(app.get("/webbeta").await.status(), 404);
    let (_, inactive) = b.get("/ui/links?state=inactive").await;
    assert!(inactive.contains("1 link<") && inactive.contains("webbeta"));

    // Edit: the new target redirects; a title with markup shows as text; a bad URL is refused
    // with the reason and what was typed.
    let alpha = id_of(&app, "webalpha").await;
    let (_, page) = b.get(&format!("/ui/links/{alpha}")).await;
    let res = b
        .submit(
            &page,
            &format!("/ui/links/{alpha}/edit"),
            &[
                ("original_url", "https://example.com/alpha-2"),
                ("title", "<b>Launch</b>"),
            ],
        )
        .await;
    assert_eq!(res.status(), 303);
    let redirect = app.get("/webalpha").await;
    assert_eq!(
        redirect.headers()["location"],
        "https://example.com/alpha-2"
    );
    let res = b
        .submit(
            &page,
            &format!("/ui/links/{alpha}/edit"),
            &[("original_url", "javascript:alert(1)"), ("title", "")],
        )
        .await;
    assert_eq!(res.status(), 400);
    let refused = res.text().await.unwrap();
    assert!(refused.contains("Long URL:"), "{refused}");
    assert!(refused.contains("value=\"javascript:alert(1)\""));

    // The click of that redirect is on the link's page, in the total and in the chart.
    let (_, page) = b.get(&format!("/ui/links/{alpha}")).await;
    assert!(page.contains("&lt;b&gt;Launch&lt;/b&gt;"), "{page}");
    assert!(page.contains("1 click,"), "{page}");
    assert!(page.contains(": 1 in all"), "{page}");
    let qr = format!("/ui/links/{alpha}/qr?format=svg&size=192");
    assert!(page.contains(&qr.replace('&', "&amp;")), "{page}");
    let res = b.fetch(&qr).await;
    // Asked again at every show: a kept image would outlive the log-out.
    assert_eq!(res.headers()["cache-control"], "private, no-cache");
    let (status, svg) = b.get(&qr).await;
    assert_eq!(status, 200);
    assert!(svg.starts_with("<svg"), "{svg}");
    // A switched-off link's page still draws its code (the public `/<code>/qr` draws only
    // links that redirect); nobody else gets it, and an anonymous visitor is sent to log in.
    assert_eq!(app.get("/webbeta/qr").await.status(), 404);
    let (status, svg) = b.get(&format!("/ui/links/{beta}/qr?format=svg")).await;
    assert_eq!((status, svg.starts_with("<svg")), (200, true));
    let (status, _) = b.get(&format!("/ui/links/{beta}/qr?format=png")).await;
    assert_eq!(status, 200);
    let theirs_qr = format!("/ui/links/{}/qr", theirs["id"].as_i64().unwrap());
    assert_eq!(b.get(&theirs_qr).await.0, 404);
    assert_eq!(Browser::new(&app).get(&theirs_qr).await.0, 303);

    // Delete asks first, then the link is gone.
    let gamma = id_of(&app, "webgamma").await;
    let (status, confirm) = b.get(&format!("/ui/links/{gamma}/delete")).await;
    assert_eq!(status, 200);
    assert!(confirm.contains("cannot be undone"));
    let res = b
        .submit(&confirm, &format!("/ui/links/{gamma}/delete"), &[])
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/ui/links");
    assert_eq!(app.get("/webgamma").await.status(), 404);
    let (_, list) = b.get("/ui/links").await;
    assert!(list.contains("2 links") && !list.contains("webgamma"));
    // The same form sent again (a double click, a reload of the answer): done already, not a
    // page saying there is no such link. Anyone else still learns nothing of it.
    let res = b
        .submit(&confirm, &format!("/ui/links/{gamma}/delete"), &[])
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/ui/links");
    let mut other = signed_up(&app, "notlister").await;
    let (_, home) = other.get("/").await;
    let res = other
        .submit(&home, &format!("/ui/links/{gamma}/delete"), &[])
        .await;
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn a_link_change_without_the_token_or_by_someone_else_changes_nothing() {
    let app = spawn_app().await;
    let mut owner = signed_up(&app, "owner1").await;
    let (_, home) = owner.get("/").await;
    owner
        .submit(
            &home,
            "/ui/shorten",
            &[
                ("original_url", "https://example.com/keep"),
                ("short_code", "keepme1"),
            ],
        )
        .await;
    let id = id_of(&app, "keepme1").await;
    // The owner's browser, but forged forms (no token).
    for (path, fields) in [
        (format!("/ui/links/{id}/delete"), vec![]),
        (format!("/ui/links/{id}/state"), vec![("active", "false")]),
        (
            format!("/ui/links/{id}/edit"),
            vec![("original_url", "https://evil.example/")],
        ),
    ] {
        assert_eq!(owner.post(&path, &fields).await.status(), 403, "{path}");
    }
    // Another user with a valid token of their own.
    let mut intruder = signed_up(&app, "intruder1").await;
    let (_, their_home) = intruder.get("/").await;
    for (path, fields) in [
        (format!("/ui/links/{id}/delete"), vec![]),
        (format!("/ui/links/{id}/state"), vec![("active", "false")]),
        (
            format!("/ui/links/{id}/edit"),
            vec![("original_url", "https://evil.example/")],
        ),
    ] {
        let res = intruder.submit(&their_home, &path, &fields).await;
        assert_eq!(res.status(), 404, "{path}");
    }
    let redirect = app.get("/keepme1").await;
    assert_eq!(redirect.status(), 302);
    assert_eq!(redirect.headers()["location"], "https://example.com/keep");
}

#[tokio::test]
async fn api_keys_are_made_shown_once_used_and_revoked_from_the_keys_page() {
    let app = spawn_app().await;
    let mut b = signed_up(&app, "keyholder").await;
    let (status, page) = b.get("/ui/keys").await;
    assert_eq!(status, 200);
    assert!(page.contains("No keys yet"));
    let res = b
        .submit(&page, "/ui/keys", &[("name", "deploy <bot>")])
        .await;
    assert_eq!(res.status(), 201);
    let made = res.text().await.unwrap();
    let key = new_key_on(&made);
    assert!(made.contains("deploy &lt;bot&gt;"), "{made}");
    // The one value to copy before it is gone has its copy button.
    assert!(made.contains(&format!("data-copy=\"{key}\"")), "{made}");
    // The key works on the API, as its owner.
    let me = app
        .client
        .get(app.url("/auth/me"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    assert_eq!(
        me.json::<serde_json::Value>().await.unwrap()["username"],
        "keyholder"
    );
    // Listed without the key itself, and never shown again.
    let (_, page) = b.get("/ui/keys").await;
    assert!(!page.contains(key));
    assert!(page.contains(&key[..12]), "its prefix is listed");
    let too_long = "n".repeat(101);
    let res = b
        .submit(&page, "/ui/keys", &[("name", too_long.as_str())])
        .await;
    assert_eq!(res.status(), 400);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("Name: must be at most 100"));
    // As the JSON API: a key needs a name.
    let res = b.submit(&page, "/ui/keys", &[("name", "  ")]).await;
    assert_eq!(res.status(), 400);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("Name: must not be empty"));
    let at = page.find("href=\"/ui/keys/").unwrap() + 6;
    let revoke = &page[at..at + page[at..].find('"').unwrap()];
    // Revoking asks first, naming the key; opening the question revokes nothing.
    let (status, confirm) = b.get(revoke).await;
    assert_eq!(status, 200);
    assert!(
        confirm.contains("Revoke the key deploy &lt;bot&gt;?"),
        "{confirm}"
    );
    assert!(confirm.contains("cannot be undone"), "{confirm}");
    // Forged forms (no token) neither make nor revoke a key.
    assert_eq!(
        b.post("/ui/keys", &[("name", "forged")]).await.status(),
        403
    );
    assert_eq!(b.post(revoke, &[]).await.status(), 403);
    let (_, listed) = b.get("/ui/keys").await;
    assert!(!listed.contains("forged"), "no key was made");
    let me = app
        .client
        .get(app.url("/auth/me"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200, "the key was not revoked");
    // Revoke: the key stops working at once.
    let res = b.submit(&confirm, revoke, &[]).await;
    assert_eq!(res.status(), 303);
    // Sent twice (a double click): done already, not "no key".
    let res = b.submit(&confirm, revoke, &[]).await;
    assert_eq!(res.status(), 303);
    // The question opened again (a back button): nothing left to ask.
    let (status, _) = b.get(revoke).await;
    assert_eq!(status, 303);
    let me = app
        .client
        .get(app.url("/auth/me"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401);
    // Another user cannot revoke it (nor see that it exists).
    let mut other = signed_up(&app, "notholder").await;
    let (_, theirs) = other.get("/ui/keys").await;
    assert_eq!(other.submit(&theirs, revoke, &[]).await.status(), 404);
    assert_eq!(other.get(revoke).await.0, 404);
}

/// The make-a-key form sent twice (a double click, a reload of its answer) makes one key: the
/// second answer says the first showed it, and where to revoke it. A sending that made nothing
/// (a bad name) leaves the form free to be sent again.
#[tokio::test]
async fn a_make_key_form_sent_twice_makes_one_key() {
    let app = spawn_app().await;
    let mut b = signed_up(&app, "twice").await;
    let (_, page) = b.get("/ui/keys").await;
    let once = hidden_of(&page, "form_id").to_owned();
    let blank = b
        .submit(&page, "/ui/keys", &[("name", " "), ("form_id", &once)])
        .await;
    assert_eq!(blank.status(), 400);
    let fields = [("name", "ci"), ("form_id", once.as_str())];
    assert_eq!(b.submit(&page, "/ui/keys", &fields).await.status(), 201);
    let again = b.submit(&page, "/ui/keys", &fields).await;
    assert_eq!(again.status(), 409);
    let text = again.text().await.unwrap();
    assert!(text.contains("sent already"), "{text}");
    let (_, listed) = b.get("/ui/keys").await;
    assert_eq!(listed.matches("/revoke\"").count(), 1, "one key: {listed}");
    // Each page carries a token of its own.
    assert_ne!(hidden_of(&listed, "form_id"), once);
}

/// A key is shown once, on the answer that made it: when the list beside it cannot be read, the
/// page still shows the key (and says the list could not be read) rather than an error page that
/// would take the only sight of it away.
#[tokio::test]
async fn a_key_made_while_the_list_cannot_be_read_is_still_shown() {
    let app = spawn_app_with(|c| crate::helpers::request_pool(c, 1, 1_000)).await;
    let mut b = signed_up(&app, "keylost").await;
    let (_, page) = b.get("/ui/keys").await;
    // The key's insert leaves the one request connection unable to find any table: the make
    // commits, the list that follows on that connection fails.
    app.sql()
        .await
        .batch_execute(
            "CREATE FUNCTION lose_the_way() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM set_config('search_path', 'nowhere', false); RETURN NULL; END $$; \
             CREATE TRIGGER lose_the_way AFTER INSERT ON api_keys \
             FOR EACH STATEMENT EXECUTE FUNCTION lose_the_way();",
        )
        .await
        .unwrap();
    let res = b.submit(&page, "/ui/keys", &[("name", "ci")]).await;
    assert_eq!(res.status(), 201);
    let made = res.text().await.unwrap();
    let key = new_key_on(&made);
    assert!(made.contains("could not be listed"), "{made}");
    assert_eq!(
        number(
            &app,
            &format!(
                "SELECT count(*) FROM api_keys WHERE prefix = '{}'",
                &key[..12]
            )
        )
        .await,
        1
    );
}

/// A switched-on link that no longer redirects (expired, or its visits used up: its code
/// answers 410) says so on the list and on its page, rather than "Redirects to".
#[tokio::test]
async fn an_expired_or_used_up_link_says_so_on_its_pages() {
    let app = spawn_app().await;
    let mut b = signed_up(&app, "ender").await;
    shorten_on_the_home_page(&mut b, &["webgone", "webonce"]).await;
    let gone = id_of(&app, "webgone").await;
    expire_behind_the_api(&app, gone).await;
    let once = id_of(&app, "webonce").await;
    let res = app
        .put_json(
            &format!("/urls/{once}"),
            &serde_json::json!({"max_visits": 1}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.get("/webonce").await.status(), 302);
    assert_eq!(app.get("/webonce").await.status(), 410);
    // The used-up one first: its page must see the visit the drain stores, not the row read
    // before it.
    for (id, why) in [(once, "used up"), (gone, "expired")] {
        let (_, page) = b.get(&format!("/ui/links/{id}")).await;
        assert!(page.contains(&format!("class=\"badge\">{why}<")), "{page}");
        assert!(!page.contains("Redirects to"), "{page}");
    }
    let (_, list) = b.get("/ui/links").await;
    assert!(
        list.contains(">expired<") && list.contains(">used up<"),
        "{list}"
    );
}

#[tokio::test]
async fn only_admins_see_the_users_page() {
    let app = spawn_app_with(|c| c.auth.admins = vec!["chief@example.com".into()]).await;
    let mut plain = signed_up(&app, "plainuser").await;
    let (status, page) = plain.get("/ui/users").await;
    assert_eq!(status, 404);
    assert!(!page.contains("href=\"/ui/users\""), "no link to it either");
    let mut chief = signed_up(&app, "chief").await;
    let (status, page) = chief.get("/ui/users").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("plainuser") && page.contains("plainuser@example.com"));
    assert!(page.contains("2 in all"));
    // Past the last page: sent to the last one, not shown an empty table.
    let past = chief.fetch("/ui/users?page=9").await;
    assert_eq!(past.status(), 303);
    assert_eq!(past.headers()["location"], "/ui/users?page=1");
    // Admins' "my links" are everyone's.
    let (_, home) = plain.get("/").await;
    plain
        .submit(
            &home,
            "/ui/shorten",
            &[
                ("original_url", "https://example.com/plain"),
                ("short_code", "plainlink"),
            ],
        )
        .await;
    let (_, links) = chief.get("/ui/links").await;
    assert!(links.contains("plainlink"), "{links}");
    let (_, links) = Browser::new(&app).get("/ui/users").await;
    assert!(links.is_empty(), "anonymous: sent to log in");
}

#[tokio::test]
async fn hostile_form_and_query_values_get_clear_answers_not_500s() {
    let app = spawn_app().await;
    let mut b = signed_up(&app, "hostile1").await;
    let (_, home) = b.get("/").await;
    let res = b
        .submit(
            &home,
            "/ui/shorten",
            &[("original_url", "https://example.com/\0x")],
        )
        .await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("NUL"));
    let (_, keys) = b.get("/ui/keys").await;
    assert_eq!(
        b.submit(&keys, "/ui/keys", &[("name", "a\0b")])
            .await
            .status(),
        400
    );
    // A name past the form's maxlength: refused, and shown again to be shortened.
    let long = format!("<{}>", "k".repeat(120));
    let res = b.submit(&keys, "/ui/keys", &[("name", &long)]).await;
    assert_eq!(res.status(), 400);
    let page = res.text().await.unwrap();
    assert!(
        page.contains(&format!("value=\"&lt;{}&gt;\"", "k".repeat(120))),
        "{page}"
    );
    for path in [
        "/ui/links?q=%00",
        "/ui/links?q=%25_%5C",
        "/ui/links?page=99999999999999999999",
        "/ui/links?tag=%00",
        "/ui/links?state=bogus",
    ] {
        let (status, _) = b.get(path).await;
        assert!(status == 200 || status == 400, "{path}: {status}");
    }
    // A tag the filter cannot take: the list page, its search kept and the reason given, not
    // a page with only the error.
    let (status, page) = b.get("/ui/links?q=kept&state=active&tag=c%2B%2B").await;
    assert_eq!(status, 400);
    assert!(page.contains("name=\"q\" value=\"kept\""), "{page}");
    assert!(page.contains("value=\"active\" selected"), "{page}");
    assert!(page.contains("value=\"c++\""), "{page}");
    assert!(!page.contains("No links here yet"), "{page}");
    assert!(page.contains("Tag: "), "{page}");
    for path in [
        "/ui/links/abc",
        "/ui/links/99999999999999999999",
        "/ui/links/-1",
    ] {
        assert_eq!(b.get(path).await.0, 404, "{path}");
    }
    // A body that is not a form.
    let res = app
        .client
        .post(app.url("/ui/shorten"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
}

/// The log-in form goes through the API's lock-out: once an account's free failures from this
/// address are spent, even the right password waits, and the page says so with the form.
#[tokio::test]
async fn the_login_form_backs_off_like_the_api() {
    let app = spawn_app_with_lockout(|l| {
        l.free_failures = 1;
    })
    .await;
    let _ = signed_up(&app, "lockweb").await;
    let mut b = Browser::new(&app);
    let (_, login) = b.get("/login").await;
    let attempt = |password: &'static str| [("account", "lockweb"), ("password", password)];
    for _ in 0..2 {
        let res = b.submit(&login, "/login", &attempt("wrong password")).await;
        assert_eq!(res.status(), 401);
    }
    let res = b.submit(&login, "/login", &attempt("long enough pw")).await;
    assert_eq!(res.status(), 429, "the right password waits out the lock");
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    let page = res.text().await.unwrap();
    assert!(
        page.contains("<form") && page.contains("value=\"lockweb\""),
        "{page}"
    );
    assert!(!b.cookies.contains_key("kurz_session"), "not logged in");
}

/// A form token planted in the browser before a log-in (a sibling subdomain, or anyone on a
/// plain-HTTP path, can write the host's cookies) is replaced at the log-in and at the log-out:
/// forms forged with it are refused once the visitor is logged in.
#[tokio::test]
async fn a_planted_form_token_does_not_outlive_the_log_in() {
    let app = spawn_app().await;
    signed_up(&app, "planted").await;
    let planted = "a".repeat(64);
    let mut b = Browser::new(&app);
    b.cookies.insert("csrf".into(), planted.clone());
    let (_, login) = b.get("/login").await;
    assert_eq!(
        csrf_of(&login),
        planted,
        "the planted token is taken as the visitor's"
    );
    let res = b
        .submit(
            &login,
            "/login",
            &[("account", "planted"), ("password", "long enough pw")],
        )
        .await;
    assert_eq!(res.status(), 303);
    assert_ne!(
        b.cookies["csrf"], planted,
        "a new token comes with the session"
    );
    // What the planter would forge with the token they know: refused, no key made.
    assert_eq!(forged_key_post(&mut b, &planted).await, 403);
    let (_, keys) = b.get("/ui/keys").await;
    assert!(keys.contains("No keys yet"), "{keys}");
    // The visitor's own forms work with the new token, and the log-out replaces it again.
    let res = b.submit(&keys, "/ui/keys", &[("name", "mine")]).await;
    assert_eq!(res.status(), 201);
    let before = b.cookies["csrf"].clone();
    let (_, home) = b.get("/").await;
    assert_eq!(b.submit(&home, "/logout", &[]).await.status(), 303);
    assert_ne!(b.cookies["csrf"], before);
}

/// Another site of the domain can set cookies for all of it with a longer path, which a browser
/// sends before kurz's own of the same name. A name given twice with different values is
/// believed in neither: a planted form token forges no post, and a planted session gets none
/// of the visitor's links.
#[tokio::test]
async fn a_cookie_planted_beside_ours_is_believed_in_neither() {
    let app = spawn_app().await;
    let planter = signed_up(&app, "planter").await;
    let mut b = signed_up(&app, "sibling").await;
    let planted = "a".repeat(64);
    b.planted = vec![("csrf".into(), planted.clone())];
    assert_eq!(forged_key_post(&mut b, &planted).await, 403);
    let keys = number(&app, "SELECT count(*) FROM api_keys").await;
    assert_eq!(keys, 0, "the forged post made a key");

    b.planted = vec![(
        "kurz_session".into(),
        planter.cookies["kurz_session"].clone(),
    )];
    let (_, home) = b.get("/").await;
    assert!(!home.contains("planter"), "{home}");
    b.submit(
        &home,
        "/ui/shorten",
        &[("original_url", "https://example.com/mine")],
    )
    .await;
    let theirs = number(
        &app,
        "SELECT count(*) FROM urls u JOIN users p ON p.id = u.user_id WHERE p.username = 'planter'",
    )
    .await;
    assert_eq!(
        theirs, 0,
        "the visitor's link went to the planted session's account"
    );
}

/// Targets are stored normalised (punycode host, percent-encoded path): a search finds them
/// as the person typed them.
#[tokio::test]
async fn a_search_finds_a_target_as_it_was_typed() {
    let app = spawn_app().await;
    let mut b = signed_up(&app, "typed").await;
    let (_, home) = b.get("/").await;
    let res = b
        .submit(
            &home,
            "/ui/shorten",
            &[("original_url", "https://bücher.example/neue liste")],
        )
        .await;
    assert_eq!(res.status(), 201);
    for q in ["bücher", "BÜCHER.example", "neue%20liste", "neue liste"] {
        let path = format!(
            "/ui/links?q={}",
            url::form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
        );
        let (_, found) = b.get(&path).await;
        assert!(found.contains("1 link<"), "{q}: {found}");
    }
    let (_, none) = b.get("/ui/links?q=nowhere").await;
    assert!(!none.contains("1 link<"), "{none}");
}

/// Another app of the domain may set a cookie whose value is not ASCII; browsers send it as
/// its bytes beside ours. It hides neither the session nor the form token.
#[tokio::test]
async fn a_cookie_value_that_is_not_ascii_hides_none_of_ours() {
    let app = spawn_app().await;
    let mut b = signed_up(&app, "accented").await;
    b.planted = vec![("pref".into(), "José".into())];
    let (_, home) = b.get("/").await;
    assert!(home.contains("accented"), "the session was lost: {home}");
    let res = b
        .submit(
            &home,
            "/ui/shorten",
            &[("original_url", "https://example.com/accented")],
        )
        .await;
    assert_eq!(res.status(), 201, "the form token was lost");
    assert_eq!(link_count(&app).await, 1);
}

/// A sibling subdomain can set the form token (`Domain=`) for a visitor who has none yet and
/// post with the same value: the browser sends that post as `same-site`, and it is refused,
/// so the visitor is neither logged in to the planter's account nor made to fail log-ins.
#[tokio::test]
async fn a_post_a_sibling_site_made_with_a_token_it_planted_is_refused() {
    let app = spawn_app().await;
    signed_up(&app, "planter2").await;
    let planted = "b".repeat(64);
    let body = format!("csrf={planted}&account=planter2&password=long+enough+pw");
    let post = |site: &'static str| {
        app.client
            .post(app.url("/login"))
            .header("cookie", format!("csrf={planted}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-site", site)
            .body(body.clone())
            .send()
    };
    for site in ["same-site", "cross-site"] {
        let res = post(site).await.unwrap();
        assert_eq!(res.status(), 403, "{site}");
        let set: Vec<_> = res.headers().get_all("set-cookie").iter().collect();
        assert!(set.is_empty(), "{site}: {set:?}");
    }
    // The same post from kurz's own page logs in: the refusal is the site's, not the token's.
    let res = post("same-origin").await.unwrap();
    assert_eq!(res.status(), 303);
}

/// With two session cookies (one planted beside the visitor's) the page sees nobody, yet the
/// log-out still ends the visitor's session in Redis, not only in the browser.
#[tokio::test]
async fn a_log_out_beside_a_planted_session_still_ends_the_visitors() {
    let app = spawn_app().await;
    let planter = signed_up(&app, "planter3").await;
    let mut b = signed_up(&app, "visitor3").await;
    let own = b.cookies["kurz_session"].clone();
    b.planted = vec![(
        "kurz_session".into(),
        planter.cookies["kurz_session"].clone(),
    )];
    let (_, home) = b.get("/").await;
    assert_eq!(b.submit(&home, "/logout", &[]).await.status(), 303);
    let mut later = Browser::new(&app);
    later.cookies.insert("kurz_session".into(), own);
    let (_, home) = later.get("/").await;
    assert!(!home.contains("visitor3"), "the session lived on: {home}");
}

/// Bytes that are not UTF-8 in a form are refused by field, not replaced: two different
/// passwords would otherwise hash the same.
#[tokio::test]
async fn a_form_field_that_is_not_utf8_is_refused_by_name() {
    let app = spawn_app().await;
    let mut b = Browser::new(&app);
    let (_, page) = b.get("/register").await;
    let body = format!(
        "csrf={}&username=bytes1&email=bytes1%40example.com&password=long+enough+pw%FF%FE",
        csrf_of(&page)
    );
    let res = app
        .client
        .post(app.url("/register"))
        .header("cookie", b.cookie_header())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let text = res.text().await.unwrap();
    assert!(
        text.contains("Password") && text.contains("UTF-8"),
        "{text}"
    );
    assert_eq!(number(&app, "SELECT count(*) FROM users").await, 0);
}

/// A page that fails answers as the JSON API would besides its body: a 503 says when to retry
/// (`Retry-After`), as the API's own 503 does.
#[tokio::test]
async fn a_page_the_database_cannot_serve_says_when_to_retry() {
    let app = spawn_app_with(|c| crate::helpers::request_pool(c, 1, 300)).await;
    let b = signed_up(&app, "retrier").await;
    // The pool's one connection, which the outbox replay and the click consumer take too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let held = loop {
        match app.state.db.get().await {
            Ok(held) => break held,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
    };
    let res = b.fetch("/ui/links").await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "2");
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    drop(held);
}

/// A page request abandoned at `limits.request_timeout_ms` (here a log-in waiting for a
/// password-hash slot, as in a flood of them) is answered with a page saying to retry, not with
/// the API's JSON, which a browser shows as text.
#[tokio::test]
async fn a_page_past_its_deadline_is_a_page_saying_to_retry() {
    let app = spawn_app_with(|c| {
        crate::helpers::request_deadline(c, 1_000);
    })
    .await;
    let _ = signed_up(&app, "lateweb").await;
    let held = app.state.auth.passwords.occupy_all().await;
    let mut b = Browser::new(&app);
    let res = b.log_in("lateweb", "long enough pw").await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = res.text().await.unwrap();
    assert!(page.contains("retry shortly"), "{page}");
    drop(held);
}

/// A form's address opened as a page (the address bar after the form's answer, a restored tab)
/// leads to the page the form is on, not to a JSON 405 shown as text.
#[tokio::test]
async fn a_forms_address_opened_as_a_page_leads_back_to_its_page() {
    let app = spawn_app().await;
    for (path, to) in [
        ("/ui/shorten", "/"),
        ("/logout", "/"),
        ("/ui/links/12/edit", "/ui/links/12"),
        ("/ui/links/12/state", "/ui/links/12"),
        ("/ui/links/abc/edit", "/ui/links"),
    ] {
        // The app's client follows no redirect.
        let res = app.get(path).await;
        assert_eq!(res.status(), 303, "{path}");
        assert_eq!(res.headers()["location"], to, "{path}");
    }
}

/// A list page past the last (its last link switched off from it, a typed `page`) leads to the
/// last page, keeping the filters, instead of an empty list with no way back.
#[tokio::test]
async fn a_page_past_the_last_leads_to_the_last() {
    let app = spawn_app().await;
    let mut b = signed_up(&app, "pager").await;
    let user = number(&app, "SELECT id FROM users WHERE username = 'pager'").await;
    for i in 0..21 {
        app.create_url(user, &format!("https://example.com/p{i}"))
            .await;
    }
    let (status, page) = b.get("/ui/links?state=active&page=2").await;
    assert_eq!(status, 200);
    assert!(page.contains("Page 2 of 2"), "{page}");
    let res = b.fetch("/ui/links?state=active&page=7").await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/ui/links?state=active&page=2");
}

/// The value of the hidden field `name` in `page`.
fn hidden_of<'p>(page: &'p str, name: &str) -> &'p str {
    let tag = format!("type=\"hidden\" name=\"{name}\" value=\"");
    let at = page
        .find(&tag)
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        + tag.len();
    &page[at..at + page[at..].find('"').unwrap()]
}

/// The home form sent as a browser sends it: every hidden field of the page with the typed ones.
async fn shorten_form(b: &mut Browser<'_>, home: &str, typed: &[(&str, &str)]) -> Response {
    let mut fields: Vec<(&str, &str)> = vec![("form_id", hidden_of(home, "form_id"))];
    if home.contains("name=\"as\"") {
        fields.push(("as", hidden_of(home, "as")));
    }
    fields.extend_from_slice(typed);
    b.submit(home, "/ui/shorten", &fields).await
}

/// A double click on "Shorten", or a reload of its answer, sends the page's form twice: one
/// link, and both answers show it (a custom code is not "already taken" by its own maker).
/// The same page sent with other fields (kept by the back button) is a new link.
#[tokio::test]
async fn the_same_shorten_form_sent_twice_makes_one_link() {
    let app = spawn_app().await;
    let visitors = [Browser::new(&app), signed_up(&app, "doubler").await];
    for (code, mut b) in ["anon2x", "mine2x"].into_iter().zip(visitors) {
        let before = link_count(&app).await;
        let (_, home) = b.get("/").await;
        // An empty field is no field: the two are one create.
        for typed in [
            &[("original_url", "https://example.com/twice")][..],
            &[
                ("original_url", "https://example.com/twice"),
                ("short_code", ""),
            ][..],
        ] {
            let first = shorten_form(&mut b, &home, typed).await;
            assert_eq!(first.status(), 201);
            let first = first.text().await.unwrap();
            let again = shorten_form(&mut b, &home, typed).await;
            assert_eq!(again.status(), 201);
            let tag = "<output id=\"short_url\"><a href=\"";
            let url = |page: &str| {
                let at = page.find(tag).expect("the link is shown") + tag.len();
                page[at..at + page[at..].find('"').unwrap()].to_owned()
            };
            assert_eq!(url(&again.text().await.unwrap()), url(&first));
        }
        let custom = [
            ("original_url", "https://example.com/custom"),
            ("short_code", code),
        ];
        assert_eq!(shorten_form(&mut b, &home, &custom).await.status(), 201);
        assert_eq!(shorten_form(&mut b, &home, &custom).await.status(), 201);
        // Another target from the same page: its own link.
        let other = [("original_url", "https://example.com/other")];
        assert_eq!(shorten_form(&mut b, &home, &other).await.status(), 201);
        assert_eq!(link_count(&app).await - before, 3, "{code}");
    }
}

/// A form filled in while logged in and sent after the session ended (here a password change
/// from the API, which ends every session) makes no link: made, it would belong to no one and
/// its maker could never find, edit or delete it. The form comes back with what was typed.
#[tokio::test]
async fn a_form_sent_after_the_session_ended_makes_no_ownerless_link() {
    let app = spawn_app().await;
    let mut b = signed_up(&app, "lapsed").await;
    let (_, home) = b.get("/").await;
    let login = app
        .post_json(
            "/auth/login",
            &serde_json::json!({"username": "lapsed", "password": "long enough pw"}),
        )
        .await;
    let token: serde_json::Value = login.json().await.unwrap();
    let res = app
        .client
        .put(app.url("/auth/password"))
        .bearer_auth(token["token"].as_str().unwrap())
        .json(&serde_json::json!({
            "current_password": "long enough pw", "new_password": "another long pw"
        }))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let before = link_count(&app).await;
    let typed = [("original_url", "https://example.com/after-the-session")];
    let res = shorten_form(&mut b, &home, &typed).await;
    assert_eq!(res.status(), 401);
    let page = res.text().await.unwrap();
    assert!(page.contains("session has ended"), "{page}");
    assert!(
        page.contains("value=\"https://example.com/after-the-session\""),
        "what was typed is kept: {page}"
    );
    assert_eq!(link_count(&app).await, before, "no link was made");
    // The form it answered with is still theirs: sent as it is, refused again.
    let res = shorten_form(&mut b, &page, &typed).await;
    assert_eq!(res.status(), 401);
    assert_eq!(link_count(&app).await, before, "no link was made");
    // Logged in again, the page's new form makes it, theirs.
    assert_eq!(b.log_in("lapsed", "another long pw").await.status(), 303);
    let (_, home) = b.get("/").await;
    assert_eq!(shorten_form(&mut b, &home, &typed).await.status(), 201);
    let owner: Option<i64> = app
        .sql()
        .await
        .query_one(
            "SELECT user_id FROM urls WHERE original_url = 'https://example.com/after-the-session'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(owner.is_some(), "the link is its maker's");
}

/// A mistyped page address shows a page, not the API's JSON as text.
#[tokio::test]
async fn a_mistyped_page_address_is_a_page() {
    let app = spawn_app().await;
    for path in ["/ui/nope", "/ui/link/5"] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 404, "{path}");
        let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(kind.starts_with("text/html"), "{path}: {kind}");
    }
    // In the visitor's own header: still logged in.
    let mut b = signed_up(&app, "mistyper").await;
    let (status, page) = b.get("/ui/nope").await;
    assert_eq!(status, 404);
    assert!(page.contains("mistyper"), "{page}");
    // Not a page's: the JSON error, as before.
    let res = app.get("/users/1/nothing").await;
    assert_eq!(res.headers()["content-type"], "application/json");
}

/// A home page left open while the visitor logged in (in another tab, here the same browser):
/// its form's token was replaced, so the post is refused. Sent from our own page, the form
/// comes back as typed, with the token now in force, and goes through when sent again. The
/// same post made by another site gets the bare refusal, without the form.
#[tokio::test]
async fn an_expired_shorten_form_comes_back_as_typed() {
    let app = spawn_app().await;
    signed_up(&app, "tabs").await;
    let mut b = Browser::new(&app);
    let (_, stale) = b.get("/").await;
    assert_eq!(b.log_in("tabs", "long enough pw").await.status(), 303);
    let typed = "https://example.com/typed-before-the-log-in";
    let token = csrf_of(&stale);
    let fields = [("csrf", token.as_str()), ("original_url", typed)];
    let post = |site: &'static str| {
        b.form_request("/ui/shorten", &fields)
            .header("sec-fetch-site", site)
            .send()
    };
    let before = link_count(&app).await;
    let res = post("same-origin").await.unwrap();
    assert_eq!(res.status(), 403);
    let again = res.text().await.unwrap();
    assert!(again.contains(&format!("value=\"{typed}\"")), "{again}");
    assert!(again.contains("This form expired"), "{again}");
    assert_ne!(csrf_of(&again), csrf_of(&stale), "the token now in force");
    let res = post("cross-site").await.unwrap();
    assert_eq!(res.status(), 403);
    assert!(!res.text().await.unwrap().contains(typed));
    assert_eq!(link_count(&app).await, before, "nothing was made");
    // Sent again as a browser sends it: made, the user's now logged in.
    let res = shorten_form(&mut b, &again, &[("original_url", typed)]).await;
    assert_eq!(res.status(), 201);
    let owner: Option<String> = app
        .sql()
        .await
        .query_one(
            "SELECT u.username FROM urls l JOIN users u ON u.id = l.user_id \
             WHERE l.original_url = $1",
            &[&typed],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner.as_deref(), Some("tabs"));
}

/// A double click on Delete sends two posts at once: both find the link there and both wait
/// for its row while the first delete runs. The second then finds it deleted: both answer
/// the same 303, neither a page saying there is no such link. (Here the row is held, and
/// deleted, by a transaction of the test's, so both posts are surely waiting on it.)
#[tokio::test]
async fn two_deletes_of_one_link_at_once_both_answer_done() {
    let app = spawn_app().await;
    let mut b = signed_up(&app, "doubledel").await;
    shorten_on_the_home_page(&mut b, &["twodel"]).await;
    let id = id_of(&app, "twodel").await;
    let (_, confirm) = b.get(&format!("/ui/links/{id}/delete")).await;
    let mut holder = app.sql().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM urls WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .unwrap();
    let path = format!("/ui/links/{id}/delete");
    let token = csrf_of(&confirm);
    let post = || b.form_request(&path, &[("csrf", &token)]).send();
    // Once both posts wait on the row, it is deleted and let go.
    let release = async {
        crate::helpers::wait_for_lock_waits(&app, 2, "the two deletes").await;
        tx.execute("UPDATE urls SET deleted_at = now() WHERE id = $1", &[&id])
            .await
            .unwrap();
        tx.commit().await.unwrap();
    };
    let ((first, second), ()) = tokio::join!(futures_util::future::join(post(), post()), release);
    for res in [first.unwrap(), second.unwrap()] {
        assert_eq!(res.status(), 303);
        assert_eq!(res.headers()["location"], "/ui/links");
    }
}

/// Posts the log-in `page`'s form as `returner` with `password`, asking to go back to `next`.
async fn log_in_back(b: &mut Browser<'_>, page: &str, password: &str, next: &str) -> Response {
    let fields = [
        ("account", "returner"),
        ("password", password),
        ("next", next),
    ];
    b.submit(page, "/login", &fields).await
}

/// A page asked for logged out sends to log in and, once logged in, back to that page (path
/// and query); an address that is not one of our pages is never where a log-in goes.
#[tokio::test]
async fn logging_in_goes_back_to_the_page_asked_for() {
    let app = spawn_app().await;
    signed_up(&app, "returner").await;
    let mut b = Browser::new(&app);
    let res = b.fetch("/ui/keys?x=1").await;
    assert_eq!(res.status(), 303);
    assert_eq!(
        res.headers()["location"],
        "/login?next=%2Fui%2Fkeys%3Fx%3D1"
    );
    let (_, page) = b.get("/login?next=%2Fui%2Fkeys%3Fx%3D1").await;
    assert!(
        page.contains("name=\"next\" value=\"/ui/keys?x=1\""),
        "{page}"
    );
    let res = log_in_back(&mut b, &page, "wrong password", "/ui/keys?x=1").await;
    assert_eq!(res.status(), 401);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("name=\"next\" value=\"/ui/keys?x=1\""),
        "kept: {page}"
    );
    let res = log_in_back(&mut b, &page, "long enough pw", "/ui/keys?x=1").await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/ui/keys?x=1");

    for elsewhere in [
        "//evil.example/ui",
        "https://evil.example/ui",
        "/\\evil.example",
        "/ui\\..\\x",
        "/uix",
        "/ui/ spaced",
        "/static/app.js",
        "/ui/../abc123",
        "/ui/%2e%2e/abc123",
        "/ui/.%2E/abc123",
        "/ui/keys/./../../abc123",
    ] {
        let mut b = Browser::new(&app);
        let (_, page) = b.get("/login").await;
        assert!(!page.contains("name=\"next\""));
        let res = log_in_back(&mut b, &page, "long enough pw", elsewhere).await;
        assert_eq!(res.headers()["location"], "/", "{elsewhere}");
    }
}

/// The value a page's form shows in the input named `name`.
fn input_of<'p>(page: &'p str, name: &str) -> &'p str {
    let tag = tag_of(page, name);
    let value = tag.find("value=\"").map_or("", |v| &tag[v + 7..]);
    &value[..value.find('"').unwrap_or(0)]
}

/// The edit form of `page` sent as a browser sends it: what it shows (its hidden copies of the
/// values shown too), changed by `typed`.
async fn edit_form(b: &mut Browser<'_>, page: &str, id: i64, typed: &[(&str, &str)]) -> Response {
    let shown = ["original_url", "title", "tags", "expires_at", "max_visits"];
    let copies: Vec<(String, &str)> = shown
        .iter()
        .chain(&["redirect_type"])
        .map(|n| {
            let copy = format!("shown_{n}");
            let value = hidden_of(page, &copy);
            (copy, value)
        })
        .collect();
    let mut fields: Vec<(&str, &str)> = shown
        .iter()
        .filter(|n| !typed.iter().any(|(t, _)| t == *n))
        .map(|n| (*n, input_of(page, n)))
        .collect();
    fields.extend(copies.iter().map(|(n, v)| (n.as_str(), *v)));
    if !typed.iter().any(|(t, _)| *t == "password") {
        fields.push(("password", ""));
    }
    if !typed.iter().any(|(t, _)| *t == "redirect_type") {
        let selected = page.find("\" selected>").expect("a redirect chosen");
        fields.push(("redirect_type", &page[selected - 3..selected]));
    }
    fields.extend_from_slice(typed);
    b.submit(page, &format!("/ui/links/{id}/edit"), &fields)
        .await
}

/// `GET /urls/<id>`'s answer.
async fn link_json(app: &TestApp, id: i64) -> serde_json::Value {
    app.get(&format!("/urls/{id}")).await.json().await.unwrap()
}

async fn updated_events(app: &TestApp, id: i64) -> i64 {
    let sql = format!("SELECT count(*) FROM events WHERE url_id = {id} AND event_type = 'updated'");
    number(app, &sql).await
}

/// Tags, expiry, visit limit, redirect status and password are set from a link's page, shown
/// there and in the list, and the form sent back as shown changes nothing, even once expired.
#[tokio::test]
async fn a_links_settings_are_shown_and_edited_from_its_page() {
    let app = spawn_app().await;
    let mut b = signed_up(&app, "settler").await;
    shorten_on_the_home_page(&mut b, &["websettings"]).await;
    let id = id_of(&app, "websettings").await;
    let path = format!("/ui/links/{id}");
    let (_, page) = b.get(&path).await;
    assert!(
        page.contains("<dt>Expires</dt><dd><span class=\"muted\">never"),
        "{page}"
    );
    assert!(page.contains("302 Found (the default)</option>"), "{page}");

    // A datetime-local input leaves out zero seconds.
    let res = edit_form(
        &mut b,
        &page,
        id,
        &[
            ("tags", " Launch, q3 ,launch"),
            ("expires_at", "2030-01-31T12:00"),
            ("max_visits", "5"),
            ("redirect_type", "301"),
            ("password", "open sesame"),
        ],
    )
    .await;
    assert_eq!(res.status(), 303);
    let link = link_json(&app, id).await;
    assert_eq!(link["tags"], serde_json::json!(["launch", "q3"]), "{link}");
    assert_eq!(link["expires_at"], "2030-01-31T12:00:00");
    assert_eq!(
        (link["max_visits"].as_i64(), link["redirect_type"].as_i64()),
        (Some(5), Some(301))
    );
    assert_eq!(link["has_password"], true);

    let (_, page) = b.get(&path).await;
    assert!(page.contains("href=\"/ui/links?tag=launch\""), "{page}");
    assert!(page.contains("2030-01-31 12:00:00 UTC"), "{page}");
    assert!(page.contains("0 of 5 used"), "{page}");
    assert!(page.contains("asked before the redirect"), "{page}");
    // As a browser sends it back untouched: no seconds when they are zero.
    assert_eq!(input_of(&page, "expires_at"), "2030-01-31T12:00");
    assert_eq!(input_of(&page, "tags"), "launch, q3");
    let (_, list) = b.get("/ui/links").await;
    assert!(list.contains(">q3</a>"), "{list}");
    let (_, tagged) = b.get("/ui/links?tag=q3").await;
    assert!(tagged.contains("1 link<"), "{tagged}");

    // Sent back as shown: nothing changes, the password is kept.
    let before = updated_events(&app, id).await;
    let res = edit_form(&mut b, &page, id, &[]).await;
    assert_eq!(res.status(), 303);
    assert_eq!(updated_events(&app, id).await, before, "nothing changed");
    assert_eq!(
        app.get("/websettings").await.status(),
        200,
        "the password page"
    );

    // Changed elsewhere after the page was shown (another tab, an API client): the page's
    // form, sent to fix the title, changes the title only.
    let res = app
        .put_json(
            &format!("/urls/{id}"),
            &serde_json::json!({"max_visits": 9, "tags": ["launch", "q3", "q4"]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = edit_form(&mut b, &page, id, &[("title", "Fixed")]).await;
    assert_eq!(res.status(), 303);
    let link = link_json(&app, id).await;
    assert_eq!(
        (link["title"].as_str(), link["max_visits"].as_i64()),
        (Some("Fixed"), Some(9)),
        "{link}"
    );
    assert_eq!(link["tags"].as_array().map(Vec::len), Some(3), "{link}");
    assert_eq!(
        updated_events(&app, id).await,
        before + 3,
        "two by the API, one by the form"
    );
    let (_, page) = b.get(&path).await;
    let before = updated_events(&app, id).await;

    // Refused: each bad field marked for assistive technology, the first one focused, what was
    // typed kept, nothing stored.
    let res = edit_form(&mut b, &page, id, &[("tags", "a/b"), ("max_visits", "0")]).await;
    assert_eq!(res.status(), 400);
    let refused = res.text().await.unwrap();
    assert!(refused.contains("Tags: a tag holds"), "{refused}");
    assert!(refused.contains("Visit limit: "), "{refused}");
    assert_marked(
        &refused,
        &[
            ("tags", true, true),
            ("max_visits", true, false),
            ("expires_at", false, false),
        ],
    );
    assert_eq!(input_of(&refused, "tags"), "a/b");
    assert_eq!(updated_events(&app, id).await, before);

    // A new password and its removal together is a question, not a guess.
    let res = edit_form(
        &mut b,
        &page,
        id,
        &[("password", "x2"), ("remove_password", "on")],
    )
    .await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("not both"));
    let res = edit_form(&mut b, &page, id, &[("remove_password", "on")]).await;
    assert_eq!(res.status(), 303);
    let (_, page) = b.get(&path).await;
    assert!(!page.contains("remove_password"), "{page}");
    assert_eq!(app.get("/websettings").await.status(), 301);

    // A page shown before the form had these fields sends only target and title: the rest
    // stays as it is.
    let res = b
        .submit(
            &page,
            &format!("/ui/links/{id}/edit"),
            &[("original_url", "https://example.com/moved"), ("title", "")],
        )
        .await;
    assert_eq!(res.status(), 303);
    let link = link_json(&app, id).await;
    assert_eq!(
        (
            link["tags"].as_array().map(Vec::len),
            link["max_visits"].as_i64()
        ),
        (Some(3), Some(9))
    );

    // Once expired, its page's form still goes back as shown: the past expiry is the one it has.
    expire_behind_the_api(&app, id).await;
    let (_, page) = b.get(&path).await;
    let res = edit_form(&mut b, &page, id, &[("title", "Still mine")]).await;
    assert_eq!(res.status(), 303);
    let (_, page) = b.get(&path).await;
    assert!(page.contains("Still mine"), "{page}");
    // Cleared: empty is never and no limit.
    let res = edit_form(&mut b, &page, id, &[("expires_at", ""), ("max_visits", "")]).await;
    assert_eq!(res.status(), 303);
    let link = link_json(&app, id).await;
    assert!(
        link.get("expires_at").is_none() && link["max_visits"].is_null(),
        "{link}"
    );
}
