-- The archive job's write path at scale (docs/operations.md §12, "Archive throughput").
--
-- Inbox entries change with every batch that brings a conversation news (unread, last
-- message, activity). While `activity_at` was indexed every such change was a new row
-- version with new entries in all three indexes, and a conversation receiving messages
-- left hundreds of dead versions behind before autovacuum came, which every later
-- batch's lookups walked through (98 MB for 1,000 entries after 1,000,000 messages). Without
-- it the changes are heap-only (HOT) updates in the free space fillfactor keeps on each
-- page, pruned in place. `inbox.list` reads a user's entries by the primary key and sorts
-- them by activity: one sort of the user's conversations per page.
DROP INDEX switchboard.inbox_by_activity;
ALTER TABLE switchboard.inbox_entries SET (fillfactor = 50);

-- Every archived row was written to two B-trees with the same key: the primary key and
-- a partial index of live messages carrying the sender, for unread counts without heap
-- visits. One index serves both now: the primary key carries what the counts filter on
-- (type, deleted, sender), and the archive's writes maintain one B-tree fewer (about a
-- sixth of an insert's cost). Rebuilding the key takes a moment per million rows.
DROP INDEX switchboard.archive_messages;
ALTER TABLE switchboard.archive
    DROP CONSTRAINT archive_pkey,
    ADD CONSTRAINT archive_pkey PRIMARY KEY (channel, epoch, seq) INCLUDE (type, deleted, actor_id);
