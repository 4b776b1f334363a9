-- The golden batch (sqlite; the same columns and meaning on both backends).
--
-- Each batch's trajectory of each process parameter: the count and sum of its
-- samples in each bin of time in step (`bin` from 0; `bin_hours` wide, the step's
-- planned duration over 12), written at ingest in the transaction that stores
-- the samples, as `batch_measures` are. Dry runs have none. The band of a bin is
-- taken over the released batches' means (sum / n) at read time.
CREATE TABLE batch_trajectories (
    batch_id   TEXT    NOT NULL REFERENCES orders(batch_id),
    attribute  TEXT    NOT NULL,
    bin        INTEGER NOT NULL CHECK (bin >= 0),
    product_id TEXT    NOT NULL,
    bin_hours  REAL    NOT NULL CHECK (bin_hours > 0),
    n          INTEGER NOT NULL CHECK (n > 0),
    sum        REAL    NOT NULL,
    PRIMARY KEY (batch_id, attribute, bin)
);
CREATE INDEX batch_trajectories_band ON batch_trajectories (product_id, attribute);

-- Batches stored before trajectories were kept get theirs (and their measures
-- again, the same) from their records at the next start.
DELETE FROM analytics_backfill;
