-- The rollup trigger of V9 read the statement's clicks twice (once per rollup table). This reads
-- them once into a CTE that both upserts share; the rows, their order and what is counted are
-- unchanged.
CREATE OR REPLACE FUNCTION roll_up_clicks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Most statements without clicks are one `created`/`updated`/`deleted` event of a link
    -- write: leave them at one probe.
    IF NOT EXISTS (SELECT 1 FROM new_events WHERE event_type = 'click') THEN
        RETURN NULL;
    END IF;
    WITH c AS MATERIALIZED (
        SELECT url_id, (occurred_at AT TIME ZONE 'UTC')::date AS day, occurred_at,
               details->>'referrer' AS referrer
        FROM new_events WHERE event_type = 'click'
    ), daily AS (
        INSERT INTO click_daily AS d (url_id, day, clicks, last_click_at)
        SELECT url_id, day, count(*), max(occurred_at) FROM c
        GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (url_id, day) DO UPDATE
            SET clicks = d.clicks + excluded.clicks,
                last_click_at = greatest(d.last_click_at, excluded.last_click_at)
    )
    INSERT INTO click_referrers AS r (url_id, referrer, clicks)
    SELECT url_id, referrer, count(*) FROM c
    WHERE coalesce(referrer, '') <> ''
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (url_id, referrer) DO UPDATE SET clicks = r.clicks + excluded.clicks;
    RETURN NULL;
END
$$;
