-- Which sites each person works at. The site's copy of the directory is sent as
-- person_updated commands in the site's command log (hub_commands); this table is
-- where the hub keeps the assignment itself.
CREATE TABLE user_sites (
    username    TEXT        NOT NULL REFERENCES users (username),
    site_id     TEXT        NOT NULL REFERENCES sites (site_id),
    assigned_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (username, site_id)
);
CREATE INDEX user_sites_site ON user_sites (site_id);
-- The directory of a site is read from its command log by kind.
CREATE INDEX hub_commands_kind ON hub_commands (site_id, kind, seq);
-- A badge the hub issued to a person for the bedside: the barcode they scan to sign in
-- at a site, with a PIN (argon2id hash) instead of their password.
CREATE TABLE badges (
    username  TEXT        PRIMARY KEY REFERENCES users (username),
    badge_id  TEXT        NOT NULL UNIQUE,
    pin_hash  TEXT        NOT NULL,
    issued_at TIMESTAMPTZ NOT NULL
);
