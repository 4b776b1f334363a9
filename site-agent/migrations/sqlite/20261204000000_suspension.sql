-- The hub's word that this site is suspended: who suspended it, when and why, as
-- the hub's refusal of the link told it. Kept across restarts, so the site goes on
-- refusing new steps and bedside hand-over while it cannot reach the hub; cleared
-- when the hub accepts the link again. NULL: not suspended (as far as the site knows).
ALTER TABLE link_state ADD COLUMN suspended_by TEXT;
ALTER TABLE link_state ADD COLUMN suspended_at TEXT;
ALTER TABLE link_state ADD COLUMN suspension_reason TEXT;
