-- Events: created/updated/deleted from writes, click from redirects (via the click stream).
CREATE TABLE events (
    id           BIGSERIAL PRIMARY KEY,
    url_id       BIGINT      NOT NULL REFERENCES urls (id),
    user_id      BIGINT      REFERENCES users (id),
    event_type   TEXT        NOT NULL CHECK (event_type IN ('created', 'updated', 'deleted', 'click')),
    occurred_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    details      JSONB       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(details) = 'object'),
    -- `p<partition>-<redis stream id>` for clicks that came through the stream: replaying an
    -- entry (a consumer died between commit and XACK) hits this key and inserts nothing.
    stream_id    TEXT,
    CONSTRAINT events_stream_id_key UNIQUE (stream_id)
);

CREATE INDEX events_url_id_idx ON events (url_id, id);
CREATE INDEX events_user_id_idx ON events (user_id, id);
CREATE INDEX events_type_idx ON events (event_type, id);
