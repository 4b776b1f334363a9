-- The console's own notification list (postgres; the same table and meaning on both
-- backends). The notifier puts each critical happening of an order (a COI mismatch,
-- an out-of-specification result, a deviation, a rejection, a cancellation, a delay,
-- a record changed after QA's decision) here for the physician who placed the
-- order, whether or not anyone subscribed and whether or not e-mail is configured.
-- One row per recipient and happening: the notifier may see an entry twice.
CREATE TABLE inbox (
    inbox_id    UUID PRIMARY KEY,
    recipient   TEXT NOT NULL REFERENCES users(username),
    source      TEXT NOT NULL,   -- the happening, e.g. `audit/42/site/s1/event/7`
    kind        TEXT NOT NULL,
    site_id     TEXT,
    order_id    UUID,
    batch_id    UUID,
    coi         TEXT,
    summary     TEXT NOT NULL,
    happened_at TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    read_at     TIMESTAMPTZ,           -- NULL until the recipient marks it read
    UNIQUE (recipient, source, kind)
);
CREATE INDEX inbox_recipient ON inbox (recipient, created_at);
