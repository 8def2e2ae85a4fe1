-- Accounts: an argon2id PHC string for users who registered with a password. Users created by
-- POST /users or bulk imports have none and cannot log in until they set one.
ALTER TABLE users ADD COLUMN password_hash TEXT;

-- API keys for machine clients. Only a hash of the key is stored; the key is shown once.
CREATE TABLE api_keys (
    id            BIGSERIAL PRIMARY KEY,
    user_id       BIGINT      NOT NULL REFERENCES users (id),
    name          TEXT        NOT NULL,
    -- First characters of the key, so a person can tell keys apart in a list.
    prefix        TEXT        NOT NULL,
    key_hash      TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at  TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ,
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
);

CREATE INDEX api_keys_user_id_idx ON api_keys (user_id, id);
