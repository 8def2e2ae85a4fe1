-- Clicks people can trust: bots and link-preview fetchers are still redirected, but their clicks
-- carry `is_bot` (decided from the user agent when the click is stored, api/src/clicks/agent.rs)
-- and the stats leave them out unless asked. And the stats gain breakdowns — referrer host,
-- browser, OS, device class — and a date range, so every rollup is now per day.
--
-- `click_daily` keeps counting every click (a link's `visits`, which `max_visits` limits, are
-- all its redirects) and learns how many were bots. `click_day_sources` replaces
-- `click_referrers`: clicks and bots per link, day, referrer (empty for none) and agent
-- (browser, OS, device class), one row per combination. A stored batch still touches two rows
-- per link and day in the usual case; separate tables per dimension cost the consumer a fifth
-- of its throughput (bench/consumer, docs/capacity.md). The referrer host is derived when
-- read. A range sums a few rows per day, however many clicks the link had.

-- First: clicks being inserted finish (their rollups land in the old tables, and their events
-- are in the backfill below), and none start until this commits. Taken before any rollup table
-- is altered, so an insert's trigger never waits on us while we wait on it.
LOCK TABLE events IN SHARE MODE;

ALTER TABLE click_daily ADD COLUMN bots BIGINT NOT NULL DEFAULT 0;

CREATE TABLE click_day_sources (
    url_id   BIGINT NOT NULL,
    day      DATE   NOT NULL,
    referrer TEXT   NOT NULL,
    browser  TEXT   NOT NULL,
    os       TEXT   NOT NULL,
    device   TEXT   NOT NULL,
    clicks   BIGINT NOT NULL,
    bots     BIGINT NOT NULL,
    PRIMARY KEY (url_id, day, referrer, browser, os, device)
) WITH (fillfactor = 50);

-- The host of a referrer URL, lower case; NULL when it has none.
CREATE FUNCTION referrer_host(referrer TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT lower(substring(referrer FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#:]+)'))
$$;

CREATE OR REPLACE FUNCTION roll_up_clicks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Most statements without clicks are one `created`/`updated`/`deleted` event of a link
    -- write: leave them at one probe.
    IF NOT EXISTS (SELECT 1 FROM new_events WHERE event_type = 'click') THEN
        RETURN NULL;
    END IF;
    WITH c AS MATERIALIZED (
        SELECT url_id, (occurred_at AT TIME ZONE 'UTC')::date AS day, occurred_at,
               coalesce((details->>'is_bot')::boolean, false) AS bot,
               coalesce(details->>'referrer', '') AS referrer,
               coalesce(details->>'browser', 'unknown') AS browser,
               coalesce(details->>'os', 'unknown') AS os,
               coalesce(details->>'device', 'other') AS device
        FROM new_events WHERE event_type = 'click'
    ), daily AS (
        INSERT INTO click_daily AS d (url_id, day, clicks, bots, last_click_at)
        SELECT url_id, day, count(*), count(*) FILTER (WHERE bot), max(occurred_at) FROM c
        GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (url_id, day) DO UPDATE
            SET clicks = d.clicks + excluded.clicks,
                bots = d.bots + excluded.bots,
                last_click_at = greatest(d.last_click_at, excluded.last_click_at)
    )
    INSERT INTO click_day_sources AS s (url_id, day, referrer, browser, os, device, clicks, bots)
    SELECT url_id, day, referrer, browser, os, device, count(*), count(*) FILTER (WHERE bot) FROM c
    GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (url_id, day, referrer, browser, os, device) DO UPDATE
        SET clicks = s.clicks + excluded.clicks, bots = s.bots + excluded.bots;
    RETURN NULL;
END
$$;

-- The clicks stored so far, by day and referrer (browser, OS and device were never recorded
-- for them: `unknown`, `unknown`, `other`). `events` is locked against inserts since the top,
-- so nothing is missed or counted twice.
INSERT INTO click_day_sources (url_id, day, referrer, browser, os, device, clicks, bots)
SELECT url_id, (occurred_at AT TIME ZONE 'UTC')::date, coalesce(details->>'referrer', ''),
       'unknown', 'unknown', 'other', count(*), 0
FROM events WHERE event_type = 'click'
GROUP BY 1, 2, 3;

DROP TABLE click_referrers;
