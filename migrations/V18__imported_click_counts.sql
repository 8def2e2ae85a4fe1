-- Links brought from another shortener keep the click count they had there. kurz stores no
-- clicks it did not see (no made-up events or days), so the count is kept apart and shown
-- beside kurz's own (`imported_clicks` on the link and in its stats).
ALTER TABLE urls ADD COLUMN imported_clicks BIGINT NOT NULL DEFAULT 0
    CONSTRAINT urls_imported_clicks_check CHECK (imported_clicks >= 0);
