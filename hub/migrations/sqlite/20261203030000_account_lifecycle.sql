-- Account lifecycle (SQLite; the same columns and meaning as the PostgreSQL
-- migration of the same name): an administrator's one-time password reset. The
-- person chooses their own password with the code, which the administrator never
-- learns; only the code's SHA-256 is kept, until it is used or expires.
ALTER TABLE users ADD COLUMN reset_sha256 TEXT;
ALTER TABLE users ADD COLUMN reset_expires_at TEXT;
