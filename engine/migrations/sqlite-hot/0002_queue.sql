-- Waiting rooms (store/queue.rs): one row per queued user. The admission
-- bucket is not kept: after a restart it starts empty, so a restart never
-- admits faster than the rate.
CREATE TABLE queue_tickets (
    event_id   BIGINT NOT NULL,
    user_id    TEXT NOT NULL,
    ticket_id  BIGINT NOT NULL,
    -- Queue order: a random key below 2^52 for joiners before the opening,
    -- 2^52 + n for the n-th joiner after it.
    score      BIGINT NOT NULL,
    -- 0 while waiting; else the n-th admission, valid until expires_ms.
    admit_no   BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (event_id, user_id)
);
