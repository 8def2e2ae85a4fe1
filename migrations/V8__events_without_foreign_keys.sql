-- Clicks are the hottest insert in the system, and the two foreign keys of `events` were about a
-- third of its cost (pgbench, 2,000-click batches as the consumer writes them: 47.8 ms with the
-- keys, 33.1 ms without, 200,000 rows each way). They guarded nothing: links and users are only
-- ever soft-deleted, the click sink joins `urls` (so it stores only clicks of links that exist),
-- `POST /events` checks the link and the user before inserting, and the events import checks
-- every referenced id itself and names the row that lacks one.
ALTER TABLE events
    DROP CONSTRAINT IF EXISTS events_url_id_fkey,
    DROP CONSTRAINT IF EXISTS events_user_id_fkey;
