-- Carrel hub store, initial schema (PostgreSQL).
--
-- The same tables, keys and meaning as migrations/sqlite/20261127000000_initial.sql:
-- two append-only logs per site (site_events, hub_commands) and the projections
-- derived from them (orders, batches, qc_results), which are only ever changed in
-- the same transaction that appends the record they derive from.
--
-- Types: ids are UUID, times TIMESTAMPTZ (microseconds, as the SQLite text keeps
-- them), sequence numbers and versions BIGINT (they hold a u64 / u32), flags BOOLEAN.
-- Documents whose exact bytes are hashed or compared (recipe documents, site event
-- and hub command bodies) stay TEXT; so does a QC value, because JSONB would rewrite
-- its numbers. The batch progress is only ever parsed, so it is JSONB.

CREATE TABLE recipes (
    recipe_id    TEXT        NOT NULL,
    version      BIGINT      NOT NULL,
    title        TEXT        NOT NULL,
    sha256       TEXT        NOT NULL,
    document     TEXT        NOT NULL,   -- canonical JSON; `sha256` is its hash
    published_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (recipe_id, version)
);

CREATE TABLE users (
    username      TEXT        PRIMARY KEY,
    full_name     TEXT        NOT NULL,
    role          TEXT        NOT NULL CHECK (role IN ('physician', 'qa', 'technician', 'admin')),
    password_hash TEXT        NOT NULL,
    disabled      BOOLEAN     NOT NULL DEFAULT FALSE,
    created_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE sessions (
    token_sha256 TEXT        PRIMARY KEY,
    username     TEXT        NOT NULL REFERENCES users (username),
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_expires ON sessions (expires_at);

CREATE TABLE sites (
    site_id           TEXT        PRIMARY KEY,
    name              TEXT        NOT NULL,
    status            TEXT        NOT NULL CHECK (status IN ('pending', 'active', 'suspended')),
    token_sha256      TEXT        UNIQUE,    -- one-time enrollment token, NULL once used
    token_expires_at  TIMESTAMPTZ,
    cert_sha256       TEXT,                  -- fingerprint of the certificate the site holds
    acked_event_seq   BIGINT      NOT NULL DEFAULT 0,  -- highest site event committed here
    last_command_seq  BIGINT      NOT NULL DEFAULT 0,  -- highest hub command issued to the site
    acked_command_seq BIGINT      NOT NULL DEFAULT 0,  -- highest hub command the site committed
    last_contact_at   TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL
);

CREATE TABLE site_events (
    site_id     TEXT        NOT NULL REFERENCES sites (site_id),
    seq         BIGINT      NOT NULL,
    event_id    UUID        NOT NULL,
    batch_id    UUID        NOT NULL,
    kind        TEXT        NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL,   -- site clock
    received_at TIMESTAMPTZ NOT NULL,   -- hub clock
    body        TEXT        NOT NULL,   -- canonical JSON of the event
    sha256      TEXT        NOT NULL,   -- SHA-256 of body; the next event carries it as prev_sha256
    PRIMARY KEY (site_id, seq)
);
CREATE INDEX site_events_batch ON site_events (batch_id, site_id, seq);

CREATE TABLE hub_commands (
    site_id    TEXT        NOT NULL REFERENCES sites (site_id),
    seq        BIGINT      NOT NULL,
    command_id UUID        NOT NULL,
    batch_id   UUID        NOT NULL,
    kind       TEXT        NOT NULL,
    issued_at  TIMESTAMPTZ NOT NULL,
    body       TEXT        NOT NULL,   -- canonical JSON of the command
    PRIMARY KEY (site_id, seq)
);

CREATE TABLE coi_serials (
    facility TEXT    NOT NULL,
    year     INTEGER NOT NULL,
    last     BIGINT  NOT NULL,
    PRIMARY KEY (facility, year)
);

CREATE TABLE orders (
    order_id                  UUID        PRIMARY KEY,
    batch_id                  UUID        NOT NULL UNIQUE,
    coi                       TEXT        NOT NULL UNIQUE,
    patient_pseudonym         TEXT        NOT NULL,
    recipe_id                 TEXT        NOT NULL,
    recipe_version            BIGINT      NOT NULL,
    site_id                   TEXT        NOT NULL REFERENCES sites (site_id),
    requested_collection_date TEXT        NOT NULL,
    physician                 TEXT        NOT NULL REFERENCES users (username),
    created_at                TIMESTAMPTZ NOT NULL,
    FOREIGN KEY (recipe_id, recipe_version) REFERENCES recipes (recipe_id, version)
);
CREATE INDEX orders_physician ON orders (physician);

-- Projection of a batch, derived from its site events and the hub's decisions.
CREATE TABLE batches (
    batch_id          UUID        PRIMARY KEY REFERENCES orders (batch_id),
    site_id           TEXT        NOT NULL REFERENCES sites (site_id),
    state             TEXT        NOT NULL,
    current_step      TEXT,
    progress          JSONB       NOT NULL,   -- steps completed, tests recorded, exceptions
    decision_recorded BOOLEAN     NOT NULL DEFAULT FALSE,
    updated_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX batches_state ON batches (state);

-- The hub's own evaluation of each QC result against the pinned specification.
CREATE TABLE qc_results (
    batch_id     UUID   NOT NULL REFERENCES batches (batch_id),
    site_id      TEXT   NOT NULL,
    site_seq     BIGINT NOT NULL,
    test_id      TEXT   NOT NULL,
    value        TEXT   NOT NULL,  -- JSON QcValue, as serialised (not JSONB: numbers stay as written)
    hub_outcome  TEXT   NOT NULL,
    site_outcome TEXT   NOT NULL,
    reason       TEXT   NOT NULL,
    PRIMARY KEY (site_id, site_seq)
);
CREATE INDEX qc_results_batch ON qc_results (batch_id);

-- Electronic signatures (21 CFR Part 11): bound to the record hash as reviewed.
CREATE TABLE signatures (
    signature_id  UUID        PRIMARY KEY,
    batch_id      UUID        NOT NULL REFERENCES batches (batch_id),
    signer        TEXT        NOT NULL REFERENCES users (username),
    signer_name   TEXT        NOT NULL,
    meaning       TEXT        NOT NULL CHECK (meaning IN ('released', 'rejected')),
    record_sha256 TEXT        NOT NULL,
    reason        TEXT        NOT NULL,
    signed_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX signatures_batch ON signatures (batch_id);

-- The audit trail (21 CFR Part 11, EU GMP Annex 11): who did what to which record,
-- when and why, with old and new values. Append-only, and a hash chain:
-- sha256 = SHA-256(prev_sha256 || canonical bytes of the entry), so an edited,
-- removed or inserted entry breaks the chain (`carrel-hub audit verify`).
-- The canonical bytes hold `at` as RFC 3339 text with microseconds, which is exactly
-- what TIMESTAMPTZ keeps. Appenders serialise on a transaction-scoped advisory lock,
-- so positions are 1, 2, 3... in commit order, also with several hub processes.
CREATE TABLE audit_log (
    position    BIGINT      PRIMARY KEY,   -- 1, 2, 3... without gaps
    at          TIMESTAMPTZ NOT NULL,
    actor       TEXT        NOT NULL,
    action      TEXT        NOT NULL,
    object      TEXT        NOT NULL,
    batch_id    UUID,                      -- the batch the entry concerns, if any
    old_value   TEXT        NOT NULL,
    new_value   TEXT        NOT NULL,
    reason      TEXT        NOT NULL,
    prev_sha256 TEXT        NOT NULL,
    sha256      TEXT        NOT NULL
);
CREATE INDEX audit_log_batch ON audit_log (batch_id);
CREATE INDEX audit_log_action ON audit_log (action);

CREATE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'audit entries are append-only: they cannot be changed'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RAISE EXCEPTION 'audit entries are append-only: they cannot be deleted'
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

-- Row triggers do not fire on TRUNCATE; this one does.
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
