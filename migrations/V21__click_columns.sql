-- A stored click's fields as columns of their own rather than a `jsonb` object: PostgreSQL
-- parsed ~330 bytes of JSON text per click on the way in, and the rollup trigger took them
-- apart again with `details->>`. Typed columns cut the click sink's backend CPU by about a
-- quarter (bench/sink-cost, docs/capacity.md). The API reads a click event's `details` back
-- from these columns in the same shape as before (api/src/db/events.rs), so the contract does
-- not change.
--
-- Rows the sink writes from now on carry `is_bot` (never NULL for them) and `details = '{}'`.
-- Click events written another way (`POST /events`, the events import) and every row from
-- before keep their `jsonb` details and NULL columns: nothing is rewritten, so this migration
-- takes no time on a large table. The trigger reads a column and falls back to `details`.
ALTER TABLE events
    ADD COLUMN code       TEXT,
    ADD COLUMN target     TEXT,
    ADD COLUMN referrer   TEXT,
    ADD COLUMN user_agent TEXT,
    ADD COLUMN is_bot     BOOLEAN,
    ADD COLUMN browser    TEXT,
    ADD COLUMN os         TEXT,
    ADD COLUMN device     TEXT,
    ADD COLUMN visitor    TEXT,
    ADD COLUMN ip         TEXT;

CREATE OR REPLACE FUNCTION roll_up_clicks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Most statements without clicks are one `created`/`updated`/`deleted` event of a link
    -- write: leave them at one probe.
    IF NOT EXISTS (SELECT 1 FROM new_events WHERE event_type = 'click') THEN
        RETURN NULL;
    END IF;
    -- COALESCE stops at the first non-NULL argument: rows with columns never parse `details`.
    WITH c AS MATERIALIZED (
        SELECT url_id, (occurred_at AT TIME ZONE 'UTC')::date AS day, occurred_at,
               coalesce(is_bot, (details->>'is_bot')::boolean, false) AS bot,
               coalesce(referrer, details->>'referrer', '') AS referrer,
               coalesce(browser, details->>'browser', 'unknown') AS browser,
               coalesce(os, details->>'os', 'unknown') AS os,
               coalesce(device, details->>'device', 'other') AS device,
               coalesce(visitor, details->>'visitor') AS visitor
        FROM new_events WHERE event_type = 'click'
    ), fresh AS (
        INSERT INTO click_day_visitors (url_id, day, visitor)
        SELECT DISTINCT url_id, day, visitor FROM c
        WHERE visitor IS NOT NULL AND visitor <> '' AND NOT bot
        ORDER BY 1, 2, 3
        ON CONFLICT DO NOTHING
        RETURNING url_id, day
    ), daily AS (
        INSERT INTO click_daily AS d (url_id, day, clicks, bots, visitors, last_click_at)
        SELECT g.url_id, g.day, g.clicks, g.bots, coalesce(v.n, 0), g.last
        FROM (
            SELECT url_id, day, count(*) AS clicks, count(*) FILTER (WHERE bot) AS bots,
                   max(occurred_at) AS last
            FROM c GROUP BY 1, 2
        ) AS g
        LEFT JOIN (SELECT url_id, day, count(*) AS n FROM fresh GROUP BY 1, 2) AS v
            USING (url_id, day)
        ORDER BY 1, 2
        ON CONFLICT (url_id, day) DO UPDATE
            SET clicks = d.clicks + excluded.clicks,
                bots = d.bots + excluded.bots,
                visitors = d.visitors + excluded.visitors,
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
