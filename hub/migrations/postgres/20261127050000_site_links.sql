-- Which hub process holds each site's live link. Several hub replicas share one
-- database; the newest connection of a site claims its link (generation + 1), the
-- claim is announced on the carrel_links channel, and the replica holding an older
-- generation closes its stream.
CREATE TABLE site_links (
    site_id    TEXT PRIMARY KEY REFERENCES sites(site_id),
    holder     TEXT        NOT NULL,
    generation BIGINT      NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL
);
