-- Escalation (docs/operations.md §4, "When push and email go out"): a push or email may
-- wait (`next_attempt_at` in the future) until the user has had time to read the
-- notification in the app, and reading it cancels what is still waiting.
--
-- - `notification_id`: the in-app notification a push or email is about (NULL when the
--   user's `in_app` preference is off: nothing can be read, so nothing cancels it);
-- - `cancelled_at`: set, in the transaction that marks the notification read, on every
--   push or email of it not yet delivered or failed; the dispatcher never claims it;
-- - medium `created`: the webhook's copy of each notification as it is created.
ALTER TABLE switchboard.notification_deliveries
    ADD COLUMN notification_id text,
    ADD COLUMN cancelled_at    timestamptz,
    DROP CONSTRAINT notification_deliveries_medium_check,
    ADD CONSTRAINT notification_deliveries_medium_check
        CHECK (medium IN ('push', 'email', 'created'));

DROP INDEX switchboard.notification_deliveries_due;
CREATE INDEX notification_deliveries_due ON switchboard.notification_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL AND cancelled_at IS NULL;
-- What a read cancels.
CREATE INDEX notification_deliveries_pending_by_notification
    ON switchboard.notification_deliveries (notification_id)
    WHERE delivered_at IS NULL AND failed_at IS NULL AND cancelled_at IS NULL;
-- A user's waiting emails, folded into one digest when the first is due.
CREATE INDEX notification_deliveries_pending_email
    ON switchboard.notification_deliveries (user_id)
    WHERE sink = 'smtp' AND delivered_at IS NULL AND failed_at IS NULL AND cancelled_at IS NULL;
-- What a conversation's `read` receipt marks read: a user's unread notifications about
-- events of one channel, up to a seq.
CREATE INDEX notifications_unread_by_ref ON switchboard.notifications (user_id, ref_channel, ref_seq)
    WHERE read_at IS NULL;
