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
