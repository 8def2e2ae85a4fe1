//! Bodies that are not JSON objects, on every JSON route: 400 with our error JSON, never a 500
//! or axum's plain-text rejection.

use crate::helpers::{error_of, spawn_app};

const BAD_BODIES: &[(&str, &str)] = &[
    ("\"just a string\"", "application/json"),
    ("[1, 2, 3]", "application/json"),
    ("", "application/json"),
    ("hello world", "text/plain"),
    ("{\"username\": \"x\"", "application/json"),
    ("42", "application/json"),
    ("null", "application/json"),
    // A byte-order mark is skipped once, and then the body must still be an object.
    ("\u{feff}", "application/json"),
    ("\u{feff}\u{feff}{}", "application/json"),
];

#[tokio::test]
async fn every_json_route_refuses_bodies_that_are_not_objects() {
    let app = spawn_app().await;
    let user = app.create_user("mal").await;
    let link = app.create_url(user, "https://example.com/m").await;
    let routes = [
        ("POST", "/users".to_owned()),
        ("POST", "/urls".to_owned()),
        ("POST", "/links/create".to_owned()),
        ("POST", "/events".to_owned()),
        ("PUT", format!("/users/{user}")),
        ("PUT", format!("/urls/{}", link["id"])),
    ];
    for (method, path) in &routes {
        for (body, ct) in BAD_BODIES {
            let req = match *method {
                "POST" => app.client.post(app.url(path)),
                _ => app.client.put(app.url(path)),
            };
            let res = req
                .header("content-type", *ct)
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let err = error_of(res, 400).await;
            assert_eq!(
                err["error"], "bad_request",
                "{method} {path} with {body:?}: {err}"
            );
        }
    }
}

/// Windows tools (PowerShell's `Out-File`, Notepad) write JSON with a byte-order mark first;
/// RFC 8259 lets a reader ignore it, and the body is then what it says.
#[tokio::test]
async fn a_json_body_after_a_byte_order_mark_is_read() {
    let app = spawn_app().await;
    let res = app
        .post_raw(
            "/users",
            "\u{feff}{\"username\": \"bom\", \"email\": \"bom@example.com\"}",
            "application/json",
        )
        .await;
    assert_eq!(res.status(), 201);
    let user: serde_json::Value = res.json().await.unwrap();
    assert_eq!(user["username"], "bom");
    let body = format!(
        "\u{feff}{{\"user_id\": {}, \"original_url\": \"https://example.com/bom\", \"password\": \"sesame\"}}",
        user["id"]
    );
    let res = app.post_raw("/urls", &body, "application/json").await;
    assert_eq!(res.status(), 201);
    let link: serde_json::Value = res.json().await.unwrap();
    let code = link["short_code"].as_str().unwrap();
    // The password form of a protected link reads JSON the same way.
    let res = app
        .post_raw(
            &format!("/{code}"),
            "\u{feff}{\"password\": \"sesame\"}",
            "application/json",
        )
        .await;
    assert_eq!(res.status(), 303);
}

#[tokio::test]
async fn oversized_bodies_get_413_json() {
    let app = spawn_app().await;
    let big = format!("{{\"username\": \"{}\"}}", "x".repeat(2 << 20));
    let res = app.post_raw("/users", &big, "application/json").await;
    let err = error_of(res, 413).await;
    assert_eq!(err["error"], "payload_too_large");
    // The routes that read their body as bytes (a protected link's password, the web app's
    // forms) answer the same, whether or not the link or page exists.
    for path in ["/abc1234", "/ui/shorten", "/login", "/ui/links/1/edit"] {
        let res = app
            .post_raw(path, &big, "application/x-www-form-urlencoded")
            .await;
        assert_eq!(
            error_of(res, 413).await["error"],
            "payload_too_large",
            "{path}"
        );
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    let err = error_of(app.get("/users/1/nothing").await, 404).await;
    assert_eq!(err["error"], "not_found");
    let res = app.client.patch(app.url("/users")).send().await.unwrap();
    // A client told 405 learns from `Allow` what it may send instead (RFC 9110 §15.5.6).
    let mut allow: Vec<String> = res.headers()["allow"]
        .to_str()
        .unwrap()
        .split(',')
        .map(|m| m.trim().to_owned())
        .collect();
    allow.sort();
    let err = error_of(res, 405).await;
    assert_eq!(err["error"], "method_not_allowed");
    assert_eq!(allow, ["GET", "HEAD", "POST"], "the methods /users takes");
}
