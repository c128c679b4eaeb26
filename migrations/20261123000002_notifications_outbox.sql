-- The notifications worker's outbound deliveries, and what the outbox relay needs beyond
-- the first migration. Never edit a migration once it has shipped: add another.

-- Outbox rows that can never become an event (written by hand around switchboard.emit,
-- or larger than the stream accepts) are set aside with the reason instead of blocking
-- every row behind them. The relay reads only rows neither sent nor failed.
ALTER TABLE switchboard.outbox
    ADD COLUMN failed_at timestamptz,
    ADD COLUMN error     text;
DROP INDEX switchboard.outbox_pending;
CREATE INDEX outbox_pending ON switchboard.outbox (seq)
    WHERE sent_at IS NULL AND failed_at IS NULL;
CREATE INDEX outbox_sent_by_age ON switchboard.outbox (sent_at) WHERE sent_at IS NOT NULL;

-- switchboard.emit, as before, with two more refusals so that the caller's transaction
-- fails instead of the relay later:
-- - an actor needs a string "type" as well as an "id" (the event envelope requires both);
-- - data above 1,000,000 bytes of JSON text (the EVENTS stream takes events up to 1 MiB).
CREATE OR REPLACE FUNCTION switchboard.emit(
    channel  text,
    type     text,
    data     jsonb,
    actor    jsonb DEFAULT NULL,
    event_id text  DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    id text := event_id;
BEGIN
    IF channel IS NULL OR channel !~ '^(user|project|bid|job|group|team|conversation|presence|domain|system):[A-Za-z0-9_-]{1,128}$' THEN
        RAISE EXCEPTION 'switchboard.emit: invalid channel %', quote_nullable(channel)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A channel is <namespace>:<id>, id matching [A-Za-z0-9_-]{1,128}.';
    END IF;
    IF type IS NULL OR length(type) > 128 OR type !~ '^[a-z0-9_]+(\.[a-z0-9_]+)*$' THEN
        RAISE EXCEPTION 'switchboard.emit: invalid event type %', quote_nullable(type)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'An event type is lowercase [a-z0-9_] segments joined by dots.';
    END IF;
    IF actor IS NOT NULL AND (jsonb_typeof(actor) <> 'object'
            OR jsonb_typeof(actor -> 'id') IS DISTINCT FROM 'string'
            OR jsonb_typeof(actor -> 'type') IS DISTINCT FROM 'string') THEN
        RAISE EXCEPTION 'switchboard.emit: actor must be an object with a string "id" and a string "type"'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example {"id":"user_456","type":"contractor"}.';
    END IF;
    IF data IS NOT NULL AND octet_length(data::text) > 1000000 THEN
        RAISE EXCEPTION 'switchboard.emit: data is % bytes of JSON; at most 1000000 fit in an event',
                octet_length(data::text)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF id IS NULL THEN
        -- Time-ordered like the ids the Rust side generates: milliseconds, then randomness.
        id := 'evt_' || lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
                     || substr(replace(gen_random_uuid()::text, '-', ''), 1, 20);
    ELSIF id !~ '^evt_[A-Za-z0-9_-]{1,128}$' THEN
        RAISE EXCEPTION 'switchboard.emit: invalid event id %', quote_literal(id)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'An event id is evt_ followed by up to 128 of [A-Za-z0-9_-].';
    END IF;
    INSERT INTO switchboard.outbox (event_id, channel, type, data, actor)
    VALUES (id, channel, type, coalesce(data, 'null'::jsonb), actor)
    ON CONFLICT ON CONSTRAINT outbox_event_id_key DO NOTHING;
    -- Only a hint: the relay also polls, and NOTIFY is delivered at commit or never.
    PERFORM pg_notify('switchboard_outbox', '');
    RETURN id;
END;
$$;

-- Push and email on their way out: one row per (event, user, medium, sink), inserted in
-- the same transaction as the notification it belongs to, so a redelivered event never
-- sends twice. The notifications worker claims due rows, tries the sink, and records the
-- outcome; `attempts` and `next_attempt_at` carry the retry schedule across restarts.
CREATE TABLE switchboard.notification_deliveries (
    id              bigserial   PRIMARY KEY,
    event_id        text        NOT NULL,
    user_id         text        NOT NULL,
    medium          text        NOT NULL CHECK (medium IN ('push', 'email')),
    sink            text        NOT NULL CHECK (sink IN ('webhook', 'subject')),
    payload         jsonb       NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    delivered_at    timestamptz,
    failed_at       timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, user_id, medium, sink)
);
CREATE INDEX notification_deliveries_due ON switchboard.notification_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
CREATE INDEX notification_deliveries_by_age ON switchboard.notification_deliveries (created_at);
