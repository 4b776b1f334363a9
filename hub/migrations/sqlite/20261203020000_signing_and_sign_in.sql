-- Signatures that hold against insiders and strangers (SQLite; the same tables and
-- meaning as the PostgreSQL migration of the same name).

-- A release despite exceptions carries a written justification for each exception:
-- a JSON array of {"exception": what QA saw, "justification": what QA wrote}.
ALTER TABLE signatures ADD COLUMN justifications TEXT NOT NULL DEFAULT '[]';

-- When the session first signed: the first signature of a session asks for the user
-- name as well as the password (21 CFR 11.200(a)(1)(i)), later ones the password.
ALTER TABLE sessions ADD COLUMN signed_at TEXT;

-- When the person acknowledged, once, that their electronic signature is the legally
-- binding equivalent of their handwritten one (21 CFR 11.100(c)); NULL: not yet, and
-- they cannot sign until they do.
ALTER TABLE users ADD COLUMN signature_acknowledged_at TEXT;

-- Failed sign-ins (and failed signings), counted per user name and source address in
-- fixed windows. Locks are per (user name, source): a stranger at one address cannot
-- lock out the person signing in from another. The audit trail gets the counts, not
-- one entry per attempt. `username` is cut to 64 characters before it is stored; the
-- row with username '*' counts every failure of the source (its own lock).
CREATE TABLE sign_in_failures (
    username      TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    window_start  TEXT    NOT NULL,
    failures      INTEGER NOT NULL,
    lock_audited  INTEGER NOT NULL DEFAULT 0,  -- the lock was audited when it began
    reported      INTEGER NOT NULL DEFAULT 0,  -- the window's count is in the audit trail
    PRIMARY KEY (username, source, window_start)
);
CREATE INDEX sign_in_failures_unreported ON sign_in_failures (reported, window_start);

-- A QA person's signed acknowledgement that they reviewed records which arrived after
-- the batch's release decision (through site seq `through_seq`).
CREATE TABLE change_reviews (
    review_id     TEXT PRIMARY KEY,
    batch_id      TEXT NOT NULL REFERENCES batches (batch_id),
    signer        TEXT NOT NULL REFERENCES users (username),
    signer_name   TEXT NOT NULL,
    through_seq   INTEGER NOT NULL,
    record_sha256 TEXT NOT NULL,
    comment       TEXT NOT NULL,
    signed_at     TEXT NOT NULL
);
CREATE INDEX change_reviews_batch ON change_reviews (batch_id);

-- The logs and the signatures are append-only, as the audit trail is.
CREATE TRIGGER site_events_no_update BEFORE UPDATE ON site_events
BEGIN SELECT RAISE(ABORT, 'site events are append-only: they cannot be changed'); END;
CREATE TRIGGER site_events_no_delete BEFORE DELETE ON site_events
BEGIN SELECT RAISE(ABORT, 'site events are append-only: they cannot be deleted'); END;
CREATE TRIGGER hub_commands_no_update BEFORE UPDATE ON hub_commands
BEGIN SELECT RAISE(ABORT, 'hub commands are append-only: they cannot be changed'); END;
CREATE TRIGGER hub_commands_no_delete BEFORE DELETE ON hub_commands
BEGIN SELECT RAISE(ABORT, 'hub commands are append-only: they cannot be deleted'); END;
CREATE TRIGGER signatures_no_update BEFORE UPDATE ON signatures
BEGIN SELECT RAISE(ABORT, 'signatures are append-only: they cannot be changed'); END;
CREATE TRIGGER signatures_no_delete BEFORE DELETE ON signatures
BEGIN SELECT RAISE(ABORT, 'signatures are append-only: they cannot be deleted'); END;
CREATE TRIGGER change_reviews_no_update BEFORE UPDATE ON change_reviews
BEGIN SELECT RAISE(ABORT, 'signatures are append-only: they cannot be changed'); END;
CREATE TRIGGER change_reviews_no_delete BEFORE DELETE ON change_reviews
BEGIN SELECT RAISE(ABORT, 'signatures are append-only: they cannot be deleted'); END;
