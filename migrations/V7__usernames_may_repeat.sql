-- Real exports repeat usernames with different emails; email is a user's identity (API.md,
-- Users). Imports keep such repeats as they are, so the table no longer enforces unique
-- usernames. POST/PUT /users and registration still refuse a taken username: they check under a
-- per-username advisory lock held to the end of their transaction (`db::users::lock_username`),
-- so two concurrent writers of one name cannot both pass the check.
DROP INDEX users_username_key;
CREATE INDEX users_username_idx ON users (username) WHERE deleted_at IS NULL;
