-- Process analytics (postgres; the same columns and meaning on both backends).
--
-- What each batch contributes to the control charts, kept up to date in the
-- transaction that stores the site's records, so that no chart re-reads events.
-- `attribute` is `qc/<test>` (a numeric QC result: `seq` is its site record; a
-- retest of it replaces it, any other second result of the test, or a correction
-- of it, makes it `ambiguous` for good; n = 0 when the result that counts is not
-- a number in the test's unit; only n > 0 and not ambiguous is charted) or
-- `step/<step>/<parameter>` (a running summary of that parameter's samples in that
-- step: count, sum, extremes, and the time spent out of the recipe's range; the
-- last sample and whether it was out of range carry the time across messages).
-- Dry runs have none. `product_id`, `site_id` and `batch_at` (when the order was
-- placed) are copied from the order so that a chart is one index range.
CREATE TABLE batch_measures (
    batch_id           UUID             NOT NULL REFERENCES orders (batch_id),
    attribute          TEXT             NOT NULL,
    product_id         TEXT             NOT NULL,
    site_id            TEXT             NOT NULL,
    batch_at           TIMESTAMPTZ      NOT NULL,
    unit               TEXT             NOT NULL,
    n                  BIGINT           NOT NULL CHECK (n >= 0),
    sum                DOUBLE PRECISION NOT NULL,
    min                DOUBLE PRECISION NOT NULL,
    max                DOUBLE PRECISION NOT NULL,
    first_hours        DOUBLE PRECISION NOT NULL,
    last_hours         DOUBLE PRECISION NOT NULL,
    last_out           BOOLEAN          NOT NULL,
    out_of_range_hours DOUBLE PRECISION NOT NULL,
    seq                BIGINT           NOT NULL DEFAULT 0,
    retest_of          BIGINT,
    ambiguous          BOOLEAN          NOT NULL DEFAULT FALSE,
    PRIMARY KEY (batch_id, attribute)
);
CREATE INDEX batch_measures_chart ON batch_measures (product_id, attribute, batch_at);

-- The baselines QA chose for a product's control limits: the batches, fixed when
-- chosen, with who chose them and why. Never changed; the latest is in force.
CREATE TABLE analytics_baselines (
    product_id TEXT        NOT NULL,
    chosen_at  TIMESTAMPTZ NOT NULL,
    chosen_by  TEXT        NOT NULL REFERENCES users (username),
    reason     TEXT        NOT NULL,
    batches    TEXT        NOT NULL,  -- JSON array of batch ids
    PRIMARY KEY (product_id, chosen_at)
);

-- Set once the measures of the batches stored before this migration were made
-- from their records (at the first start of a hub with it).
CREATE TABLE analytics_backfill (
    done_at TIMESTAMPTZ NOT NULL
);

-- Trend signals: signals on a site's control chart of a QC result, by the rules
-- the configuration names, each kept once (the first replica to find it writes it
-- and its audit entry).
CREATE TABLE trend_signals (
    batch_id   UUID NOT NULL REFERENCES orders (batch_id),
    attribute  TEXT NOT NULL,
    statistic  TEXT NOT NULL,
    rule       INTEGER NOT NULL CHECK (rule BETWEEN 1 AND 8),
    product_id TEXT NOT NULL,
    site_id    TEXT NOT NULL,
    value      DOUBLE PRECISION NOT NULL,
    found_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (batch_id, attribute, statistic, rule)
);
