-- The site's copy of the hub's directory of people (PersonUpdated commands), and
-- failed sign-ins. A person's row is replaced by each command about them, in the
-- transaction that commits the command; directory_version is that command's seq.

CREATE TABLE people (
    username          TEXT PRIMARY KEY,      -- as the hub names them (lower case)
    full_name         TEXT NOT NULL,
    role              TEXT NOT NULL,
    password_verifier TEXT NOT NULL,         -- argon2id PHC string
    status            TEXT NOT NULL CHECK (status IN ('active', 'disabled', 'removed')),
    directory_version INTEGER NOT NULL,
    failures          INTEGER NOT NULL DEFAULT 0,  -- failed sign-ins since the last success
    locked_at         TEXT                         -- locked here after too many failures
);
-- A bedside badge (the barcode the scanner types) and the argon2id verifier of its PIN;
-- empty when the person has none.
ALTER TABLE people ADD COLUMN badge_id TEXT NOT NULL DEFAULT '';
ALTER TABLE people ADD COLUMN pin_verifier TEXT NOT NULL DEFAULT '';
