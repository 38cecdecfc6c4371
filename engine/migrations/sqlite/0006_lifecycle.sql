-- The sale's lifecycle (issue 18): an event's definition changes after its
-- creation (operator edits, pause, cancel), each change one revision more;
-- the catalogue is read from these columns (never from the definition,
-- which holds every seat); a cancellation's refund fan-out is tracked
-- order by order so that it resumes after a restart and refunds once.
-- Expand only: the previous version writes and reads events as before.
ALTER TABLE events ADD COLUMN rev BIGINT NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN venue TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN categories TEXT NOT NULL DEFAULT '[]';
ALTER TABLE events ADD COLUMN on_sale_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN sale_ends_at_ms BIGINT NOT NULL DEFAULT 9223372036854775807;
ALTER TABLE events ADD COLUMN paused BIGINT NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN cancelled_at_ms BIGINT;
ALTER TABLE events ADD COLUMN cancel_reason TEXT;
-- Set once every order of the cancelled event is closed or refunded.
ALTER TABLE events ADD COLUMN cancel_done_at_ms BIGINT;
UPDATE events SET name = json_extract(def, '$.name'), venue = json_extract(def, '$.venue'),
    categories = json_extract(def, '$.categories'),
    on_sale_at_ms = COALESCE(CAST((julianday(json_extract(def, '$.on_sale_at')) - 2440587.5) * 86400000 AS INTEGER), 0),
    sale_ends_at_ms = COALESCE(CAST((julianday(json_extract(def, '$.sale_ends_at')) - 2440587.5) * 86400000 AS INTEGER), 9223372036854775807);
CREATE INDEX events_cancel_open ON events (cancelled_at_ms, cancel_done_at_ms);

-- One row per paid order of a cancelled event, written before its refund
-- is asked for; done once its payment's refund is done.
CREATE TABLE cancel_refunds (
    event_id   BIGINT NOT NULL,
    order_id   BIGINT NOT NULL,
    payment_id BIGINT NOT NULL,
    amount     BIGINT NOT NULL,
    done_at_ms BIGINT,
    PRIMARY KEY (event_id, order_id)
);
