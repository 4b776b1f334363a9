-- Account lifecycle (PostgreSQL; see the SQLite migration of the same name): an
-- administrator's one-time password reset, kept as the code's SHA-256 until used
-- or expired.
ALTER TABLE users ADD COLUMN reset_sha256 TEXT;
ALTER TABLE users ADD COLUMN reset_expires_at TIMESTAMPTZ;
