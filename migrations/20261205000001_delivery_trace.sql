-- The W3C `traceparent` of the event a delivery comes from, so that the webhook (and
-- later push) request carries it on every attempt, across restarts (docs/protocol.md
-- §10.4). NULL when the event carried none.
ALTER TABLE switchboard.notification_deliveries ADD COLUMN traceparent text;
