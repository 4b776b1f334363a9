-- Why a site is in its status (sqlite; the same columns and meaning on both
-- backends): who moved it there, when, and the reason they gave. A suspended site
-- is told this when the hub refuses its link, and shows it to its technicians.
-- NULL for a status no person set (pending, active after enrollment) and for moves
-- made before these columns existed (the audit trail has them).
ALTER TABLE sites ADD COLUMN status_reason TEXT;
ALTER TABLE sites ADD COLUMN status_changed_by TEXT;
ALTER TABLE sites ADD COLUMN status_changed_at TEXT;
