-- The retention job walks events by id from where its last pass stopped (api/src/retention.rs):
-- the BRIN index on `occurred_at` (V14) found old clicks by time only until deletes and reused
-- pages made every block range look old, and no other query reads it. Each click still paid
-- for its summary on insert.
DROP INDEX IF EXISTS events_occurred_at_brin;
