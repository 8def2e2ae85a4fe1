-- Links. A deleted link keeps its row (events point at it) and its code, which is never reused:
-- an old printed link must not start pointing somewhere new.
CREATE TABLE urls (
    id            BIGSERIAL PRIMARY KEY,
    user_id       BIGINT      REFERENCES users (id),
    short_code    TEXT        NOT NULL,
    original_url  TEXT        NOT NULL,
    title         TEXT,
    is_active     BOOLEAN     NOT NULL DEFAULT true,
    expires_at    TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at    TIMESTAMPTZ,
    CONSTRAINT urls_short_code_key UNIQUE (short_code)
);

-- GET /users/<id>/urls and GET /urls?user_id=… list by user in id order.
CREATE INDEX urls_user_id_idx ON urls (user_id, id) WHERE deleted_at IS NULL;
