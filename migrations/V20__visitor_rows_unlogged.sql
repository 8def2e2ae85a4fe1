-- The per-visitor rows of V19 live two days and only tell a new visitor from a returning one;
-- the counts they feed are in `click_daily`, which stays logged. Writing them to the WAL cost
-- the click sink a third of its rollup rows' log volume for data that may as well be lost: after
-- a crash PostgreSQL empties an unlogged table, and the visitors of that day who come back are
-- counted a second time (said in docs/security.md). Not replicated either: nothing reads it on a
-- standby.
ALTER TABLE click_day_visitors SET UNLOGGED;
