//! `POST /users/bulk`, `/urls/bulk`, `/events/bulk`: multipart field `file` holding a CSV; and
//! `POST /urls/import`, links exported from other shorteners.

use crate::auth::Caller;
use crate::csv_cell::{bool_cell, defuse, restore};
use crate::error::{ApiError, ApiResult};
use crate::extract::Query;
use crate::import::{self, foreign};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{ConnectInfo, FromRequest, Multipart, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kurz_common::shortcode::ShortCode;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Imports one API process runs at once. Each holds what is parsed from its file (up to
/// `limits.bulk_body_bytes`, and for `/urls/import` at most 100,000 links), checks its rows and
/// then holds a connection through its transaction: any user may import links, and a few dozen
/// imports at once would take the memory and the pool every other request needs.
pub const MAX_CONCURRENT_IMPORTS: usize = 2;

/// Uploads one API process holds at once, each up to `limits.bulk_body_bytes` in memory from
/// the start of its reading to its import's answer (plus the parse of a request dropped
/// meanwhile, which runs to its end). More than the imports, so a slow upload (bounded by the
/// edge's body deadline) holds no import up, and one client address holds one of them at a
/// time ([`one_per_client`]), so holding them all takes as many addresses.
pub const MAX_CONCURRENT_UPLOADS: usize = 4;

/// The client address's upload, held to its answer: the set in `AppState::uploading` lists
/// each address with one under way.
pub struct ClientUpload {
    uploading: Arc<std::sync::Mutex<std::collections::HashSet<IpAddr>>>,
    client: IpAddr,
}

impl Drop for ClientUpload {
    fn drop(&mut self) {
        self.uploading
            .lock()
            .expect("uploading lock")
            .remove(&self.client);
    }
}

/// The request's client address's one upload at a time (an IPv6 /64 counts as one address);
/// 429 while it has another under way.
fn one_per_client(state: &AppState, req: &Request) -> ApiResult<ClientUpload> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
    let client = kurz_common::proxies::client_key(state.proxies.client_ip(peer, req.headers()), 64);
    if !state
        .uploading
        .lock()
        .expect("uploading lock")
        .insert(client)
    {
        return Err(ApiError::TooManyRequests {
            message: "an upload from this address is under way: one at a time".into(),
            retry_after: 2,
        });
    }
    Ok(ClientUpload {
        uploading: state.uploading.clone(),
        client,
    })
}

/// How long an upload or an import waits for its turn before its 503: long enough for imports
/// sent at once from several addresses to be taken one after the other. One address sends one
/// upload at a time ([`one_per_client`]): a loader sends its seed files one after the other.
pub const IMPORT_TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A file received for an import, with the import's turn. What it holds besides is released
/// with it, at the answer: the client address's one upload and the upload's turn.
struct Received {
    bytes: Bytes,
    turn: import::Turn,
    _held: (ClientUpload, tokio::sync::OwnedSemaphorePermit),
}

/// Reads the upload under the client address's one upload and an upload turn, then waits for
/// an import turn.
async fn receive(state: &AppState, req: Request) -> ApiResult<Received> {
    let client = one_per_client(state, &req)?;
    let busy = "every upload turn of this server is taken";
    let upload_turn = crate::state::turn(&state.uploads, IMPORT_TURN_WAIT, busy).await?;
    let bytes = upload(state, req).await?;
    let busy = "every import turn of this server is taken";
    let turn = crate::state::turn(&state.imports, IMPORT_TURN_WAIT, busy).await?;
    Ok(Received {
        bytes,
        turn,
        _held: (client, upload_turn),
    })
}

/// The bytes of the `file` field.
async fn upload(state: &AppState, req: Request) -> ApiResult<Bytes> {
    let mut multipart = Multipart::from_request(req, state)
        .await
        .map_err(|r| match r {
            MultipartRejection::InvalidBoundary(_) => ApiError::UnsupportedMediaType(
                "upload must be multipart/form-data with the CSV in a field named `file`".into(),
            ),
            other => ApiError::BadRequest(other.body_text()),
        })?;
    loop {
        let field = multipart.next_field().await.map_err(too_large_or_bad)?;
        let Some(field) = field else {
            return Err(ApiError::field(
                "file",
                "is required: send the CSV as multipart field `file`",
            ));
        };
        if field.name() == Some("file") {
            return field.bytes().await.map_err(too_large_or_bad);
        }
    }
}

fn too_large_or_bad(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("upload is too large".into())
    } else {
        ApiError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
    }
}

fn created(count: usize) -> Response {
    (StatusCode::CREATED, Json(json!({"count": count}))).into_response()
}

pub async fn users(
    State(state): State<AppState>,
    caller: Caller,
    req: Request,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let Received { bytes, turn, _held } = receive(&state, req).await?;
    let mut client = state.client().await?;
    let count = import::users(&mut client, &bytes, turn, &state.auth.sessions).await?;
    Ok(created(count))
}

pub async fn urls(
    State(state): State<AppState>,
    caller: Caller,
    req: Request,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let Received { bytes, turn, _held } = receive(&state, req).await?;
    let mut client = state.client().await?;
    let imported = import::urls(&mut client, &bytes, &state.targets, turn).await?;
    crate::cache_sync::after_import(&state, &client, &imported).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({"count": imported.count, "needs_password": imported.needs_password})),
    )
        .into_response())
}

pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    req: Request,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let Received { bytes, turn, _held } = receive(&state, req).await?;
    let mut client = state.client().await?;
    Ok(created(import::events(&mut client, &bytes, turn).await?))
}

/// `POST /urls/import?format=bitly|yourls|shlink|kutt|csv` (multipart field `file`): another
/// shortener's export (or kurz's own `GET /urls/export`) becomes links of the caller (or, for
/// an admin, of `user_id`). All or nothing, through the same checks and transaction as
/// `POST /urls/bulk`; never overwrites: a code already taken fails the whole import with 409.
/// Answers what was mapped: the fields the file carried, and each record's code (kept, or
/// generated where the source's code is not a valid kurz code).
pub async fn import_links(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
    req: Request,
) -> ApiResult<Response> {
    let q = Query::parse(raw.as_deref(), &["format", "user_id"])?;
    let format = q.get("format").unwrap_or("");
    let owner = caller
        .owner_for_write(q.id("user_id")?)?
        .ok_or_else(|| ApiError::BadRequest("query parameter user_id is required".into()))?;
    let foreign_format = match format {
        "csv" => None,
        name => Some(foreign::Format::parse(name).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "query parameter format={name:?} must be bitly, yourls, shlink, kutt or csv"
            ))
        })?),
    };
    let Received { bytes, turn, _held } = receive(&state, req).await?;
    // Reading and converting a 32 MiB file takes long enough to stall every other request on
    // the worker it runs on. The turn goes along: a request dropped meanwhile (its deadline,
    // its client gone) leaves the conversion running, and the turn counts it until it ends.
    let (parsed, turn) = tokio::task::spawn_blocking(move || {
        let parsed = || match foreign_format {
            None => ApiResult::Ok(Parsed::Own(own_export_as_bulk(&bytes, owner)?)),
            Some(format) => {
                let links = foreign::parse(format, &bytes).map_err(|e| ApiError::BadRow {
                    row: e.record,
                    line: e.record as u64 + 1,
                    column: e.column,
                    reason: e.reason,
                })?;
                let url_column = format.url_column(&bytes);
                Ok(Parsed::Foreign(format, Arc::new(links), url_column))
            }
        };
        (parsed(), turn)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("import conversion: {e}")))?;
    let (csv_bytes, report, turn, source_url) = match parsed? {
        Parsed::Own(csv) => (csv, None, turn, None),
        Parsed::Foreign(format, links, url_column) => {
            let draw = Arc::new(ShortCode::generate);
            let ((csv, report), turn) =
                with_free_codes(&state.db, format, links, owner, draw, turn).await?;
            (csv, Some(report), turn, Some(url_column))
        }
    };
    let mut client = state.client().await?;
    if !crate::db::users::user_exists(&client, owner).await? {
        return Err(ApiError::NotFound(format!("user {owner} not found")));
    }
    let imported = import::urls(&mut client, &csv_bytes, &state.targets, turn)
        .await
        .map_err(|e| in_source_terms(e, source_url))?;
    crate::cache_sync::after_import(&state, &client, &imported).await;
    let mut body = report.unwrap_or_else(|| json!({"format": "csv"}));
    body["imported"] = json!(imported.count);
    body["needs_password"] = json!(imported.needs_password);
    body["user_id"] = json!(owner);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// A row error of the converted file in the uploaded file's terms (`url_column`: what the file
/// calls the long URL, for a foreign import): the record's line as the parse gives it (one
/// record, one row), and the file's name for the long URL, the column the import's checks
/// refuse most (a private or own-host target); the user's file has no `original_url`.
fn in_source_terms(e: ApiError, url_column: Option<String>) -> ApiError {
    match (e, url_column) {
        (
            ApiError::BadRow {
                row,
                column,
                reason,
                ..
            },
            Some(url_column),
        ) => ApiError::BadRow {
            row,
            line: row as u64 + 1,
            column: if column == "original_url" {
                url_column
            } else {
                column
            },
            reason,
        },
        (e, _) => e,
    }
}

/// An upload read: kurz's own export already as the bulk CSV, or another product's links.
enum Parsed {
    Own(Vec<u8>),
    /// The format, its links, and what the file calls the long URL.
    Foreign(foreign::Format, Arc<Vec<foreign::ForeignLink>>, String),
}

/// Tags left out of an import that its answer lists; `dropped_tag_count` counts them all.
const MAX_DROPPED_LISTED: usize = 1_000;

/// Draws for the generated codes before an import gives up on finding them free.
const CODE_DRAWS: usize = 5;

/// The foreign links as the bulk CSV, their generated codes checked against the links stored:
/// drawn at random, one already taken (about 1 in 35 for 100,000 generated codes beside a
/// million links) failed the whole import with a 409 naming a code the file never had. The
/// taken ones are drawn again, up to [`CODE_DRAWS`] times (each round fails with about that
/// chance again: five in a row, never seen, is a 503 to retry). `draw` makes a code
/// ([`ShortCode::generate`]; tests choose theirs). The import's `turn` goes along with each
/// conversion, as with the file's parse: a request dropped meanwhile leaves the conversion
/// running, and the turn counts it until it ends.
pub async fn with_free_codes<T: Send + 'static>(
    pool: &deadpool_postgres::Pool,
    format: foreign::Format,
    links: Arc<Vec<foreign::ForeignLink>>,
    owner: i64,
    draw: Arc<dyn Fn() -> ShortCode + Send + Sync>,
    mut turn: T,
) -> ApiResult<((Vec<u8>, serde_json::Value), T)> {
    let mut avoid = std::collections::HashSet::new();
    for _ in 0..CODE_DRAWS {
        let (links, taken, draw) = (links.clone(), avoid.clone(), draw.clone());
        let (converted, held) = tokio::task::spawn_blocking(move || {
            let converted =
                foreign_as_bulk(format, &links, owner, &mut || fresh_code(&taken, &*draw));
            (converted, turn)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("import conversion: {e}")))?;
        turn = held;
        let converted = converted?;
        let generated: Vec<&str> = converted.1["codes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["generated"] == true)
            .filter_map(|c| c["short_code"].as_str())
            .collect();
        if generated.is_empty() {
            return Ok((converted, turn));
        }
        let taken = crate::db::urls::codes_taken(&pool.get().await?, &generated).await?;
        if taken.is_empty() {
            return Ok((converted, turn));
        }
        avoid.extend(taken);
    }
    Err(ApiError::Unavailable(
        "no free codes were found for the records that need generated ones; retry".into(),
    ))
}

/// A code `draw` makes that is not one of `avoid`.
fn fresh_code(
    avoid: &std::collections::HashSet<String>,
    draw: &dyn Fn() -> ShortCode,
) -> ShortCode {
    loop {
        let code = draw();
        if !avoid.contains(code.as_str()) {
            return code;
        }
    }
}

/// Foreign links as the bulk CSV, owned by `owner`, with the report of what was mapped.
fn foreign_as_bulk(
    format: foreign::Format,
    links: &[foreign::ForeignLink],
    owner: i64,
    generate: &mut dyn FnMut() -> ShortCode,
) -> ApiResult<(Vec<u8>, serde_json::Value)> {
    let mut out = csv::Writer::from_writer(Vec::new());
    let failed = |e: csv::Error| ApiError::Internal(format!("import conversion: {e}"));
    out.write_record([
        "user_id",
        "short_code",
        "original_url",
        "title",
        "created_at",
        "imported_clicks",
        "tags",
        "is_active",
        "has_password",
        "expires_at",
    ])
    .map_err(failed)?;
    let (mut codes, mut mapped) = (Vec::new(), std::collections::BTreeSet::new());
    // Shlink keeps one code per domain, so an export of several domains repeats codes: the
    // first keeps it, the others get generated ones instead of failing the whole file.
    // A generated code must also miss every code the file keeps, later records' included, and
    // every other generated one: the import would refuse the repeat naming a code the person
    // never wrote.
    let keeps: std::collections::HashSet<&str> = links
        .iter()
        .filter_map(|l| l.short_code.as_deref())
        .filter(|c| ShortCode::parse(c).is_ok())
        .collect();
    let mut taken = std::collections::HashSet::new();
    let mut generated = std::collections::HashSet::new();
    let (mut dropped_tags, mut dropped_count) = (Vec::new(), 0);
    for link in links {
        let kept = link
            .short_code
            .as_deref()
            .filter(|c| ShortCode::parse(c).is_ok() && taken.insert(*c));
        let code = match kept {
            Some(c) => ShortCode::parse(c).expect("checked just above"),
            None => loop {
                let code = generate();
                if !keeps.contains(code.as_str()) && generated.insert(code.as_str().to_owned()) {
                    break code;
                }
            },
        };
        codes.push(json!({
            "record": link.record,
            // Cut: the answer must not grow with a huge cell of the file.
            "source_code": link.short_code.as_deref().map(import::bounds::cut),
            "short_code": code.as_str(),
            "generated": kept.is_none(),
        }));
        for (field, present) in [
            ("short_code", kept.is_some()),
            ("title", link.title.is_some()),
            ("created_at", link.created_at.is_some()),
            ("clicks", link.clicks.is_some()),
            ("tags", !link.tags.is_empty()),
            ("has_password", link.access.protected),
            ("is_active", link.access.disabled),
            ("expires_at", link.access.expires_at.is_some()),
        ] {
            if present {
                mapped.insert(field);
            }
        }
        // Other products take tags kurz does not (`c#`, `r&d`, `2024/q1`, longer than 32
        // characters): each is left out and listed, as a code kurz cannot take is replaced,
        // rather than the whole file refused for it. Not from a link past the tags a link
        // holds (its list was read only that far): that one is refused whole, as before.
        let (tags, dropped): (Vec<&str>, Vec<&str>) =
            link.tags.iter().map(String::as_str).partition(|tag| {
                link.tags.len() > crate::tags::MAX_TAGS || crate::tags::normalise_tag(tag).is_ok()
            });
        dropped_count += dropped.len();
        let room = MAX_DROPPED_LISTED.saturating_sub(dropped_tags.len());
        dropped_tags.extend(
            dropped
                .into_iter()
                .take(room)
                .map(|tag| json!({"record": link.record, "tag": import::bounds::cut(tag)})),
        );
        // The bulk import reads this as kurz's own CSV, a value written as an export writes it.
        out.write_record([
            owner.to_string(),
            defuse(code.as_str().to_owned()),
            link.original_url.clone(),
            // Another product's page titles can be longer than ours; the start of one is more
            // use than an import refused for it.
            defuse(
                link.title
                    .as_deref()
                    .unwrap_or_default()
                    .chars()
                    .take(super::urls::MAX_TITLE)
                    .collect(),
            ),
            link.created_at
                .map(kurz_common::time::format)
                .unwrap_or_default(),
            link.clicks.unwrap_or(0).to_string(),
            defuse(tags.join(";")),
            // A banned link stays off; one behind a password comes in off and is listed in
            // `needs_password`, as a row of kurz's own export that says `has_password`.
            bool_cell(!link.access.disabled),
            bool_cell(link.access.protected),
            link.access
                .expires_at
                .map(kurz_common::time::format)
                .unwrap_or_default(),
        ])
        .map_err(failed)?;
    }
    let body = out
        .into_inner()
        .map_err(|e| failed(e.into_error().into()))?;
    let report = json!({
        "format": format.name(),
        "mapped": mapped.into_iter().collect::<Vec<_>>(),
        "codes": codes,
        "dropped_tags": dropped_tags,
        "dropped_tag_count": dropped_count,
    });
    Ok((body, report))
}

/// kurz's own export, for the bulk import: the owner's, with no ids (the links are new here,
/// never overwriting rows of the same id elsewhere).
fn own_export_as_bulk(bytes: &[u8], owner: i64) -> ApiResult<Vec<u8>> {
    import::bounds::check_width(bytes)?;
    let mut reader = csv::Reader::from_reader(bytes);
    let header = reader
        .headers()
        .map_err(|e| ApiError::BadRequest(format!("unreadable CSV header: {e}")))?
        .clone();
    // The owner is the caller's, and the links are new: a file's own `id` or `user_id` column,
    // however spelled, must not reach the bulk import (which would update that row, or give the
    // link to that user).
    // The clicks recorded where the file was exported become imported clicks here, as another
    // shortener's do: the links' totals move with them.
    let name = |i: usize| import::column_name(&header[i]);
    let clicks_col = (0..header.len()).find(|&i| name(i) == "clicks");
    let imported_col = (0..header.len()).find(|&i| name(i) == "imported_clicks");
    let keep: Vec<usize> = (0..header.len())
        .filter(|&i| !matches!(name(i).as_str(), "id" | "user_id" | "clicks"))
        .collect();
    let mut out = csv::Writer::from_writer(Vec::new());
    let failed = |e: csv::Error| ApiError::Internal(format!("import conversion: {e}"));
    let mut head = vec!["user_id".to_owned()];
    head.extend(keep.iter().map(|&i| header[i].to_owned()));
    if clicks_col.is_some() && imported_col.is_none() {
        head.push("imported_clicks".to_owned());
    }
    out.write_record(&head).map_err(failed)?;
    for (n, row) in reader.records().enumerate() {
        if n >= foreign::MAX_LINKS {
            let e = foreign::too_many(n + 1);
            return Err(ApiError::BadRow {
                row: e.record,
                // The record's own start: the reader's position is already past it.
                line: row
                    .as_ref()
                    .map_or_else(|e| e.position(), |r| r.position())
                    .map_or(0, |p| p.line()),
                column: e.column,
                reason: e.reason,
            });
        }
        // Lines as the file has them: a quoted title may span several.
        let row = row.map_err(|e| ApiError::BadRow {
            row: n + 1,
            line: e.position().map_or(0, |p| p.line()),
            column: String::new(),
            reason: format!("malformed CSV: {e}"),
        })?;
        let bad = |col: usize, reason: &str| ApiError::BadRow {
            row: n + 1,
            line: row.position().map_or(0, |p| p.line()),
            column: header[col].to_owned(),
            reason: reason.to_owned(),
        };
        let count = |col: Option<usize>| match col {
            None => Ok(0),
            Some(i) => match row.get(i).unwrap_or("").trim() {
                "" => Ok(0),
                v => v
                    .parse::<i64>()
                    .ok()
                    .filter(|c| *c >= 0)
                    .ok_or_else(|| bad(i, "must be a non-negative integer")),
            },
        };
        let moved = match clicks_col {
            Some(c) => Some(
                count(imported_col)?
                    .checked_add(count(clicks_col)?)
                    .ok_or_else(|| bad(c, "with imported_clicks, too large"))?,
            ),
            None => None,
        };
        let mut fields = vec![owner.to_string()];
        fields.extend(keep.iter().map(|&i| {
            let cell = row.get(i).unwrap_or("");
            match (moved, name(i).as_str()) {
                (Some(total), "imported_clicks") => total.to_string(),
                // Titles stored before the 512-character cap came in: exported, they still
                // import.
                (_, "title") => {
                    defuse(restore(cell).chars().take(super::urls::MAX_TITLE).collect())
                }
                _ => cell.to_owned(),
            }
        }));
        if let (Some(total), None) = (moved, imported_col) {
            fields.push(total.to_string());
        }
        out.write_record(&fields).map_err(failed)?;
    }
    out.into_inner()
        .map_err(|e| ApiError::Internal(format!("import conversion: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conversion indexes the header's columns before the bulk import's own checks run:
    /// a file too wide for them is refused before it.
    #[test]
    fn an_own_export_too_wide_is_refused_before_its_conversion() {
        let wide = format!("id,short_code,original_url{}\n", ",".repeat(1_000));
        match own_export_as_bulk(wide.as_bytes(), 1) {
            Err(ApiError::BadRequest(why)) => assert!(why.contains("more than 1000"), "{why}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        let narrow = "id,short_code,original_url\n1,abc,https://example.com/\n";
        assert!(own_export_as_bulk(narrow.as_bytes(), 1).is_ok());
    }
}
