//! The OpenAPI document (`api/openapi/`) is served as committed, and names every route the
//! router has, with its methods: a route added without documenting it fails here. (That its
//! schemas match what the API answers is the job of the Schemathesis run in `deploy/dev test`.)

use crate::helpers::spawn_app;
use serde_json::Value;

const ROUTER: &str = include_str!("../../src/routes/mod.rs");
const DOCUMENT: &str = include_str!("../../openapi/openapi.json");

/// `(path, methods)` of every `.route(...)` in `text`.
fn routes_in(text: &str) -> Vec<(String, Vec<&'static str>)> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let start = rest.find('"').unwrap() + 1;
        let end = start + rest[start..].find('"').unwrap();
        let path = rest[start..end].to_owned();
        let next = [".route(", ".fallback(", ";"]
            .iter()
            .filter_map(|m| rest.find(m))
            .min()
            .unwrap_or(rest.len());
        let handlers = &rest[end..next];
        let methods = ["get", "post", "put", "delete"]
            .into_iter()
            .filter(|m| {
                handlers
                    .match_indices(&format!("{m}("))
                    .any(|(i, _)| i == 0 || !handlers.as_bytes()[i - 1].is_ascii_alphanumeric())
            })
            .collect();
        found.push((path, methods));
    }
    found
}

#[test]
fn every_route_of_the_router_is_documented_with_its_methods() {
    let doc: Value = serde_json::from_str(DOCUMENT).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // The auth routes are built first and nested under two prefixes.
    let split = ROUTER
        .find(".nest(\"/auth\"")
        .expect("auth routes are nested");
    let (auth, main) = ROUTER.split_at(split);
    let mut routes = Vec::new();
    for (path, methods) in routes_in(auth) {
        for prefix in ["/auth", "/api/auth"] {
            routes.push((format!("{prefix}{path}"), methods.clone()));
        }
    }
    routes.extend(routes_in(main));
    assert!(routes.len() > 30, "the parse found the routes: {routes:?}");
    for (path, methods) in &routes {
        assert!(!methods.is_empty(), "{path}: no method parsed");
        let documented = &doc["paths"][path.as_str()];
        assert!(
            documented.is_object(),
            "{path} is not in api/openapi/openapi.json"
        );
        for m in methods {
            assert!(
                documented[*m].is_object(),
                "{} {path} is not in api/openapi/openapi.json",
                m.to_uppercase()
            );
        }
    }
}

#[tokio::test]
async fn the_document_is_served_as_committed() {
    let app = spawn_app().await;
    let res = app.get("/openapi.json").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let served: Value = res.json().await.unwrap();
    assert_eq!(served, serde_json::from_str::<Value>(DOCUMENT).unwrap());
}

/// Every query parameter the document gives an operation is one the endpoint takes: the API
/// refuses any other name with a 400, so a parameter documented but not accepted (or renamed
/// on one side only) would break every generated client that sends it.
#[tokio::test]
async fn every_documented_query_parameter_is_taken_by_its_endpoint() {
    let app = spawn_app().await;
    let user = app.create_user("doc").await;
    let link = app.create_url(user, "https://example.com/doc").await;
    let doc: Value = serde_json::from_str(DOCUMENT).unwrap();
    let shared = &doc["components"]["parameters"];
    let resolve = |p: &Value| -> Value {
        match p["$ref"].as_str() {
            Some(r) => shared[r.rsplit('/').next().unwrap()].clone(),
            None => p.clone(),
        }
    };
    let mut sent = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{id}", &link["id"].to_string())
            .replace("{code}", link["short_code"].as_str().unwrap());
        let concrete = if path.starts_with("/users/{id}") {
            path.replace("{id}", &user.to_string())
        } else {
            concrete
        };
        for (method, op) in item.as_object().unwrap() {
            let all = op["parameters"].as_array().into_iter().flatten();
            let common = item["parameters"].as_array().into_iter().flatten();
            for p in all.chain(common).map(resolve) {
                if p["in"] != "query" {
                    continue;
                }
                let name = p["name"].as_str().unwrap();
                let value = match name {
                    "user_id" => user.to_string(),
                    "url_id" => link["id"].to_string(),
                    "page" | "per_page" | "limit" => "1".into(),
                    "after_id" => "0".into(),
                    "is_active" | "include_bots" => "true".into(),
                    "tag" => "x".into(),
                    "event_type" => "click".into(),
                    "from" | "to" => "2030-01-01".into(),
                    "size" => "256".into(),
                    "format" if path.contains("qr") => "svg".into(),
                    "format" => "csv".into(),
                    other => panic!("{method} {path}: no sample value for {other}"),
                };
                let url = app.url(&format!("{concrete}?{name}={value}"));
                let res = match method.as_str() {
                    "get" => app.client.get(url),
                    "post" => app.client.post(url),
                    other => panic!("{other} {path} documents a query parameter"),
                }
                .send()
                .await
                .unwrap();
                let status = res.status();
                let body = res.text().await.unwrap();
                assert!(
                    status != 400 || !body.contains("not one this endpoint takes"),
                    "{method} {path}?{name}=: {status} {body}"
                );
                sent += 1;
            }
        }
    }
    assert!(
        sent >= 20,
        "the document's query parameters were found ({sent})"
    );
}
