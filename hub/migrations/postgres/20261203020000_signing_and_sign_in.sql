-- Signatures that hold against insiders and strangers (PostgreSQL; the same tables
-- and meaning as the SQLite migration of the same name).

-- A release despite exceptions carries a written justification for each exception:
-- a JSON array of {"exception": what QA saw, "justification": what QA wrote}.
ALTER TABLE signatures ADD COLUMN justifications TEXT NOT NULL DEFAULT '[]';

-- When the session first signed: the first signature of a session asks for the user
-- name as well as the password (21 CFR 11.200(a)(1)(i)), later ones the password.
ALTER TABLE sessions ADD COLUMN signed_at TIMESTAMPTZ;

-- When the person acknowledged, once, that their electronic signature is the legally
-- binding equivalent of their handwritten one (21 CFR 11.100(c)); NULL: not yet.
ALTER TABLE users ADD COLUMN signature_acknowledged_at TIMESTAMPTZ;

-- Failed sign-ins (and failed signings), counted per user name and source address in
-- fixed windows; see the SQLite migration for the rules.
CREATE TABLE sign_in_failures (
    username      TEXT        NOT NULL,
    source        TEXT        NOT NULL,
    window_start  TIMESTAMPTZ NOT NULL,
    failures      BIGINT      NOT NULL,
    lock_audited  BOOLEAN     NOT NULL DEFAULT FALSE,
    reported      BOOLEAN     NOT NULL DEFAULT FALSE,
    PRIMARY KEY (username, source, window_start)
);
CREATE INDEX sign_in_failures_unreported ON sign_in_failures (reported, window_start);

-- A QA person's signed acknowledgement that they reviewed records which arrived after
-- the batch's release decision (through site seq `through_seq`).
CREATE TABLE change_reviews (
    review_id     UUID        PRIMARY KEY,
    batch_id      UUID        NOT NULL REFERENCES batches (batch_id),
    signer        TEXT        NOT NULL REFERENCES users (username),
    signer_name   TEXT        NOT NULL,
    through_seq   BIGINT      NOT NULL,
    record_sha256 TEXT        NOT NULL,
    comment       TEXT        NOT NULL,
    signed_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX change_reviews_batch ON change_reviews (batch_id);

-- The logs and the signatures are append-only, as the audit trail is.
CREATE FUNCTION append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are append-only: they cannot be changed or deleted (%)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER site_events_append_only BEFORE UPDATE OR DELETE ON site_events
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER site_events_no_truncate BEFORE TRUNCATE ON site_events
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();
CREATE TRIGGER hub_commands_append_only BEFORE UPDATE OR DELETE ON hub_commands
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER hub_commands_no_truncate BEFORE TRUNCATE ON hub_commands
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();
CREATE TRIGGER signatures_append_only BEFORE UPDATE OR DELETE ON signatures
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER signatures_no_truncate BEFORE TRUNCATE ON signatures
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();
CREATE TRIGGER change_reviews_append_only BEFORE UPDATE OR DELETE ON change_reviews
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER change_reviews_no_truncate BEFORE TRUNCATE ON change_reviews
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();
