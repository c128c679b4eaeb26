-- Presence transitions saved but maybe not yet published move out of
-- switchboard.presence_state into a row per batch.
--
-- Before, every transition wrote its user's row twice: once with the encoded event in
-- `pending`, once more to clear it after JetStream stored the event. Both writes changed
-- columns that indexes depend on, so neither could be a heap-only (HOT) update. Now a
-- batch of transitions is one row here, inserted in the transaction that saves the
-- users' states and deleted once every event of the batch is stored; a worker that
-- starts publishes what is left first (the event ids make a repeat a no-op). `batch` is
-- chosen by the worker before it saves, so a save retried after an unclear commit
-- finds its own row instead of adding a second.
CREATE TABLE switchboard.presence_pending (
    batch      bigint      PRIMARY KEY,
    users      text[]      NOT NULL,
    events     bytea[]     NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (cardinality(users) = cardinality(events))
);

-- What an earlier version left pending becomes one batch.
INSERT INTO switchboard.presence_pending (batch, users, events)
SELECT 0, array_agg(user_id ORDER BY user_id), array_agg(pending ORDER BY user_id)
  FROM switchboard.presence_state
 WHERE pending IS NOT NULL
HAVING count(*) > 0;

DROP INDEX switchboard.presence_state_pending;
ALTER TABLE switchboard.presence_state DROP COLUMN pending;
-- Without an index on `status`, a user coming or going rewrites their row in place (a
-- HOT update, no index entry), given room on the page. The users present are read once,
-- when a worker starts, by a sequential scan.
DROP INDEX switchboard.presence_state_present;
ALTER TABLE switchboard.presence_state SET (fillfactor = 80);
