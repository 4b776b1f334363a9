-- Carrel site agent store, initial schema (SQLite).
--
-- The site's own append-only event log (replicated to the hub), the hub commands it
-- has committed, and the local batch projection derived from both in the same
-- transaction.

CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,        -- 1, 2, 3... without gaps
    event_id    TEXT    NOT NULL UNIQUE,
    batch_id    TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    recorded_at TEXT    NOT NULL,
    body        TEXT    NOT NULL,            -- canonical JSON of the event
    sha256      TEXT    NOT NULL             -- SHA-256 of body; the next event carries it
);
CREATE INDEX events_batch ON events (batch_id, seq);

CREATE TABLE commands (
    seq         INTEGER PRIMARY KEY,        -- the hub's command seq for this site
    command_id  TEXT    NOT NULL UNIQUE,
    batch_id    TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    body        TEXT    NOT NULL,            -- canonical JSON of the command
    received_at TEXT    NOT NULL
);

CREATE TABLE batches (
    batch_id          TEXT PRIMARY KEY,
    order_id          TEXT NOT NULL,
    coi               TEXT NOT NULL,
    patient_pseudonym TEXT NOT NULL,
    recipe_id         TEXT NOT NULL,
    recipe_version    INTEGER NOT NULL,
    recipe_json       TEXT NOT NULL,
    recipe_sha256     TEXT NOT NULL,
    state             TEXT NOT NULL,
    current_step      TEXT,
    decision          TEXT,
    updated_at        TEXT NOT NULL
);

-- What the hub has acknowledged of our event log (for status and backlog only:
-- the hub's Welcome is the authority on where to resume).
CREATE TABLE link_state (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    hub_acked_event_seq INTEGER NOT NULL,
    last_contact_at     TEXT
);
INSERT INTO link_state (id, hub_acked_event_seq) VALUES (1, 0);
