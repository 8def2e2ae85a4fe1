-- A link may be behind a password: the argon2id hash of it (PHC string), never returned by the
-- API. Visitors get a form, and the redirect only after the right password.
ALTER TABLE urls ADD COLUMN password_hash TEXT;
