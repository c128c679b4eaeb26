-- The inbox (docs/protocol.md §10.11): one entry per (user, conversation) the archive
-- has seen the user join. Written only by the workers' `archive` job, in the same
-- transaction as the archived events that change it; read by `inbox.list`.
--
-- `unread` and `last_seq` are derived, never incremented: each change recomputes them
-- from switchboard.archive (under a per-conversation lock), so a redelivered or
-- reordered event can neither lose nor double a count.
CREATE TABLE switchboard.inbox_entries (
    user_id      text        NOT NULL,
    channel      text        NOT NULL,
    active       boolean     NOT NULL,
    -- Seq of the membership event that set `active`: an older one never undoes it.
    member_seq   bigint      NOT NULL,
    -- Seq of the membership event that made the user a participant: only messages above
    -- it count as unread.
    joined_seq   bigint      NOT NULL,
    -- The user's read cursor, from message.receipt events (only moves forward).
    read_seq     bigint      NOT NULL DEFAULT 0,
    -- The EVENTS epoch the seqs above and `last_seq` belong to.
    epoch        text        NOT NULL,
    unread       integer     NOT NULL DEFAULT 0 CHECK (unread >= 0),
    -- Seq of the newest message.new that is not deleted; NULL when there is none.
    last_seq     bigint,
    -- Time of the newest message.new (or of joining, before any): the list's order.
    activity_at  timestamptz NOT NULL,
    muted        boolean     NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, channel)
);
-- inbox.list: a user's entries, most recent activity first, paged by (activity_at, channel).
CREATE INDEX inbox_by_activity ON switchboard.inbox_entries (user_id, activity_at DESC, channel DESC)
    WHERE active;
-- Every entry of a conversation, when a message changes them all.
CREATE INDEX inbox_by_channel ON switchboard.inbox_entries (channel) WHERE active;
