-- Unique visitors per link and day, from the clicks' `visitor` ids (a hash under a salt that
-- lives two days, kurz_common::visitors): no address is stored. Each (link, day, visitor) is
-- kept while its day can still get clicks, so the trigger can tell a new visitor from a
-- returning one; `click_daily.visitors` counts the new ones. Rows of days before yesterday
-- are pruned hourly (api/src/retention.rs): by then their counts are final. Bots are not
-- visitors.
LOCK TABLE events IN SHARE MODE;

ALTER TABLE click_daily ADD COLUMN visitors BIGINT NOT NULL DEFAULT 0;

CREATE TABLE click_day_visitors (
    url_id  BIGINT NOT NULL,
    day     DATE   NOT NULL,
    visitor TEXT   NOT NULL,
    PRIMARY KEY (url_id, day, visitor)
);

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
               coalesce(details->>'device', 'other') AS device,
               details->>'visitor' AS visitor
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
