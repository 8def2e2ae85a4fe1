//! Links behind a password: a form (or a JSON 401) instead of the redirect, the redirect (303)
//! and its click only after the right password, guesses backing off per link and client, the
//! password never returned nor written to an event, and the preview keeping the target secret.

use crate::helpers::{
    error_of, expire_behind_the_api, spawn_app, spawn_app_with, spawn_app_with_lockout, TestApp,
};
use serde_json::{json, Value};

async fn protected_link(app: &TestApp, password: &str) -> (i64, String) {
    let user = app
        .create_user(&format!("pw{}", rand::random::<u32>()))
        .await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/secret", "title": "Quarterly plan", "password": password}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let link: Value = res.json().await.unwrap();
    assert_eq!(link["has_password"], true);
    assert!(link.get("password").is_none(), "write-only: {link}");
    (
        link["id"].as_i64().unwrap(),
        link["short_code"].as_str().unwrap().to_owned(),
    )
}

/// A browser's token for the form: the `csrf` cookie and the same value in the form's field.
const TOKEN: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

/// A form post as a browser makes it from the form kurz served (with its token), from `ip`
/// when given (a trusted peer's `X-Real-IP`).
fn form_post(app: &TestApp, code: &str, body: &str, ip: Option<&str>) -> reqwest::RequestBuilder {
    let mut req = app
        .client
        .post(app.url(&format!("/{code}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", format!("csrf={TOKEN}"))
        .body(format!("{body}&csrf={TOKEN}"));
    if let Some(ip) = ip {
        req = req.header("x-real-ip", ip);
    }
    req
}

async fn post_form(app: &TestApp, code: &str, body: &str) -> reqwest::Response {
    form_post(app, code, body, None).send().await.unwrap()
}

#[tokio::test]
async fn a_protected_link_redirects_only_after_its_password() {
    let app = spawn_app().await;
    let (id, code) = protected_link(&app, "open sesame").await;

    // A browser gets the form; the target appears nowhere on it.
    let res = app.get(&format!("/{code}")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let page = res.text().await.unwrap();
    assert!(page.contains(&format!("<form method=\"post\" action=\"/{code}\">")));
    assert!(page.contains("<label for=\"password\">"));
    assert!(!page.contains("example.com/secret"));
    // A client asking for JSON gets a 401 saying what to do.
    let res = app
        .client
        .get(app.url(&format!("/{code}")))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let err = error_of(res, 401).await;
    assert_eq!(err["error"], "password_required");

    // Wrong password: 401, the form again, no redirect, no click.
    let res = post_form(&app, &code, "password=open+sesam").await;
    assert_eq!(res.status(), 401);
    assert!(res.text().await.unwrap().contains("not right"));
    // Posted as JSON by a client that accepts anything (curl, fetch): JSON, not the form.
    let res = app
        .post_json(&format!("/{code}"), &json!({"password": "open sesam"}))
        .await;
    assert_eq!(error_of(res, 401).await["error"], "password_required");
    // Right password (form, then JSON): 303 to the target, one click each.
    let res = post_form(&app, &code, "password=open+sesame").await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "https://example.com/secret");
    let res = app
        .post_json(&format!("/{code}"), &json!({"password": "open sesame"}))
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(
        app.clicks(id).await.len(),
        2,
        "one click per unlocked visit"
    );
    // Still protected on the next GET (nothing cached it open).
    assert_eq!(app.get(&format!("/{code}")).await.status(), 200);

    // The preview names neither the target nor the title.
    let res = app
        .client
        .get(app.url(&format!("/{code}+")))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let preview: Value = res.json().await.unwrap();
    assert_eq!(preview["original_url"], Value::Null);
    assert_eq!(preview["title"], Value::Null);
    assert_eq!(preview["has_password"], true);
    let html = app.get(&format!("/{code}+")).await.text().await.unwrap();
    assert!(!html.contains("example.com/secret") && !html.contains("Quarterly"));

    // Removing the password: a plain redirect again; the event says only that it changed.
    let res = app
        .put_json(&format!("/urls/{id}"), &json!({"password": null}))
        .await;
    assert_eq!(res.json::<Value>().await.unwrap()["has_password"], false);
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    let res = app
        .put_json(&format!("/urls/{id}"), &json!({"password": "new one"}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.get(&format!("/{code}")).await.status(), 200);
    assert_eq!(
        post_form(&app, &code, "password=open+sesame")
            .await
            .status(),
        401
    );
    assert_eq!(
        post_form(&app, &code, "password=new+one").await.status(),
        303
    );
    let updated: Vec<Value> = app
        .get(&format!("/events?url_id={id}&event_type=updated"))
        .await
        .json()
        .await
        .unwrap();
    let text = serde_json::to_string(&updated).unwrap();
    assert!(text.contains("has_password"), "{text}");
    assert!(
        !text.contains("new one") && !text.contains("argon2"),
        "{text}"
    );
}

#[tokio::test]
async fn wrong_passwords_back_off_per_link_and_bad_requests_are_clear() {
    let app = spawn_app_with_lockout(|l| {
        l.free_failures = 3;
    })
    .await;
    let (_, code) = protected_link(&app, "right").await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            post_form(&app, &code, "password=wrong")
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 401, 429],
        "locked after the free failures"
    );
    let res = post_form(&app, &code, "password=right").await;
    assert_eq!(
        res.status(),
        429,
        "even the right password waits out the lock"
    );
    assert!(res.headers().contains_key("retry-after"));
    // A person at the form is told so on the form; a client asking for JSON gets our 429.
    let page = res.text().await.unwrap();
    assert!(
        page.contains("Too many wrong passwords. Try again in") && page.contains("<form"),
        "{page}"
    );
    let res = app
        .client
        .post(app.url(&format!("/{code}")))
        .header("accept", "application/json")
        .json(&json!({"password": "right"}))
        .send()
        .await
        .unwrap();
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(error_of(res, 429).await["error"], "rate_limited");
    // The lock keeps the guesser's address out, not the link's visitors elsewhere.
    let res = form_post(&app, &code, "password=right", Some("198.51.100.20"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "a visitor elsewhere was locked out too");

    // Malformed attempts are refused before any check.
    let (_, other) = protected_link(&app, "x").await;
    error_of(post_form(&app, &other, "nopassword=1").await, 400).await;
    let res = app
        .client
        .post(app.url(&format!("/{other}")))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    error_of(res, 415).await;
    // A link without a password takes no POST.
    let user = app.create_user("plain").await;
    let plain = app.create_url(user, "https://example.com/plain").await;
    let res = post_form(&app, plain["short_code"].as_str().unwrap(), "password=x").await;
    assert_eq!(res.headers()["allow"], "GET,HEAD");
    error_of(res, 405).await;
    // Passwords on create: 1 to 128 characters, a string.
    for bad in [json!(""), json!(7), json!("x".repeat(129))] {
        let res = app
            .post_json(
                "/urls",
                &json!({"user_id": user, "original_url": "https://example.com/p", "password": bad}),
            )
            .await;
        let err = error_of(res, 400).await;
        assert!(err["details"]["password"].is_string(), "{bad}: {err}");
    }
}

/// A protected link with `max_visits`: each unlocked visit is counted and recorded, and past
/// the limit the right password gets 410, whether the link's entry is in Redis or not.
#[tokio::test]
async fn a_protected_links_visit_limit_counts_unlocked_visits() {
    let app = spawn_app().await;
    let user = app.create_user("pwlimit").await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/twice", "password": "pw", "max_visits": 2}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let link: Value = res.json().await.unwrap();
    let (id, code) = (
        link["id"].as_i64().unwrap(),
        link["short_code"].as_str().unwrap(),
    );
    // The form's GET puts the link's entry in Redis: the visits go through the visit script.
    assert_eq!(app.get(&format!("/{code}")).await.status(), 200);
    for _ in 0..2 {
        assert_eq!(post_form(&app, code, "password=pw").await.status(), 303);
    }
    let res = post_form(&app, code, "password=pw").await;
    assert_eq!(error_of(res, 410).await["error"], "gone");
    // A used-up link asks for no password, and a wrong one is not checked (nor counted
    // against the visitor's lock-out): it is gone, as its preview and QR code say.
    let res = app.get(&format!("/{code}")).await;
    assert_eq!(error_of(res, 410).await["error"], "gone");
    let runs = app.state.auth.passwords.runs();
    let res = post_form(&app, code, "password=wrong").await;
    assert_eq!(error_of(res, 410).await["error"], "gone");
    assert_eq!(
        app.state.auth.passwords.runs(),
        runs,
        "a password was checked"
    );
    assert_eq!(
        app.clicks(id).await.len(),
        2,
        "each unlocked visit is one click"
    );
    let stored: Value = app.get(&format!("/urls/{id}")).await.json().await.unwrap();
    assert_eq!(stored["visits"], 2, "{stored}");
}

/// The form page runs nothing and cannot be framed; the unlocked visit is a 303 whatever the
/// link's own status; an empty password is a bad request; an expired link is gone, password
/// or not.
#[tokio::test]
async fn the_form_is_inert_the_unlock_is_303_and_an_expired_link_is_gone() {
    let app = spawn_app().await;
    let user = app.create_user("pwkinds").await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/moved", "password": "pw", "redirect_type": 308}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let link: Value = res.json().await.unwrap();
    let (id, code) = (
        link["id"].as_i64().unwrap(),
        link["short_code"].as_str().unwrap().to_owned(),
    );

    let res = app.get(&format!("/{code}")).await;
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("script-src"), "no script allowed: {csp}");
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    assert!(!res.text().await.unwrap().contains("<script"));

    let err = error_of(post_form(&app, &code, "password=").await, 400).await;
    assert!(err["details"]["password"].is_string(), "{err}");
    let res = post_form(&app, &code, "password=pw").await;
    assert_eq!(res.status(), 303, "a 308 would make the browser post again");
    assert_eq!(res.headers()["location"], "https://example.com/moved");

    // Expired in the database, and republished by the next write.
    expire_behind_the_api(&app, id).await;
    let res = app
        .put_json(&format!("/urls/{id}"), &json!({"title": "expired now"}))
        .await;
    assert_eq!(res.status(), 200);
    let res = post_form(&app, &code, "password=pw").await;
    assert_eq!(error_of(res, 410).await["error"], "gone");
    assert_eq!(app.clicks(id).await.len(), 1, "only the unlocked visit");
}

/// An address's count of failures is one for link passwords and logins: guessing at links
/// spends the address's allowance for logins too.
#[tokio::test]
async fn link_guesses_and_logins_share_an_addresss_count() {
    let app = spawn_app_with_lockout(|l| {
        l.free_failures = 100;
        l.free_failures_per_ip = 2;
    })
    .await;
    let (_, code) = protected_link(&app, "right").await;
    let guess = || form_post(&app, &code, "password=wrong", Some("198.51.100.30")).send();
    for _ in 0..3 {
        assert_eq!(guess().await.unwrap().status(), 401);
    }
    let login = |ip: &'static str| {
        app.client
            .post(app.url("/auth/login"))
            .header("x-real-ip", ip)
            .json(&json!({"email": "someone@example.com", "password": "whatever-1"}))
            .send()
    };
    let res = login("198.51.100.30").await.unwrap();
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(error_of(res, 429).await["error"], "rate_limited");
    error_of(login("198.51.100.31").await.unwrap(), 401).await;
}

/// The form carries a CSRF token, and a form post without it (another site's, made to lock
/// visitors' addresses out of logging in) is answered with the form again, 403, and counts
/// against nobody. JSON needs no token: no other site can make a browser send it.
#[tokio::test]
async fn a_form_post_without_the_forms_token_is_refused_and_not_counted() {
    let app = spawn_app_with_lockout(|l| {
        l.free_failures = 2;
        l.free_failures_per_ip = 3;
    })
    .await;
    let (id, code) = protected_link(&app, "right").await;
    let res = app.get(&format!("/{code}")).await;
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with("csrf=") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let token = &cookie["csrf=".len().."csrf=".len() + 64];
    let page = res.text().await.unwrap();
    assert!(
        page.contains(&format!("name=\"csrf\" value=\"{token}\"")),
        "{page}"
    );

    for forged in [
        app.client
            .post(app.url(&format!("/{code}")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("password=wrong"),
        app.client
            .post(app.url(&format!("/{code}")))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", format!("csrf={TOKEN}"))
            .body("password=right&csrf=0000"),
    ] {
        for _ in 0..3 {
            let res = forged.try_clone().unwrap().send().await.unwrap();
            assert_eq!(res.status(), 403);
            assert!(res.text().await.unwrap().contains("This form expired"));
        }
    }
    let res = app
        .client
        .post(app.url(&format!("/{code}")))
        .header("accept", "application/json")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("password=wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res, 403).await["error"], "forbidden");
    assert_eq!(app.clicks(id).await.len(), 0);
    // Nothing was counted: the address can still log in and the right password opens the link.
    let res = app
        .post_json(
            "/auth/login",
            &json!({"email": "nobody@example.com", "password": "whatever-1"}),
        )
        .await;
    error_of(res, 401).await;
    let res = post_form(&app, &code, "password=right").await;
    assert_eq!(res.status(), 303);
    let res = app
        .post_json(&format!("/{code}"), &json!({"password": "right"}))
        .await;
    assert_eq!(res.status(), 303, "JSON needs no token");
}

/// Someone follows a protected link from another site (a web page, webmail) without having
/// been to kurz before: the form's page gives them a token, so the right password opens the
/// link at the first try (the post comes from kurz's own page: `same-origin`).
#[tokio::test]
async fn a_first_visit_from_another_site_unlocks_at_the_first_try() {
    let app = spawn_app().await;
    let (id, code) = protected_link(&app, "right").await;
    let res = app
        .client
        .get(app.url(&format!("/{code}")))
        .header("sec-fetch-site", "cross-site")
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cookie = res
        .headers()
        .get("set-cookie")
        .expect("the form's page sets the token a first visitor lacks")
        .to_str()
        .unwrap()
        .to_owned();
    let token = cookie["csrf=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = res.text().await.unwrap();
    assert!(page.contains(&format!("name=\"csrf\" value=\"{token}\"")));
    let res = app
        .client
        .post(app.url(&format!("/{code}")))
        .header("sec-fetch-site", "same-origin")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", format!("csrf={token}"))
        .body(format!("password=right&csrf={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "https://example.com/secret");
    assert_eq!(app.clicks(id).await.len(), 1);
}

/// The password form's post abandoned at `limits.request_timeout_ms` (waiting for a hash slot,
/// as in a flood of guesses) is answered with a page saying to retry, not with JSON a browser
/// shows as text.
#[tokio::test]
async fn a_password_form_post_past_its_deadline_gets_a_page() {
    let app = spawn_app_with(|c| {
        crate::helpers::request_deadline(c, 1_000);
    })
    .await;
    let (_, code) = protected_link(&app, "open sesame").await;
    let held = app.state.auth.passwords.occupy_all().await;
    let res = post_form(&app, &code, "password=open+sesame").await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(res.text().await.unwrap().contains("retry shortly"));
    drop(held);
    // JSON that `curl -d` labels a form, to an API route, gets its 503 as JSON.
    let mut holder = app.sql().await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE users IN SHARE MODE")
        .await
        .unwrap();
    let res = app
        .client
        .post(app.url("/users"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"username": "formjson", "email": "formjson@example.com"}"#)
        .send()
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(error_of(res, 503).await["error"], "service_unavailable");
}
