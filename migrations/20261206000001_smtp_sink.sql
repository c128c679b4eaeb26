-- The email sink (docs/operations.md §4): an email delivery sent over SMTP to the
-- address in switchboard.contacts is a row with sink 'smtp'.
ALTER TABLE switchboard.notification_deliveries
    DROP CONSTRAINT notification_deliveries_sink_check,
    ADD CONSTRAINT notification_deliveries_sink_check
        CHECK (sink IN ('webhook', 'subject', 'webpush', 'smtp'));
