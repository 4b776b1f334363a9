-- Master batch records under change control (sqlite; the same tables and meaning on
-- both backends). A published version is effective from `effective_from` (NULL:
-- from its publication, as for the shipped and configured recipes) until retired.
ALTER TABLE recipes ADD COLUMN effective_from TEXT;
ALTER TABLE recipes ADD COLUMN retired_at TEXT;
ALTER TABLE recipes ADD COLUMN retired_by TEXT;

-- A version being drafted, submitted (signed by its author) or approved (signed by
-- another QA person, then published into `recipes`).
CREATE TABLE recipe_drafts (
    recipe_id        TEXT    NOT NULL,
    version          INTEGER NOT NULL,
    document         TEXT    NOT NULL,   -- canonical JSON as last saved
    sha256           TEXT    NOT NULL,
    author           TEXT    NOT NULL,
    drafted_at       TEXT    NOT NULL,
    submitted_by     TEXT,
    submitted_name   TEXT,
    submitted_at     TEXT,
    submitted_sha256 TEXT,
    approved_by      TEXT,
    approved_name    TEXT,
    approved_at      TEXT,
    approved_sha256  TEXT,
    effective_from   TEXT,
    PRIMARY KEY (recipe_id, version)
);
