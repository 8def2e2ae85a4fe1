-- Clicks are identified by the request that made them (the edge's request id), not by their
-- position in a Redis stream: the same click can reach PostgreSQL through the stream, through the
-- API's direct insert when Redis is down, or twice through the stream when an edge's append timed
-- out after it applied and the request was forwarded to an API. One unique key covers every path.
ALTER TABLE events ADD COLUMN click_id TEXT;
UPDATE events SET click_id = stream_id WHERE stream_id IS NOT NULL;
ALTER TABLE events DROP CONSTRAINT events_stream_id_key;
ALTER TABLE events DROP COLUMN stream_id;
ALTER TABLE events ADD CONSTRAINT events_click_id_key UNIQUE (click_id);

-- Links whose new state may not have reached Redis yet. A write to a link enqueues its code in
-- the same transaction; the row is removed once Redis has the new entry and the edges were told.
-- If Redis stalled or failed during the write, the API replays the row until it succeeds, so a
-- deleted or deactivated link stops redirecting even when the write's own publish was lost.
CREATE TABLE link_outbox (
    short_code  TEXT        PRIMARY KEY,
    -- Set by every enqueue (clock time, not transaction time): a publish removes the row only
    -- if no later write re-queued it meanwhile.
    queued_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
