//! Accounts and access: sessions, API keys, lock-out, the required-mode policy.

use crate::helpers::{
    error_of, replica_of, spawn_app, spawn_app_through_relay, spawn_app_waiting_for_a_replica,
    spawn_app_with, spawn_app_with_lockout, waits_sent, TestApp,
};
use kurz_api::config::AuthMode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn required_app() -> TestApp {
    spawn_app_with(|c| {
        c.auth.mode = AuthMode::Required;
        c.auth.admins = vec!["boss@example.com".into()];
    })
    .await
}

/// Registers `name` (email `<name>@example.com`, password `pw-<name>-secret`): (token, user id).
async fn register(app: &TestApp, name: &str) -> (String, i64) {
    let body = json!({"username": name, "email": format!("{name}@example.com"), "password": format!("pw-{name}-secret")});
    let res = app.post_json("/auth/register", &body).await;
    assert_eq!(res.status(), 201, "register {name}");
    let v: Value = res.json().await.unwrap();
    (
        v["token"].as_str().unwrap().to_owned(),
        v["user"]["id"].as_i64().unwrap(),
    )
}

/// Makes an API key named `ci` with `token`'s session: the key's JSON.
async fn new_key(app: &TestApp, token: &str) -> Value {
    let res = app
        .client
        .post(app.url("/auth/keys"))
        .header("authorization", bearer(token))
        .json(&json!({"name": "ci"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

/// A new API key's secret, made with `token`'s session.
async fn key_of(app: &TestApp, token: &str) -> String {
    new_key(app, token).await["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn login(app: &TestApp, body: Value) -> reqwest::Response {
    app.post_json("/auth/login", &body).await
}

/// Logs `username` in: the new session's token.
async fn session_of(app: &TestApp, username: &str, password: &str) -> String {
    let res = login(app, json!({"username": username, "password": password})).await;
    assert_eq!(res.status(), 200, "log-in of {username}");
    res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn me_id(app: &TestApp, token: &str) -> i64 {
    me(app, token).await.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap()
}

async fn log_out(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/auth/logout"))
        .header("authorization", bearer(token))
        .send()
        .await
        .unwrap()
}

/// `PUT /auth/password` with `token`'s session.
async fn change_password(
    app: &TestApp,
    token: &str,
    current: &str,
    new: &str,
) -> reqwest::Response {
    app.client
        .put(app.url("/auth/password"))
        .header("authorization", bearer(token))
        .json(&json!({"current_password": current, "new_password": new}))
        .send()
        .await
        .unwrap()
}

async fn me(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .get(app.url("/auth/me"))
        .header("authorization", bearer(token))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn register_login_me_and_logout() {
    let app = spawn_app().await;
    let res = app
        .post_json(
            "/auth/register",
            &json!({"username": "ann", "email": "ann@example.com", "password": "correct horse"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    let reg: Value = res.json().await.unwrap();
    assert!(reg["token"].as_str().unwrap().len() >= 64);
    assert_eq!(reg["expires_at"].as_str().unwrap().len(), 19);
    assert_eq!(reg["user"]["username"], "ann");
    assert!(reg["user"].get("password_hash").is_none());

    let res = login(
        &app,
        json!({"email": "ANN@example.com", "password": "correct horse"}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let by_email: Value = res.json().await.unwrap();
    let res = app
        .post_json(
            "/api/auth/login",
            &json!({"username": "ann", "password": "correct horse"}),
        )
        .await;
    assert_eq!(res.status(), 200, "the /api/auth alias and username login");
    let token = by_email["token"].as_str().unwrap();
    let res = me(&app, token).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["email"],
        "ann@example.com"
    );

    assert_eq!(log_out(&app, token).await.status(), 204);
    assert_eq!(
        error_of(me(&app, token).await, 401).await["error"],
        "unauthorized"
    );
    // The other session is untouched.
    assert_eq!(me(&app, reg["token"].as_str().unwrap()).await.status(), 200);
    error_of(
        app.post_raw("/auth/logout", "", "application/json").await,
        401,
    )
    .await;
    error_of(app.get("/auth/me").await, 401).await;
}

/// With `redis.replica_acks`, a log-out answers once a replica holds its delete (a replica
/// promoted after the answer must not bring the session back): the delete is followed by a
/// `WAIT`. One no replica confirms is counted as a Redis error and done all the same (the
/// master deleted it), and a password change is not refused for a missing replica either.
#[tokio::test]
async fn with_replica_acks_a_log_out_waits_for_a_replica() {
    let (master, app) = spawn_app_waiting_for_a_replica(|_| {}).await;
    let (token, _) = register(&app, "replicated").await;
    let (waits, errors) = (
        waits_sent(&master).await,
        app.state.metrics.redis_errors.get(),
    );
    assert_eq!(log_out(&app, &token).await.status(), 204);
    assert_eq!(
        waits_sent(&master).await,
        waits + 1,
        "the log-out sent no WAIT"
    );
    assert!(app.state.metrics.redis_errors.get() > errors);
    error_of(me(&app, &token).await, 401).await;

    let token = session_of(&app, "replicated", "pw-replicated-secret").await;
    let waits = waits_sent(&master).await;
    let res = change_password(&app, &token, "pw-replicated-secret", "a new secret").await;
    assert_eq!(res.status(), 200);
    assert!(
        waits_sent(&master).await > waits,
        "the password change sent no WAIT"
    );
    error_of(me(&app, &token).await, 401).await;

    // With a replica, once its first sync is over, a log-out is confirmed: no error counted.
    let _replica = replica_of(&master).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let token = session_of(&app, "replicated", "a new secret").await;
        let errors = app.state.metrics.redis_errors.get();
        assert_eq!(log_out(&app, &token).await.status(), 204);
        if app.state.metrics.redis_errors.get() == errors {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no replica ever confirmed a log-out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn duplicate_registration_is_409_and_bad_input_400() {
    let app = spawn_app().await;
    register(&app, "dup").await;
    // A taken name or email is refused before any password is hashed: the hash's permits are
    // shared with every log-in.
    let hashed = app.state.auth.passwords.runs();
    let res = app
        .post_json(
            "/auth/register",
            &json!({"username": "dup", "email": "x@example.com", "password": "longenough"}),
        )
        .await;
    assert_eq!(
        error_of(res, 409).await["message"],
        "username is already taken"
    );
    let res = app
        .post_json(
            "/auth/register",
            &json!({"username": "y", "email": "DUP@example.com", "password": "longenough"}),
        )
        .await;
    assert_eq!(
        error_of(res, 409).await["message"],
        "email is already registered"
    );
    assert_eq!(app.state.auth.passwords.runs(), hashed);
    let res = app
        .post_json(
            "/auth/register",
            &json!({"username": "z", "email": "z@example.com", "password": "short"}),
        )
        .await;
    assert!(error_of(res, 400).await["details"]["password"].is_string());
    let res = app
        .post_json(
            "/auth/register",
            &json!({"username": "z", "email": "bad", "password": 12345678}),
        )
        .await;
    let err = error_of(res, 400).await;
    assert!(err["details"]["email"].is_string() && err["details"]["password"].is_string());
    let res = app.post_raw("/auth/login", "[]", "application/json").await;
    error_of(res, 400).await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_indistinguishable() {
    let app = spawn_app().await;
    register(&app, "real").await;
    let wrong = login(
        &app,
        json!({"email": "real@example.com", "password": "not-the-password"}),
    )
    .await;
    let (s1, b1) = (wrong.status(), wrong.text().await.unwrap());
    let unknown = login(
        &app,
        json!({"email": "ghost@example.com", "password": "not-the-password"}),
    )
    .await;
    let (s2, b2) = (unknown.status(), unknown.text().await.unwrap());
    assert_eq!(s1, 401);
    assert_eq!((s1, &b1), (s2, &b2));
    // A user created without a password (POST /users) cannot log in, and looks the same.
    app.create_user("nopass").await;
    let res = login(
        &app,
        json!({"email": "nopass@example.com", "password": "not-the-password"}),
    )
    .await;
    assert_eq!((res.status(), res.text().await.unwrap()), (s1, b1));
}

#[tokio::test]
async fn expired_and_revoked_tokens_are_401() {
    let app = spawn_app().await;
    let (token, id) = register(&app, "exp").await;
    assert_eq!(me(&app, &token).await.status(), 200);
    let key = app
        .state
        .keys
        .session(&kurz_api::auth::sessions::token_hash(&token));
    app.state
        .redis
        .query::<i64>(redis::cmd("PEXPIRE").arg(&key).arg(30))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    error_of(me(&app, &token).await, 401).await;
    error_of(me(&app, "kzs_made_up").await, 401).await;
    let res = app
        .client
        .get(app.url("/auth/me"))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    error_of(res, 401).await;
    let _ = id;
}

/// A key's use is marked at most once a minute, and a use in between writes nothing: every
/// request with one key had written its row (a new row version, WAL, the row's lock held to the
/// commit), queueing the key's concurrent requests one behind the other.
#[tokio::test]
async fn a_keys_use_within_the_minute_writes_nothing() {
    let app = spawn_app().await;
    let (token, _) = register(&app, "quietkey").await;
    let key = new_key(&app, &token).await;
    let (id, secret) = (key["id"].as_i64().unwrap(), key["key"].as_str().unwrap());
    let db = app.sql().await;
    let version = || async {
        let row = db
            .query_one(
                "SELECT xmin::text, last_used_at FROM api_keys WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        (
            row.get::<_, String>(0),
            row.get::<_, Option<chrono::DateTime<chrono::Utc>>>(1),
        )
    };
    assert_eq!(me(&app, secret).await.status(), 200);
    let (marked, used) = version().await;
    assert!(used.is_some(), "the first use is marked");
    for _ in 0..3 {
        assert_eq!(me(&app, secret).await.status(), 200);
    }
    assert_eq!(
        version().await,
        (marked.clone(), used),
        "a use within the minute wrote the row"
    );
    db.execute(
        "UPDATE api_keys SET last_used_at = now() - interval '2 minutes' WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
    assert_eq!(me(&app, secret).await.status(), 200);
    let (_, later) = version().await;
    assert!(later > used, "a use after the minute is marked: {later:?}");

    // A mark the database refuses (read-only, a failover) fails no request.
    db.batch_execute(
        "UPDATE api_keys SET last_used_at = now() - interval '2 minutes'; \
         CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN RAISE EXCEPTION 'read-only'; END $$; \
         CREATE TRIGGER read_only BEFORE UPDATE ON api_keys FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await
    .unwrap();
    assert_eq!(me(&app, secret).await.status(), 200);
}

/// A kurz token sent in another shape than `Bearer <token>` is refused, not ignored: the
/// client meant to act as its owner, and would otherwise act anonymously without a word.
/// Another scheme (`Basic`, for a proxy in front) is not ours to judge.
#[tokio::test]
async fn a_token_in_the_wrong_shape_is_401_and_another_scheme_is_left_alone() {
    let app = spawn_app().await;
    let (token, user) = register(&app, "shapes").await;
    let key = key_of(&app, &token).await;
    let create = |authorization: String| {
        app.client
            .post(app.url("/urls"))
            .header("authorization", authorization)
            .json(&json!({"user_id": user, "original_url": "https://example.com/shape"}))
            .send()
    };
    for wrong in [
        format!("Token {key}"),
        key.clone(),
        "Bearer".into(),
        format!("Bearer{key}"),
    ] {
        let body = error_of(create(wrong.clone()).await.unwrap(), 401).await;
        assert!(
            body["message"].as_str().unwrap().contains("Bearer"),
            "{wrong}: {body}"
        );
    }
    // A character that is not ASCII pasted along with the token (a non-breaking space).
    for pasted in [format!("Bearer {key}\u{a0}"), format!("{key}\u{a0}")] {
        error_of(create(pasted).await.unwrap(), 401).await;
    }
    // Anonymous, as without the header (open mode).
    let res = create("Basic eDp5".into()).await.unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let res = create(bearer(&key)).await.unwrap();
    assert_eq!(res.status(), 201);
    let links: Vec<Value> = app.get("/urls").await.json().await.unwrap();
    assert_eq!(links.len(), 2, "{links:?}");
}

#[tokio::test]
async fn a_password_change_revokes_every_session() {
    let app = spawn_app().await;
    let (first, _) = register(&app, "pw").await;
    let second: Value = login(
        &app,
        json!({"email": "pw@example.com", "password": "pw-pw-secret"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let second = second["token"].as_str().unwrap().to_owned();
    let change = |current: &str| {
        app.client
            .put(app.url("/auth/password"))
            .header("authorization", bearer(&first))
            .json(&json!({"current_password": current, "new_password": "a whole new secret"}))
    };
    error_of(change("wrong guess").send().await.unwrap(), 403).await;
    let res = change("pw-pw-secret").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let fresh = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    error_of(me(&app, &first).await, 401).await;
    error_of(me(&app, &second).await, 401).await;
    // Sessions slide past any fixed TTL, so the set that finds them for revocation has none.
    let client = redis::Client::open(app.state.config.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(app.state.keys.user_sessions(me_id(&app, &fresh).await))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        ttl, -1,
        "the user's session set never expires before its sessions"
    );
    assert_eq!(me(&app, &fresh).await.status(), 200);
    error_of(
        login(
            &app,
            json!({"email": "pw@example.com", "password": "pw-pw-secret"}),
        )
        .await,
        401,
    )
    .await;
    assert_eq!(
        login(
            &app,
            json!({"email": "pw@example.com", "password": "a whole new secret"})
        )
        .await
        .status(),
        200
    );
}

/// Redis fails the revocation (here: an ACL takes `SMEMBERS` from the API's user): the change
/// is refused with 503 and leaves the old password, not a new password beside sessions that a
/// thief could go on using.
#[tokio::test]
async fn a_password_change_that_cannot_revoke_the_sessions_changes_nothing() {
    let redis = kurz_common::testing::PrivateRedis::start(kurz_common::testing::Persistence::None);
    let url = redis.url();
    let app = crate::helpers::spawn_app_with(|c| c.redis.url = url).await;
    let (token, _) = register(&app, "pwfail").await;
    let admin = redis::Client::open(redis.url()).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    let acl = |rule: &'static str| {
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg(rule)
            .to_owned()
    };
    let _: () = acl("-smembers").query_async(&mut conn).await.unwrap();
    let res = app
        .client
        .put(app.url("/auth/password"))
        .header("authorization", bearer(&token))
        .json(
            &json!({"current_password": "pw-pwfail-secret", "new_password": "a whole new secret"}),
        )
        .send()
        .await
        .unwrap();
    let _: () = acl("+smembers").query_async(&mut conn).await.unwrap();
    error_of(res, 503).await;
    let old = json!({"email": "pwfail@example.com", "password": "pw-pwfail-secret"});
    assert_eq!(login(&app, old).await.status(), 200, "the password changed");
    let new = json!({"email": "pwfail@example.com", "password": "a whole new secret"});
    error_of(login(&app, new).await, 401).await;
}

/// An admin's email (`auth.admins`) makes its holder an admin and is not verified: nobody takes
/// it by changing their own email, and once an account has had it (a deleted one included),
/// nobody registers it again.
#[tokio::test]
async fn an_admins_email_cannot_be_claimed_by_someone_else() {
    let app = required_app().await;
    let (mallory, mallory_id) = register(&app, "mallory").await;
    let res = app
        .client
        .put(app.url(&format!("/users/{mallory_id}")))
        .header("authorization", bearer(&mallory))
        .json(&json!({"email": "Boss@Example.com"}))
        .send()
        .await
        .unwrap();
    error_of(res, 403).await;
    let me_now: Value = me(&app, &mallory).await.json().await.unwrap();
    assert_eq!(me_now["is_admin"], false);
    assert_eq!(me_now["email"], "mallory@example.com");

    // The admin registers, then the account is deleted: its email stays the admin's.
    let (boss, boss_id) = register(&app, "boss").await;
    assert_eq!(
        me(&app, &boss).await.json::<Value>().await.unwrap()["is_admin"],
        true
    );
    let res = app
        .client
        .delete(app.url(&format!("/users/{boss_id}")))
        .header("authorization", bearer(&boss))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let again =
        json!({"username": "boss2", "email": "boss@example.com", "password": "pw-boss2-secret"});
    error_of(app.post_json("/auth/register", &again).await, 409).await;
    // Any other address is free as ever.
    let other =
        json!({"username": "boss3", "email": "boss3@example.com", "password": "pw-boss3-secret"});
    assert_eq!(app.post_json("/auth/register", &other).await.status(), 201);
}

/// Deleting an account ends its sessions and API keys: a bulk import that brings the row back
/// brings back neither (the password stays, so its owner can log in again).
#[tokio::test]
async fn a_deleted_account_keeps_no_session_or_key_to_come_back_with() {
    let app = spawn_app().await;
    let (token, id) = register(&app, "gone").await;
    let key = key_of(&app, &token).await;
    let res = app
        .client
        .delete(app.url(&format!("/users/{id}")))
        .header("authorization", bearer(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let csv = format!("id,username,email\n{id},gone,gone@example.com\n");
    assert_eq!(
        app.upload("/users/bulk", csv.into_bytes()).await.status(),
        201
    );
    assert_eq!(
        me(&app, &token).await.status(),
        401,
        "the session came back"
    );
    assert_eq!(me(&app, &key).await.status(), 401, "the API key came back");
    let res = login(
        &app,
        json!({"username": "gone", "password": "pw-gone-secret"}),
    )
    .await;
    assert_eq!(res.status(), 200);
}

/// A new email by `PUT /users/<id>` is the same person's account at another address: its
/// password, sessions and keys go on working, and the log-in takes the new email only. (Giving
/// an account to someone else is the import's, which ends them: the test below.)
#[tokio::test]
async fn a_put_of_a_new_email_keeps_the_accounts_credentials() {
    let app = spawn_app().await;
    let (token, id) = register(&app, "mover").await;
    let key = key_of(&app, &token).await;
    let res = app
        .client
        .put(app.url(&format!("/users/{id}")))
        .header("authorization", bearer(&token))
        .json(&json!({"email": "mover@new.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for credential in [&token, &key] {
        let res = me(&app, credential).await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.json::<Value>().await.unwrap()["email"],
            "mover@new.example"
        );
    }
    let by = |email: &str| json!({"email": email, "password": "pw-mover-secret"});
    assert_eq!(login(&app, by("MOVER@new.example")).await.status(), 200);
    assert_eq!(login(&app, by("mover@example.com")).await.status(), 401);
}

/// A bulk import that gives an existing id another email gives the account to that email
/// without the old owner's password, API keys or sessions (an id from a seed file that a
/// registered user holds would otherwise let them act as whoever the file names, an admin's
/// email included). A row that keeps the email, in another case, keeps them all.
#[tokio::test]
async fn an_import_that_gives_an_account_another_email_ends_its_credentials() {
    let app = required_app().await;
    let (boss, _) = register(&app, "boss").await;
    let (mallory, mallory_id) = register(&app, "mallory").await;
    let key = key_of(&app, &mallory).await;
    let (kept, kept_id) = register(&app, "kept").await;
    let csv = format!(
        "id,username,email\n{mallory_id},ops,ops@example.com\n{kept_id},kept,KEPT@example.com\n"
    );
    let part = reqwest::multipart::Part::bytes(csv.into_bytes())
        .file_name("users.csv")
        .mime_str("text/csv")
        .unwrap();
    let res = app
        .client
        .post(app.url("/users/bulk"))
        .header("authorization", bearer(&boss))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    // A key mallory's session asked for while the import ran is made after it, and must not
    // act as ops either.
    let late = kurz_api::db::api_keys::insert_key(
        &app.state.db.get().await.unwrap(),
        mallory_id,
        "mallory@example.com",
        "late",
        "kzk_11111111",
        "h",
    )
    .await
    .unwrap();
    assert!(matches!(late, kurz_api::db::api_keys::NewKey::UserGone));
    assert_eq!(
        me(&app, &mallory).await.status(),
        401,
        "the session acts as ops"
    );
    assert_eq!(
        me(&app, &key).await.status(),
        401,
        "the API key acts as ops"
    );
    for who in ["ops@example.com", "mallory@example.com"] {
        let res = login(&app, json!({"email": who, "password": "pw-mallory-secret"})).await;
        assert_eq!(res.status(), 401, "{who} logs in with mallory's password");
    }
    let res = me(&app, &kept).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["email"],
        "KEPT@example.com"
    );
    let res = login(
        &app,
        json!({"email": "kept@example.com", "password": "pw-kept-secret"}),
    )
    .await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn api_key_lifecycle() {
    let app = spawn_app().await;
    let (token, _) = register(&app, "machine").await;
    let (other, _) = register(&app, "other").await;
    let created = new_key(&app, &token).await;
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("kzk_"));
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));
    let res = me(&app, &key).await;
    assert_eq!(res.status(), 200, "an API key works as a bearer token");
    assert_eq!(res.json::<Value>().await.unwrap()["username"], "machine");
    let list: Vec<Value> = app
        .client
        .get(app.url("/auth/keys"))
        .header("authorization", bearer(&token))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert!(
        list[0].get("key").is_none(),
        "the secret is shown once only"
    );
    assert!(list[0]["last_used_at"].is_string());
    let id = created["id"].as_i64().unwrap();
    let res = app
        .client
        .delete(app.url(&format!("/auth/keys/{id}")))
        .header("authorization", bearer(&other))
        .send()
        .await
        .unwrap();
    error_of(res, 404).await;
    let res = app
        .client
        .delete(app.url(&format!("/auth/keys/{id}")))
        .header("authorization", bearer(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    error_of(me(&app, &key).await, 401).await;
    let res = app
        .client
        .post(app.url("/auth/keys"))
        .json(&json!({"name": "anon"}))
        .send()
        .await
        .unwrap();
    error_of(res, 401).await;
}

/// A user holds at most 100 live keys (the keys page lists them all): the next one is a 409
/// that says what to do, and revoking one makes room.
#[tokio::test]
async fn live_api_keys_per_user_are_bounded() {
    let app = spawn_app().await;
    let (token, _) = register(&app, "keyring").await;
    let mut first = None;
    for _ in 0..100 {
        first.get_or_insert(new_key(&app, &token).await["id"].as_i64().unwrap());
    }
    let make = || {
        app.client
            .post(app.url("/auth/keys"))
            .header("authorization", bearer(&token))
            .json(&json!({"name": "one too many"}))
            .send()
    };
    let body = error_of(make().await.unwrap(), 409).await;
    assert!(
        body["message"].as_str().unwrap().contains("revoke one"),
        "{body}"
    );
    let res = app
        .client
        .delete(app.url(&format!("/auth/keys/{}", first.unwrap())))
        .header("authorization", bearer(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(make().await.unwrap().status(), 201);
    // Another user's keys are theirs to count.
    let (other, _) = register(&app, "otherring").await;
    new_key(&app, &other).await;
}

/// A session made while a password change revokes the user's sessions (a log-in with the old
/// password, racing the change) stays in the user's list, so the change's second pass or the
/// next change ends it. Each round makes one session and revokes all at once, and then every
/// live session of the user must be listed.
#[tokio::test]
async fn a_session_made_during_a_revocation_stays_revocable() {
    let app = spawn_app().await;
    let (_, user) = register(&app, "racer").await;
    let sessions = &app.state.auth.sessions;
    let client = redis::Client::open(app.state.config.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys = &app.state.keys;
    let listed_key = keys.user_sessions(user);
    // One connection carries both, in the order they are sent: a revocation delayed by 0 to 5
    // round trips reads the list before, between or after the steps of the new session's.
    for round in 0..60 {
        let delayed_revoke = async {
            for _ in 0..round % 6 {
                app.state
                    .redis
                    .query::<String>(&redis::cmd("PING"))
                    .await
                    .unwrap();
            }
            sessions.revoke_all(user).await
        };
        let (made, revoked) = tokio::join!(sessions.create(user), delayed_revoke);
        let token = made.unwrap();
        revoked.unwrap();
        let hash = kurz_api::auth::sessions::token_hash(&token);
        let live: bool = redis::cmd("EXISTS")
            .arg(keys.session(&hash))
            .query_async(&mut conn)
            .await
            .unwrap();
        let listed: bool = redis::cmd("SISMEMBER")
            .arg(&listed_key)
            .arg(&hash)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            !live || listed,
            "round {round}: a live session is not listed"
        );
    }
    sessions.revoke_all(user).await.unwrap();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:{{sessions}}:session:*", app.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// A log-in that checked the old password while a change committed and revoked the sessions
/// gets no session: it is held between reading the hash and checking it (at the hash permits),
/// the change lands and ends the sessions it finds, then the log-in goes on. The old password
/// was right when it was read, but the session it would make outlives the change.
#[tokio::test]
async fn a_log_in_that_read_the_old_password_during_a_change_gets_no_session() {
    let app = spawn_app().await;
    let (_, user) = register(&app, "slowlogin").await;
    let held = app.state.auth.passwords.occupy_all().await;
    let (client, url) = (app.client.clone(), app.url("/auth/login"));
    let login = tokio::spawn(async move {
        let res = client
            .post(url)
            .json(&json!({"username": "slowlogin", "password": "pw-slowlogin-secret"}))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.state.auth.passwords.waiting() < 1 {
        assert!(
            Instant::now() < deadline,
            "the log-in never queued for a hash"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The change's own steps (its hashes need the permits this test holds): the new hash
    // committed, then every session listed ended.
    app.sql()
        .await
        .execute(
            "UPDATE users SET password_hash = 'replaced' WHERE id = $1",
            &[&user],
        )
        .await
        .unwrap();
    app.state.auth.sessions.revoke_all(user).await.unwrap();
    drop(held);
    let (status, body) = login.await.unwrap();
    assert_eq!(status, 401, "{body}");
    let client = redis::Client::open(app.state.config.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let listed: Vec<String> = redis::cmd("SMEMBERS")
        .arg(app.state.keys.user_sessions(user))
        .query_async(&mut conn)
        .await
        .unwrap();
    for hash in listed {
        let live: bool = redis::cmd("EXISTS")
            .arg(app.state.keys.session(&hash))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!live, "a session outlived the password change");
    }
}

/// A user holds at most 100 sessions: the 101st log-in ends the one nearest its end, so a loop
/// of log-ins cannot grow the set a password change must read (until it outlasts Redis's
/// timeout and every change is refused).
#[tokio::test]
async fn a_user_holds_at_most_a_hundred_sessions_and_the_oldest_goes_first() {
    let app = spawn_app().await;
    let (_, user) = register(&app, "manylogins").await;
    let sessions = &app.state.auth.sessions;
    sessions.revoke_all(user).await.unwrap();
    let client = redis::Client::open(app.state.config.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let oldest = sessions.create(user).await.unwrap();
    // Nearest its end of them all, as the least recently used sliding session is.
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(
            app.state
                .keys
                .session(&kurz_api::auth::sessions::token_hash(&oldest)),
        )
        .arg(600_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut newer = Vec::new();
    for _ in 0..kurz_api::auth::sessions::MAX_LIVE_SESSIONS {
        newer.push(sessions.create(user).await.unwrap());
    }
    assert_eq!(sessions.user_of(&oldest).await.unwrap(), None);
    for token in &newer {
        assert_eq!(sessions.user_of(token).await.unwrap(), Some(user));
    }
    let listed: usize = redis::cmd("SCARD")
        .arg(app.state.keys.user_sessions(user))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(listed, kurz_api::auth::sessions::MAX_LIVE_SESSIONS);
    sessions.revoke_all(user).await.unwrap();
}

/// Two password changes made at once with the same current password: one wins, the other is
/// refused (409, or 403 / 401 when it came after the first had finished), never both answered
/// 200 with only the last password working.
#[tokio::test]
async fn of_two_password_changes_at_once_one_wins() {
    let app = spawn_app().await;
    let (first, _) = register(&app, "both").await;
    let second: Value = login(
        &app,
        json!({"email": "both@example.com", "password": "pw-both-secret"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let second = second["token"].as_str().unwrap().to_owned();
    let change = |token: &str, new: &str| {
        app.client
            .put(app.url("/auth/password"))
            .header("authorization", bearer(token))
            .json(&json!({"current_password": "pw-both-secret", "new_password": new}))
            .send()
    };
    let (a, b) = tokio::join!(
        change(&first, "the first new one"),
        change(&second, "the second new one")
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let statuses = [a.status().as_u16(), b.status().as_u16()];
    let bodies: [Value; 2] = [a.json().await.unwrap(), b.json().await.unwrap()];
    let won: Vec<usize> = (0..2).filter(|&i| statuses[i] == 200).collect();
    assert_eq!(won.len(), 1, "{statuses:?}");
    let lost = 1 - won[0];
    // The loser ended no session: the winner's new one works.
    let fresh = bodies[won[0]]["token"].as_str().unwrap();
    assert_eq!(me(&app, fresh).await.status(), 200);
    assert!([401, 403, 409].contains(&statuses[lost]), "{statuses:?}");
    let passwords = ["the first new one", "the second new one"];
    let res = login(
        &app,
        json!({"email": "both@example.com", "password": passwords[won[0]]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let res = login(
        &app,
        json!({"email": "both@example.com", "password": passwords[lost]}),
    )
    .await;
    error_of(res, 401).await;
}

/// A password change holds its user's row through its Redis calls, but only against another
/// change: inserts that reference the user (every create batch, click batch and key) still go
/// through meanwhile.
#[tokio::test]
async fn a_password_change_in_progress_blocks_no_insert_for_its_user() {
    let app = spawn_app().await;
    let (_, user) = register(&app, "lockedrow").await;
    let mut holder = app.state.db.get().await.unwrap();
    let change = holder.transaction().await.unwrap();
    kurz_api::db::users::password_hash_for_update(&change, user)
        .await
        .unwrap();
    let other = app.sql().await;
    other
        .batch_execute("SET lock_timeout = '2s'")
        .await
        .unwrap();
    other
        .execute(
            "INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES ($1, 'x', 'kzk_x', 'h')",
            &[&user],
        )
        .await
        .expect("an insert that references the user is not held by the change");
    change.rollback().await.unwrap();
}

/// A log-in waiting for a password-hash permit holds no database connection: during a flood
/// of log-ins every other request still gets one (it got 503 once the queued log-ins held the
/// pool).
#[tokio::test]
async fn log_ins_waiting_for_a_hash_leave_the_pool_to_other_requests() {
    let app = spawn_app_with(|c| {
        crate::helpers::request_pool(c, 3, 500);
        c.auth.max_concurrent_hashes = 1;
    })
    .await;
    let user = app.create_user("bystander").await;
    let held = app.state.auth.passwords.occupy_all().await;
    let logins: Vec<_> = (0..6)
        .map(|i| {
            let (client, url) = (app.client.clone(), app.url("/auth/login"));
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({"email": format!("nobody{i}@example.com"), "password": "whatever-1"}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.state.auth.passwords.waiting() < 3 {
        assert!(
            Instant::now() < deadline,
            "the log-ins never queued for a hash"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        let res = app.get(&format!("/users/{user}")).await;
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }
    drop(held);
    for login in logins {
        assert_eq!(login.await.unwrap(), 401);
    }
}

/// Concurrent key makers cannot pass the 100 live keys between them: six makers held at the
/// table until all of them wait, then let go at once.
#[tokio::test]
async fn concurrent_key_makers_stop_at_the_ceiling() {
    let app = spawn_app().await;
    let (token, _) = register(&app, "keyrace").await;
    for _ in 0..98 {
        new_key(&app, &token).await;
    }
    let mut holder = app.sql().await;
    let gate = holder.transaction().await.unwrap();
    gate.batch_execute("LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    let makers: Vec<_> = (0..6)
        .map(|_| {
            let req = app
                .client
                .post(app.url("/auth/keys"))
                .header("authorization", bearer(&token))
                .json(&json!({"name": "race"}));
            tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
        })
        .collect();
    crate::helpers::wait_for_lock_waits(&app, 6, "the key makers").await;
    gate.rollback().await.unwrap();
    let mut statuses = Vec::new();
    for maker in makers {
        statuses.push(maker.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 201, 409, 409, 409, 409]);
}

/// A key made while its user is being deleted does not outlive the delete: the maker waits
/// for the delete to commit and gets 401, and no live key of the user is left for a re-import
/// of the user to bring back.
#[tokio::test]
async fn a_key_made_while_its_user_is_deleted_does_not_outlive_the_delete() {
    let app = spawn_app().await;
    let (token, id) = register(&app, "keydelete").await;
    let mut holder = app.state.db.get().await.unwrap();
    // The delete's transaction (`DELETE /users/<id>`), held open before its commit.
    let delete = holder.transaction().await.unwrap();
    assert!(kurz_api::db::users::delete_user(&delete, id).await.unwrap());
    kurz_api::db::api_keys::revoke_all(&delete, id)
        .await
        .unwrap();
    let req = app
        .client
        .post(app.url("/auth/keys"))
        .header("authorization", bearer(&token))
        .json(&json!({"name": "late"}));
    let maker = tokio::spawn(async move { req.send().await.unwrap().status().as_u16() });
    crate::helpers::wait_for_lock_waits(&app, 1, "the key maker").await;
    delete.commit().await.unwrap();
    assert_eq!(maker.await.unwrap(), 401);
    assert_eq!(live_keys(&app, id).await, 0);
}

/// The other order: a user deleted while a key of theirs is being made waits for that key and
/// revokes it with the others.
#[tokio::test]
async fn a_user_deleted_while_a_key_is_made_takes_the_key_with_it() {
    let app = spawn_app().await;
    let (token, id) = register(&app, "keyfirst").await;
    let mut holder = app.state.db.get().await.unwrap();
    // The maker's transaction (`POST /auth/keys`), held open before its commit.
    let maker = holder.transaction().await.unwrap();
    let email = "keyfirst@example.com";
    let made = kurz_api::db::api_keys::insert_key(&maker, id, email, "first", "kzk_00000000", "h")
        .await
        .unwrap();
    assert!(matches!(made, kurz_api::db::api_keys::NewKey::Stored(_)));
    let req = app
        .client
        .delete(app.url(&format!("/users/{id}")))
        .header("authorization", bearer(&token));
    let delete = tokio::spawn(async move { req.send().await.unwrap().status().as_u16() });
    crate::helpers::wait_for_lock_waits(&app, 1, "the delete").await;
    maker.commit().await.unwrap();
    assert_eq!(delete.await.unwrap(), 204);
    assert_eq!(live_keys(&app, id).await, 0);
}

async fn live_keys(app: &TestApp, user_id: i64) -> i64 {
    app.sql()
        .await
        .query_one(
            "SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL",
            &[&user_id],
        )
        .await
        .unwrap()
        .get(0)
}

/// Ends every lock-out lock of the app's prefix: what the lock's expiry would do, without
/// waiting on a clock.
async fn expire_locks(app: &TestApp) {
    let client = redis::Client::open(app.state.config.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:{{login}}:lock-*", app.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn repeated_failures_back_off_with_429() {
    let app = spawn_app_with_lockout(|l| {
        l.free_failures = 2;
        l.max_delay_seconds = 200;
        l.window_seconds = 3600;
    })
    .await;
    register(&app, "lock").await;
    for who in ["lock@example.com", "nobody@example.com"] {
        for _ in 0..3 {
            error_of(
                login(&app, json!({"email": who, "password": "wrong-wrong"})).await,
                401,
            )
            .await;
        }
        let res = login(&app, json!({"email": who, "password": "pw-lock-secret"})).await;
        let wait: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "{who}: {wait}");
        assert_eq!(error_of(res, 429).await["error"], "rate_limited");
    }
    expire_locks(&app).await;
    assert_eq!(
        login(
            &app,
            json!({"email": "lock@example.com", "password": "pw-lock-secret"})
        )
        .await
        .status(),
        200,
        "once the lock is over the right password works and clears the count"
    );
    for _ in 0..3 {
        error_of(
            login(
                &app,
                json!({"email": "lock@example.com", "password": "wrong-wrong"}),
            )
            .await,
            401,
        )
        .await;
    }
    error_of(
        login(&app, json!({"email": "lock@example.com", "password": "x"})).await,
        429,
    )
    .await;
    // Past the lock, one more failure locks again: the Retry-After of the attempt after it.
    let relock = || async {
        expire_locks(&app).await;
        error_of(
            login(
                &app,
                json!({"email": "lock@example.com", "password": "wrong-wrong"}),
            )
            .await,
            401,
        )
        .await;
        let res = login(&app, json!({"email": "lock@example.com", "password": "x"})).await;
        res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let wait = relock().await;
    assert!((61..=120).contains(&wait), "doubled: {wait}");
    // Doubled again it would be 240 s: `max_delay_seconds` caps it.
    let wait = relock().await;
    assert!((121..=200).contains(&wait), "capped: {wait}");
    // Every count is forgotten `window_seconds` after its last failure.
    let client = redis::Client::open(app.state.config.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let counts: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:{{login}}:fail-*", app.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        counts.len() >= 3,
        "per account and address, per account, per address: {counts:?}"
    );
    for key in &counts {
        let ttl: i64 = redis::cmd("TTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((3000..=3600).contains(&ttl), "{key}: {ttl}");
    }
    // The window slides: a failure gives its count the whole window again. The count is made
    // to look 1,000 s old (its expiry moved, not a clock waited on).
    let ip_count = counts.iter().find(|k| k.contains(":fail-ip:")).unwrap();
    let aged: i64 = redis::cmd("EXPIRE")
        .arg(ip_count)
        .arg(2600)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(aged, 1);
    expire_locks(&app).await;
    error_of(
        login(
            &app,
            json!({"email": "other@example.com", "password": "wrong"}),
        )
        .await,
        401,
    )
    .await;
    let after: i64 = redis::cmd("TTL")
        .arg(ip_count)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        after > 3000,
        "the failure restarted the window: {after} s left"
    );
}

/// Failures against an identifier that names no account still back off, and what Redis keeps
/// of them is bounded and says nothing of the identifier: a 60,000-character "email" makes
/// no 60,000-byte key, and no address appears in a key name.
#[tokio::test]
async fn unknown_identifiers_are_locked_out_by_a_hash_of_them() {
    let app = spawn_app_with_lockout(|l| {
        l.free_failures = 2;
    })
    .await;
    let long = format!("{}@nobody.example", "x".repeat(60_000));
    for who in [long.as_str(), "nobody@example.com"] {
        for _ in 0..3 {
            error_of(
                login(&app, json!({"email": who, "password": "guess"})).await,
                401,
            )
            .await;
        }
        error_of(
            login(&app, json!({"email": who, "password": "guess"})).await,
            429,
        )
        .await;
    }
    let client = redis::Client::open(app.state.config.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:{{login}}:*", app.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.iter().any(|k| k.contains(":id:")), "{keys:?}");
    for key in &keys {
        assert!(key.len() < 200, "key of {} bytes", key.len());
        assert!(!key.contains("nobody"), "{key}");
    }
}

/// A username is matched as written, so an unknown one is counted as written: locking out
/// `GHOST` must not lock out `ghost`, or the answer for `ghost` (429 when it names nobody, 401
/// when it names an account, counted apart) would tell who exists. An email is matched in any
/// case, so an unknown one is counted in lower case: locking out `MARA@…` locks out `mara@…`
/// whether or not an account has it.
#[tokio::test]
async fn unknown_usernames_are_counted_as_written_and_tell_nothing_of_who_exists() {
    let app = spawn_app_with_lockout(|l| {
        l.free_failures = 2;
        l.free_failures_per_ip = 1_000;
    })
    .await;
    register(&app, "dora").await;
    register(&app, "nora").await;
    register(&app, "mara").await;
    register(&app, "tara").await;
    let guess = |field: &'static str, who: &'static str, status: u16| {
        let app = &app;
        async move {
            let res = login(app, json!({field: who, "password": "guess-1"})).await;
            error_of(res, status).await;
        }
    };
    // A name sent as `email` that no email matches is tried as a username (the web form sends
    // whatever holds an '@' or not that way): without an '@' it is counted as written too.
    // An email-shaped name locked out as a username says nothing of the email (tara's or
    // nobody's). And emails fold as PostgreSQL folds them: `wİsp2` and `wi̇sp2` are two.
    for (field, locked, probe_field, probe, then) in [
        ("username", "GHOST", "username", "ghost", 401),
        ("username", "DORA", "username", "dora", 401),
        ("email", "SPOOK", "email", "spook", 401),
        ("email", "NORA", "email", "nora", 401),
        (
            "email",
            "MARA@EXAMPLE.COM",
            "email",
            "mara@example.com",
            429,
        ),
        (
            "email",
            "WISP@EXAMPLE.COM",
            "email",
            "wisp@example.com",
            429,
        ),
        (
            "username",
            "tara@example.com",
            "email",
            "tara@example.com",
            401,
        ),
        (
            "username",
            "vapor@example.com",
            "email",
            "vapor@example.com",
            401,
        ),
        (
            "email",
            "wi\u{307}sp2@example.com",
            "email",
            "w\u{130}sp2@example.com",
            401,
        ),
    ] {
        for _ in 0..3 {
            guess(field, locked, 401).await;
        }
        guess(field, locked, 429).await;
        guess(probe_field, probe, then).await;
    }
}

/// One address guessing across many identifiers is held back by its own counter
/// (`free_failures_per_ip`), while another address is not.
#[tokio::test]
async fn one_address_guessing_across_accounts_backs_off_and_another_does_not() {
    let app = spawn_app_with_lockout(|l| {
        l.free_failures = 100;
        l.free_failures_per_ip = 2;
    })
    .await;
    let from = |ip: &'static str, n: usize| {
        app.client
            .post(app.url("/auth/login"))
            .header("x-real-ip", ip)
            .json(&json!({"email": format!("guess{n}@example.com"), "password": "guess"}))
    };
    for n in 0..3 {
        error_of(from("203.0.113.5", n).send().await.unwrap(), 401).await;
    }
    let res = from("203.0.113.5", 3).send().await.unwrap();
    assert!(res.headers().contains_key("retry-after"));
    error_of(res, 429).await;
    error_of(from("203.0.113.6", 4).send().await.unwrap(), 401).await;
}

/// Sliding sessions: each use puts the session's expiry back to the full TTL; fixed ones keep
/// the expiry they got at login.
#[tokio::test]
async fn a_sliding_session_is_extended_by_use_and_a_fixed_one_is_not() {
    for sliding in [true, false] {
        let app = spawn_app_with(|c| {
            c.auth.session_ttl_seconds = 3600;
            c.auth.sliding_sessions = sliding;
        })
        .await;
        let (token, _) = register(&app, "slide").await;
        let client = redis::Client::open(app.state.config.redis.url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:{{sessions}}:session:*", app.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        // As if most of the hour had passed.
        let _: i64 = redis::cmd("EXPIRE")
            .arg(&keys[0])
            .arg(100)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(me(&app, &token).await.status(), 200);
        let ttl: i64 = redis::cmd("TTL")
            .arg(&keys[0])
            .query_async(&mut conn)
            .await
            .unwrap();
        if sliding {
            assert!(ttl > 3000, "sliding: ttl {ttl}");
        } else {
            assert!((1..=100).contains(&ttl), "fixed: ttl {ttl}");
        }
    }
}

/// Guessing wrong on purpose locks the guesser's own address out of the account, not its
/// owner: otherwise anyone could keep any account locked with one guess per lock period.
#[tokio::test]
async fn a_guesser_locks_only_their_own_address_out_of_an_account() {
    let app = spawn_app_with_lockout(|l| {
        l.free_failures = 2;
    })
    .await;
    register(&app, "owner").await;
    let from = |ip: &'static str, password: &'static str| {
        app.client
            .post(app.url("/auth/login"))
            .header("x-real-ip", ip)
            .json(&json!({"email": "owner@example.com", "password": password}))
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            from("203.0.113.9", "wrong-guess")
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [401, 401, 401, 429]);
    assert_eq!(
        from("203.0.113.9", "pw-owner-secret")
            .await
            .unwrap()
            .status(),
        429
    );
    // The owner, elsewhere: a typo is a plain 401, the password works.
    error_of(from("198.51.100.20", "typo-typo").await.unwrap(), 401).await;
    assert_eq!(
        from("198.51.100.20", "pw-owner-secret")
            .await
            .unwrap()
            .status(),
        200
    );
}

/// People behind one address (a NAT) logging in after a few typos made from it: a good
/// password neither locks the address for the next person nor keeps its count alive (a count
/// is forgotten a window after its last failure); a wrong one restarts the window and, past
/// the free failures, locks the address.
#[tokio::test]
async fn good_log_ins_behind_one_address_neither_lock_it_nor_keep_its_count() {
    let app = spawn_app_with_lockout(|l| {
        l.free_failures_per_ip = 2;
        l.window_seconds = 900;
    })
    .await;
    register(&app, "alice").await;
    register(&app, "bob").await;
    let nat = "203.0.113.40";
    let log_in = |email: String, password: &str| {
        app.client
            .post(app.url("/auth/login"))
            .header("x-real-ip", nat)
            .json(&json!({"email": email, "password": password}))
            .send()
    };
    let good = |name: &str| log_in(format!("{name}@example.com"), &format!("pw-{name}-secret"));
    for n in 0..2 {
        let res = log_in(format!("typo{n}@example.com"), "nope")
            .await
            .unwrap();
        error_of(res, 401).await;
    }
    let mut redis = redis::Client::open(app.state.config.redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let count = format!("{}:{{login}}:fail-ip:{nat}", app.prefix);
    // What 800 s of the window passing would leave.
    let () = redis::cmd("EXPIRE")
        .arg(&count)
        .arg(100)
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut state = async || -> (i64, i64) {
        let n: i64 = redis::cmd("GET")
            .arg(&count)
            .query_async(&mut redis)
            .await
            .unwrap();
        let ttl: i64 = redis::cmd("TTL")
            .arg(&count)
            .query_async(&mut redis)
            .await
            .unwrap();
        (n, ttl)
    };
    for name in ["alice", "bob", "alice", "bob"] {
        assert_eq!(good(name).await.unwrap().status(), 200, "{name}");
    }
    let (n, ttl) = state().await;
    assert_eq!(n, 2, "the good log-ins took back what they counted");
    assert!(
        (1..=100).contains(&ttl),
        "the window still ends with the typos: {ttl}"
    );
    let res = log_in("typo2@example.com".into(), "nope").await.unwrap();
    error_of(res, 401).await;
    let (n, ttl) = state().await;
    assert_eq!(n, 3);
    assert!(ttl > 100, "a failure restarts the window: {ttl}");
    assert_eq!(good("bob").await.unwrap().status(), 429);
}

/// A page on another site can make its visitors' browsers post to `/auth/login` without a
/// preflight (a form, or `fetch` in `no-cors` mode, with a plain-text body). Those posts are
/// refused before the lock-out counts them: the visitor's own address never gets locked out of
/// their account by someone else's page, and no password hash is spent on them.
#[tokio::test]
async fn another_sites_page_cannot_make_visitors_fail_logins() {
    let app = spawn_app_with_lockout(|l| {
        l.free_failures = 2;
    })
    .await;
    register(&app, "victim").await;
    let ip = "198.51.100.9";
    let guess = r#"{"email": "victim@example.com", "password": "wrong-on-purpose"}"#;
    // What a browser sends for each trick: Fetch Metadata, or only an `Origin` (older ones);
    // a string body (`text/plain`), a form, or a typeless blob (no content type at all).
    let tricks: [&[(&str, &str)]; 4] = [
        &[
            ("sec-fetch-site", "cross-site"),
            ("content-type", "text/plain;charset=UTF-8"),
        ],
        &[
            ("sec-fetch-site", "same-site"),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        &[("origin", "https://evil.example")],
        &[
            ("origin", "https://evil.example"),
            ("content-type", "multipart/form-data; boundary=x"),
        ],
    ];
    for path in ["/auth/login", "/api/auth/login", "/auth/register"] {
        for headers in tricks {
            let mut req = app
                .client
                .post(app.url(path))
                .header("x-real-ip", ip)
                .body(guess);
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            let res = req.send().await.unwrap();
            let body = error_of(res, 415).await;
            assert_eq!(
                body["error"], "unsupported_media_type",
                "{path} {headers:?}"
            );
        }
        // What a form really posts: a body that is not JSON at all.
        let res = app
            .client
            .post(app.url(path))
            .header("x-real-ip", ip)
            .header("origin", "https://evil.example")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("email=victim%40example.com&password=wrong-on-purpose")
            .send()
            .await
            .unwrap();
        error_of(res, 415).await;
    }
    // Nothing was counted: the victim, from that same address, logs in at once, and a typo of
    // theirs is a plain 401.
    let own = |password: &'static str| {
        app.client
            .post(app.url("/auth/login"))
            .header("x-real-ip", ip)
            .header("sec-fetch-site", "same-origin")
            .json(&json!({"email": "victim@example.com", "password": password}))
            .send()
    };
    error_of(own("typo-typo").await.unwrap(), 401).await;
    assert_eq!(own("pw-victim-secret").await.unwrap().status(), 200);
    // A client that is no browser needs no content type.
    let res = app
        .client
        .post(app.url("/auth/login"))
        .body(r#"{"username": "victim", "password": "pw-victim-secret"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// Thirty log-ins to `email` at once, attempt `i` from the address and with the password
/// `attempt(i)` gives; their statuses.
async fn concurrent_logins(
    app: &TestApp,
    email: &str,
    attempt: impl Fn(usize) -> (String, String),
) -> Vec<u16> {
    let attempts = (0..30).map(|i| {
        let (ip, password) = attempt(i);
        let req = app
            .client
            .post(app.url("/auth/login"))
            .header("x-real-ip", ip)
            .json(&json!({"email": email, "password": password}));
        async move { req.send().await.unwrap().status().as_u16() }
    });
    futures_util::future::join_all(attempts).await
}

#[tokio::test]
async fn a_locked_account_admits_no_password_under_concurrency_by_email_or_username() {
    // Three addresses: their guesses together are held by the account's own count.
    let app = spawn_app_with_lockout(|l| {
        l.free_failures = 3;
        l.free_failures_all_addresses = 3;
    })
    .await;
    register(&app, "victim").await;
    // Concurrent guesses from three addresses, the right password among them: at most
    // free_failures + 1 passwords are checked before the lock engages.
    let statuses = concurrent_logins(&app, "victim@example.com", |i| {
        let password = if i == 29 {
            "pw-victim-secret".to_owned()
        } else {
            format!("guess-{i}")
        };
        (format!("203.0.113.{}", i % 3), password)
    })
    .await;
    let checked = statuses.iter().filter(|s| **s != 429).count();
    assert!(checked <= 4, "passwords checked: {checked} ({statuses:?})");
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 0);
    // Now locked: the right password, by email or by username, is refused unchecked.
    let by_email = login(
        &app,
        json!({"email": "victim@example.com", "password": "pw-victim-secret"}),
    )
    .await;
    let by_name = login(
        &app,
        json!({"username": "victim", "password": "pw-victim-secret"}),
    )
    .await;
    if statuses.contains(&200) {
        // The right password came early enough to be checked: it cleared the count.
        assert_eq!(by_email.status(), 200);
    } else {
        error_of(by_email, 429).await;
        error_of(by_name, 429).await;
    }
}

/// security.md: "at most `free_failures + 1` checked from one address before its lock". With
/// the all-addresses and per-address limits far away, one address's burst is held by the
/// count of its own pair with the account alone.
#[tokio::test]
async fn one_addresss_burst_gets_free_failures_plus_one_passwords_checked() {
    let app = spawn_app_with_lockout(|l| {
        l.free_failures = 3;
        l.free_failures_all_addresses = 100;
        l.free_failures_per_ip = 100;
    })
    .await;
    register(&app, "burst").await;
    let statuses = concurrent_logins(&app, "burst@example.com", |i| {
        ("203.0.113.50".to_owned(), format!("guess-{i}"))
    })
    .await;
    let count = |code: u16| statuses.iter().filter(|s| **s == code).count();
    assert_eq!((count(401), count(429)), (4, 26), "{statuses:?}");
    // The owner, from another address, is not locked out.
    let res = app
        .client
        .post(app.url("/auth/login"))
        .header("x-real-ip", "203.0.113.51")
        .json(&json!({"email": "burst@example.com", "password": "pw-burst-secret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn a_lock_by_email_holds_for_the_username_too() {
    let app = spawn_app_with_lockout(|l| {
        l.free_failures = 1;
    })
    .await;
    register(&app, "both").await;
    for _ in 0..2 {
        error_of(
            login(
                &app,
                json!({"email": "both@example.com", "password": "nope-nope"}),
            )
            .await,
            401,
        )
        .await;
    }
    error_of(
        login(
            &app,
            json!({"username": "both", "password": "pw-both-secret"}),
        )
        .await,
        429,
    )
    .await;
}

#[tokio::test]
async fn logins_fail_with_503_when_redis_is_down() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_app_with(|c| c.redis.url = format!("redis://127.0.0.1:{port}/0")).await;
    let res = app
        .post_json(
            "/auth/register",
            &json!({"username": "r", "email": "r@example.com", "password": "longenough"}),
        )
        .await;
    assert!(error_of(res, 503).await["message"]
        .as_str()
        .unwrap()
        .contains("sessions"));
    let res = login(
        &app,
        json!({"email": "r@example.com", "password": "longenough"}),
    )
    .await;
    error_of(res, 503).await;
    let res = me(&app, "kzs_whatever").await;
    error_of(res, 503).await;
    let users: Vec<Value> = app.get("/users").await.json().await.unwrap();
    assert!(users.is_empty(), "no account was created without a session");
}

/// A session is looked up in Redis before a database connection is taken: while Redis does
/// not answer, a request with a session holds no connection, and one with an API key is served
/// from a pool of one.
#[tokio::test]
async fn a_session_waiting_on_redis_holds_no_database_connection() {
    let redis = kurz_common::testing::PrivateRedis::start(kurz_common::testing::Persistence::None);
    let (relay, app) = spawn_app_through_relay(redis.port, |c| {
        c.redis.timeout_ms = 20_000;
        crate::helpers::request_pool(c, 1, 1_000);
    })
    .await;
    let (token, user) = register(&app, "kim").await;
    let key = key_of(&app, &token).await;
    relay.hold();
    let hash = kurz_api::auth::sessions::token_hash(&token);
    let (by_session, by_key) = tokio::join!(me(&app, &token), async {
        relay.wait_held(hash.as_bytes()).await;
        let res = me(&app, &key).await;
        relay.release();
        res
    });
    assert_eq!(by_key.status(), 200, "the key's request got a connection");
    assert_eq!(by_session.status(), 200);
    assert_eq!(by_session.json::<Value>().await.unwrap()["id"], user);
}

/// An app on a private Redis whose default user may be refused `SET` (the session's write)
/// while it still answers everything else: the app, and the switch.
async fn app_whose_sessions_can_fail() -> (
    TestApp,
    impl AsyncFn(bool),
    kurz_common::testing::PrivateRedis,
) {
    let redis = kurz_common::testing::PrivateRedis::start(kurz_common::testing::Persistence::None);
    let url = redis.url();
    let app = spawn_app_with(|c| c.redis.url = url.clone()).await;
    let conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let refuse_sessions = move |refuse: bool| {
        let mut conn = conn.clone();
        async move {
            let rule = if refuse { "-set" } else { "+set" };
            let () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg("default")
                .arg(rule)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    };
    (app, refuse_sessions, redis)
}

/// Logs in with `email` and `password` once the API has its Redis connection back (503 until
/// then, within a deadline).
async fn log_in_once_sessions_are_back(app: &TestApp, email: &str, password: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let res = login(app, json!({"email": email, "password": password})).await;
        match res.status().as_u16() {
            200 => return,
            503 if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("log-in of {email}: {other}"),
        }
    }
}

/// Redis refuses the session's write after the registration's check that it answers: the
/// account is created, and the 503 says so (log in, do not register again: that would be a
/// 409).
#[tokio::test]
async fn a_registration_whose_session_fails_says_the_account_exists() {
    let (app, refuse_sessions, _redis) = app_whose_sessions_can_fail().await;
    refuse_sessions(true).await;
    let body =
        json!({"username": "halfway", "email": "halfway@example.com", "password": "longenough"});
    let res = app.post_json("/auth/register", &body).await;
    let message = error_of(res, 503).await["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("account was created"), "{message}");
    refuse_sessions(false).await;
    log_in_once_sessions_are_back(&app, "halfway@example.com", "longenough").await;
}

/// The same for a password change: stored, then no session to answer with. The 503 says the
/// password changed (a retry with the old one would be a wrong password, counted), and the new
/// one logs in.
#[tokio::test]
async fn a_password_change_whose_session_fails_says_the_password_changed() {
    let (app, refuse_sessions, _redis) = app_whose_sessions_can_fail().await;
    let (token, _) = register(&app, "changer").await;
    refuse_sessions(true).await;
    let res = change_password(&app, &token, "pw-changer-secret", "the next secret").await;
    let message = error_of(res, 503).await["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("password was changed"), "{message}");
    refuse_sessions(false).await;
    log_in_once_sessions_are_back(&app, "changer@example.com", "the next secret").await;
}

#[tokio::test]
async fn required_mode_enforces_ownership_and_admin_routes() {
    let app = required_app().await;
    let (alice, alice_id) = register(&app, "alice").await;
    let (bob, bob_id) = register(&app, "bob").await;
    let (boss, _) = register(&app, "boss").await;
    let as_ = |t: &str, req: reqwest::RequestBuilder| req.header("authorization", bearer(t));

    // Writes need a token.
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": alice_id, "original_url": "https://example.com/a"}),
        )
        .await;
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    error_of(res, 401).await;
    // With one, the link is the caller's; naming someone else is refused.
    let res = as_(&alice, app.client.post(app.url("/urls")))
        .json(&json!({"original_url": "https://example.com/a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let link: Value = res.json().await.unwrap();
    assert_eq!(link["user_id"], alice_id);
    let res = as_(&alice, app.client.post(app.url("/urls")))
        .json(&json!({"user_id": bob_id, "original_url": "https://example.com/x"}))
        .send()
        .await
        .unwrap();
    error_of(res, 403).await;
    let id = link["id"].as_i64().unwrap();

    // Another user cannot change, delete or see the stats of it; public fields stay readable.
    let res = as_(&bob, app.client.put(app.url(&format!("/urls/{id}"))))
        .json(&json!({"title": "mine now"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res, 403).await["error"], "forbidden");
    // Nor put a password on it, nor anyone without a token: refused before the hash, whose
    // permits every log-in shares.
    let hashed = app.state.auth.passwords.runs();
    let res = as_(&bob, app.client.put(app.url(&format!("/urls/{id}"))))
        .json(&json!({"password": "bobs-secret"}))
        .send()
        .await
        .unwrap();
    error_of(res, 403).await;
    let res = app
        .put_json(
            &format!("/urls/{id}"),
            &json!({"password": "anyones-secret"}),
        )
        .await;
    error_of(res, 401).await;
    assert_eq!(app.state.auth.passwords.runs(), hashed);
    error_of(
        as_(&bob, app.client.delete(app.url(&format!("/urls/{id}"))))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    error_of(
        as_(&bob, app.client.get(app.url(&format!("/urls/{id}/stats"))))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    error_of(app.get(&format!("/urls/{id}")).await, 401).await;
    // The redirect never needs auth.
    assert_eq!(
        app.get(&format!("/{}", link["short_code"].as_str().unwrap()))
            .await
            .status(),
        302
    );
    let res = as_(&alice, app.client.put(app.url(&format!("/urls/{id}"))))
        .json(&json!({"title": "ok"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Lists show the caller's own data; other users' data and admin routes are for admins.
    let mine: Vec<Value> = as_(&bob, app.client.get(app.url("/urls")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(mine.is_empty());
    error_of(
        as_(
            &bob,
            app.client
                .get(app.url(&format!("/urls?user_id={alice_id}"))),
        )
        .send()
        .await
        .unwrap(),
        403,
    )
    .await;
    let events: Vec<Value> = as_(&bob, app.client.get(app.url("/events")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(events.is_empty(), "bob sees none of alice's events");
    error_of(
        as_(&bob, app.client.get(app.url("/users")))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    error_of(
        as_(&bob, app.client.get(app.url(&format!("/users/{alice_id}"))))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    assert_eq!(
        as_(&bob, app.client.get(app.url(&format!("/users/{bob_id}"))))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"username,email\nq,q@example.com\n".to_vec())
            .file_name("u.csv"),
    );
    error_of(
        as_(&bob, app.client.post(app.url("/users/bulk")))
            .multipart(form)
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    error_of(app.get("/users").await, 401).await;

    // The admin may.
    let all: Vec<Value> = as_(&boss, app.client.get(app.url("/users")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    let res = as_(&boss, app.client.put(app.url(&format!("/urls/{id}"))))
        .json(&json!({"is_active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let me_boss: Value = me(&app, &boss).await.json().await.unwrap();
    assert_eq!(me_boss["is_admin"], true);
}

#[tokio::test]
async fn link_targets_follow_the_policy() {
    let app = spawn_app_with(|c| c.links.deny_hosts = vec!["phish.example".into()]).await;
    let user = app.create_user("pol").await;
    for bad in [
        "http://127.0.0.1/admin",
        "http://10.0.0.8/",
        "http://localhost:8080/",
        "http://169.254.169.254/latest/meta-data",
        "https://phish.example/login",
        "https://login.phish.example/",
    ] {
        let res = app
            .post_json("/urls", &json!({"user_id": user, "original_url": bad}))
            .await;
        assert!(
            error_of(res, 400).await["details"]["original_url"].is_string(),
            "{bad}"
        );
    }
    assert_eq!(
        app.post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/"})
        )
        .await
        .status(),
        201
    );
    let open = spawn_app_with(|c| c.links.allow_private_targets = true).await;
    let user = open.create_user("pol2").await;
    assert_eq!(
        open.post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "http://10.0.0.8/"})
        )
        .await
        .status(),
        201
    );
}

#[tokio::test]
async fn fifty_concurrent_logins_do_not_stall_redirects() {
    // Production hashing cost: this is the flood the bounded hash pool exists for.
    let app = spawn_app_with(|c| {
        c.auth.argon2 = kurz_api::config::Argon2Config::default();
        c.auth.max_concurrent_hashes = 2;
    })
    .await;
    // Ten accounts, five logins each: concurrent logins of one account beyond its free
    // failures are held back by the lock-out (they count before they are checked).
    for i in 0..10 {
        register(&app, &format!("flood{i}")).await;
    }
    let user = app.create_user("target").await;
    let code = app.create_url(user, "https://example.com/fast").await["short_code"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    let mut logins = Vec::new();
    for i in 0..50 {
        let (client, url) = (app.client.clone(), app.url("/auth/login"));
        let name = format!("flood{}", i % 10);
        logins.push(tokio::spawn(async move {
            let res = client
                .post(url)
                .json(&json!({"email": format!("{name}@example.com"), "password": format!("pw-{name}-secret")}))
                .send()
                .await
                .unwrap();
            res.status().as_u16()
        }));
    }
    let all_logins = futures_util::future::join_all(logins);
    tokio::pin!(all_logins);
    let mut redirects_during_logins = 0;
    let statuses = loop {
        tokio::select! {
            statuses = &mut all_logins => break statuses,
            res = app.client.get(app.url(&format!("/{code}"))).send() => {
                assert_eq!(res.unwrap().status(), 302);
                redirects_during_logins += 1;
            }
        }
    };
    let elapsed = started.elapsed();
    eprintln!("{redirects_during_logins} redirects completed during 50 logins ({elapsed:?})");
    assert!(
        statuses.iter().all(|s| *s.as_ref().unwrap() == 200),
        "every login succeeds"
    );
    // Redirects kept completing while the logins hashed (618 in 1.5 s on an idle 2-core
    // machine); the bound is low so a machine loaded by other builds cannot fail it, while a
    // worker blocked by hashing would still complete next to none.
    assert!(
        redirects_during_logins >= 5,
        "only {redirects_during_logins} redirects in {elapsed:?} of logins"
    );
}

#[tokio::test]
async fn in_required_mode_a_link_is_readable_by_its_owner_and_admins_only() {
    let app = required_app().await;
    let (owner, _) = register(&app, "owner").await;
    let (other, _) = register(&app, "other").await;
    let (boss, _) = register(&app, "boss").await;
    let link: Value = app
        .client
        .post(app.url("/urls"))
        .header("authorization", bearer(&owner))
        .json(&json!({"original_url": "https://example.com/private"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = link["id"].as_i64().unwrap();
    for path in [format!("/urls/{id}"), format!("/links/{id}")] {
        let get = |token: Option<&str>| {
            let mut req = app.client.get(app.url(&path));
            if let Some(t) = token {
                req = req.header("authorization", bearer(t));
            }
            req.send()
        };
        error_of(get(None).await.unwrap(), 401).await;
        error_of(get(Some(&other)).await.unwrap(), 403).await;
        assert_eq!(get(Some(&owner)).await.unwrap().status(), 200, "{path}");
        assert_eq!(get(Some(&boss)).await.unwrap().status(), 200, "{path}");
    }
}

#[tokio::test]
async fn imported_repeated_usernames_are_kept_and_make_username_login_fail_uniformly() {
    let app = spawn_app().await;
    let twin =
        json!({"username": "twin", "email": "twin@example.com", "password": "pw-twin-secret"});
    assert_eq!(app.post_json("/auth/register", &twin).await.status(), 201);
    let csv =
        "username,email\ntwin,twin-b@example.com\nsolo,solo@example.com\nsolo,solo-b@example.com\n";
    let res = app.upload("/users/bulk", csv.as_bytes().to_vec()).await;
    assert_eq!(res.status(), 201, "real exports repeat usernames");
    assert_eq!(res.json::<Value>().await.unwrap()["count"], 3);

    // Single writes still refuse a username any user has.
    let res = app
        .post_json(
            "/users",
            &json!({"username": "solo", "email": "other@example.com"}),
        )
        .await;
    error_of(res, 409).await;
    let fresh = app.create_user("fresh").await;
    let res = app
        .put_json(&format!("/users/{fresh}"), &json!({"username": "twin"}))
        .await;
    error_of(res, 409).await;
    // Keeping one's own name is no claim on it: a client sending the whole user back, with a
    // new email, is not refused because an import gave someone else the same name.
    let solo: Vec<Value> = app.get("/users").await.json().await.unwrap();
    let solo = solo
        .iter()
        .find(|u| u["email"] == "solo@example.com")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let res = app
        .put_json(
            &format!("/users/{solo}"),
            &json!({"username": "solo", "email": "solo-new@example.com"}),
        )
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());

    // By username the account is ambiguous: the same answer as a wrong password.
    let by_name = login(
        &app,
        json!({"username": "twin", "password": "pw-twin-secret"}),
    )
    .await;
    let wrong = login(
        &app,
        json!({"email": "twin@example.com", "password": "not-it-at-all"}),
    )
    .await;
    let (a, b) = (error_of(by_name, 401).await, error_of(wrong, 401).await);
    assert_eq!(a, b);
    let by_email = login(
        &app,
        json!({"email": "twin@example.com", "password": "pw-twin-secret"}),
    )
    .await;
    assert_eq!(by_email.status(), 200);
}

#[tokio::test]
async fn concurrent_creates_of_one_username_make_one_user() {
    let app = spawn_app().await;
    let sends = (0..8).map(|i| {
        app.client
            .post(app.url("/users"))
            .json(&json!({"username": "race", "email": format!("race{i}@example.com")}))
            .send()
    });
    let mut statuses: Vec<u16> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    statuses.sort();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409]);
}
