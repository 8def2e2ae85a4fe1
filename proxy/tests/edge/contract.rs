//! The public contract (`docs/API.md`) through the edge: every write answers as the contract
//! says, and every read answers through the edge exactly as the API answers it directly
//! (status, JSON body, content type, pagination headers).

use crate::harness::{Options, Stack};
use serde_json::{json, Value};

/// What a client sees of a response, minus what legitimately differs per hop.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    content_type: String,
    total: Option<String>,
    link: Option<String>,
    location: Option<String>,
    body: Value,
}

async fn seen(res: reqwest::Response) -> Seen {
    let h = res.headers().clone();
    let text = |name: &str| h.get(name).map(|v| v.to_str().unwrap_or("").to_owned());
    let status = res.status().as_u16();
    let bytes = res.bytes().await.unwrap();
    Seen {
        status,
        content_type: text("content-type").unwrap_or_default(),
        total: text("x-total-count"),
        link: text("link"),
        location: text("location"),
        body: if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
        },
    }
}

struct Both<'a> {
    stack: &'a Stack,
    direct: String,
}

impl Both<'_> {
    /// A request through the edge.
    async fn edge(&self, method: &str, path: &str, body: Option<&str>) -> Seen {
        let mut req = self
            .stack
            .client
            .request(method.parse().unwrap(), self.stack.url(path));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        seen(req.send().await.unwrap()).await
    }

    /// A write through the edge that the contract refuses with `status` and error `code`.
    async fn refused(&self, method: &str, path: &str, body: &str, status: u16, code: &str) {
        let res = self.edge(method, path, Some(body)).await;
        assert_eq!(
            (res.status, error_code(&res)),
            (status, code),
            "{method} {path} {body}"
        );
    }

    /// A read through the edge and directly on the API; they must agree. Returns the answer.
    async fn read(&self, path: &str) -> Seen {
        let via_edge = self.edge("GET", path, None).await;
        let direct = seen(
            self.stack
                .client
                .get(format!("{}{path}", self.direct))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            via_edge, direct,
            "GET {path}: the edge and the API disagree"
        );
        via_edge
    }
}

fn error_code(s: &Seen) -> &str {
    s.body["error"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_holds_through_the_edge_as_on_the_api() {
    let stack = Stack::start(Options::default());
    let both = Both {
        direct: format!("http://127.0.0.1:{}", stack.upstreams[0].port),
        stack: &stack,
    };

    // Health.
    assert_eq!(both.read("/health").await.body, json!({"status": "ok"}));

    // Users: create, duplicate, malformed bodies, reads.
    let ann = both
        .edge(
            "POST",
            "/users",
            Some(r#"{"username":"ann","email":"ann@example.com"}"#),
        )
        .await;
    assert_eq!(ann.status, 201, "{ann:?}");
    assert!(ann.content_type.starts_with("application/json"));
    let ann_id = ann.body["id"].as_i64().unwrap();
    both.refused(
        "POST",
        "/users",
        r#"{"username":"ann","email":"other@example.com"}"#,
        409,
        "conflict",
    )
    .await;
    for bad in ["\"ann\"", "[1,2]", "hello", "", "{\"username\":", "null"] {
        both.refused("POST", "/users", bad, 400, "bad_request")
            .await;
    }
    both.refused(
        "POST",
        "/users",
        r#"{"username":42,"email":"x@example.com"}"#,
        400,
        "validation_error",
    )
    .await;
    for i in 0..3 {
        let body = format!(r#"{{"username":"user{i}","email":"user{i}@example.com"}}"#);
        assert_eq!(both.edge("POST", "/users", Some(&body)).await.status, 201);
    }
    assert_eq!(
        both.read(&format!("/users/{ann_id}")).await.body["username"],
        "ann"
    );
    let missing = both.read("/users/999999").await;
    assert_eq!((missing.status, error_code(&missing)), (404, "not_found"));
    let page = both.read("/users?page=2&per_page=2").await;
    assert_eq!(page.total.as_deref(), Some("4"));
    assert_eq!(page.body.as_array().unwrap().len(), 2);
    assert!(page.link.as_deref().unwrap_or("").contains("rel=\"prev\""));
    let bad_page = both.read("/users?page=abc").await;
    assert_eq!(
        (bad_page.status, error_code(&bad_page)),
        (400, "bad_request")
    );
    let renamed = both
        .edge(
            "PUT",
            &format!("/users/{ann_id}"),
            Some(r#"{"username":"anna"}"#),
        )
        .await;
    assert_eq!(
        (renamed.status, &renamed.body["username"]),
        (200, &json!("anna"))
    );

    // URLs: the same target twice makes two codes; bad targets, unknown users, bad details.
    let create =
        |target: &str| format!(r#"{{"user_id":{ann_id},"original_url":"{target}","title":"t"}}"#);
    let first = both
        .edge("POST", "/urls", Some(&create("https://example.com/a")))
        .await;
    let second = both
        .edge("POST", "/urls", Some(&create("https://example.com/a")))
        .await;
    assert_eq!((first.status, second.status), (201, 201));
    assert_eq!(first.body["is_active"], true);
    assert_ne!(first.body["short_code"], second.body["short_code"]);
    let (url_id, code) = (
        first.body["id"].as_i64().unwrap(),
        first.body["short_code"].as_str().unwrap().to_owned(),
    );
    for target in ["hello", "ftp://example.com/x", "javascript:alert(1)"] {
        both.refused("POST", "/urls", &create(target), 400, "validation_error")
            .await;
    }
    both.refused(
        "POST",
        "/urls",
        r#"{"user_id":999999,"original_url":"https://example.com/"}"#,
        404,
        "not_found",
    )
    .await;
    both.refused(
        "POST",
        "/events",
        &format!(r#"{{"url_id":{url_id},"event_type":"click","details":"nope"}}"#),
        400,
        "validation_error",
    )
    .await;
    both.refused(
        "POST",
        "/urls",
        &format!(
            r#"{{"user_id":{ann_id},"original_url":"https://example.com/b","short_code":"{code}"}}"#
        ),
        409,
        "conflict",
    )
    .await;
    let link = both.read(&format!("/urls/{url_id}")).await;
    assert_eq!(link.body["original_url"], "https://example.com/a");
    let listed = both.read(&format!("/urls?user_id={ann_id}")).await;
    assert_eq!(listed.total.as_deref(), Some("2"));
    both.read(&format!("/users/{ann_id}/urls")).await;
    both.read("/links/1").await;

    // Redirects: answered at the edge, recorded once, visible at once in events and stats.
    let redirect = both.edge("GET", &format!("/{code}"), None).await;
    assert_eq!(redirect.status, 302);
    assert_eq!(redirect.location.as_deref(), Some("https://example.com/a"));
    let clicks = both
        .read(&format!("/events?url_id={url_id}&event_type=click"))
        .await;
    assert_eq!(clicks.body.as_array().unwrap().len(), 1, "{clicks:?}");
    assert_eq!(clicks.body[0]["details"]["short_code"], json!(code));
    let stats = both.read(&format!("/urls/{url_id}/stats")).await;
    assert_eq!(stats.body["clicks"], 1);
    let unknown = both.edge("GET", "/Zz9Zz9Z", None).await;
    assert_eq!((unknown.status, error_code(&unknown)), (404, "not_found"));

    // Deactivate: no redirect and no click, through the edge as on the API.
    let off = both
        .edge(
            "PUT",
            &format!("/urls/{url_id}"),
            Some(r#"{"is_active":false}"#),
        )
        .await;
    assert_eq!((off.status, &off.body["is_active"]), (200, &json!(false)));
    assert_eq!(both.read(&format!("/{code}")).await.status, 404);
    let updated = both
        .read(&format!("/events?url_id={url_id}&event_type=updated"))
        .await;
    assert_eq!(updated.body[0]["details"]["field"], "is_active");

    // Delete: gone from reads, a deleted event written.
    assert_eq!(
        both.edge("DELETE", &format!("/urls/{url_id}"), None)
            .await
            .status,
        204
    );
    assert_eq!(both.read(&format!("/urls/{url_id}")).await.status, 404);
    let deleted = both
        .read(&format!("/events?url_id={url_id}&event_type=deleted"))
        .await;
    assert_eq!(deleted.body[0]["details"]["reason"], "user_requested");
    let all = both.read("/events?per_page=100").await;
    assert!(all.total.is_some());

    // Not public through the edge.
    assert_eq!(both.edge("GET", "/metrics", None).await.status, 404);
}
