-- Measures written after their events (sqlite only).
--
-- The SQLite writer keeps the measure updates of the site events it commits in
-- memory for up to a second, merged per batch, and writes them in a later
-- transaction (`hub/src/store/sqlite/ingest.rs`, `Deferred`). `measures_through`
-- is the highest seq of the site whose events' measures are written; it moves in
-- the transaction that writes them. At open, the writer makes the measures of
-- the events after it from the stored records, so a crash loses none and counts
-- none twice. Until now measures were written with their events: every site's
-- events are measured through its cursor.
ALTER TABLE sites ADD COLUMN measures_through INTEGER NOT NULL DEFAULT 0;
UPDATE sites SET measures_through = acked_event_seq;
