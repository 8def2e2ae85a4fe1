-- Per-link click rollups, so `GET /urls/<id>/stats` reads a few rows instead of every click of
-- the link (a link with 1M clicks took seconds to count and group). The database keeps them
-- itself: every way a click is stored (the consumer's batches, the direct insert while Redis is
-- down, POST /events, the events import) passes through the one trigger below, in the same
-- transaction, and a click skipped by `ON CONFLICT (click_id) DO NOTHING` is not in the
-- statement's transition table, so it is not counted either. The trigger runs once per
-- statement (a consumer batch of up to 1,000 clicks), not once per row.
--
-- Events are insert-only (nothing updates or deletes them); a retention job that deletes old
-- clicks must subtract them from these tables in the same transaction.

-- Days are UTC dates, as the stats endpoint reports them. A link's total and its last click are
-- the sum and the latest of its days (one row per day it was clicked), so a batch updates one
-- row per link and day here, not a separate total as well.
CREATE TABLE click_daily (
    url_id        BIGINT      NOT NULL,
    day           DATE        NOT NULL,
    clicks        BIGINT      NOT NULL,
    last_click_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (url_id, day)
);

-- Non-empty referrers only, as the stats endpoint reports them.
CREATE TABLE click_referrers (
    url_id   BIGINT NOT NULL,
    referrer TEXT   NOT NULL,
    clicks   BIGINT NOT NULL,
    PRIMARY KEY (url_id, referrer)
);

-- Rows go in key order, so two batches that touch the same links lock their rows in the same
-- order and wait for each other instead of deadlocking.
CREATE FUNCTION roll_up_clicks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Most statements without clicks are one `created`/`updated`/`deleted` event of a link
    -- write: leave them at one probe.
    IF NOT EXISTS (SELECT 1 FROM new_events WHERE event_type = 'click') THEN
        RETURN NULL;
    END IF;
    INSERT INTO click_daily AS d (url_id, day, clicks, last_click_at)
    SELECT url_id, (occurred_at AT TIME ZONE 'UTC')::date, count(*), max(occurred_at)
    FROM new_events WHERE event_type = 'click'
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (url_id, day) DO UPDATE
        SET clicks = d.clicks + excluded.clicks,
            last_click_at = greatest(d.last_click_at, excluded.last_click_at);

    INSERT INTO click_referrers AS r (url_id, referrer, clicks)
    SELECT url_id, details->>'referrer', count(*)
    FROM new_events WHERE event_type = 'click' AND coalesce(details->>'referrer', '') <> ''
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (url_id, referrer) DO UPDATE SET clicks = r.clicks + excluded.clicks;
    RETURN NULL;
END
$$;

-- Created before the backfill: it locks `events` against inserts until this migration commits,
-- so no click is counted twice or missed between the two.
CREATE TRIGGER events_roll_up_clicks AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION roll_up_clicks();

INSERT INTO click_daily (url_id, day, clicks, last_click_at)
SELECT url_id, (occurred_at AT TIME ZONE 'UTC')::date, count(*), max(occurred_at)
FROM events WHERE event_type = 'click' GROUP BY 1, 2;

INSERT INTO click_referrers (url_id, referrer, clicks)
SELECT url_id, details->>'referrer', count(*)
FROM events WHERE event_type = 'click' AND coalesce(details->>'referrer', '') <> ''
GROUP BY 1, 2;
