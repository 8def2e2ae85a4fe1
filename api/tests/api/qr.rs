//! QR codes: the PNG decodes back to the short URL, the SVG is an SVG, the `ETag` answers 304,
//! and bad options or dead links are clear errors.

use crate::helpers::{error_of, spawn_app};
use serde_json::Value;

/// The text of the QR code in a PNG.
fn decode(png_bytes: &[u8]) -> String {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    let (w, h, line) = (info.width as usize, info.height as usize, info.line_size);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[y * line + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the image");
    grids[0].decode().unwrap().1
}

/// A code that only starts like `/auth` (here `authors`) keeps its link's caching: `no-store` is
/// for the log-in routes.
#[tokio::test]
async fn a_code_that_starts_like_auth_keeps_its_links_caching() {
    let app = spawn_app().await;
    let user = app.create_user("authors").await;
    let res = app
        .post_json(
            "/urls",
            &serde_json::json!({"user_id": user, "original_url": "https://example.com/a", "short_code": "authors"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let qr = app.get("/authors/qr").await;
    assert_eq!(qr.status(), 200);
    assert_eq!(qr.headers()["cache-control"], "public, max-age=86400");
    let redirect = app.get("/authors").await;
    assert_eq!(redirect.status(), 302);
    assert_eq!(redirect.headers()["cache-control"], "private, no-store");
    assert_eq!(
        app.get("/auth/me").await.headers()["cache-control"],
        "no-store"
    );
}

#[tokio::test]
async fn the_png_decodes_back_to_the_short_url() {
    let app = spawn_app().await;
    let user = app.create_user("qr").await;
    let link = app.create_url(user, "https://example.com/printed").await;
    let (id, code) = (
        link["id"].as_i64().unwrap(),
        link["short_code"].as_str().unwrap(),
    );
    let short_url = link["short_url"].as_str().unwrap();
    // By id it is the owner's view (private); by code it is what anyone with the code sees.
    for (path, cache) in [
        (
            format!("/urls/{id}/qr?format=png&size=300"),
            "private, max-age=86400",
        ),
        (format!("/{code}/qr?format=png"), "public, max-age=86400"),
    ] {
        let res = app.get(&path).await;
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.headers()["content-type"], "image/png");
        assert_eq!(res.headers()["cache-control"], cache, "{path}");
        let etag = res.headers()["etag"].to_str().unwrap().to_owned();
        let png = res.bytes().await.unwrap();
        assert_eq!(decode(&png), short_url, "{path}");
        let again = app
            .client
            .get(app.url(&path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert!(again.bytes().await.unwrap().is_empty());
        // Compared weakly: a cache that recompressed it sends the tag back weak.
        let weak = app
            .client
            .get(app.url(&path))
            .header("if-none-match", format!("W/{etag}"))
            .send()
            .await
            .unwrap();
        assert_eq!(weak.status(), 304, "{path}");
    }
    let res = app.get(&format!("/{code}/qr")).await;
    assert_eq!(res.headers()["content-type"], "image/svg+xml");
    assert!(res.text().await.unwrap().starts_with("<svg"));

    for bad in ["format=gif", "size=10", "size=5000", "size=big"] {
        let err = error_of(app.get(&format!("/urls/{id}/qr?{bad}")).await, 400).await;
        assert!(
            err["message"].as_str().unwrap().contains("query parameter"),
            "{bad}"
        );
    }
    error_of(app.get("/NoSuchCode9/qr").await, 404).await;
    error_of(app.get("/urls/999999/qr").await, 404).await;
    // A deactivated link has no public QR code.
    let res = app
        .put_json(
            &format!("/urls/{id}"),
            &serde_json::json!({"is_active": false}),
        )
        .await;
    assert_eq!(res.json::<Value>().await.unwrap()["is_active"], false);
    error_of(app.get(&format!("/{code}/qr")).await, 404).await;
}

/// QR codes are drawn a few at a time per process: one that finds every turn taken waits, then
/// gets a 503 that says when to retry, and is drawn once a turn is free.
#[tokio::test]
async fn a_qr_code_waits_for_a_drawing_turn_then_gets_503() {
    use kurz_api::routes::qr::{DRAWING_WAIT, MAX_CONCURRENT_DRAWINGS};
    let app = spawn_app().await;
    let user = app.create_user("qrbusy").await;
    let code = app.create_url(user, "https://example.com/busy").await["short_code"]
        .as_str()
        .unwrap()
        .to_owned();
    let held = app
        .state
        .drawing
        .clone()
        .acquire_many_owned(MAX_CONCURRENT_DRAWINGS as u32)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let res = app.get(&format!("/{code}/qr?format=png")).await;
    assert!(started.elapsed() >= DRAWING_WAIT, "refused without waiting");
    assert_eq!(res.headers()["retry-after"], "2");
    error_of(res, 503).await;
    drop(held);
    let res = app.get(&format!("/{code}/qr?format=png")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/png");
}

/// A QR code waiting for a drawing turn holds no database connection: a burst of public QR
/// codes would otherwise hold the pool while they queue, and every other request would wait
/// for a connection and get 503.
#[tokio::test]
async fn a_qr_code_waiting_for_its_turn_holds_no_database_connection() {
    let app = crate::helpers::spawn_app_with(|c| crate::helpers::request_pool(c, 1, 300)).await;
    let user = app.create_user("qrpool").await;
    let link = app.create_url(user, "https://example.com/pool").await;
    let (id, code) = (
        link["id"].as_i64().unwrap(),
        link["short_code"].as_str().unwrap(),
    );
    let held = app
        .state
        .drawing
        .clone()
        .acquire_many_owned(kurz_api::routes::qr::MAX_CONCURRENT_DRAWINGS as u32)
        .await
        .unwrap();
    for path in [format!("/{code}/qr?format=png"), format!("/urls/{id}/qr")] {
        let qr = app.spawn_get(&path);
        // Its wait for a turn lasts seconds: every request meanwhile finds the connection free.
        while !qr.is_finished() {
            let res = app.get(&format!("/urls/{id}")).await;
            assert_eq!(
                res.status(),
                200,
                "a request waited for the connection ({path})"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        error_of(qr.await.unwrap().unwrap(), 503).await;
    }
    drop(held);
}
