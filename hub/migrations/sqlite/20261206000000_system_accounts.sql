-- System accounts (sqlite; the same tables and meaning on both backends): an
-- integration engine of a hospital (its EHR's interface engine) that orders
-- through the FHIR door on behalf of the physicians an administrator names. It is
-- no person: it has no password, no site, no signature. It proves itself with its
-- client secret (OAuth 2 client credentials); only the secret's argon2 hash is kept.
CREATE TABLE system_accounts (
    client_id   TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    disabled    INTEGER NOT NULL DEFAULT 0,
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

-- The physicians an account may order for and follow orders of.
CREATE TABLE system_account_physicians (
    client_id TEXT NOT NULL REFERENCES system_accounts (client_id),
    physician TEXT NOT NULL REFERENCES users (username),
    PRIMARY KEY (client_id, physician)
);

-- Access tokens issued at the token endpoint; only their SHA-256 is kept.
CREATE TABLE system_tokens (
    token_sha256 TEXT PRIMARY KEY,
    client_id    TEXT NOT NULL REFERENCES system_accounts (client_id),
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL
);
CREATE INDEX system_tokens_client ON system_tokens (client_id);
