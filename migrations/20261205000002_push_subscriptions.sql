-- Web Push subscriptions, one per (user, device), set by the users' own `push.subscribe`
-- (docs/protocol.md §10.4) and read by the notifications worker's Web Push sink. An
-- endpoint belongs to one user at a time. A push service's 404/410 deletes the row.
CREATE TABLE switchboard.push_subscriptions (
    id          bigserial   PRIMARY KEY,
    user_id     text        NOT NULL,
    device      text        NOT NULL CHECK (length(device) BETWEEN 1 AND 128),
    endpoint    text        NOT NULL UNIQUE CHECK (length(endpoint) <= 2048),
    p256dh      text        NOT NULL,
    auth        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, device)
);

-- A delivery to a device: the Web Push sink has one row per subscription (`target`, the
-- subscription's id), so each device gets a notification once and is retried alone.
-- Other sinks keep target ''.
ALTER TABLE switchboard.notification_deliveries
    ADD COLUMN target text NOT NULL DEFAULT '',
    DROP CONSTRAINT notification_deliveries_sink_check,
    ADD CONSTRAINT notification_deliveries_sink_check
        CHECK (sink IN ('webhook', 'subject', 'webpush')),
    DROP CONSTRAINT notification_deliveries_event_id_user_id_medium_sink_key,
    ADD CONSTRAINT notification_deliveries_once
        UNIQUE (event_id, user_id, medium, sink, target);
