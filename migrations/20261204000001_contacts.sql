-- Where a user can be reached outside the app: set by backends through the service-only
-- RPC `contacts.set` (docs/protocol.md §10.4), read by the email sink.
CREATE TABLE switchboard.contacts (
    user_id     text        PRIMARY KEY,
    email       text        NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
