-- Embedded hot store (hot.db): what Redis holds in full mode, in its own
-- SQLite file so that a batch and its outbox events commit in one transaction
-- without waiting for the durable store's writer.

CREATE TABLE hot_events (
    event_id BIGINT PRIMARY KEY,
    def      TEXT NOT NULL
);

-- Only seats that are not available have a row.
CREATE TABLE hot_seats (
    event_id BIGINT NOT NULL,
    seat     INTEGER NOT NULL,
    state    TEXT NOT NULL,
    order_id BIGINT NOT NULL,
    PRIMARY KEY (event_id, seat)
);

CREATE TABLE hot_holds (
    order_id      BIGINT PRIMARY KEY,
    event_id      BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    body          TEXT NOT NULL
);
CREATE INDEX hot_holds_event ON hot_holds (event_id);

-- Paid orders (body: the whole order as held), so seats stay sold and
-- per-user limits hold across restarts.
CREATE TABLE hot_paid (
    order_id BIGINT PRIMARY KEY,
    event_id BIGINT NOT NULL,
    body     TEXT NOT NULL
);
CREATE INDEX hot_paid_event ON hot_paid (event_id);

CREATE TABLE hot_packets (
    packet_id     BIGINT PRIMARY KEY,
    status        TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    def           TEXT NOT NULL
);

CREATE TABLE hot_grabs (
    packet_id BIGINT NOT NULL,
    user_id   TEXT NOT NULL,
    grab_id   BIGINT NOT NULL,
    part      INTEGER NOT NULL,
    amount    BIGINT NOT NULL,
    at_ms     BIGINT NOT NULL,
    PRIMARY KEY (packet_id, user_id)
);

-- The outbox: events appended in the same transaction as their change.
CREATE TABLE outbox (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id  BIGINT NOT NULL UNIQUE,
    partition INTEGER NOT NULL,
    body      TEXT NOT NULL
);

CREATE TABLE consumer_offsets (
    consumer TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);
