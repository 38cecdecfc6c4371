-- Payments, the callback log, the sandbox channels' own books, withdrawals
-- and webhooks. The same text serves Postgres (its copy differs only in the
-- header): every id is a snowflake minted by rush, so no identity columns.

-- One attempt to pay an order or recharge a wallet through a channel.
-- `status` is what the API shows (pending, succeeded, failed, closed,
-- refunded); `money` records whether the channel has taken the buyer's
-- money (none, received) and `refund` whether rush owes it back (none, due,
-- done). `next_check_at_ms` is when the payments worker looks at it next
-- (active query, close at expiry, refund retry); 9e18 = never.
CREATE TABLE payments (
    payment_id       BIGINT PRIMARY KEY,
    purpose          TEXT NOT NULL,
    order_id         BIGINT,
    event_id         BIGINT,
    user_id          TEXT NOT NULL,
    channel          TEXT NOT NULL,
    amount           BIGINT NOT NULL,
    status           TEXT NOT NULL,
    money            TEXT NOT NULL,
    refund           TEXT NOT NULL,
    channel_txn      TEXT,
    paid_amount      BIGINT,
    created_at_ms    BIGINT NOT NULL,
    expires_at_ms    BIGINT NOT NULL,
    updated_at_ms    BIGINT NOT NULL,
    paid_at_ms       BIGINT,
    checks           BIGINT NOT NULL,
    next_check_at_ms BIGINT NOT NULL
);
CREATE INDEX payments_next_check ON payments (next_check_at_ms);
CREATE INDEX payments_order ON payments (order_id);

-- The one payment that pays an order: a second payment's money, arriving
-- for an order another payment has claimed, is refunded, never applied.
CREATE TABLE order_payments (
    order_id   BIGINT PRIMARY KEY,
    payment_id BIGINT NOT NULL
);

-- Every callback as it arrived, before it was processed, and what came of it.
CREATE TABLE callback_log (
    callback_id    BIGINT PRIMARY KEY,
    channel        TEXT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    headers        TEXT NOT NULL,
    body           TEXT NOT NULL,
    payment_id     BIGINT,
    outcome        TEXT NOT NULL,
    detail         TEXT NOT NULL
);
CREATE INDEX callback_log_payment ON callback_log (payment_id);

-- The sandbox channels' side of the world: what a real channel would keep
-- on its own servers. Only the sandbox code reads or writes it.
CREATE TABLE sandbox_trades (
    channel          TEXT NOT NULL,
    payment_id       BIGINT NOT NULL,
    amount           BIGINT NOT NULL,
    status           TEXT NOT NULL,
    txn_id           TEXT NOT NULL,
    created_at_ms    BIGINT NOT NULL,
    expires_at_ms    BIGINT NOT NULL,
    paid_at_ms       BIGINT,
    refunded_at_ms   BIGINT,
    PRIMARY KEY (channel, payment_id)
);

-- Withdrawals: frozen at request, moved out on approval, unfrozen on
-- rejection. `day` is the risk day (days since 1970-01-01 at the configured
-- offset) the request counts against.
CREATE TABLE withdrawals (
    withdrawal_id  BIGINT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    amount         BIGINT NOT NULL,
    status         TEXT NOT NULL,
    day            BIGINT NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    decided_at_ms  BIGINT,
    decided_by     TEXT,
    reason         TEXT
);
CREATE INDEX withdrawals_user_day ON withdrawals (user_id, day);
CREATE INDEX withdrawals_status ON withdrawals (status, withdrawal_id);

CREATE TABLE webhooks (
    webhook_id      BIGINT PRIMARY KEY,
    url             TEXT NOT NULL,
    events          TEXT NOT NULL,
    secret          TEXT NOT NULL,
    enabled         BIGINT NOT NULL,
    disabled_reason TEXT,
    created_at_ms   BIGINT NOT NULL
);

-- One event to one webhook, keyed "<event key>:<webhook id>" so a fan-out
-- that runs twice writes once: pending until a 2xx (delivered), the retry
-- window closes (failed), or the endpoint answers 410 (disabled).
CREATE TABLE webhook_deliveries (
    delivery_id        TEXT PRIMARY KEY,
    webhook_id         BIGINT NOT NULL,
    event_type         TEXT NOT NULL,
    body               TEXT NOT NULL,
    status             TEXT NOT NULL,
    attempts           BIGINT NOT NULL,
    created_at_ms      BIGINT NOT NULL,
    next_attempt_at_ms BIGINT NOT NULL,
    delivered_at_ms    BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at_ms);
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries (webhook_id, delivery_id);

CREATE TABLE webhook_attempts (
    delivery_id  TEXT NOT NULL,
    attempt      BIGINT NOT NULL,
    at_ms        BIGINT NOT NULL,
    status_code  BIGINT,
    error        TEXT,
    duration_ms  BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
