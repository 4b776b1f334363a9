-- Separation of duties (sqlite; the same table and meaning on both backends): when
-- the hub has two or more administrators, the qa or admin role is granted only when
-- a second administrator approves what the first asked for. A request waits here
-- until it is decided.
CREATE TABLE role_grants (
    grant_id     TEXT PRIMARY KEY,
    username     TEXT NOT NULL REFERENCES users (username),
    role         TEXT NOT NULL CHECK (role IN ('qa', 'admin')),
    requested_by TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    reason       TEXT NOT NULL,
    decided_by   TEXT,
    decided_at   TEXT
);
CREATE INDEX role_grants_pending ON role_grants (username, decided_at);
