//! Writing a batch of [`Record`]s to `switchboard.archive`, and what they change in
//! `switchboard.inbox_entries`, in one transaction.
//!
//! # Why nothing is lost, doubled or applied out of order
//!
//! 1. Every conversation the batch touches is locked for the transaction
//!    (`pg_advisory_xact_lock`, in channel order so two copies never deadlock): inbox
//!    updates of one conversation run one after another across copies, and each sees
//!    every archive row committed before it.
//! 2. Rows are inserted once per event id (`ON CONFLICT DO NOTHING`): a redelivered
//!    event changes nothing.
//! 3. Edits and deletes are applied to their original by recomputing the original's
//!    state from *all* archived changes of it (the latest edit's text; deleted if any
//!    deletion exists), for every original the batch touches, whether the batch holds
//!    the original or a change of it: an edit archived before its original is applied
//!    when the original comes.
//! 4. Inbox entries: membership changes apply only when newer than the entry's
//!    `member_seq`; read cursors only move forward (a receipt archived before the join
//!    waits on an inactive entry); `unread`, `last_seq` and the activity time are
//!    recomputed from the archive after an edit, a deletion, a read or a membership
//!    change (or when step 3 changed a message of the batch), and moved by the rows this
//!    transaction inserted when a conversation's only news are new messages (a
//!    redelivered one inserts nothing), so the result depends on
//!    what is archived, never on how often or in which order it was delivered, and a
//!    batch costs what it holds, not the unread backlog of every entry it touches.
//!
//! The caller acks the batch after the commit; a crash before it rolls everything back
//! and the redelivered batch does it all again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use switchboard_schemas::Namespace;
use switchboard_schemas::event::types;

use super::record::{Fact, Record};

/// The tables `messages.search` and the inbox statements plan over (see [`Statistics`]).
const ANALYZE: &str =
    "ANALYZE switchboard.archive, switchboard.channel_members, switchboard.inbox_entries";

const LOCK: &str = "
SELECT count(pg_advisory_xact_lock(hashtextextended('switchboard.inbox:' || channel, 0)))
  FROM unnest($1::text[]) AS channel";

const INSERT: &str = "
INSERT INTO switchboard.archive
       (channel, epoch, seq, event_id, type, actor_id, ts, envelope, ref_seq, text)
SELECT r.channel, $1, r.seq, r.event_id, r.type, r.actor_id, r.ts::timestamptz,
       r.envelope::jsonb, r.ref_seq, r.text
  FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[],
              $8::text[], $9::bigint[], $10::text[])
       AS r(channel, seq, event_id, type, actor_id, ts, envelope, ref_seq, text)
ON CONFLICT DO NOTHING
RETURNING channel, seq";

/// A deleted original loses its text and data; recomputed from every archived change of
/// each touched original, so the deletion may have been archived before or after it.
const RECONCILE: &str = "
WITH target AS (
    SELECT DISTINCT channel, seq FROM unnest($2::text[], $3::bigint[]) AS t(channel, seq)
)
UPDATE switchboard.archive o
   SET deleted = true,
       text = NULL,
       edited_at = NULL,
       envelope = jsonb_set(o.envelope, '{data}', '{}') || '{\"deleted\":true}'
  FROM target t
 WHERE o.channel = t.channel AND o.epoch = $1 AND o.seq = t.seq
   AND o.type = 'message.new' AND NOT o.deleted
   AND EXISTS (SELECT 1 FROM switchboard.archive d
                WHERE d.channel = t.channel AND d.epoch = $1 AND d.ref_seq = t.seq
                  AND d.type = 'message.deleted')
RETURNING o.channel";

/// An original that is not deleted takes the text of its latest edit (by seq).
const APPLY_EDITS: &str = "
WITH target AS (
    SELECT DISTINCT channel, seq FROM unnest($2::text[], $3::bigint[]) AS t(channel, seq)
), edit AS (
    SELECT DISTINCT ON (t.channel, t.seq) t.channel, t.seq, c.envelope
      FROM target t
      JOIN switchboard.archive c
        ON c.channel = t.channel AND c.epoch = $1 AND c.ref_seq = t.seq
     WHERE c.type = 'message.edited' AND jsonb_typeof(c.envelope -> 'data' -> 'text') = 'string'
     ORDER BY t.channel, t.seq, c.seq DESC
)
UPDATE switchboard.archive o
   SET text = edit.envelope -> 'data' ->> 'text',
       edited_at = (edit.envelope ->> 'timestamp')::timestamptz,
       envelope = CASE WHEN jsonb_typeof(o.envelope -> 'data') = 'object'
                       THEN jsonb_set(o.envelope, '{data}', (o.envelope -> 'data')
                            || jsonb_build_object('text', edit.envelope -> 'data' -> 'text',
                                                  'editedAt', edit.envelope -> 'timestamp'))
                       ELSE o.envelope END
  FROM edit
 WHERE o.channel = edit.channel AND o.epoch = $1 AND o.seq = edit.seq
   AND o.type = 'message.new' AND NOT o.deleted
RETURNING o.channel";

/// The edits of a deleted message lose their text too; they keep what they point at.
const BLANK_EDITS: &str = "
WITH target AS (
    SELECT DISTINCT channel, seq FROM unnest($2::text[], $3::bigint[]) AS t(channel, seq)
)
UPDATE switchboard.archive e
   SET deleted = true,
       envelope = jsonb_set(e.envelope, '{data}', jsonb_build_object('seq', e.ref_seq))
                  || '{\"deleted\":true}'
  FROM target t
 WHERE e.channel = t.channel AND e.epoch = $1 AND e.ref_seq = t.seq
   AND e.type = 'message.edited' AND NOT e.deleted
   AND EXISTS (SELECT 1 FROM switchboard.archive d
                WHERE d.channel = t.channel AND d.epoch = $1 AND d.ref_seq = t.seq
                  AND d.type = 'message.deleted')
RETURNING e.channel";

/// Whether any of the targets has an edit or deletion archived already (one that came
/// before its original).
const ANY_CHANGES: &str = "
SELECT EXISTS (SELECT 1 FROM unnest($2::text[], $3::bigint[]) AS t(channel, seq)
                 JOIN switchboard.archive c
                   ON c.channel = t.channel AND c.epoch = $1 AND c.ref_seq = t.seq)";

/// Joining and leaving, newest membership event first wins.
const MEMBERS: &str = "
INSERT INTO switchboard.inbox_entries AS e
       (user_id, channel, active, member_seq, joined_seq, epoch, activity_at)
SELECT m.user_id, m.channel, m.active, m.seq, m.joined_seq, $1, m.ts::timestamptz
  FROM unnest($2::text[], $3::text[], $4::boolean[], $5::bigint[], $6::bigint[], $7::boolean[],
              $8::text[])
       AS m(user_id, channel, active, seq, joined_seq, rejoined, ts)
ON CONFLICT (user_id, channel) DO UPDATE
   SET active = EXCLUDED.active,
       member_seq = EXCLUDED.member_seq,
       joined_seq = CASE WHEN EXCLUDED.active AND (NOT e.active OR e.epoch <> EXCLUDED.epoch
                              OR (SELECT m.rejoined FROM unnest($2::text[], $3::text[], $7::boolean[])
                                      AS m(user_id, channel, rejoined)
                                   WHERE m.user_id = e.user_id AND m.channel = e.channel))
                         THEN EXCLUDED.joined_seq ELSE e.joined_seq END,
       read_seq = CASE WHEN e.epoch <> EXCLUDED.epoch THEN 0 ELSE e.read_seq END,
       activity_at = CASE WHEN EXCLUDED.active AND NOT e.active
                          THEN greatest(e.activity_at, EXCLUDED.activity_at)
                          ELSE e.activity_at END,
       epoch = EXCLUDED.epoch,
       updated_at = now()
 WHERE e.epoch <> EXCLUDED.epoch OR EXCLUDED.member_seq > e.member_seq
RETURNING user_id, channel";

/// Read cursors only move forward. A receipt archived before the join it follows (a
/// redelivery can reorder them) is kept on an inactive entry until the join comes.
const READS: &str = "
INSERT INTO switchboard.inbox_entries AS e
       (user_id, channel, active, member_seq, joined_seq, read_seq, epoch, activity_at)
SELECT r.user_id, r.channel, false, 0, 0, r.read, $1, timestamptz 'epoch'
  FROM unnest($2::text[], $3::text[], $4::bigint[]) AS r(user_id, channel, read)
ON CONFLICT (user_id, channel) DO UPDATE
   SET read_seq = EXCLUDED.read_seq,
       joined_seq = CASE WHEN e.epoch = EXCLUDED.epoch THEN e.joined_seq ELSE 0 END,
       epoch = EXCLUDED.epoch,
       updated_at = now()
 WHERE EXCLUDED.read_seq > e.read_seq OR e.epoch <> EXCLUDED.epoch
RETURNING user_id, channel, active";

/// The entries of conversations whose only news in a batch are new messages: unread,
/// last message and activity move by the messages this transaction inserted (rows a
/// redelivery finds archived already are not returned by the insert, so nothing counts
/// twice), the same as a recount would give, without counting the whole unread backlog
/// again. The messages come as arrays (channel, seq, sender, timestamp) from the batch
/// itself rather than joined back from the archive: the planner cannot estimate such a
/// join, and took a nested loop over every entry for each row (250 ms for 2,000 messages
/// over 1,000 entries).
const INCREMENT: &str = "
UPDATE switchboard.inbox_entries e
   SET unread = e.unread + n.unread,
       last_seq = greatest(e.last_seq, n.last_seq),
       activity_at = greatest(e.activity_at, n.activity),
       updated_at = now()
  FROM (SELECT x.user_id, x.channel,
               count(*) FILTER (WHERE m.seq > greatest(x.read_seq, x.joined_seq)
                                  AND m.actor_id IS DISTINCT FROM x.user_id) AS unread,
               max(m.seq) AS last_seq,
               (array_agg(m.ts ORDER BY m.seq DESC) FILTER (WHERE m.seq > x.joined_seq))[1]
                   AS activity
          FROM (SELECT channel, seq, actor_id, ts::timestamptz AS ts
                  FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[])
                       AS u(channel, seq, actor_id, ts)) m
          JOIN switchboard.inbox_entries x
            ON x.channel = m.channel AND x.active AND x.epoch = $1
         GROUP BY x.user_id, x.channel) n
 WHERE e.user_id = n.user_id AND e.channel = n.channel
RETURNING e.user_id, e.channel";

/// Unread, last message and activity of the touched entries, from the archive: whatever
/// order their events were archived in, the result is the same. The entries are found by
/// joins on `inbox_by_channel` and the key, never by testing every entry against the
/// batch's lists (which scanned the whole table once per batch). Activity is the time of
/// the newest message since the user joined (it never goes back). An entry whose cursors
/// belong to an earlier epoch (EVENTS was recreated) starts again from 0: its old seqs
/// say nothing about the new stream's.
const RECOUNT: &str = "
UPDATE switchboard.inbox_entries e
   SET unread = (SELECT count(*) FROM switchboard.archive a
                  WHERE a.channel = e.channel AND a.epoch = $1
                    AND a.type = 'message.new' AND NOT a.deleted
                    AND a.seq > CASE WHEN e.epoch = $1
                                     THEN greatest(e.read_seq, e.joined_seq) ELSE 0 END
                    AND a.actor_id IS DISTINCT FROM e.user_id),
       read_seq = CASE WHEN e.epoch = $1 THEN e.read_seq ELSE 0 END,
       joined_seq = CASE WHEN e.epoch = $1 THEN e.joined_seq ELSE 0 END,
       last_seq = (SELECT max(a.seq) FROM switchboard.archive a
                    WHERE a.channel = e.channel AND a.epoch = $1
                      AND a.type = 'message.new' AND NOT a.deleted),
       activity_at = greatest(e.activity_at,
                              (SELECT a.ts FROM switchboard.archive a
                                WHERE a.channel = e.channel AND a.epoch = $1
                                  AND a.type = 'message.new' AND NOT a.deleted
                                  AND a.seq > CASE WHEN e.epoch = $1 THEN e.joined_seq ELSE 0 END
                                ORDER BY a.seq DESC LIMIT 1)),
       epoch = $1,
       updated_at = now()
  FROM (SELECT x.user_id, x.channel
          FROM unnest($2::text[]) AS c(channel)
          JOIN switchboard.inbox_entries x ON x.channel = c.channel AND x.active
        UNION
        SELECT * FROM unnest($3::text[], $4::text[])
        UNION
        SELECT x.user_id, x.channel
          FROM unnest($5::text[]) AS c(channel)
          JOIN switchboard.inbox_entries x ON x.channel = c.channel AND x.active
         WHERE x.epoch <> $1) t
 WHERE e.user_id = t.user_id AND e.channel = t.channel AND e.active
RETURNING e.user_id, e.channel";

/// A (user, conversation) whose inbox entry a batch changed.
pub type EntryKey = (String, String);

/// Writes archive batches; cheap to clone.
#[derive(Debug, Clone)]
pub struct ArchiveStore {
    db: PgPool,
    statistics: Arc<Statistics>,
}

/// When the archive's planner statistics are refreshed: a bulk of new rows (a backlog
/// archived, an import) leaves them describing a much smaller table until autovacuum
/// comes round, and `messages.search` then takes a plan that scans the archive newest
/// first instead of asking the text index (hundreds of milliseconds instead of a few),
/// and [`INCREMENT`] one that compares every inbox entry with every message of a batch
/// (130 ms a batch instead of 16 until autovacuum's first look at a new inbox). So after
/// [`Statistics::ROWS`] rows, and at most once per [`Statistics::EVERY`], the job runs
/// `ANALYZE` on those tables itself, beside the writes.
#[derive(Debug)]
struct Statistics {
    /// Rows written since the last `ANALYZE`.
    written: AtomicU64,
    /// When the last `ANALYZE` started, `None` before the first.
    last: Mutex<Option<Instant>>,
}

impl Statistics {
    const ROWS: u64 = 50_000;
    const EVERY: Duration = Duration::from_secs(60);

    /// Counts `rows`; true when an `ANALYZE` is due now (and is then counted as started).
    fn due(&self, rows: u64) -> bool {
        if self.written.fetch_add(rows, Ordering::Relaxed) + rows < Self::ROWS {
            return false;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < Self::EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        self.written.store(0, Ordering::Relaxed);
        true
    }
}

/// Raises where the archive is complete from (`switchboard.archive_coverage`).
const RAISE_COVERAGE: &str = "
INSERT INTO switchboard.archive_coverage (epoch, complete_from) VALUES ($1, $2)
ON CONFLICT (epoch) DO UPDATE
   SET complete_from = greatest(archive_coverage.complete_from, excluded.complete_from),
       updated_at = now()";

/// Records a starting point only where none is known.
const START_COVERAGE: &str = "
INSERT INTO switchboard.archive_coverage (epoch, complete_from) VALUES ($1, $2)
ON CONFLICT (epoch) DO NOTHING";

impl ArchiveStore {
    /// Notes, as the consumer binds, from which seq of `epoch` the archive is complete.
    /// `missed`: the consumer is fresh, or the stream's oldest event is past what it had
    /// been handed, so what came before `first_seq` may never have reached the archive.
    /// Otherwise only a first record is made (an archive from before this table is taken
    /// as complete from the stream's oldest event, not from the beginning).
    pub async fn note_coverage(
        &self,
        epoch: &str,
        first_seq: u64,
        missed: bool,
    ) -> Result<(), sqlx::Error> {
        let query = if missed {
            RAISE_COVERAGE
        } else {
            START_COVERAGE
        };
        sqlx::query(query)
            .bind(epoch)
            .bind(bigint(first_seq))
            .execute(&self.db)
            .await?;
        Ok(())
    }

    pub fn new(db: PgPool) -> ArchiveStore {
        ArchiveStore {
            db,
            statistics: Arc::new(Statistics {
                written: AtomicU64::new(0),
                last: Mutex::new(None),
            }),
        }
    }

    /// Archives `records` (events of stream epoch `epoch`) and updates the inbox entries
    /// they change; returns those entries. See the module docs for the order of steps.
    pub async fn write(
        &self,
        epoch: &str,
        records: &[Record],
    ) -> Result<BTreeSet<EntryKey>, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let conversations: BTreeSet<&str> = records
            .iter()
            .filter(|r| r.channel.namespace() == Namespace::Conversation)
            .map(|r| r.channel.as_str())
            .collect();
        if !conversations.is_empty() {
            sqlx::query(LOCK)
                .bind(conversations.iter().copied().collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
        }
        let inserted = insert(&mut tx, epoch, records).await?;
        let revised = reconcile(&mut tx, epoch, records).await?;
        let changed = inbox(&mut tx, epoch, records, &inserted, &revised).await?;
        tx.commit().await?;
        if self.statistics.due(records.len() as u64) {
            let db = self.db.clone();
            tokio::spawn(async move {
                if let Err(error) = sqlx::query(ANALYZE).execute(&db).await {
                    tracing::warn!(%error, "ANALYZE of the archive failed; autovacuum will do it");
                }
            });
        }
        Ok(changed)
    }
}

/// Archives `records`; the (channel, seq) of those not archived before.
async fn insert(
    tx: &mut sqlx::PgConnection,
    epoch: &str,
    records: &[Record],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| r.seq);
    let column = |f: fn(&Record) -> Option<String>| sorted.iter().map(|r| f(r)).collect::<Vec<_>>();
    sqlx::query_as(INSERT)
        .bind(epoch)
        .bind(column(|r| Some(r.channel.as_str().to_string())))
        .bind(sorted.iter().map(|r| bigint(r.seq)).collect::<Vec<_>>())
        .bind(column(|r| Some(r.event_id.clone())))
        .bind(column(|r| Some(r.ty.clone())))
        .bind(column(|r| r.actor.clone()))
        .bind(column(|r| Some(r.timestamp.clone())))
        .bind(column(|r| Some(r.envelope.clone())))
        .bind(
            sorted
                .iter()
                .map(|r| r.ref_seq.map(bigint))
                .collect::<Vec<_>>(),
        )
        .bind(column(|r| r.text.clone()))
        .fetch_all(&mut *tx)
        .await
}

/// Applies the edits and deletes of every original the batch touches; returns the
/// channels whose archived messages that changed.
async fn reconcile(
    tx: &mut sqlx::PgConnection,
    epoch: &str,
    records: &[Record],
) -> Result<BTreeSet<String>, sqlx::Error> {
    let targets: BTreeSet<(&str, i64)> = records
        .iter()
        .filter_map(|r| match (r.ty.as_str(), r.ref_seq) {
            ("message.new", _) => Some((r.channel.as_str(), bigint(r.seq))),
            (_, Some(original)) => Some((r.channel.as_str(), bigint(original))),
            _ => None,
        })
        .collect();
    let mut revised = BTreeSet::new();
    if targets.is_empty() {
        return Ok(revised);
    }
    let channels: Vec<&str> = targets.iter().map(|(c, _)| *c).collect();
    let seqs: Vec<i64> = targets.iter().map(|(_, s)| *s).collect();
    // Most batches hold only new messages that nothing changed yet: one probe instead of
    // three updates.
    let changes = records.iter().any(|r| r.ref_seq.is_some());
    if !changes {
        let changed: bool = sqlx::query_scalar(ANY_CHANGES)
            .bind(epoch)
            .bind(&channels)
            .bind(&seqs)
            .fetch_one(&mut *tx)
            .await?;
        if !changed {
            return Ok(revised);
        }
    }
    for statement in [RECONCILE, APPLY_EDITS, BLANK_EDITS] {
        let rows: Vec<String> = sqlx::query_scalar(statement)
            .bind(epoch)
            .bind(&channels)
            .bind(&seqs)
            .fetch_all(&mut *tx)
            .await?;
        revised.extend(rows);
    }
    Ok(revised)
}

/// One user's membership on one conversation, as a batch leaves it.
struct Membership {
    active: bool,
    seq: u64,
    timestamp: String,
    /// The seq of the join that made the user a participant, if the batch holds one.
    joined: Option<u64>,
    /// The batch removed the user before that join: the join starts a new stay even if
    /// the entry still says active.
    rejoined: bool,
}

/// The inbox entries `records` change (`inserted`: what [`insert`] archived anew;
/// `revised`: channels whose archived messages [`reconcile`] changed). Conversations
/// whose only news are new messages move by those ([`INCREMENT`]); every other change,
/// a message of the batch edited or deleted by a change archived before it among them,
/// is recounted from the archive ([`RECOUNT`]), which also has the last word on any
/// entry both touch.
async fn inbox(
    tx: &mut sqlx::PgConnection,
    epoch: &str,
    records: &[Record],
    inserted: &[(String, i64)],
    revised: &BTreeSet<String>,
) -> Result<BTreeSet<EntryKey>, sqlx::Error> {
    let mut sorted: Vec<&Record> = records.iter().filter(|r| r.fact.is_some()).collect();
    sorted.sort_by_key(|r| r.seq);
    let mut members: BTreeMap<EntryKey, Membership> = BTreeMap::new();
    let mut reads: BTreeMap<EntryKey, u64> = BTreeMap::new();
    // Conversations with an edit or a deletion are recounted; with new messages only,
    // moved by what was inserted.
    let mut messages: BTreeSet<&str> = revised.iter().map(String::as_str).collect();
    let mut fresh: BTreeSet<&str> = BTreeSet::new();
    for record in sorted {
        let channel = record.channel.as_str();
        match &record.fact {
            Some(Fact::Message) if record.ty == types::MESSAGE_NEW => {
                fresh.insert(channel);
            }
            Some(Fact::Message) => {
                messages.insert(channel);
            }
            Some(Fact::Member { user, active }) => {
                let key = (user.to_string(), channel.to_string());
                let seq = record.seq;
                let timestamp = record.timestamp.clone();
                match members.get_mut(&key) {
                    None => {
                        members.insert(
                            key,
                            Membership {
                                active: *active,
                                seq,
                                timestamp,
                                joined: active.then_some(seq),
                                rejoined: false,
                            },
                        );
                    }
                    Some(state) => {
                        if *active && !state.active {
                            state.joined = Some(seq);
                            state.rejoined = true;
                        }
                        state.active = *active;
                        state.seq = seq;
                        state.timestamp = timestamp;
                    }
                }
            }
            Some(Fact::Read { user, read }) => {
                let entry = reads
                    .entry((user.to_string(), channel.to_string()))
                    .or_default();
                *entry = (*entry).max(*read);
            }
            None => {}
        }
    }
    let mut changed = BTreeSet::new();
    if !members.is_empty() {
        let rows: Vec<(String, String)> = sqlx::query_as(MEMBERS)
            .bind(epoch)
            .bind(members.keys().map(|(u, _)| u.as_str()).collect::<Vec<_>>())
            .bind(members.keys().map(|(_, c)| c.as_str()).collect::<Vec<_>>())
            .bind(members.values().map(|m| m.active).collect::<Vec<_>>())
            .bind(members.values().map(|m| bigint(m.seq)).collect::<Vec<_>>())
            .bind(
                members
                    .values()
                    .map(|m| bigint(m.joined.unwrap_or(m.seq)))
                    .collect::<Vec<_>>(),
            )
            .bind(members.values().map(|m| m.rejoined).collect::<Vec<_>>())
            .bind(
                members
                    .values()
                    .map(|m| m.timestamp.as_str())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *tx)
            .await?;
        changed.extend(rows);
    }
    if !reads.is_empty() {
        let rows: Vec<(String, String, bool)> = sqlx::query_as(READS)
            .bind(epoch)
            .bind(reads.keys().map(|(u, _)| u.as_str()).collect::<Vec<_>>())
            .bind(reads.keys().map(|(_, c)| c.as_str()).collect::<Vec<_>>())
            .bind(reads.values().map(|r| bigint(*r)).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
        // A user who is not (yet) in the conversation has no entry to tell about.
        changed.extend(
            rows.into_iter()
                .filter(|(_, _, active)| *active)
                .map(|(user, channel, _)| (user, channel)),
        );
    }
    fresh.retain(|channel| !messages.contains(channel));
    let by_position: BTreeMap<(&str, i64), &Record> = records
        .iter()
        .map(|r| ((r.channel.as_str(), bigint(r.seq)), r))
        .collect();
    let new_messages: Vec<&Record> = inserted
        .iter()
        .filter(|(channel, _)| fresh.contains(channel.as_str()))
        .filter_map(|(channel, seq)| by_position.get(&(channel.as_str(), *seq)).copied())
        .filter(|r| r.ty == types::MESSAGE_NEW)
        .collect();
    let mut moved = Vec::new();
    if !new_messages.is_empty() {
        moved = sqlx::query_as(INCREMENT)
            .bind(epoch)
            .bind(
                new_messages
                    .iter()
                    .map(|r| r.channel.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                new_messages
                    .iter()
                    .map(|r| bigint(r.seq))
                    .collect::<Vec<_>>(),
            )
            .bind(
                new_messages
                    .iter()
                    .map(|r| r.actor.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                new_messages
                    .iter()
                    .map(|r| r.timestamp.as_str())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *tx)
            .await?;
    }
    if !(messages.is_empty() && changed.is_empty() && fresh.is_empty()) {
        let rows: Vec<(String, String)> = sqlx::query_as(RECOUNT)
            .bind(epoch)
            .bind(messages.iter().copied().collect::<Vec<_>>())
            .bind(changed.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>())
            .bind(changed.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>())
            .bind(fresh.iter().copied().collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
        changed.extend(rows);
    }
    changed.extend(moved);
    Ok(changed)
}

/// Seqs come from JetStream (u64) and never reach `i64::MAX` in practice.
pub fn bigint(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_are_refreshed_after_a_bulk_of_rows_and_not_more_than_once_a_minute() {
        let statistics = Statistics {
            written: AtomicU64::new(0),
            last: Mutex::new(None),
        };
        assert!(!statistics.due(Statistics::ROWS - 1));
        assert!(statistics.due(1), "the bulk is reached");
        assert!(!statistics.due(Statistics::ROWS), "again within the minute");
        *statistics.last.lock().unwrap() = Some(Instant::now() - Statistics::EVERY);
        assert!(
            statistics.due(1),
            "a minute later, what was written meanwhile counts"
        );
        assert!(!statistics.due(Statistics::ROWS - 1));
    }
}
