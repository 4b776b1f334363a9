-- Notifications: who wants to hear of what, and what the hub owes them.
--
-- The notifier reads the audit trail after `notification_cursor.position` and, in
-- the transaction that advances the cursor, queues one outbox row per matching
-- subscription. The unique (subscription_id, source) key keeps a happening from
-- being queued twice for one subscription. Delivery state lives in the outbox only:
-- deliveries are not audited (the notifier would read its own output back).

CREATE TABLE notification_subscriptions (
    subscription_id TEXT PRIMARY KEY,
    owner           TEXT NOT NULL REFERENCES users(username),
    kinds           TEXT NOT NULL,     -- comma-separated kind names
    channel         TEXT NOT NULL CHECK (channel IN ('email', 'webhook')),
    target          TEXT NOT NULL,     -- e-mail address or webhook URL
    secret          TEXT,              -- webhook HMAC key (its text is the key); NULL for e-mail
    site_id         TEXT,              -- only this site's happenings, when set
    created_at      TEXT NOT NULL,
    removed_at      TEXT               -- unsubscribed: matches nothing more
);
CREATE INDEX notification_subscriptions_owner ON notification_subscriptions (owner);

CREATE TABLE notification_outbox (
    id              INTEGER PRIMARY KEY,   -- queue order (delivery is in this order per subscription)
    notification_id TEXT NOT NULL UNIQUE,  -- stable id sent with every attempt, for receivers to dedupe
    subscription_id TEXT NOT NULL REFERENCES notification_subscriptions(subscription_id),
    source          TEXT NOT NULL,         -- what it derives from, e.g. `audit/42` or `audit/42/event/7`
    kind            TEXT NOT NULL,
    site_id         TEXT,
    batch_id        TEXT,
    coi             TEXT,
    summary         TEXT NOT NULL,
    payload         TEXT NOT NULL,         -- JSON body as sent
    created_at      TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    leased_until    TEXT,                  -- a worker is delivering it until then
    last_error      TEXT,
    delivered_at    TEXT,
    UNIQUE (subscription_id, source)
);
CREATE INDEX notification_outbox_due ON notification_outbox (state, next_attempt_at);
CREATE INDEX notification_outbox_subscription ON notification_outbox (subscription_id, state, id);

-- How far the notifier has read the audit trail (one row, name 'audit').
CREATE TABLE notification_cursor (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
INSERT INTO notification_cursor (name, position) VALUES ('audit', 0);

-- Sites whose link is down, one row per open episode: the `site.link_down` audit
-- entry is written once when the row is created, `site.link_restored` when removed.
CREATE TABLE site_link_down (
    site_id         TEXT PRIMARY KEY REFERENCES sites(site_id),
    last_contact_at TEXT,             -- contact as it was when the episode began
    detected_at     TEXT NOT NULL
);
