-- What a lost Redis is rebuilt from (issue 15): every event's definition
-- (seat map, categories, limits) is written here before the hot store has
-- it, and every packet's definition with its parts beside the packet row,
-- so that the hot state of each live event and packet can be put back
-- from the orders, order_seats and grabs this store has applied.
CREATE TABLE events (
    event_id      BIGINT PRIMARY KEY,
    def           TEXT NOT NULL,
    starts_at_ms  BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX events_starts ON events (starts_at_ms);

-- The packet's definition as created (JSON, parts included); '' for
-- packets made before this migration (they cannot be rebuilt).
ALTER TABLE packets ADD COLUMN def TEXT NOT NULL DEFAULT '';
CREATE INDEX packets_expiry ON packets (expires_at_ms);

-- The identity of the Redis data set this store was last fed from: the
-- same value sits in a marker key in every Redis partition. A marker that
-- is missing or different means Redis lost (or rolled back) its data.
CREATE TABLE hot_identity (
    id         BIGINT PRIMARY KEY,
    epoch      TEXT NOT NULL,
    at_ms      BIGINT NOT NULL
);

-- A rebuild reads an event's orders by event id.
CREATE INDEX orders_0_event ON orders_0 (event_id);
CREATE INDEX orders_1_event ON orders_1 (event_id);
CREATE INDEX orders_2_event ON orders_2 (event_id);
CREATE INDEX orders_3_event ON orders_3 (event_id);
CREATE INDEX orders_4_event ON orders_4 (event_id);
CREATE INDEX orders_5_event ON orders_5 (event_id);
CREATE INDEX orders_6_event ON orders_6 (event_id);
CREATE INDEX orders_7_event ON orders_7 (event_id);
CREATE INDEX orders_8_event ON orders_8 (event_id);
CREATE INDEX orders_9_event ON orders_9 (event_id);
CREATE INDEX orders_10_event ON orders_10 (event_id);
CREATE INDEX orders_11_event ON orders_11 (event_id);
CREATE INDEX orders_12_event ON orders_12 (event_id);
CREATE INDEX orders_13_event ON orders_13 (event_id);
CREATE INDEX orders_14_event ON orders_14 (event_id);
CREATE INDEX orders_15_event ON orders_15 (event_id);
