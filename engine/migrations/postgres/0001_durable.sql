-- Durable store, Postgres dialect: the same tables as the SQLite
-- migration. Every integer is BIGINT so one body of SQL (sqlx Any) reads
-- them as i64 on both. Money columns are integer fen; times are Unix ms.

CREATE TABLE accounts (
    user_id    TEXT PRIMARY KEY,
    available  BIGINT NOT NULL,
    frozen     BIGINT NOT NULL,
    version    BIGINT NOT NULL
);

-- Double entry: every transfer is two legs that sum to zero.
CREATE TABLE journal (
    entry_id    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transfer_id TEXT NOT NULL,
    leg         BIGINT NOT NULL,
    user_id     TEXT NOT NULL,
    bucket      TEXT NOT NULL,
    amount      BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    ref_id      TEXT NOT NULL,
    memo        TEXT NOT NULL,
    at_ms       BIGINT NOT NULL,
    UNIQUE (transfer_id, leg)
);
CREATE INDEX journal_user ON journal (user_id, entry_id);

-- Orders live in 16 tables chosen by the order id's gene (= gene of the
-- user), so a lookup by order id or by user touches one table.
CREATE TABLE orders_0 (
    order_id      BIGINT PRIMARY KEY,
    event_id      BIGINT NOT NULL,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX orders_0_user ON orders_0 (user_id, order_id);
CREATE TABLE orders_1 (
    order_id      BIGINT PRIMARY KEY,
    event_id      BIGINT NOT NULL,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX orders_1_user ON orders_1 (user_id, order_id);
CREATE TABLE orders_2 (
    order_id      BIGINT PRIMARY KEY,
    event_id      BIGINT NOT NULL,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX orders_2_user ON orders_2 (user_id, order_id);
CREATE TABLE orders_3 (
    order_id      BIGINT PRIMARY KEY,
    event_id      BIGINT NOT NULL,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX orders_3_user ON orders_3 (user_id, order_id);
CREATE TABLE orders_4 (
    order_id      BIGINT PRIMARY KEY,
    event_id      BIGINT NOT NULL,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX orders_4_user ON orders_4 (user_id, order_id);
CREATE TABLE orders_5 (
    order_id      BIGINT PRIMARY KEY,
    event_id      BIGINT NOT NULL,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX orders_5_user ON orders_5 (user_id, order_id);
CREATE TABLE orders_6 (
    order_id      BIGINT PRIMARY KEY,
    event_id      BIGINT NOT NULL,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX orders_6_user ON orders_6 (user_id, order_id);
CREATE TABLE orders_7 (
    order_id      BIGINT PRIMARY KEY,
    event_id      BIGINT NOT NULL,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX orders_7_user ON orders_7 (user_id, order_id);
CREATE TABLE orders_8 (
    order_id      BIGINT PRIMARY KEY,
    event_id      BIGINT NOT NULL,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX orders_8_user ON orders_8 (user_id, order_id);
CREATE TABLE orders_9 (
    order_id      BIGINT PRIMARY KEY,
    event_id      BIGINT NOT NULL,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX orders_9_user ON orders_9 (user_id, order_id);
CREATE TABLE orders_10 (
    order_id      BIGINT PRIMARY KEY,
    event_id      BIGINT NOT NULL,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX orders_10_user ON orders_10 (user_id, order_id);
CREATE TABLE orders_11 (
    order_id      BIGINT PRIMARY KEY,
    event_id      BIGINT NOT NULL,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX orders_11_user ON orders_11 (user_id, order_id);
CREATE TABLE orders_12 (
    order_id      BIGINT PRIMARY KEY,
    event_id      BIGINT NOT NULL,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX orders_12_user ON orders_12 (user_id, order_id);
CREATE TABLE orders_13 (
    order_id      BIGINT PRIMARY KEY,
    event_id      BIGINT NOT NULL,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX orders_13_user ON orders_13 (user_id, order_id);
CREATE TABLE orders_14 (
    order_id      BIGINT PRIMARY KEY,
    event_id      BIGINT NOT NULL,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX orders_14_user ON orders_14 (user_id, order_id);
CREATE TABLE orders_15 (
    order_id      BIGINT PRIMARY KEY,
    event_id      BIGINT NOT NULL,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX orders_15_user ON orders_15 (user_id, order_id);

CREATE TABLE order_seats (
    order_id  BIGINT NOT NULL,
    event_id  BIGINT NOT NULL,
    seat_id   TEXT NOT NULL,
    section   TEXT NOT NULL,
    row_no    BIGINT NOT NULL,
    col_no    BIGINT NOT NULL,
    category  TEXT NOT NULL,
    price     BIGINT NOT NULL,
    live      BIGINT NOT NULL,
    PRIMARY KEY (order_id, seat_id)
);
-- Last line of defence: one live (held or sold) order per seat.
CREATE UNIQUE INDEX order_seats_one_live ON order_seats (event_id, seat_id) WHERE live = 1;

CREATE TABLE attendees (
    order_id  BIGINT NOT NULL,
    idx       BIGINT NOT NULL,
    name      TEXT NOT NULL,
    id_number TEXT NOT NULL,
    PRIMARY KEY (order_id, idx)
);

CREATE TABLE packets (
    packet_id     BIGINT PRIMARY KEY,
    sender        TEXT NOT NULL,
    kind          TEXT NOT NULL,
    total         BIGINT NOT NULL,
    count         BIGINT NOT NULL,
    greeting      TEXT NOT NULL,
    status        TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    refunded      BIGINT NOT NULL
);

CREATE TABLE grabs (
    grab_id   BIGINT PRIMARY KEY,
    packet_id BIGINT NOT NULL,
    user_id   TEXT NOT NULL,
    amount    BIGINT NOT NULL,
    at_ms     BIGINT NOT NULL,
    UNIQUE (packet_id, user_id)
);

-- One effect per event id.
CREATE TABLE processed_events (
    event_id BIGINT PRIMARY KEY,
    at_ms    BIGINT NOT NULL
);
