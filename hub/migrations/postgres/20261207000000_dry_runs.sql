-- Dry runs of draft recipes (postgres; the same columns and meaning on both backends).
--
-- A dry run executes a frozen copy of a draft on the hub's simulator site. The copy
-- is kept among the recipes, under its own id `<product>~dry-run-<n>`, so that the
-- batch pins exactly what it ran even after the draft is edited or approved, and
-- every reader of a batch's recipe works unchanged. `dry_run_of` names the product:
-- such a copy is never listed as a product and never pinned by an order for a
-- patient.
ALTER TABLE recipes ADD COLUMN dry_run_of TEXT;

-- A dry-run batch: shown like any other, never releasable, left out of queues,
-- the schedule and notifications.
ALTER TABLE orders ADD COLUMN dry_run BOOLEAN NOT NULL DEFAULT FALSE;
