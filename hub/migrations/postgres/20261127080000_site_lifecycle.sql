-- Site lifecycle and certificate renewal.
--
-- A site can now be ceased (the end of its life at this network: no new
-- connections or orders, its records kept readable and verifiable), and the hub
-- tracks the validity of each site's certificate and a renewed certificate
-- issued over the link but not yet used by the site (either is accepted until
-- the site connects with the new one, so a lost reply cannot lock a site out).
ALTER TABLE sites DROP CONSTRAINT sites_status_check;
ALTER TABLE sites ADD CONSTRAINT sites_status_check
    CHECK (status IN ('pending', 'active', 'suspended', 'ceased'));
ALTER TABLE sites ADD COLUMN cert_not_after         TIMESTAMPTZ;
ALTER TABLE sites ADD COLUMN cert_ca_sha256         TEXT;
ALTER TABLE sites ADD COLUMN pending_cert_sha256    TEXT;
ALTER TABLE sites ADD COLUMN pending_cert_not_after TIMESTAMPTZ;
ALTER TABLE sites ADD COLUMN pending_cert_ca_sha256 TEXT;
