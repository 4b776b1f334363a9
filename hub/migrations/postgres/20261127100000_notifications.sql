-- Notifications: the same tables and meaning as
-- migrations/sqlite/20261127100000_notifications.sql.

CREATE TABLE notification_subscriptions (
    subscription_id UUID        PRIMARY KEY,
    owner           TEXT        NOT NULL REFERENCES users (username),
    kinds           TEXT        NOT NULL,
    channel         TEXT        NOT NULL CHECK (channel IN ('email', 'webhook')),
    target          TEXT        NOT NULL,
    secret          TEXT,
    site_id         TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    removed_at      TIMESTAMPTZ
);
CREATE INDEX notification_subscriptions_owner ON notification_subscriptions (owner);

CREATE TABLE notification_outbox (
    id              BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id UUID        NOT NULL UNIQUE,
    subscription_id UUID        NOT NULL REFERENCES notification_subscriptions (subscription_id),
    source          TEXT        NOT NULL,
    kind            TEXT        NOT NULL,
    site_id         TEXT,
    batch_id        UUID,
    coi             TEXT,
    summary         TEXT        NOT NULL,
    payload         TEXT        NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    state           TEXT        NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        BIGINT      NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    leased_until    TIMESTAMPTZ,
    last_error      TEXT,
    delivered_at    TIMESTAMPTZ,
    UNIQUE (subscription_id, source)
);
CREATE INDEX notification_outbox_due ON notification_outbox (state, next_attempt_at);
CREATE INDEX notification_outbox_subscription ON notification_outbox (subscription_id, state, id);

CREATE TABLE notification_cursor (
    name     TEXT   PRIMARY KEY,
    position BIGINT NOT NULL
);
INSERT INTO notification_cursor (name, position) VALUES ('audit', 0);

CREATE TABLE site_link_down (
    site_id         TEXT        PRIMARY KEY REFERENCES sites (site_id),
    last_contact_at TIMESTAMPTZ,
    detected_at     TIMESTAMPTZ NOT NULL
);
