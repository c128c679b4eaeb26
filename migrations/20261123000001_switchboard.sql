-- Switchboard's PostgreSQL state. Everything lives in schema `switchboard` so it never
-- collides with the application's own tables. Workers are the only writers, except the
-- outbox, which applications write through switchboard.emit(...).

CREATE SCHEMA IF NOT EXISTS switchboard;

-- Membership mirror of member.added/removed and conversation.participant_added/removed.
-- A row is kept after removal (active = false) so that `seq` stays a watermark: an event
-- redelivered out of order can never undo a newer one.
CREATE TABLE switchboard.channel_members (
    channel     text        NOT NULL,
    user_id     text        NOT NULL,
    role        text        NOT NULL DEFAULT 'member'
                CHECK (role IN ('owner', 'member', 'contractor', 'viewer')),
    active      boolean     NOT NULL,
    seq         bigint      NOT NULL,
    event_id    text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, user_id)
);
CREATE INDEX channel_members_by_user ON switchboard.channel_members (user_id) WHERE active;

-- One notification per (event, user); ids are time-ordered (`ntf_` + ULID) so paging by
-- id is paging by creation time.
CREATE TABLE switchboard.notifications (
    id          text        PRIMARY KEY CHECK (id LIKE 'ntf\_%'),
    user_id     text        NOT NULL,
    event_id    text        NOT NULL,
    category    text        NOT NULL
                CHECK (category IN ('bid', 'message', 'payment', 'job', 'project', 'system')),
    title       text        NOT NULL,
    message     text        NOT NULL,
    priority    text        NOT NULL DEFAULT 'normal'
                CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    ref_channel text,
    ref_seq     bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    read_at     timestamptz,
    UNIQUE (event_id, user_id)
);
CREATE INDEX notifications_by_user ON switchboard.notifications (user_id, id DESC);
CREATE INDEX notifications_unread ON switchboard.notifications (user_id) WHERE read_at IS NULL;
CREATE INDEX notifications_by_age ON switchboard.notifications (created_at);

-- Per-user, per-category delivery preferences; a missing row means the defaults.
CREATE TABLE switchboard.notification_preferences (
    user_id     text    NOT NULL,
    category    text    NOT NULL
                CHECK (category IN ('bid', 'message', 'payment', 'job', 'project', 'system')),
    in_app      boolean NOT NULL DEFAULT true,
    push        boolean NOT NULL DEFAULT true,
    email       boolean NOT NULL DEFAULT false,
    muted       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (user_id, category)
);

-- Per-(conversation, user) receipt cursors. Both only move forward; read implies delivered.
CREATE TABLE switchboard.receipt_cursors (
    conversation text        NOT NULL,
    user_id      text        NOT NULL,
    delivered    bigint      NOT NULL DEFAULT 0 CHECK (delivered >= 0),
    read         bigint      NOT NULL DEFAULT 0 CHECK (read >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation, user_id),
    CHECK (delivered >= read)
);

-- Presence: when each user was last seen, and who may watch them.
CREATE TABLE switchboard.presence_last_seen (
    user_id     text        PRIMARY KEY,
    last_seen   timestamptz NOT NULL,
    status      text        NOT NULL
);

CREATE TABLE switchboard.presence_privacy (
    user_id     text PRIMARY KEY,
    visibility  text NOT NULL DEFAULT 'contacts'
                CHECK (visibility IN ('everyone', 'contacts', 'nobody'))
);

-- Keys of events a worker has fully processed, so a redelivered message has no second
-- effect. Workers insert the key in the same transaction as the effect.
CREATE TABLE switchboard.processed_events (
    consumer     text        NOT NULL,
    event_id     text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX processed_events_by_age ON switchboard.processed_events (processed_at);

-- The transactional outbox: applications insert through switchboard.emit(...) inside their
-- own transaction; the relay worker publishes rows in `seq` order with Nats-Msg-Id =
-- event_id and then sets sent_at. A crash between publish and mark re-publishes the same
-- event id, which JetStream's duplicate window stores once.
CREATE TABLE switchboard.outbox (
    seq         bigserial   PRIMARY KEY,
    event_id    text        NOT NULL UNIQUE,
    channel     text        NOT NULL,
    type        text        NOT NULL,
    data        jsonb       NOT NULL DEFAULT 'null',
    actor       jsonb,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    sent_at     timestamptz
);
CREATE INDEX outbox_pending ON switchboard.outbox (seq) WHERE sent_at IS NULL;

-- Emits an event from inside the caller's transaction and returns its event id. The
-- channel and type grammars are the ones of the client protocol (docs/protocol.md); bad
-- input raises an error, so the caller's transaction fails loudly instead of publishing
-- something no one can subscribe to. An event id that already exists inserts nothing.
CREATE FUNCTION switchboard.emit(
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
            OR jsonb_typeof(actor -> 'id') IS DISTINCT FROM 'string') THEN
        RAISE EXCEPTION 'switchboard.emit: actor must be an object with a string "id"'
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
