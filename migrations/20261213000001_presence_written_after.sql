-- The presence job writes what it published after publishing it, a second's worth of
-- users at a time, and no longer before (docs/operations.md, section 2): the EVENTS
-- stream is the record of what watchers were told, and `seq` is the stream seq of the
-- event a row describes. A worker that starts reads the `user.presence` events stored
-- after the newest `seq` of any row, which a crash published but did not write. Rows
-- move forward by `seq`: a lagging copy of the worker never writes an older event's
-- summary over a newer one's.
--
-- Batches an earlier version left pending were saved but maybe never published. With
-- every row at seq 0, the first start of this version reads the presence events of the
-- whole stream back instead, which is what watchers were told; a pending event that was
-- never published is then simply not part of it.
--
-- When a user last went offline moves into their row: a user leaving is one row
-- written, not two in two tables.
ALTER TABLE switchboard.presence_state
    ADD COLUMN seq bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_seen timestamptz;

UPDATE switchboard.presence_state s SET last_seen = l.last_seen
  FROM switchboard.presence_last_seen l
 WHERE l.user_id = s.user_id;

INSERT INTO switchboard.presence_state (user_id, status, devices, revision, last_seen)
SELECT l.user_id, 'offline', 0, 0, l.last_seen
  FROM switchboard.presence_last_seen l
 WHERE NOT EXISTS (SELECT 1 FROM switchboard.presence_state s WHERE s.user_id = l.user_id);

DROP TABLE switchboard.presence_last_seen;
DROP TABLE switchboard.presence_pending;
