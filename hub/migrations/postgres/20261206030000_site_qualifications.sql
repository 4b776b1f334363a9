-- Per-site product authorisation (postgres; the same table and meaning on both
-- backends). QA qualifies a site for a product, for versions `min_version` up to
-- `max_version` (NULL: every later version too), with an electronic signature; an
-- order for a site and product version that no qualification in force covers is
-- refused. A qualification is never changed: it is withdrawn (by whom, when, why),
-- and a new one recorded. At most one is in force per site and product.
CREATE TABLE site_qualifications (
    site_id          TEXT    NOT NULL REFERENCES sites(site_id),
    recipe_id        TEXT    NOT NULL,
    min_version      BIGINT  NOT NULL,
    max_version      BIGINT,
    qualified_by     TEXT    NOT NULL,
    qualified_name   TEXT    NOT NULL,
    qualified_at     TIMESTAMPTZ   NOT NULL,
    meaning          TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    withdrawn_by     TEXT,
    withdrawn_at     TIMESTAMPTZ,
    withdrawn_reason TEXT
);
CREATE UNIQUE INDEX site_qualifications_in_force
    ON site_qualifications (site_id, recipe_id) WHERE withdrawn_at IS NULL;

-- A hub upgraded to this version keeps taking the orders it took: each site and
-- product it already had orders for is carried over, recorded as exactly that (no
-- person signed it; QA reviews and re-qualifies or withdraws it).
INSERT INTO site_qualifications
    (site_id, recipe_id, min_version, max_version, qualified_by, qualified_name, qualified_at, meaning, reason)
SELECT DISTINCT site_id, recipe_id, 1, NULL::bigint, 'system', 'carried over at upgrade',
       now(),
       'carried over: not signed by a person',
       'the site had orders for this product before qualifications were recorded'
FROM orders;
