-- Users. Deleting a user is a soft delete: their links keep `user_id` for history (API.md), and
-- the foreign keys from urls and events stay valid.
CREATE TABLE users (
    id          BIGSERIAL PRIMARY KEY,
    username    TEXT        NOT NULL,
    email       TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at  TIMESTAMPTZ
);

-- Uniqueness holds among live users only, so a deleted user's name can be taken again.
-- Emails compare case-insensitively, as mail systems do.
CREATE UNIQUE INDEX users_username_key ON users (username) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX users_email_key ON users (lower(email)) WHERE deleted_at IS NULL;
