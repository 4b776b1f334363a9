-- The site link protocol version each site's agent last spoke (its Hello), so the
-- hub refuses a command an older agent could not read (a conditional release needs
-- 1.4) instead of sending it. Empty: not heard from since this column was added.
ALTER TABLE sites ADD COLUMN protocol_version TEXT NOT NULL DEFAULT '';
