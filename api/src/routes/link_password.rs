//! Links behind a password: `GET /<code>` answers a form (or a JSON 401), `POST /<code>` with the
//! right password answers the redirect (303, so the browser follows with a GET and the password
//! is never re-sent to the target, as a 307/308 would) and records the click. Guesses back off
//! like logins, per link and per client address (`auth::lockout`).

use super::preview::{escape, html_page, wants_json};
use crate::error::{ApiError, ApiResult};
use crate::web::FormToken;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// What a `POST /<code>` carries.
#[derive(Debug, PartialEq)]
pub struct Submitted {
    pub password: String,
    /// For a form post, its CSRF field (empty when missing): a browser's form post must prove
    /// it came from the form kurz served, or another site could make visitors post wrong
    /// passwords and lock their own address out (the count is shared with logins). `None` for
    /// JSON, which no other site can make a browser send (it would need CORS, which kurz does
    /// not grant).
    pub form_token: Option<String>,
}

/// The password a `POST /<code>` carries: a form field or a JSON member named `password`.
pub fn password_of(headers: &HeaderMap, body: &[u8]) -> ApiResult<Submitted> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let mut form_token = None;
    let password = match content_type.as_str() {
        "application/x-www-form-urlencoded" => {
            let mut password = None;
            let mut token = String::new();
            for (k, v) in url::form_urlencoded::parse(body) {
                if k == "password" {
                    password.get_or_insert(v.into_owned());
                } else if k == crate::web::FORM_TOKEN_FIELD && token.is_empty() {
                    token = v.into_owned();
                }
            }
            form_token = Some(token);
            password
        }
        "application/json" => match serde_json::from_slice::<serde_json::Value>(
            crate::extract::without_bom(body),
        ) {
            Ok(serde_json::Value::Object(mut map)) => match map.remove("password") {
                Some(serde_json::Value::String(p)) => Some(p),
                Some(_) => return Err(ApiError::field("password", "must be a string")),
                None => None,
            },
            _ => {
                return Err(ApiError::BadRequest(
                    "the body must be a JSON object such as {\"password\": \"…\"}".into(),
                ))
            }
        },
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "send the password as application/x-www-form-urlencoded or application/json, not {other:?}"
            )))
        }
    };
    match password {
        Some(password) if !password.is_empty() => Ok(Submitted {
            password,
            form_token,
        }),
        _ => Err(ApiError::field("password", "is required")),
    }
}

/// What the form says above itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The first view.
    First,
    /// The last password was wrong.
    Wrong,
    /// Too many wrong passwords from this address: no password is checked for these seconds.
    Locked(u64),
    /// A form post without the form's CSRF token (an old form, or another site's): not
    /// checked, not counted.
    Expired,
}

/// The answer to a visitor without the right password: the form (HTML), or JSON to a client
/// that asks for it or posted JSON (401, or the 429 of a lock): curl, fetch and most clients
/// send `Accept: */*`, and one that posts JSON reads JSON, as its other errors (400, 415) are.
pub fn ask(headers: &HeaderMap, code: &str, attempt: Attempt, token: &FormToken) -> Response {
    let posted_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if posted_json || wants_json(headers) {
        return match attempt {
            Attempt::First => ApiError::PasswordRequired(format!(
                "short code {code:?} is protected by a password: POST it as {{\"password\": \"…\"}}"
            )),
            Attempt::Wrong => {
                ApiError::PasswordRequired(format!("wrong password for short code {code:?}"))
            }
            Attempt::Locked(wait) => ApiError::TooManyRequests {
                message: format!("too many wrong passwords for short code {code:?}; retry later"),
                retry_after: wait,
            },
            Attempt::Expired => ApiError::Forbidden(format!(
                "a form post to short code {code:?} must carry the form's {:?} field; or POST JSON",
                crate::web::FORM_TOKEN_FIELD
            )),
        }
        .into_response();
    }
    let notice = match attempt {
        Attempt::First => String::new(),
        Attempt::Wrong => {
            "<p role=\"alert\" class=\"wrong\">That password is not right.</p>".to_owned()
        }
        Attempt::Locked(wait) => format!(
            "<p role=\"alert\" class=\"wrong\">Too many wrong passwords. \
             Try again in {} minute{}.</p>",
            wait.div_ceil(60),
            if wait.div_ceil(60) == 1 { "" } else { "s" }
        ),
        Attempt::Expired => "<p role=\"alert\" class=\"wrong\">This form expired. \
             Enter the password again.</p>"
            .to_owned(),
    };
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\">\
         <title>Password needed</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:30em;margin:3em auto;padding:0 1em}}\
         input,button{{font:inherit;padding:.4em}}.wrong{{color:#a00}}</style></head>\
         <body><main><h1>This link is protected</h1>{notice}\
         <form method=\"post\" action=\"/{code}\">\
         <input type=\"hidden\" name=\"{field}\" value=\"{token}\">\
         <label for=\"password\">Password</label><br>\
         <input id=\"password\" name=\"password\" type=\"password\" required autofocus \
         autocomplete=\"current-password\"> <button type=\"submit\">Continue</button>\
         </form></main></body></html>\n",
        code = escape(code),
        field = crate::web::FORM_TOKEN_FIELD,
        token = escape(token.value()),
    );
    // 401 after a wrong password, 429 while locked; the first view is a page like any other.
    let status = match attempt {
        Attempt::First => StatusCode::OK,
        Attempt::Wrong => StatusCode::UNAUTHORIZED,
        Attempt::Locked(_) => StatusCode::TOO_MANY_REQUESTS,
        Attempt::Expired => StatusCode::FORBIDDEN,
    };
    // Nothing runs, no other site may frame it, and no `<base>` can move the form's action. No
    // `form-action`: browsers hold every redirect after the post to it too, and the right
    // password's answer is a 303 to the link's target on another site.
    let mut response = html_page(
        status,
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        page,
    );
    if let Attempt::Locked(wait) = attempt {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    }
    if let Some(set) = token.set_cookie() {
        response.headers_mut().append(header::SET_COOKIE, set);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[test]
    fn the_password_comes_from_a_form_or_json() {
        let form = typed("application/x-www-form-urlencoded; charset=utf-8");
        assert_eq!(
            password_of(&form, b"password=s%C3%A9same+1&csrf=ab").unwrap(),
            Submitted {
                password: "sésame 1".into(),
                form_token: Some("ab".into())
            }
        );
        assert_eq!(
            password_of(&form, b"password=x").unwrap().form_token,
            Some(String::new()),
            "a form post without the field still says it is a form post"
        );
        let json = typed("application/json");
        assert_eq!(
            password_of(&json, br#"{"password":"x","csrf":"ab"}"#).unwrap(),
            Submitted {
                password: "x".into(),
                form_token: None
            }
        );
        assert!(password_of(&form, b"other=1").is_err());
        assert!(password_of(&json, br#"{"password":7}"#).is_err());
        assert!(password_of(&json, b"[").is_err());
        let err = password_of(&typed("text/plain"), b"x").unwrap_err();
        assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
