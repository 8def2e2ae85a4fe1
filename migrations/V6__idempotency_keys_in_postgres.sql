-- Idempotency-Key of POST /urls, kept with the link it created and written in the same
-- transaction. A retry waits on the first attempt's row lock: if that attempt committed, the
-- retry answers its link; if it died (its API killed mid-request), the retry creates. Redis held
-- these before, which could neither survive a crash between commit and store nor tell a dead
-- attempt from a running one. The edge relies on this to retry a keyed create on another API.
CREATE TABLE idempotency_keys (
    scope_key   TEXT        PRIMARY KEY,
    fingerprint TEXT        NOT NULL,
    url_id      BIGINT      REFERENCES urls (id) ON DELETE CASCADE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
