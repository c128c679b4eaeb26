-- FCM and APNs registrations (docs/operations.md §4, "Mobile push"), one per (user,
-- device) like switchboard.push_subscriptions, set by the users' own `push.subscribe`
-- and read by the notifications worker's `fcm` and `apns` sinks. A token belongs to one
-- user at a time. A push service calling the token unregistered or invalid deletes the
-- row. Subscribing a device with one kind removes its registration of the other kinds.
CREATE TABLE switchboard.mobile_devices (
    id          bigserial   PRIMARY KEY,
    user_id     text        NOT NULL,
    device      text        NOT NULL CHECK (length(device) BETWEEN 1 AND 128),
    platform    text        NOT NULL CHECK (platform IN ('fcm', 'apns')),
    token       text        NOT NULL CHECK (length(token) BETWEEN 1 AND 4096),
    -- The app's bundle id (APNs' `apns-topic`); NULL for FCM.
    topic       text        CHECK ((platform = 'apns') = (topic IS NOT NULL)),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, device),
    UNIQUE (platform, token)
);

-- A push to a phone is a delivery row per device (`target`, the mobile_devices id).
ALTER TABLE switchboard.notification_deliveries
    DROP CONSTRAINT notification_deliveries_sink_check,
    ADD CONSTRAINT notification_deliveries_sink_check
        CHECK (sink IN ('webhook', 'subject', 'webpush', 'smtp', 'fcm', 'apns'));
