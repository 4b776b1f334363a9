-- Conditional release: a signature may mean "released conditionally" (naming the
-- results that may follow release still outstanding) or "release completed" (QA
-- confirms those results arrived within specification). SQLite cannot change a
-- CHECK constraint, so the table is rebuilt as SQLite documents (migrations run
-- with foreign keys off); every row is copied as it is, and the append-only
-- triggers and the index are made again.
CREATE TABLE signatures_new (
    signature_id      TEXT PRIMARY KEY,
    batch_id          TEXT NOT NULL REFERENCES batches(batch_id),
    signer            TEXT NOT NULL REFERENCES users(username),
    signer_name       TEXT NOT NULL,
    meaning           TEXT NOT NULL CHECK (meaning IN ('released', 'rejected', 'released_conditionally', 'release_completed')),
    record_sha256     TEXT NOT NULL,
    reason            TEXT NOT NULL,
    signed_at         TEXT NOT NULL,
    justifications    TEXT NOT NULL DEFAULT '[]',
    -- JSON list of test ids: outstanding at a conditional release, confirmed at its
    -- completion; '[]' otherwise.
    outstanding_tests TEXT NOT NULL DEFAULT '[]'
);
INSERT INTO signatures_new (signature_id, batch_id, signer, signer_name, meaning, record_sha256, reason, signed_at, justifications)
SELECT signature_id, batch_id, signer, signer_name, meaning, record_sha256, reason, signed_at, justifications
FROM signatures;
DROP TABLE signatures;
ALTER TABLE signatures_new RENAME TO signatures;
CREATE INDEX signatures_batch ON signatures (batch_id);
CREATE TRIGGER signatures_no_update BEFORE UPDATE ON signatures
BEGIN SELECT RAISE(ABORT, 'signatures are append-only: they cannot be changed'); END;
CREATE TRIGGER signatures_no_delete BEFORE DELETE ON signatures
BEGIN SELECT RAISE(ABORT, 'signatures are append-only: they cannot be deleted'); END;

-- A result out of specification after release opens a patient follow-up (kept in
-- the batch's projection, in the transaction that stores the result); QA closes it
-- with a signature saying what was done for the patient. One closure per result.
CREATE TABLE follow_up_closures (
    closure_id    TEXT PRIMARY KEY,
    batch_id      TEXT NOT NULL REFERENCES batches (batch_id),
    site_seq      INTEGER NOT NULL,
    signer        TEXT NOT NULL REFERENCES users (username),
    signer_name   TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    signed_at     TEXT NOT NULL,
    UNIQUE (batch_id, site_seq)
);
CREATE TRIGGER follow_up_closures_no_update BEFORE UPDATE ON follow_up_closures
BEGIN SELECT RAISE(ABORT, 'signatures are append-only: they cannot be changed'); END;
CREATE TRIGGER follow_up_closures_no_delete BEFORE DELETE ON follow_up_closures
BEGIN SELECT RAISE(ABORT, 'signatures are append-only: they cannot be deleted'); END;
