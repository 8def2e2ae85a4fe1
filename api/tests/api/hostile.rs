//! Hostile input: control characters and NUL in every field that reaches PostgreSQL or a
//! header, malformed numbers, overflowing pages. Each is a 400 naming the field, never a 500,
//! and nothing is stored; every accepted target redirects.

use crate::helpers::{error_of, spawn_app, spawn_app_with};
use serde_json::{json, Value};

#[tokio::test]
async fn targets_with_control_characters_are_refused_and_never_stored() {
    let app = spawn_app().await;
    let user = app.create_user("ctl").await;
    for bad in [
        "https://example.com/a\nb",
        "https://example.com/a\rb",
        "https://example.com/a\u{1}b",
        "https://example.com/a\u{7f}b",
        "https://example.com/\r\nSet-Cookie: x=1",
        "https://example.com/a\u{0}b",
    ] {
        let res = app
            .post_json("/urls", &json!({"user_id": user, "original_url": bad}))
            .await;
        let body = error_of(res, 400).await;
        assert!(
            body["details"]["original_url"].is_string(),
            "{bad:?}: {body}"
        );
    }
    let list: Vec<Value> = app.get("/urls").await.json().await.unwrap();
    assert!(list.is_empty(), "{list:?}");
}

#[tokio::test]
async fn accepted_targets_are_stored_normalised_and_redirect() {
    let app = spawn_app().await;
    let user = app.create_user("norm").await;
    for (raw, stored) in [
        ("https://example.com/a b", "https://example.com/a%20b"),
        (
            "https://bücher.example/ä",
            "https://xn--bcher-kva.example/%C3%A4",
        ),
        ("HTTPS://Example.COM", "https://example.com/"),
    ] {
        let link = app.create_url(user, raw).await;
        assert_eq!(link["original_url"], stored, "{raw}");
        let res = app
            .get(&format!("/{}", link["short_code"].as_str().unwrap()))
            .await;
        assert_eq!(res.status(), 302, "{raw}");
        assert_eq!(res.headers()["location"], stored);
    }
    // Updates go through the same door.
    let link = app.create_url(user, "https://example.com/u").await;
    let res = app
        .put_json(
            &format!("/urls/{}", link["id"]),
            &json!({"original_url": "https://example.com/x\ny"}),
        )
        .await;
    error_of(res, 400).await;
    for bad in ["http:example.com", "https://example..com/"] {
        let res = app
            .post_json("/urls", &json!({"user_id": user, "original_url": bad}))
            .await;
        error_of(res, 400).await;
    }
}

#[tokio::test]
async fn private_targets_are_refused_however_they_are_written() {
    let app = spawn_app_with(|c| c.links.allow_private_targets = false).await;
    let user = app.create_user("priv").await;
    for bad in [
        "http://LOCALHOST./",
        "http://localhost.:18080/",
        "http://127.1/",
        "http://0x7f000001/",
        "http://2130706433/",
        "http://017700000001/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::1]/",
        "http://169.254.169.254/",
        "http://example.com@127.0.0.1/",
    ] {
        let res = app
            .post_json("/urls", &json!({"user_id": user, "original_url": bad}))
            .await;
        let body = error_of(res, 400).await;
        assert!(body["details"]["original_url"].is_string(), "{bad}: {body}");
    }
}

#[tokio::test]
async fn nul_anywhere_in_a_json_body_is_a_400_naming_the_field() {
    let app = spawn_app().await;
    let user = app.create_user("nul").await;
    let link = app.create_url(user, "https://example.com/nul").await;
    let cases = [
        (
            "/urls",
            json!({"user_id": user, "original_url": "https://example.com/", "title": "a\u{0}b"}),
            "title",
        ),
        (
            "/events",
            json!({"url_id": link["id"], "event_type": "click", "details": {"k\u{0}": "v"}}),
            "details.k\u{0}",
        ),
        (
            "/events",
            json!({"url_id": link["id"], "event_type": "click", "details": {"k": "v\u{0}"}}),
            "details.k",
        ),
        (
            "/auth/login",
            json!({"email": "a\u{0}@example.com", "password": "whatever1"}),
            "email",
        ),
        (
            "/auth/login",
            json!({"username": "a\u{0}", "password": "whatever1"}),
            "username",
        ),
        (
            "/users",
            json!({"username": "n\u{0}", "email": "n@example.com"}),
            "username",
        ),
    ];
    for (path, body, field) in cases {
        let res = app.post_json(path, &body).await;
        let err = error_of(res, 400).await;
        assert!(
            err["details"][field].is_string(),
            "{path} {body}: {err} should name {field:?}"
        );
    }
}

#[tokio::test]
async fn nul_or_bad_names_in_a_bulk_csv_fail_the_file_naming_the_cell() {
    let app = spawn_app().await;
    let user = app.create_user("bulknul").await;
    let cases: [(&str, String, &str); 4] = [
        (
            "/users/bulk",
            "username,email\nok,ok@example.com\nbad\0,b@example.com\n".into(),
            "username",
        ),
        (
            "/users/bulk",
            "username,email\nsp ace,s@example.com\n".into(),
            "username",
        ),
        (
            "/urls/bulk",
            format!(
                "user_id,short_code,original_url,title\n{user},nulcode1,https://example.com/,t\0\n"
            ),
            "title",
        ),
        (
            "/urls/bulk",
            format!(
                "user_id,short_code,original_url\n{user},nulcode2,\"https://example.com/a\nb\"\n"
            ),
            "original_url",
        ),
    ];
    for (path, csv, column) in cases {
        let res = app.upload(path, csv.clone().into_bytes()).await;
        let err = error_of(res, 400).await;
        assert_eq!(err["details"]["column"], column, "{csv:?}: {err}");
        assert_eq!(
            err["details"]["row"],
            if csv.contains("\nok,") { 2 } else { 1 }
        );
    }
    let users: Vec<Value> = app.get("/users").await.json().await.unwrap();
    assert_eq!(users.len(), 1, "nothing of a refused file was imported");
}

/// A header name is text PostgreSQL receives too (an import updates the columns its file
/// names): NUL there is a 400 naming the header cell, on the admin's bulk load and on anyone's
/// import of a kurz export, and nothing of the file is stored.
#[tokio::test]
async fn nul_in_a_csv_header_fails_the_file_naming_the_cell() {
    let app = spawn_app().await;
    let user = app.create_user("headnul").await;
    let cases = [
        (
            "/urls/bulk".to_owned(),
            format!(
                "user_id,short_code,original_url,x\0y\n{user},nulhdr1,https://example.com/,v\n"
            ),
        ),
        (
            format!("/urls/import?format=csv&user_id={user}"),
            "short_code,original_url,note\0\nnulhdr2,https://example.com/,v\n".to_owned(),
        ),
    ];
    for (path, csv) in cases {
        let err = error_of(app.upload(&path, csv.into_bytes()).await, 400).await;
        let message = err["message"].as_str().unwrap();
        assert!(
            message.contains("NUL") && message.contains("header cell"),
            "{path}: {err}"
        );
    }
    let links: Vec<Value> = app.get("/urls").await.json().await.unwrap();
    assert!(
        links.is_empty(),
        "nothing of a refused file was stored: {links:?}"
    );
}

#[tokio::test]
async fn a_malformed_user_id_is_reported_once_with_what_is_wrong() {
    let app = spawn_app().await;
    for bad in [json!(1e30), json!(-1), json!("1"), json!(1.5)] {
        let res = app
            .post_json(
                "/urls",
                &json!({"user_id": bad, "original_url": "https://example.com/"}),
            )
            .await;
        let err = error_of(res, 400).await;
        let why = err["details"]["user_id"].as_str().unwrap();
        assert!(!why.contains("required"), "{bad}: {why}");
        assert_eq!(
            err["message"].as_str().unwrap().matches("user_id").count(),
            1,
            "{err}"
        );
    }
}

#[tokio::test]
async fn pages_too_large_to_address_are_a_400() {
    let app = spawn_app().await;
    for q in [
        "page=4611686018427387904&per_page=2",
        "page=9223372036854775807&per_page=1000",
        "page=99999999999999999999",
    ] {
        for path in ["/urls", "/users", "/events"] {
            let res = app.get(&format!("{path}?{q}")).await;
            error_of(res, 400).await;
        }
    }
}

/// The client address a redirect's click was stored with, and whether the request id the peer
/// sent was kept.
async fn click_ip(app: &crate::helpers::TestApp, real_ip: &str) -> String {
    let user = app.create_user("ip").await;
    let link = app.create_url(user, "https://example.com/ip").await;
    let res = app
        .client
        .get(app.url(&format!("/{}", link["short_code"].as_str().unwrap())))
        .header("x-real-ip", real_ip)
        .header("x-request-id", "chosen-by-the-peer")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    let kept = res.headers()["x-request-id"] == "chosen-by-the-peer";
    let clicks = app.clicks(link["id"].as_i64().unwrap()).await;
    let ip = clicks[0]["details"]["ip"].as_str().unwrap_or_default();
    format!("{ip} {}", if kept { "id kept" } else { "id replaced" })
}

#[tokio::test]
async fn only_a_trusted_proxy_names_the_client() {
    // Loopback (where the edge runs in tests and in deploy/dev) is trusted by default.
    let app = spawn_app().await;
    assert_eq!(click_ip(&app, "203.0.113.77").await, "203.0.113.0 id kept");
    // A peer not in `trusted_proxies` is the client, whatever header it sends.
    let app = spawn_app_with(|c| c.trusted_proxies = vec!["10.0.0.0/8".into()]).await;
    // Nor its request id, which is its click's identity.
    assert_eq!(
        click_ip(&app, "203.0.113.77").await,
        "127.0.0.0 id replaced"
    );
}

#[tokio::test]
async fn paths_and_queries_that_do_not_decode_get_our_json_error() {
    let app = spawn_app().await;
    for (path, status) in [
        ("/%FF%FE", 400),
        ("/urls/%FF", 400),
        ("/ui/links/%FF", 400),
        // A filter given empty is a mistake, not "no filter".
        ("/urls?user_id=", 400),
        ("/events?url_id=", 400),
        ("/urls/abc", 404),
        ("/users?page=%FF", 400),
        ("/users?page=abc", 400),
        ("/events?url_id=%00", 400),
    ] {
        let res = app.get(path).await;
        let got = res.status().as_u16();
        let body = res.text().await.unwrap();
        assert_eq!(got, status, "{path}: {body}");
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {body:?}: {e}"));
        assert!(v["error"].is_string(), "{path}: {v}");
    }
}

/// Ids in JSON: a whole number written as a float (`7.0`, as Python's `json.dumps` writes one)
/// is that integer; beyond 2^53, where a float no longer holds every integer, it is refused.
#[tokio::test]
async fn ids_sent_as_floats_are_integers_only_where_a_float_is_exact() {
    let app = spawn_app().await;
    let user = app.create_user("floaty").await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user as f64, "original_url": "https://example.com/f"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    for too_big in [1e16, 9_007_199_254_740_994.0] {
        let res = app
            .post_json(
                "/urls",
                &json!({"user_id": too_big, "original_url": "https://example.com/f"}),
            )
            .await;
        let body = error_of(res, 400).await;
        assert!(body["details"]["user_id"].is_string(), "{too_big}: {body}");
    }
}
