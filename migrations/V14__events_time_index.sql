-- For the retention job (`events.retention_days`): old clicks are found by time. BRIN keeps one
-- summary per block range: events are appended in about time order, so it stays a few pages and
-- costs an insert next to nothing, where a B-tree would add another index entry per click.
CREATE INDEX events_occurred_at_brin ON events USING brin (occurred_at);
