-- The replay takes the oldest queued codes a batch at a time (api/src/db/outbox.rs `oldest`):
-- without an index each batch sorted the whole table, so a backlog of N codes after a long
-- Redis outage cost N²/batch row reads on every replica, and a delete queued last waited for
-- all of it. The table is small in normal running: building the index holds its writes for
-- a moment.
CREATE INDEX link_outbox_queued_at ON link_outbox (queued_at);
