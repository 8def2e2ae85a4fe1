//! The web app in a real browser: Debian's chromium, driven through chromedriver (WebDriver),
//! against the real edge and API on loopback. `deploy/dev test` installs both packages when they
//! are missing; without them this test fails and says so.
//!
//! It also takes the screenshots of every page at desktop and phone width: into
//! `$KURZ_SCREENSHOTS` when set (`docs/screenshots` to refresh the README's), else under the
//! target directory.

use crate::harness::{free_port, Options, Stack};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port, killed with the test.
struct Driver {
    child: Child,
    port: u16,
    _profile: PathBuf,
}

impl Drop for Driver {
    /// Leaves nothing behind, even when the test failed before closing its session: chromium
    /// outlives a killed chromedriver, so its processes (found by their profile directory) are
    /// ended first, then the profile is removed once none is left to write to it.
    fn drop(&mut self) {
        let ours = format!("user-data-dir={}", self._profile.display());
        let _ = Command::new("pkill").args(["-f", &ours]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Command::new("pgrep")
            .args(["-f", &ours])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self._profile);
    }
}

impl Driver {
    fn start() -> Driver {
        for (bin, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: install the Debian package {package} (deploy/dev test does)"
            );
        }
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = std::env::temp_dir().join(format!("kurz-chromium-{port}"));
        Driver {
            child,
            port,
            _profile: profile,
        }
    }

    async fn browser(&self) -> Client {
        self.browser_with(&[]).await
    }

    /// A session whose chromium gets `extra` arguments as well.
    async fn browser_with(&self, extra: &[String]) -> Client {
        // As the machine's notes say: no sandbox as root, and nothing that reaches for the
        // network on its own (it is closed here).
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ]
        .map(String::from)
        .to_vec();
        args.push(format!("--user-data-dir={}", self._profile.display()));
        args.extend_from_slice(extra);
        let caps = json!({
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args }
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a chromium session")
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("KURZ_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Saves the page as `<name>-desktop.png` (1280 wide) and `<name>-mobile.png` (375 wide).
async fn shoot(c: &Client, name: &str) {
    let dir = screenshot_dir();
    for (width, height, kind) in [(1280, 900, "desktop"), (375, 812, "mobile")] {
        c.set_window_size(width, height).await.unwrap();
        let png = c.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(dir.join(format!("{name}-{kind}.png")), png).unwrap();
    }
    c.set_window_size(1280, 900).await.unwrap();
}

/// The element `css` selects, once the page has it (a form post navigates after `click`
/// returns).
async fn find(c: &Client, css: &str) -> fantoccini::elements::Element {
    match c
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(css))
        .await
    {
        Ok(e) => e,
        Err(e) => {
            let page = c.source().await.unwrap_or_default();
            panic!("no {css} ({e}) on {:?}: {page}", c.current_url().await.ok())
        }
    }
}

/// Waits until the page's text contains `needle`; returns the text.
async fn wait_text(c: &Client, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = body(c).await;
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn fill(c: &Client, css: &str, text: &str) {
    let field = find(c, css).await;
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    find(c, css).await.click().await.unwrap();
}

async fn text_of(c: &Client, css: &str) -> String {
    find(c, css).await.text().await.unwrap()
}

/// The page's text now (empty while a navigation replaces the document).
async fn body(c: &Client) -> String {
    match c.find(Locator::Css("body")).await {
        Ok(b) => b.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_up_shortens_follows_switches_off_and_logs_out_in_chromium() {
    // The user is an admin too, so the users page is seen (and shot).
    let stack = Stack::start(Options {
        api_env: vec![("KURZ_ADMINS".into(), "browser@example.com".into())],
        ..Options::default()
    });
    let driver = Driver::start();
    let c = driver.browser().await;
    c.set_window_size(1280, 900).await.unwrap();

    c.goto(&stack.url("/")).await.unwrap();
    assert_eq!(c.title().await.unwrap(), "Shorten a link · kurz");
    shoot(&c, "home").await;

    // Sign up; the form lands back home, logged in.
    click(&c, "a[href='/register']").await;
    find(&c, "#username").await;
    shoot(&c, "register").await;
    fill(&c, "#username", "browser").await;
    fill(&c, "#email", "browser@example.com").await;
    fill(&c, "#password", "a long passphrase").await;
    click(&c, "form.card button[type=submit]").await;
    wait_text(&c, "Logged in as browser").await;

    // Shorten.
    fill(&c, "#original_url", "https://example.com/in-a-browser").await;
    fill(&c, "#short_code", "inchrome1").await;
    click(&c, "form.card button[type=submit]").await;
    assert!(text_of(&c, "#short_url").await.ends_with("/inchrome1"));
    // The page's one script ran (the CSP lets our own file run): the copy button is shown.
    let copy = find(&c, "button.copy").await;
    assert!(
        copy.is_displayed().await.unwrap(),
        "copy button shown by app.js"
    );
    shoot(&c, "created").await;

    // Follow the short link through the edge: a 302 the edge answers (the target is on a
    // network this machine cannot reach, so where the browser ends up is not looked at).
    let follow = stack.get("/inchrome1").await;
    assert_eq!(follow.status(), 302);
    let _ = c.goto(&stack.url("/inchrome1")).await;

    // The link page shows both: the check above as a person's click, and the browser's as a
    // bot's (headless Chrome says so in its user agent, and bots are kept apart).
    c.goto(&stack.url("/ui/links")).await.unwrap();
    shoot(&c, "links").await;
    click(&c, "a.code").await;
    let page = wait_text(&c, "1 click,").await;
    assert!(!page.contains(" 0 from bots"), "{page}");
    shoot(&c, "link").await;

    // A title with markup shows as text and runs nothing.
    fill(&c, "#title", "<script>window.pwned = 1</script>").await;
    click(&c, "form.card button[type=submit]").await;
    wait_text(&c, "<script>window.pwned = 1</script>").await;
    let pwned = c
        .execute("return typeof window.pwned", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, json!("undefined"));

    // Deactivate: the edge stops redirecting once the change reaches it.
    click(&c, "form.inline button").await;
    wait_text(&c, "Activate").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.get("/inchrome1").await.status() != 404 {
        assert!(
            Instant::now() < deadline,
            "the deactivated link still redirects"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Delete asks first.
    click(&c, "a[href$='/delete']").await;
    wait_text(&c, "cannot be undone").await;
    shoot(&c, "delete").await;
    c.back().await.unwrap();

    // Another site's form, posted by this logged-in browser: refused, nothing made.
    let forged = format!(
        "data:text/html,<form method=post action='{}'>\
         <input name=original_url value='https://example.com/forged'></form>\
         <script>document.forms[0].submit()</script>",
        stack.url("/ui/shorten")
    );
    let token_before = c.get_named_cookie("csrf").await.unwrap().value().to_owned();
    c.goto(&forged).await.unwrap();
    wait_text(&c, "Reload the page").await;
    // ... and it did not replace the visitor's token, which would expire their open forms.
    c.goto(&stack.url("/ui/links")).await.unwrap();
    let token_after = c.get_named_cookie("csrf").await.unwrap().value().to_owned();
    assert_eq!(token_before, token_after);
    let list = wait_text(&c, "My links").await;
    assert!(!list.contains("forged"), "{list}");

    // Log out; log in again with the email.
    click(&c, "nav button").await;
    wait_text(&c, "Sign up").await;
    click(&c, "a[href='/login']").await;
    find(&c, "#account").await;
    shoot(&c, "login").await;
    fill(&c, "#account", "browser@example.com").await;
    fill(&c, "#password", "a long passphrase").await;
    click(&c, "form.card button[type=submit]").await;
    wait_text(&c, "Logged in as browser").await;

    // An API key, shown once.
    click(&c, "a[href='/ui/keys']").await;
    fill(&c, "#name", "deploy script").await;
    click(&c, "form.card button[type=submit]").await;
    let key = text_of(&c, "#new_key").await;
    assert!(key.starts_with("kzk_"), "{key}");
    shoot(&c, "keys").await;

    click(&c, "a[href='/ui/users']").await;
    wait_text(&c, "1 in all").await;
    shoot(&c, "users").await;

    c.close().await.unwrap();
}

/// Over plain HTTP on an address other than localhost (a LAN name), browsers give pages no
/// clipboard: the copy buttons stay hidden there rather than shown and doing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_buttons_stay_hidden_where_the_browser_gives_no_clipboard() {
    let stack = Stack::start(Options {
        upstreams: 1,
        ..Options::default()
    });
    let driver = Driver::start();
    let c = driver
        .browser_with(&[format!(
            "--host-resolver-rules=MAP kurz.lan 127.0.0.1:{}",
            stack.http_port
        )])
        .await;
    c.goto("http://kurz.lan/").await.unwrap();
    fill(&c, "#original_url", "https://example.com/on-the-lan").await;
    click(&c, "form.card button[type=submit]").await;
    assert!(text_of(&c, "#short_url").await.contains('/'));
    // The script has run once the page has loaded.
    let deadline = Instant::now() + Duration::from_secs(15);
    while c
        .execute("return document.readyState", vec![])
        .await
        .unwrap()
        != "complete"
    {
        assert!(Instant::now() < deadline, "the page never finished loading");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let copy = find(&c, "button.copy").await;
    assert!(
        !copy.is_displayed().await.unwrap(),
        "a copy button that cannot copy is shown"
    );
    let secure: bool = c
        .execute("return window.isSecureContext", vec![])
        .await
        .unwrap()
        .as_bool()
        .unwrap();
    assert!(
        !secure,
        "the page must be on an insecure origin for this test"
    );
    c.close().await.unwrap();
}

/// A page on another origin for a link to lead to: answers every request with a small page
/// titled `landed`. Returns its port.
async fn landing_page() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let body = "<!doctype html><title>landed</title><p>landed";
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
            });
        }
    });
    port
}

/// A password-protected link, opened in a browser: the form, a wrong password, then the right
/// one leads to the target on another site. Browsers check a page's CSP `form-action` on every
/// redirect after a form post, so a `form-action 'self'` on the form's page would stop the 303
/// to the target, leaving the visitor on the form with the visit already counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_link_unlocks_to_its_target_on_another_site_in_chromium() {
    let stack = Stack::start(Options {
        upstreams: 1,
        ..Options::default()
    });
    let port = landing_page().await;
    let driver = Driver::start();
    // The target needs a public name: chromium resolves this one to the landing page.
    let c = driver
        .browser_with(&[format!(
            "--host-resolver-rules=MAP landing.example 127.0.0.1:{port}"
        )])
        .await;
    let user = stack
        .post(
            "/users",
            json!({"username": "locked", "email": "locked@example.com"}),
        )
        .await;
    let link = stack
        .post(
            "/urls",
            json!({
                "user_id": user["id"],
                "original_url": "http://landing.example/after-the-form",
                "password": "open sesame",
                "max_visits": 1,
            }),
        )
        .await;
    let code = link["short_code"].as_str().unwrap();

    c.goto(&stack.url(&format!("/{code}"))).await.unwrap();
    assert_eq!(c.title().await.unwrap(), "Password needed");
    fill(&c, "#password", "not it").await;
    click(&c, "button[type=submit]").await;
    wait_text(&c, "That password is not right").await;
    fill(&c, "#password", "open sesame").await;
    click(&c, "button[type=submit]").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let at = c.current_url().await.unwrap();
        if at.as_str() == "http://landing.example/after-the-form" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the browser stayed at {at}: {}",
            body(&c).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.title().await.unwrap(), "landed");
    c.close().await.unwrap();
}
