-- Site lifecycle and certificate renewal.
--
-- A site can now be ceased (the end of its life at this network: no new
-- connections or orders, its records kept readable and verifiable), and the hub
-- tracks the validity of each site's certificate and a renewed certificate
-- issued over the link but not yet used by the site (either is accepted until
-- the site connects with the new one, so a lost reply cannot lock a site out).
--
-- SQLite cannot alter a CHECK constraint, so the table is rebuilt as its
-- documented procedure says. The hub runs its migrations on a connection with
-- foreign keys off and checks `PRAGMA foreign_key_check` afterwards, so the
-- rows that reference sites are untouched.
CREATE TABLE sites_new (
    site_id                TEXT PRIMARY KEY,
    name                   TEXT NOT NULL,
    status                 TEXT NOT NULL CHECK (status IN ('pending', 'active', 'suspended', 'ceased')),
    token_sha256           TEXT UNIQUE,        -- one-time enrollment token, NULL once used
    token_expires_at       TEXT,
    cert_sha256            TEXT,               -- fingerprint of the certificate the site holds
    cert_not_after         TEXT,               -- its expiry (NULL for sites enrolled before this column)
    cert_ca_sha256         TEXT,               -- the CA that issued it (NULL: likewise)
    pending_cert_sha256    TEXT,               -- renewed certificate not yet presented by the site
    pending_cert_not_after TEXT,
    pending_cert_ca_sha256 TEXT,
    acked_event_seq        INTEGER NOT NULL DEFAULT 0,  -- highest site event committed here
    last_command_seq       INTEGER NOT NULL DEFAULT 0,  -- highest hub command issued to the site
    acked_command_seq      INTEGER NOT NULL DEFAULT 0,  -- highest hub command the site committed
    last_contact_at        TEXT,
    created_at             TEXT NOT NULL
);

INSERT INTO sites_new (site_id, name, status, token_sha256, token_expires_at, cert_sha256,
                       acked_event_seq, last_command_seq, acked_command_seq, last_contact_at, created_at)
SELECT site_id, name, status, token_sha256, token_expires_at, cert_sha256,
       acked_event_seq, last_command_seq, acked_command_seq, last_contact_at, created_at
FROM sites;

DROP TABLE sites;
ALTER TABLE sites_new RENAME TO sites;
