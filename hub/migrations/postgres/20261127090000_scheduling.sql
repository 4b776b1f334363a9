-- Scheduling: each site's declared capacity, and the bookings made against it.
--
-- A booking holds one collection slot and, for each recipe step, the instrument
-- type it needs over the step's interval: planned when booked (never changed), and
-- expected (moved later when something runs long; see hub/src/schedule.rs).
-- A booking stops counting (active = 0) when its order is cancelled or the batch
-- is closed; the partial unique index makes a slot impossible to book twice.
CREATE TABLE site_capacity (
    site_id    TEXT PRIMARY KEY REFERENCES sites(site_id),
    document   TEXT NOT NULL,   -- JSON of schedule::Capacity
    updated_at TIMESTAMPTZ NOT NULL,
    updated_by TEXT NOT NULL
);

CREATE TABLE bookings (
    order_id          UUID    PRIMARY KEY REFERENCES orders(order_id),
    site_id           TEXT    NOT NULL REFERENCES sites(site_id),
    collection_date   DATE    NOT NULL,
    slot              INTEGER NOT NULL,   -- 0-based collection slot of the day
    active            BOOLEAN NOT NULL DEFAULT TRUE,
    announced_release TIMESTAMPTZ,              -- expected release last announced as a delay
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX bookings_one_per_slot ON bookings (site_id, collection_date, slot) WHERE active;

CREATE TABLE booking_steps (
    order_id        UUID    NOT NULL REFERENCES bookings(order_id),
    position        INTEGER NOT NULL,
    step_id         TEXT    NOT NULL,
    instrument_type TEXT    NOT NULL,
    planned_start TIMESTAMPTZ NOT NULL,
    planned_end TIMESTAMPTZ NOT NULL,
    expected_start TIMESTAMPTZ NOT NULL,
    expected_end TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (order_id, position)
);
