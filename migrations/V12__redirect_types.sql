-- The status a link redirects with. 302 stays the default: browsers cache 301 and 308, so the
-- visits after the first are never seen (docs/API.md says so to whoever picks one).
ALTER TABLE urls ADD COLUMN redirect_type SMALLINT NOT NULL DEFAULT 302
    CONSTRAINT urls_redirect_type_check CHECK (redirect_type IN (301, 302, 307, 308));
