-- Conditional release: a signature may mean "released conditionally" (naming the
-- results that may follow release still outstanding) or "release completed" (QA
-- confirms those results arrived within specification).
ALTER TABLE signatures DROP CONSTRAINT signatures_meaning_check;
ALTER TABLE signatures ADD CONSTRAINT signatures_meaning_check
    CHECK (meaning IN ('released', 'rejected', 'released_conditionally', 'release_completed'));
-- JSON list of test ids: outstanding at a conditional release, confirmed at its
-- completion; '[]' otherwise.
ALTER TABLE signatures ADD COLUMN outstanding_tests TEXT NOT NULL DEFAULT '[]';

-- A result out of specification after release opens a patient follow-up (kept in
-- the batch's projection, in the transaction that stores the result); QA closes it
-- with a signature saying what was done for the patient. One closure per result.
CREATE TABLE follow_up_closures (
    closure_id    UUID        PRIMARY KEY,
    batch_id      UUID        NOT NULL REFERENCES batches (batch_id),
    site_seq      BIGINT      NOT NULL,
    signer        TEXT        NOT NULL REFERENCES users (username),
    signer_name   TEXT        NOT NULL,
    outcome       TEXT        NOT NULL,
    signed_at     TIMESTAMPTZ NOT NULL,
    UNIQUE (batch_id, site_seq)
);
CREATE TRIGGER follow_up_closures_append_only BEFORE UPDATE OR DELETE ON follow_up_closures
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER follow_up_closures_no_truncate BEFORE TRUNCATE ON follow_up_closures
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();
