-- What the presence worker last published on presence:<user>, per user. After a restart
-- the worker compares the bucket with these rows, so it emits no false transition and
-- still tells watchers about users who left while it was down.
--
-- A row is written before its event is published, with the encoded event in `pending`,
-- and `pending` is cleared once JetStream has stored it; a worker that starts publishes
-- whatever is still pending first (the event id makes a repeat a no-op). `revision` is
-- the presence bucket revision behind the row: copies of the worker only move a row
-- forward, never back to an older revision.
CREATE TABLE switchboard.presence_state (
    user_id     text        PRIMARY KEY,
    status      text        NOT NULL CHECK (status IN ('online', 'away', 'busy', 'offline')),
    devices     integer     NOT NULL CHECK (devices >= 0),
    text        text,
    revision    bigint      NOT NULL,
    pending     bytea,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX presence_state_present ON switchboard.presence_state (user_id)
    WHERE status <> 'offline';
CREATE INDEX presence_state_pending ON switchboard.presence_state (user_id)
    WHERE pending IS NOT NULL;
