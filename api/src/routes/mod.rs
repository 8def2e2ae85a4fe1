//! The HTTP surface: one file per resource, wired here.

pub mod auth;
pub mod bulk;
pub mod events;
pub mod health;
mod link_password;
pub(crate) mod openapi;
pub mod preview;
pub mod qr;
mod redirect;
pub mod urls;
pub mod users;

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::Router;

/// Every public route of API.md but `/auth/*`.
pub fn router(state: AppState) -> Router {
    let limits = &state.config.limits;
    let bulk_limit = DefaultBodyLimit::max(limits.bulk_body_bytes);
    let auth_routes = Router::new()
        .route("/register", post(auth::register))
        .route("/login", post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/me", get(auth::me))
        .route("/password", put(auth::change_password))
        .route("/keys", post(auth::create_key).get(auth::list_keys))
        .route("/keys/{id}", delete(auth::delete_key));
    Router::new()
        .nest("/auth", auth_routes.clone())
        .nest("/api/auth", auth_routes)
        .route("/openapi.json", get(openapi::document))
        // The web app's pages: not the API, so not in its OpenAPI document (docs/web.md).
        .merge(crate::web::router())
        .route("/health", get(health::live))
        .route("/health/live", get(health::live))
        .route("/ready", get(health::ready))
        .route("/health/ready", get(health::ready))
        .route("/users", post(users::create).get(users::list))
        .route("/users/bulk", post(bulk::users).layer(bulk_limit))
        .route(
            "/users/{id}",
            get(users::get).put(users::update).delete(users::delete),
        )
        .route("/users/{id}/urls", get(users::urls))
        .route("/urls", post(urls::create).get(urls::list))
        .route("/urls/bulk", post(bulk::urls).layer(bulk_limit))
        .route("/urls/export", get(urls::export))
        .route("/urls/import", post(bulk::import_links).layer(bulk_limit))
        .route(
            "/urls/{id}",
            get(urls::get).put(urls::update).delete(urls::delete),
        )
        .route("/urls/{id}/stats", get(urls::stats))
        .route("/urls/{id}/qr", get(qr::by_id))
        .route("/tags", get(urls::tags))
        .route("/links/create", post(urls::create))
        .route("/links/{id}", get(urls::get))
        .route("/events", get(events::list).post(events::create))
        .route("/events/bulk", post(bulk::events).layer(bulk_limit))
        .route("/{code}", get(redirect::redirect).post(redirect::unlock))
        .route("/{code}/qr", get(qr::by_code))
        .fallback(no_such_route)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(limits.body_bytes))
        .with_state(state)
}

/// No route for the path: the error JSON, or a page where a browser asked for one of the web
/// app's (a mistyped `/ui/...` address showed the JSON as text).
async fn no_such_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let e = ApiError::NotFound("no such route".into());
    if crate::web::is_page(uri.path()) {
        return crate::web::not_a_page(&state, peer, &headers, &e).await;
    }
    axum::response::IntoResponse::into_response(e)
}
