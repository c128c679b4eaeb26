-- Where the archive is complete from, per stream epoch (docs/protocol.md, int.archive.read
-- `from`): every archived-namespace event of that epoch with a seq at or above
-- `complete_from` has been archived (up to the job's position). Set when the archive job
-- binds: a fresh consumer starts at the stream's first seq, and a consumer that finds the
-- stream already past what it had seen may have missed what retention took meanwhile.
-- Only ever raised, never lowered.
CREATE TABLE switchboard.archive_coverage (
    epoch         text        PRIMARY KEY,
    complete_from bigint      NOT NULL CHECK (complete_from >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
