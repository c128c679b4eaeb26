//! The PostgreSQL side of erasure: the archive (and with it search, which reads the
//! archive's generated `search` column), the inbox entries derived from it, and the
//! notifications made from the erased messages, each in one transaction per request.
//!
//! Conversations are locked with the archive job's per-conversation advisory lock
//! (`switchboard.inbox:<channel>`), so an erasure and an archive batch touching the same
//! conversation run one after the other and the inbox recount sees the erased rows.

use std::collections::BTreeSet;

use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use switchboard_schemas::EventId;
use switchboard_schemas::event::types;

/// What one erasure removed, per place.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// Copies deleted from the `EVENTS` stream.
    pub events: u64,
    /// Archive rows blanked (`erase.user`) or deleted (`erase.channel`).
    pub archive: u64,
    /// Messages that search could find before (archived with text).
    pub search: u64,
    /// Inbox entries recounted (their unread count or last message changed) or, for a
    /// conversation, deleted.
    pub inbox: u64,
    /// In-app notifications deleted.
    pub notifications: u64,
    /// Push and email deliveries (sent or waiting) deleted.
    pub deliveries: u64,
    /// Outbox rows of the `user.notification` events announcing those notifications
    /// (sent or waiting) deleted.
    pub outbox: u64,
}

/// What an erasure still has to take out of `EVENTS` after PostgreSQL: the ids of the
/// `user.notification` events that announced the deleted notifications.
pub type Announced = BTreeSet<String>;

const LOCK: &str = "
SELECT count(pg_advisory_xact_lock(hashtextextended('switchboard.inbox:' || channel, 0)))
  FROM unnest($1::text[]) AS channel";

const USER_CHANNELS: &str = "
SELECT DISTINCT channel FROM switchboard.archive
 WHERE actor_id = $1 AND type IN ('message.new', 'message.edited', 'message.deleted')
 ORDER BY channel";

/// A blank message keeps its seq and what it points at (`data.seq` of an edit or
/// delete), as a deleted message does in the archive (docs/protocol.md §10.10).
const BLANK_USER: &str = "
WITH hit AS (
    SELECT channel, epoch, seq, text IS NOT NULL AND NOT deleted AS searchable
      FROM switchboard.archive
     WHERE actor_id = $1 AND type IN ('message.new', 'message.edited', 'message.deleted')
       AND (text IS NOT NULL OR NOT deleted
            OR envelope -> 'data' IS DISTINCT FROM
               CASE WHEN ref_seq IS NULL THEN '{}'::jsonb
                    ELSE jsonb_build_object('seq', ref_seq) END)
       FOR UPDATE
)
UPDATE switchboard.archive a
   SET deleted = true,
       text = NULL,
       edited_at = NULL,
       envelope = jsonb_set(a.envelope, '{data}',
                            CASE WHEN a.ref_seq IS NULL THEN '{}'::jsonb
                                 ELSE jsonb_build_object('seq', a.ref_seq) END)
                  || '{\"deleted\":true}'
  FROM hit
 WHERE a.channel = hit.channel AND a.epoch = hit.epoch AND a.seq = hit.seq
RETURNING a.event_id, hit.searchable";

const USER_EVENT_IDS: &str = "
SELECT event_id FROM switchboard.archive WHERE actor_id = $1 AND type IN ('message.new', 'message.edited', 'message.deleted')";

const DELETE_CHANNEL: &str = "
DELETE FROM switchboard.archive WHERE channel = $1
RETURNING event_id, type = 'message.new' AND text IS NOT NULL AND NOT deleted";

const INBOX_EXISTS: &str = "SELECT to_regclass('switchboard.inbox_entries') IS NOT NULL";

/// The unread count and last message of every entry of the conversations, from what the
/// archive holds now (the same definition the archive job keeps them by).
const RECOUNT: &str = "
WITH fresh AS (
    SELECT e.user_id, e.channel,
           (SELECT count(*) FROM switchboard.archive a
             WHERE a.channel = e.channel AND a.epoch = e.epoch
               AND a.type = 'message.new' AND NOT a.deleted
               AND a.seq > greatest(e.read_seq, e.joined_seq)
               AND a.actor_id IS DISTINCT FROM e.user_id)::integer AS unread,
           (SELECT max(a.seq) FROM switchboard.archive a
             WHERE a.channel = e.channel AND a.epoch = e.epoch
               AND a.type = 'message.new' AND NOT a.deleted) AS last_seq
      FROM switchboard.inbox_entries e
     WHERE e.channel = ANY($1::text[])
)
UPDATE switchboard.inbox_entries e
   SET unread = f.unread, last_seq = f.last_seq, updated_at = now()
  FROM fresh f
 WHERE e.user_id = f.user_id AND e.channel = f.channel
   AND (e.unread, e.last_seq) IS DISTINCT FROM (f.unread, f.last_seq)";

const DELETE_INBOX: &str = "DELETE FROM switchboard.inbox_entries WHERE channel = $1";

const DELETE_NOTIFICATIONS: &str = "
DELETE FROM switchboard.notifications
 WHERE event_id = ANY($1::text[]) OR ($2::text IS NOT NULL AND ref_channel = $2)
RETURNING id, event_id";

const DELETE_OUTBOX: &str = "DELETE FROM switchboard.outbox WHERE event_id = ANY($1::text[])";

const RECORD_ERASED: &str = "
INSERT INTO switchboard.erased_events (event_id)
SELECT unnest($1::text[])
ON CONFLICT (event_id) DO UPDATE SET erased_at = now()";

const PRUNE_ERASED: &str =
    "DELETE FROM switchboard.erased_events WHERE erased_at < now() - interval '7 days'";

const DELETE_DELIVERIES: &str = "
DELETE FROM switchboard.notification_deliveries WHERE event_id = ANY($1::text[])";

/// `message.deleted`: the text leaves the notifications made from the original, and the
/// push and email copies of them (sent or waiting).
const BLANK_NOTIFICATIONS: &str = "
UPDATE switchboard.notifications SET message = ''
 WHERE ref_channel = $1 AND ref_seq = $2 AND message <> ''
RETURNING id, event_id";

const BLANK_OUTBOX: &str = "
UPDATE switchboard.outbox SET data = jsonb_set(data, '{message}', '\"\"')
 WHERE event_id = ANY($1::text[]) AND jsonb_typeof(data) = 'object' AND data ? 'message'";

const BLANK_DELIVERIES: &str = "
UPDATE switchboard.notification_deliveries SET payload = jsonb_set(payload, '{message}', '\"\"')
 WHERE event_id = ANY($1::text[]) AND jsonb_typeof(payload) = 'object' AND payload ? 'message'";

/// A push or email still waiting (escalation, retries) about a deleted message is not
/// sent at all: a notification with its text blanked is no news.
const CANCEL_PENDING: &str = "
UPDATE switchboard.notification_deliveries SET cancelled_at = now()
 WHERE event_id = ANY($1::text[])
   AND delivered_at IS NULL AND failed_at IS NULL AND cancelled_at IS NULL";

/// Marks `event_ids` erased before they leave `EVENTS`, so that no job copies them into
/// PostgreSQL after the erasure (see the migration `erasure`); forgets marks a week old.
pub async fn record_erased(db: &PgPool, event_ids: &[String]) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(PRUNE_ERASED).execute(&mut *tx).await?;
    for chunk in event_ids.chunks(10_000) {
        sqlx::query(RECORD_ERASED)
            .bind(chunk)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// The id of the `user.notification` event announcing notification `id` (the
/// notifications job derives it the same way).
fn announcement(id: &str) -> String {
    EventId::derive(&[types::USER_NOTIFICATION, id])
        .as_str()
        .to_string()
}

/// Blanks `user`'s messages in the archive, recounts the inbox entries of their
/// conversations, and deletes the notifications made from `event_ids` (the messages
/// found in `EVENTS`) or from any archived message of the user.
pub async fn erase_user(
    db: &PgPool,
    user: &str,
    event_ids: &BTreeSet<String>,
) -> Result<(Removed, Announced), sqlx::Error> {
    let mut tx = db.begin().await?;
    let channels: Vec<String> = sqlx::query_scalar(USER_CHANNELS)
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
    lock(&mut tx, &channels).await?;
    let blanked: Vec<(String, bool)> = sqlx::query_as(BLANK_USER)
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
    let mut removed = Removed {
        archive: blanked.len() as u64,
        search: blanked.iter().filter(|(_, searchable)| *searchable).count() as u64,
        ..Removed::default()
    };
    removed.inbox = recount(&mut tx, &channels).await?;
    let mut ids: BTreeSet<String> = sqlx::query_scalar(USER_EVENT_IDS)
        .bind(user)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    ids.extend(event_ids.iter().cloned());
    let announced = forget_notifications(&mut tx, &ids, None, &mut removed).await?;
    tx.commit().await?;
    Ok((removed, announced))
}

/// Deletes everything the archive, the inbox and the notifications hold of `channel`;
/// `event_ids` are the events `EVENTS` held of it.
pub async fn erase_channel(
    db: &PgPool,
    channel: &str,
    event_ids: &BTreeSet<String>,
) -> Result<(Removed, Announced), sqlx::Error> {
    let mut tx = db.begin().await?;
    lock(&mut tx, &[channel.to_string()]).await?;
    let deleted: Vec<(String, bool)> = sqlx::query_as(DELETE_CHANNEL)
        .bind(channel)
        .fetch_all(&mut *tx)
        .await?;
    let mut removed = Removed {
        archive: deleted.len() as u64,
        search: deleted.iter().filter(|(_, searchable)| *searchable).count() as u64,
        ..Removed::default()
    };
    if inbox_exists(&mut tx).await? {
        removed.inbox = sqlx::query(DELETE_INBOX)
            .bind(channel)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    let mut ids: BTreeSet<String> = deleted.into_iter().map(|(id, _)| id).collect();
    ids.extend(event_ids.iter().cloned());
    let announced = forget_notifications(&mut tx, &ids, Some(channel), &mut removed).await?;
    tx.commit().await?;
    Ok((removed, announced))
}

/// Blanks the notifications made from the message at `seq` on `channel` (it was deleted);
/// returns how many were changed.
pub async fn blank_notifications(db: &PgPool, channel: &str, seq: i64) -> Result<u64, sqlx::Error> {
    let mut tx = db.begin().await?;
    let blanked: Vec<(String, String)> = sqlx::query_as(BLANK_NOTIFICATIONS)
        .bind(channel)
        .bind(seq)
        .fetch_all(&mut *tx)
        .await?;
    if !blanked.is_empty() {
        let events: Vec<&str> = blanked.iter().map(|(_, event)| event.as_str()).collect();
        sqlx::query(BLANK_DELIVERIES)
            .bind(&events)
            .execute(&mut *tx)
            .await?;
        sqlx::query(CANCEL_PENDING)
            .bind(&events)
            .execute(&mut *tx)
            .await?;
        let announced: Vec<String> = blanked.iter().map(|(id, _)| announcement(id)).collect();
        sqlx::query(BLANK_OUTBOX)
            .bind(&announced)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(blanked.len() as u64)
}

async fn lock(tx: &mut PgConnection, channels: &[String]) -> Result<(), sqlx::Error> {
    if channels.is_empty() {
        return Ok(());
    }
    let mut sorted = channels.to_vec();
    sorted.sort();
    sqlx::query(LOCK).bind(&sorted).execute(&mut *tx).await?;
    Ok(())
}

/// The inbox is kept by the archive job; a deployment migrated before it has no table.
async fn inbox_exists(tx: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(INBOX_EXISTS).fetch_one(&mut *tx).await
}

async fn recount(tx: &mut PgConnection, channels: &[String]) -> Result<u64, sqlx::Error> {
    if channels.is_empty() || !inbox_exists(tx).await? {
        return Ok(0);
    }
    Ok(sqlx::query(RECOUNT)
        .bind(channels)
        .execute(&mut *tx)
        .await?
        .rows_affected())
}

async fn forget_notifications(
    tx: &mut PgConnection,
    event_ids: &BTreeSet<String>,
    channel: Option<&str>,
    removed: &mut Removed,
) -> Result<Announced, sqlx::Error> {
    let ids: Vec<&str> = event_ids.iter().map(String::as_str).collect();
    let notified: Vec<(String, String)> = sqlx::query_as(DELETE_NOTIFICATIONS)
        .bind(&ids)
        .bind(channel)
        .fetch_all(&mut *tx)
        .await?;
    removed.notifications = notified.len() as u64;
    let mut all: BTreeSet<&str> = ids.into_iter().collect();
    all.extend(notified.iter().map(|(_, event)| event.as_str()));
    removed.deliveries = sqlx::query(DELETE_DELIVERIES)
        .bind(all.into_iter().collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let announced: Announced = notified.iter().map(|(id, _)| announcement(id)).collect();
    removed.outbox = sqlx::query(DELETE_OUTBOX)
        .bind(announced.iter().map(String::as_str).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    Ok(announced)
}
