-- Which hub process holds each site's live link. Several hub processes can share
-- one database; the newest connection of a site claims its link (generation + 1)
-- and the process holding an older generation closes its stream.
CREATE TABLE site_links (
    site_id    TEXT PRIMARY KEY REFERENCES sites(site_id),
    holder     TEXT    NOT NULL,   -- the hub process (instance id)
    generation INTEGER NOT NULL,
    claimed_at TEXT    NOT NULL
);
