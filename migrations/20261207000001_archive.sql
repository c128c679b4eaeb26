-- The archive (docs/operations.md §12): every event of the archived namespaces, kept
-- after EVENTS lets it go, once per event id. Written only by the workers' `archive` job;
-- read by `int.archive.read` (the edges' history and resume), `messages.search` and
-- `inbox.list`.
--
-- A row's envelope is the event as the archive returns it: an edited `message.new`
-- carries its current text and `editedAt` in `data`; a deleted one (and each of its
-- edits) has its text gone from `data`, `text` and `search`, and `deleted` set.
CREATE TABLE switchboard.archive (
    channel     text        NOT NULL,
    -- The EVENTS incarnation the seq belongs to (its creation time in unix nanoseconds,
    -- as the edges report it): a recreated stream starts its seqs again.
    epoch       text        NOT NULL,
    seq         bigint      NOT NULL CHECK (seq > 0),
    event_id    text        NOT NULL,
    type        text        NOT NULL,
    actor_id    text,
    -- The envelope's `timestamp`.
    ts          timestamptz NOT NULL,
    envelope    jsonb       NOT NULL,
    -- message.edited / message.deleted: `data.seq`, the original they change.
    ref_seq     bigint,
    -- message.new: the current text (`data.text`); NULL for other types and when deleted.
    text        text,
    edited_at   timestamptz,
    deleted     boolean     NOT NULL DEFAULT false,
    archived_at timestamptz NOT NULL DEFAULT now(),
    -- 'simple': no stemming or stop words, so every language is searched alike.
    search      tsvector    GENERATED ALWAYS AS (to_tsvector('simple', coalesce(text, ''))) STORED,
    PRIMARY KEY (channel, epoch, seq),
    UNIQUE (event_id)
);

-- Unread counts and the last message of a conversation: a range of one channel's live
-- messages above a cursor, the sender beside it so the count needs no heap visit.
CREATE INDEX archive_messages ON switchboard.archive (channel, epoch, seq) INCLUDE (actor_id)
    WHERE type = 'message.new' AND NOT deleted;
-- The edits and deletions of one original.
CREATE INDEX archive_changes ON switchboard.archive (channel, epoch, ref_seq)
    WHERE ref_seq IS NOT NULL;
-- Full-text search over live messages.
CREATE INDEX archive_search ON switchboard.archive USING gin (search)
    WHERE type = 'message.new' AND NOT deleted;
-- Retention (SWITCHBOARD_ARCHIVE_RETENTION_DAYS).
CREATE INDEX archive_by_age ON switchboard.archive (ts);
