//! `?page=N&per_page=M` and the `X-Total-Count` / `Link` headers of lists.

use crate::error::ApiError;
use crate::extract::Query;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// Largest `per_page` accepted.
pub const MAX_PER_PAGE: i64 = 1000;
/// `per_page` when only `page` is given.
pub const DEFAULT_PER_PAGE: i64 = 50;

/// Which slice of a list to return.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
    /// `(page, per_page)` when the client asked for pages.
    requested: Option<(i64, i64)>,
    /// `after_id`: the rows after this id (the list's filter holds it), `limit` of them. A
    /// row deleted between two such pages shifts nothing, where an `OFFSET` page would skip
    /// one, and a deep page reads no skipped rows.
    pub after: Option<i64>,
}

impl Page {
    /// With neither parameter: everything up to `list_limit`. Bad values are a 400.
    pub fn from_query(q: &Query, list_limit: i64) -> Result<Self, ApiError> {
        let page = q.id("page")?;
        let per_page = q.id("per_page")?;
        if let Some(pp) = per_page {
            if pp > MAX_PER_PAGE {
                return Err(ApiError::BadRequest(format!(
                    "query parameter per_page must be at most {MAX_PER_PAGE}"
                )));
            }
        }
        if let Some(after) = after_id(q)? {
            if page.is_some() {
                return Err(ApiError::BadRequest(
                    "query parameters page and after_id both pick the page: give one".into(),
                ));
            }
            return Ok(Self {
                limit: per_page.unwrap_or(DEFAULT_PER_PAGE),
                offset: 0,
                requested: None,
                after: Some(after),
            });
        }
        if page.is_none() && per_page.is_none() {
            return Ok(Self {
                limit: list_limit,
                offset: 0,
                requested: None,
                after: None,
            });
        }
        let page = page.unwrap_or(1);
        let per_page = per_page.unwrap_or(DEFAULT_PER_PAGE);
        // The last row of the page must be addressable: page * per_page is used for the links.
        let offset = page
            .checked_mul(per_page)
            .map(|end| end - per_page)
            .ok_or_else(|| ApiError::BadRequest("query parameter page is too large".into()))?;
        Ok(Self {
            limit: per_page,
            offset,
            requested: Some((page, per_page)),
            after: None,
        })
    }

    /// A 200 with the items as a bare array, `X-Total-Count` and, when there are neighbours,
    /// an RFC 8288 `Link` header. `path` and `query` rebuild the links with the same filters.
    ///
    /// After `after_id`, `total` counts the rows after it (this page and the ones after), and
    /// the `next` link starts after the page's last id.
    pub fn respond(&self, items: Vec<Value>, total: i64, path: &str, query: &Query) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert("x-total-count", HeaderValue::from(total));
        if self.after.is_some() {
            let last = items.last().and_then(|item| item["id"].as_i64());
            if let Some(last) = last.filter(|_| total > items.len() as i64) {
                let next = list_url(path, query, &[("after_id", last), ("per_page", self.limit)]);
                if let Ok(v) = HeaderValue::from_str(&format!("<{next}>; rel=\"next\"")) {
                    headers.insert("link", v);
                }
            }
            return (StatusCode::OK, headers, axum::Json(Value::Array(items))).into_response();
        }
        let (page, per_page) = match self.requested {
            Some(p) => p,
            // An unpaginated list cut at the limit points at the rest in pages of the largest
            // size `per_page` accepts on which the limit is a page boundary.
            None if total > self.limit => {
                let size = (1..=self.limit.min(MAX_PER_PAGE))
                    .rev()
                    .find(|size| self.limit % size == 0)
                    .unwrap_or(1);
                (self.limit / size, size)
            }
            None => (1, self.limit),
        };
        let mut links = Vec::new();
        if page * per_page < total {
            links.push(format!(
                "<{}>; rel=\"next\"",
                page_url(path, query, page + 1, per_page)
            ));
        }
        if self.requested.is_some() && page > 1 {
            links.push(format!(
                "<{}>; rel=\"prev\"",
                page_url(path, query, page - 1, per_page)
            ));
        }
        if !links.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&links.join(", ")) {
                headers.insert("link", v);
            }
        }
        (StatusCode::OK, headers, axum::Json(Value::Array(items))).into_response()
    }
}

/// `after_id`: a whole number from 0 (0 starts the list: ids are positive).
pub fn after_id(q: &Query) -> Result<Option<i64>, ApiError> {
    q.integer_from("after_id", 0, "a whole number from 0")
}

fn page_url(path: &str, query: &Query, page: i64, per_page: i64) -> String {
    list_url(path, query, &[("page", page), ("per_page", per_page)])
}

/// `path` with the query's filters and `picks` (which replace whatever picked the page).
fn list_url(path: &str, query: &Query, picks: &[(&str, i64)]) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in query.pairs() {
        if !matches!(k, "page" | "per_page" | "after_id") {
            ser.append_pair(k, v);
        }
    }
    for (k, v) in picks {
        ser.append_pair(k, &v.to_string());
    }
    format!("{path}?{}", ser.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `next` link of a list cut at `list_limit` is a request `from_query` accepts, and it
    /// starts right after the cut.
    #[test]
    fn a_cut_list_points_at_a_page_that_is_accepted_and_starts_at_the_cut() {
        for limit in [3, 1000, 1500, 2000, 10_000, 1009] {
            let page = Page::from_query(&Query::list(None, &[]).unwrap(), limit).unwrap();
            let res = page.respond(
                Vec::new(),
                limit + 1,
                "/urls",
                &Query::list(Some("q=a"), &["q"]).unwrap(),
            );
            let link = res.headers()["link"].to_str().unwrap().to_owned();
            let target = link
                .strip_prefix("</urls?")
                .and_then(|l| l.strip_suffix(">; rel=\"next\""))
                .unwrap_or_else(|| panic!("{limit}: {link}"));
            assert!(target.starts_with("q=a&"), "{limit}: {link}");
            let next = Page::from_query(&Query::list(Some(target), &["q"]).unwrap(), limit)
                .unwrap_or_else(|e| panic!("{limit}: {link}: {e:?}"));
            assert_eq!(next.offset, limit, "{limit}: {link}");
        }
    }
}
