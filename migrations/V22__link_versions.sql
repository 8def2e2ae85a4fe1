-- Every state of a link gets a number that only grows, so Redis can refuse a publish that
-- arrives after a newer one. Two API replicas (or a write and the outbox replay) publish a code
-- in the order their round trips land, not the order their transactions committed: without a
-- number, a slow publish of an edit could land after the delete and keep the deleted link
-- redirecting for the link TTL.
--
-- One sequence for all links rather than a counter per row: a code that loses its row (an
-- import that gives an id another code) is published as missing with a fresh number, which is
-- above every state the code had. Writes to one row are serialised by its row lock, and the
-- statement that takes the lock also takes the number, so per row the order is commit order.
CREATE SEQUENCE link_versions;

-- A constant default first: adding the column does not rewrite the table. Rows from before get
-- version 0, and their cache entries (of the previous format) are refilled on first use.
ALTER TABLE urls ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE urls ALTER COLUMN version SET DEFAULT nextval('link_versions');
ALTER SEQUENCE link_versions OWNED BY urls.version;
