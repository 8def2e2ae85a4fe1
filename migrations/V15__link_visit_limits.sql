-- A link may stop redirecting after a number of counted visits (`max_visits`). The edge counts
-- them atomically in Redis (kurz_common::visit); the clicks PostgreSQL has stored (click_daily)
-- seed that counter and are what the API reports as `visits`, so no per-visit column is written
-- here.
ALTER TABLE urls ADD COLUMN max_visits INTEGER
    CONSTRAINT urls_max_visits_check CHECK (max_visits >= 1);
