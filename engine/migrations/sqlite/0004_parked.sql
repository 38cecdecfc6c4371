-- Events the persist worker could not apply (a batch that broke a durable
-- constraint is split until the offending event is alone): kept with the
-- reason so an operator can look and replay, while the rest of the
-- projection goes on. The event's id is also in processed_events, so a
-- redelivery does not park it twice.
CREATE TABLE parked_events (
    event_id     BIGINT PRIMARY KEY,
    position     BIGINT NOT NULL,
    body         TEXT NOT NULL,
    reason       TEXT NOT NULL,
    parked_at_ms BIGINT NOT NULL
);
