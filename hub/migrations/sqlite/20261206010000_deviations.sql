-- Deviations as a workflow (sqlite; the same tables and meaning on both backends).
-- What a site raised stays its `deviation_raised` record; this is the hub's part of
-- each deviation: the raising itself when a person at the hub raised it (raised_by
-- set), and QA's signed closure (root cause, CAPA reference). A row appears when
-- the hub first acts on a deviation.
CREATE TABLE deviations (
    batch_id       TEXT NOT NULL,
    deviation_id   TEXT NOT NULL,
    site_id        TEXT NOT NULL,
    raised_by      TEXT,
    raised_at      TEXT,
    step_id        TEXT,
    description    TEXT,
    classification TEXT NOT NULL CHECK (classification IN ('minor', 'major', 'critical')),
    root_cause     TEXT,
    capa_ref       TEXT,
    closed_by      TEXT,
    closed_by_name TEXT,
    closed_at      TEXT,
    PRIMARY KEY (batch_id, deviation_id)
);

-- Investigation notes, never changed or removed.
CREATE TABLE deviation_notes (
    note_id      TEXT PRIMARY KEY,
    batch_id     TEXT NOT NULL,
    deviation_id TEXT NOT NULL,
    author       TEXT NOT NULL,
    written_at   TEXT NOT NULL,
    text         TEXT NOT NULL,
    FOREIGN KEY (batch_id, deviation_id) REFERENCES deviations (batch_id, deviation_id)
);
CREATE INDEX deviation_notes_of ON deviation_notes (batch_id, deviation_id, written_at);
