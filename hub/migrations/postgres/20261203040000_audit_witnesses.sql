-- The sites witness the hub's audit trail (postgres; the same tables and meaning on
-- both backends). The hub sends each site the head of its trail (position, hash);
-- the site keeps it and reports the last one it witnessed. A report the trail
-- agrees with is kept here, the latest per site; one it contradicts (the trail is
-- shorter, or holds another hash at that position: entries removed, or an older
-- backup restored) is a finding. People are refused while a finding waits for an
-- administrator's acknowledgement (`carrel-hub audit acknowledge`).
CREATE TABLE audit_witnesses (
    site_id     TEXT   PRIMARY KEY REFERENCES sites (site_id),
    position    BIGINT NOT NULL,
    sha256      TEXT   NOT NULL,
    reported_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE audit_findings (
    site_id         TEXT   NOT NULL,
    position        BIGINT NOT NULL,
    sha256          TEXT   NOT NULL,
    found_at        TIMESTAMPTZ NOT NULL,
    detail          TEXT   NOT NULL,
    acknowledged_by TEXT,
    acknowledged_at TIMESTAMPTZ,
    reason          TEXT,
    PRIMARY KEY (site_id, position, sha256)
);
