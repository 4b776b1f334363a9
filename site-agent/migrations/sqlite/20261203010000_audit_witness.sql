-- The heads of the hub's audit trail this site was sent (position and hash), in the
-- order received. The site reports the last one when it connects and in its
-- heartbeats; the hub checks it against its trail, so a hub whose newest audit
-- entries were removed, or whose database was restored from an older backup, is
-- found out by the sites that witnessed more. Kept, never changed.
CREATE TABLE audit_witness (
    received    INTEGER PRIMARY KEY,   -- 1, 2, 3... in the order received
    position    INTEGER NOT NULL,
    sha256      TEXT    NOT NULL,
    received_at TEXT    NOT NULL
);
CREATE TRIGGER audit_witness_no_update BEFORE UPDATE ON audit_witness
BEGIN SELECT RAISE(ABORT, 'witnessed audit heads are kept as received'); END;
CREATE TRIGGER audit_witness_no_delete BEFORE DELETE ON audit_witness
BEGIN SELECT RAISE(ABORT, 'witnessed audit heads are kept as received'); END;
