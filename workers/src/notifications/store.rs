//! The notifications worker's PostgreSQL: notifications, preferences, outbound
//! deliveries, and the events emitted through the outbox.
//!
//! The worker never publishes `user.notification` or `notification.read` itself: it
//! calls `switchboard.emit(...)` in the same transaction as the rows the event reports,
//! and the outbox relay publishes it. So a notification is stored and announced, or
//! neither, whatever crashes in between, and the unread count in the event is the one
//! that transaction saw.
//!
//! Every transaction that changes a user's notifications first takes that user's
//! advisory lock ([`lock_user`]), so unread counts computed by concurrent transactions
//! (two worker copies, a `read` RPC) follow one another instead of racing.

use std::collections::HashMap;

use sqlx::{Acquire, PgConnection, PgPool, Postgres};
use switchboard_schemas::shapes::{NotificationCategory, Priority};
use switchboard_schemas::{ChannelName, EventId, Timestamp, UserId};

use super::preferences::{Preferences, PreferencesPatch, category_name, parse_category};

/// `processed_events.consumer` of the notifications worker.
pub const CONSUMER: &str = "notifications";

const MEMBERS: &str = "
SELECT user_id FROM switchboard.channel_members
 WHERE channel = $1 AND active AND ($2::text[] IS NULL OR role = ANY($2))
 ORDER BY user_id LIMIT $3";

const PREFERENCES_OF_CATEGORY: &str = "
SELECT user_id, in_app, push, email, muted FROM switchboard.notification_preferences
 WHERE category = $1 AND user_id = ANY($2)";

const PREFERENCES_OF_USER: &str = "
SELECT category, in_app, push, email, muted FROM switchboard.notification_preferences
 WHERE user_id = $1";

const SET_PREFERENCES: &str = "
INSERT INTO switchboard.notification_preferences AS p (user_id, category, in_app, push, email, muted)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (user_id, category) DO UPDATE
   SET in_app = COALESCE($7, p.in_app), push = COALESCE($8, p.push),
       email = COALESCE($9, p.email), muted = COALESCE($10, p.muted)";

/// The advisory lock of user `$user` (an SQL expression) until the transaction ends: one
/// key format for every statement that takes it ([`lock_user`], [`claim_event`]).
macro_rules! user_lock {
    ($user:literal) => {
        concat!(
            "pg_advisory_xact_lock(hashtextextended('switchboard.notifications/' || ",
            $user,
            ", 0))"
        )
    };
}

/// Claims the event and takes the advisory lock of each user in $3 (sorted, so that two
/// transactions locking several users take them in the same order), in one statement.
const CLAIM_EVENT: &str = concat!(
    "
WITH claimed AS (
INSERT INTO switchboard.processed_events (consumer, event_id) VALUES ($1, $2)
ON CONFLICT DO NOTHING
RETURNING 1)
SELECT (SELECT count(*) FROM claimed),
       (SELECT count(",
    user_lock!("u"),
    ") FROM unnest($3::text[]) AS u)"
);

const LOCK_USER: &str = concat!("SELECT ", user_lock!("$1"));

/// Stores a notification and counts the user's unread ones with it, in one statement.
/// The count reads the table as it was before the insert (a statement does not see its
/// own `WITH` changes), hence the `+ 1`; the caller holds the user's lock, so nothing
/// else changes the count in between.
const INSERT_NOTIFICATION: &str = "
WITH created AS (
INSERT INTO switchboard.notifications
       (id, user_id, event_id, category, title, message, priority, ref_channel, ref_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (event_id, user_id) DO NOTHING
RETURNING created_at)
SELECT (extract(epoch FROM created_at) * 1000000)::bigint,
       1 + (SELECT count(*) FROM switchboard.notifications
             WHERE user_id = $2 AND read_at IS NULL)
  FROM created";

const UNREAD: &str =
    "SELECT count(*) FROM switchboard.notifications WHERE user_id = $1 AND read_at IS NULL";

const EMIT: &str = "SELECT switchboard.emit($1, $2, $3::jsonb, NULL, $4)";

const INSERT_DELIVERY: &str = "
INSERT INTO switchboard.notification_deliveries
       (event_id, user_id, medium, sink, payload, traceparent, target, notification_id,
        next_attempt_at)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, now() + make_interval(secs => $9))
ON CONFLICT DO NOTHING";

const LIST: &str = "
SELECT id, category, title, message, priority, ref_channel, ref_seq,
       (extract(epoch FROM created_at) * 1000000)::bigint,
       (extract(epoch FROM read_at) * 1000000)::bigint
  FROM switchboard.notifications
 WHERE user_id = $1 AND ($2::text IS NULL OR id < $2) AND (NOT $3 OR read_at IS NULL)
 ORDER BY id DESC
 LIMIT $4";

const READ_IDS: &str = "
UPDATE switchboard.notifications SET read_at = now()
 WHERE user_id = $1 AND id = ANY($2) AND read_at IS NULL
RETURNING id";

const READ_ALL: &str = "
UPDATE switchboard.notifications SET read_at = now()
 WHERE user_id = $1 AND read_at IS NULL
RETURNING id";

const READ_MESSAGES_UP_TO: &str = "
UPDATE switchboard.notifications SET read_at = now()
 WHERE user_id = $1 AND read_at IS NULL AND category = 'message'
   AND ref_channel = $2 AND ref_seq <= $3
RETURNING id";

const CANCEL_PENDING: &str = "
UPDATE switchboard.notification_deliveries SET cancelled_at = now()
 WHERE notification_id = ANY($1) AND medium IN ('push', 'email')
   AND delivered_at IS NULL AND failed_at IS NULL AND cancelled_at IS NULL";

const EXPIRE_NOTIFICATIONS: &str = "
DELETE FROM switchboard.notifications WHERE id IN (
    SELECT id FROM switchboard.notifications
     WHERE created_at < now() - make_interval(days => $1) LIMIT $2)";

const EXPIRE_DELIVERIES: &str = "
DELETE FROM switchboard.notification_deliveries WHERE id IN (
    SELECT id FROM switchboard.notification_deliveries
     WHERE created_at < now() - make_interval(days => $1) LIMIT $2)";

const EXPIRE_PROCESSED: &str = "
DELETE FROM switchboard.processed_events WHERE consumer = $3 AND event_id IN (
    SELECT event_id FROM switchboard.processed_events
     WHERE consumer = $3 AND processed_at < now() - make_interval(days => $1) LIMIT $2)";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored row is unreadable: {0}")]
    Row(String),
}

/// The active members of `channel`, with one of `roles` when given, at most `limit`.
pub async fn members(
    conn: &mut PgConnection,
    channel: &ChannelName,
    roles: Option<Vec<&'static str>>,
    limit: usize,
) -> Result<Vec<UserId>, StoreError> {
    let rows: Vec<String> = sqlx::query_scalar(MEMBERS)
        .bind(channel.as_str())
        .bind(roles)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|user| UserId::parse(user).map_err(|e| StoreError::Row(e.to_string())))
        .collect()
}

/// Each of `users`' preferences for `category` (defaults for those without a row).
pub async fn preferences_for(
    conn: &mut PgConnection,
    category: NotificationCategory,
    users: &[UserId],
) -> Result<HashMap<UserId, Preferences>, StoreError> {
    let names: Vec<&str> = users.iter().map(UserId::as_str).collect();
    let rows: Vec<(String, bool, bool, bool, bool)> = sqlx::query_as(PREFERENCES_OF_CATEGORY)
        .bind(category_name(category))
        .bind(names)
        .fetch_all(conn)
        .await?;
    let stored: HashMap<&str, Preferences> = rows
        .iter()
        .map(|(user, in_app, push, email, muted)| {
            let preferences = Preferences {
                in_app: *in_app,
                push: *push,
                email: *email,
                muted: *muted,
            };
            (user.as_str(), preferences)
        })
        .collect();
    Ok(users
        .iter()
        .map(|user| {
            let preferences = stored.get(user.as_str()).copied().unwrap_or_default();
            (user.clone(), preferences)
        })
        .collect())
}

/// The categories for which `user` has stored preferences.
pub async fn preferences_of(
    db: &PgPool,
    user: &UserId,
) -> Result<Vec<(NotificationCategory, Preferences)>, StoreError> {
    let rows: Vec<(String, bool, bool, bool, bool)> = sqlx::query_as(PREFERENCES_OF_USER)
        .bind(user.as_str())
        .fetch_all(db)
        .await?;
    rows.into_iter()
        .map(|(category, in_app, push, email, muted)| {
            let category = parse_category(&category)
                .ok_or_else(|| StoreError::Row(format!("unknown category {category:?}")))?;
            Ok((
                category,
                Preferences {
                    in_app,
                    push,
                    email,
                    muted,
                },
            ))
        })
        .collect()
}

/// Applies `patch` to `user`'s preferences for `category`, field by field.
pub async fn set_preferences(
    conn: &mut PgConnection,
    user: &UserId,
    category: NotificationCategory,
    patch: &PreferencesPatch,
) -> Result<(), StoreError> {
    let fresh = patch.apply(Preferences::default());
    sqlx::query(SET_PREFERENCES)
        .bind(user.as_str())
        .bind(category_name(category))
        .bind(fresh.in_app)
        .bind(fresh.push)
        .bind(fresh.email)
        .bind(fresh.muted)
        .bind(patch.in_app)
        .bind(patch.push)
        .bind(patch.email)
        .bind(patch.muted)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records the event as handled in the caller's transaction, and takes the lock of each
/// of `users` ([`lock_user`]) for it; false if the event already was handled. A concurrent
/// transaction claiming the same event waits here for the first to end.
pub async fn claim_event(
    conn: &mut PgConnection,
    event_id: &EventId,
    users: &[&UserId],
) -> Result<bool, StoreError> {
    let mut sorted: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let (claimed, _locked): (i64, i64) = sqlx::query_as(CLAIM_EVENT)
        .bind(CONSUMER)
        .bind(event_id.as_str())
        .bind(&sorted)
        .fetch_one(conn)
        .await?;
    Ok(claimed == 1)
}

/// Serializes the transactions that change `user`'s notifications until commit.
pub async fn lock_user(conn: &mut PgConnection, user: &UserId) -> Result<(), StoreError> {
    sqlx::query(LOCK_USER)
        .bind(user.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

/// A notification about to be stored.
#[derive(Debug, Clone)]
pub struct NewNotification<'a> {
    pub id: &'a str,
    pub user: &'a UserId,
    pub event_id: &'a EventId,
    pub category: NotificationCategory,
    pub title: &'a str,
    pub message: &'a str,
    pub priority: Priority,
    pub ref_channel: &'a ChannelName,
    pub ref_seq: u64,
}

/// Stores `new`; its creation time and the user's unread count with it, or `None` if
/// the user already has a notification for this event. The caller holds the user's lock
/// ([`lock_user`]).
pub async fn insert_notification(
    conn: &mut PgConnection,
    new: &NewNotification<'_>,
) -> Result<Option<(Timestamp, u64)>, StoreError> {
    let created: Option<(i64, i64)> = sqlx::query_as(INSERT_NOTIFICATION)
        .bind(new.id)
        .bind(new.user.as_str())
        .bind(new.event_id.as_str())
        .bind(category_name(new.category))
        .bind(new.title)
        .bind(new.message)
        .bind(priority_name(new.priority))
        .bind(new.ref_channel.as_str())
        .bind(i64::try_from(new.ref_seq).map_err(|_| StoreError::Row("seq above i64".into()))?)
        .fetch_optional(conn)
        .await?;
    created
        .map(|(micros, unread)| Ok((timestamp(micros)?, u64::try_from(unread).unwrap_or(0))))
        .transpose()
}

pub async fn unread(conn: &mut PgConnection, user: &UserId) -> Result<u64, StoreError> {
    let count: i64 = sqlx::query_scalar(UNREAD)
        .bind(user.as_str())
        .fetch_one(conn)
        .await?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Emits an event through the outbox, in the caller's transaction.
pub async fn emit(
    conn: &mut PgConnection,
    channel: &ChannelName,
    ty: &str,
    data: &str,
    event_id: Option<&EventId>,
) -> Result<(), StoreError> {
    let _: String = sqlx::query_scalar(EMIT)
        .bind(channel.as_str())
        .bind(ty)
        .bind(data)
        .bind(event_id.map(EventId::as_str))
        .fetch_one(conn)
        .await?;
    Ok(())
}

/// A push or email to hand to a sink, once.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    pub event_id: &'a EventId,
    pub user: &'a UserId,
    pub medium: &'static str,
    pub sink: &'static str,
    /// The device, for sinks that send to each (Web Push: the subscription id); else ''.
    pub target: &'a str,
    pub payload: &'a str,
    pub traceparent: Option<&'a str>,
    /// The in-app notification whose reading cancels this push or email while it waits.
    pub notification_id: Option<&'a str>,
    /// How long it waits before its first attempt.
    pub after: std::time::Duration,
}

pub async fn insert_delivery(
    conn: &mut PgConnection,
    new: &NewDelivery<'_>,
) -> Result<(), StoreError> {
    sqlx::query(INSERT_DELIVERY)
        .bind(new.event_id.as_str())
        .bind(new.user.as_str())
        .bind(new.medium)
        .bind(new.sink)
        .bind(new.payload)
        .bind(new.traceparent)
        .bind(new.target)
        .bind(new.notification_id)
        .bind(new.after.as_secs_f64())
        .execute(conn)
        .await?;
    Ok(())
}

/// The ids of `user`'s Web Push subscriptions, as delivery targets.
pub async fn push_targets(
    conn: &mut PgConnection,
    user: &UserId,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id::text FROM switchboard.push_subscriptions WHERE user_id = $1 ORDER BY id",
    )
    .bind(user.as_str())
    .fetch_all(conn)
    .await?)
}

/// The ids of `user`'s phones registered with `platform` (`fcm`, `apns`), as delivery
/// targets.
pub async fn mobile_targets(
    conn: &mut PgConnection,
    user: &UserId,
    platform: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id::text FROM switchboard.mobile_devices
          WHERE user_id = $1 AND platform = $2 ORDER BY id",
    )
    .bind(user.as_str())
    .bind(platform)
    .fetch_all(conn)
    .await?)
}

/// One stored notification, as `list` reads it.
#[derive(Debug, Clone)]
pub struct StoredNotification {
    pub id: String,
    pub category: NotificationCategory,
    pub title: String,
    pub message: String,
    pub priority: Priority,
    pub ref_channel: Option<String>,
    pub ref_seq: Option<i64>,
    pub created_at: Timestamp,
    pub read_at: Option<Timestamp>,
}

type ListRow = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    i64,
    Option<i64>,
);

/// Up to `limit` of `user`'s notifications older than `before`, newest first.
pub async fn list(
    db: &PgPool,
    user: &UserId,
    before: Option<&str>,
    unread_only: bool,
    limit: u32,
) -> Result<Vec<StoredNotification>, StoreError> {
    let rows: Vec<ListRow> = sqlx::query_as(LIST)
        .bind(user.as_str())
        .bind(before)
        .bind(unread_only)
        .bind(i64::from(limit))
        .fetch_all(db)
        .await?;
    rows.into_iter()
        .map(
            |(id, category, title, message, priority, ref_channel, ref_seq, created, read)| {
                Ok(StoredNotification {
                    category: parse_category(&category)
                        .ok_or_else(|| StoreError::Row(format!("unknown category {category:?}")))?,
                    priority: parse_priority(&priority)
                        .ok_or_else(|| StoreError::Row(format!("unknown priority {priority:?}")))?,
                    created_at: timestamp(created)?,
                    read_at: read.map(timestamp).transpose()?,
                    id,
                    title,
                    message,
                    ref_channel,
                    ref_seq,
                })
            },
        )
        .collect()
}

pub async fn unread_count(db: &PgPool, user: &UserId) -> Result<u64, StoreError> {
    let count: i64 = sqlx::query_scalar(UNREAD)
        .bind(user.as_str())
        .fetch_one(db)
        .await?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Which of `user`'s notifications to mark read.
#[derive(Debug, Clone)]
pub enum ReadTarget<'a> {
    Ids(&'a [String]),
    All,
    /// The `message` notifications about `channel`'s events up to `seq` (a conversation's
    /// `read` receipt).
    MessagesUpTo {
        channel: &'a ChannelName,
        seq: u64,
    },
}

/// Most ids one `notification.read` event lists.
pub const MAX_READ_IDS: usize = 1_000;

/// `data` of `notification.read`. `all` is there (true) when the user read everything:
/// `ids` then lists at most [`MAX_READ_IDS`] of them, the newest.
#[derive(Debug, serde::Serialize)]
pub struct ReadEvent<'a> {
    pub ids: &'a [String],
    pub unread: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

/// Marks `user`'s `target` notifications read, cancels their waiting push and email, and
/// when any was unread emits `notification.read` to every device of the user, in one
/// transaction; the user's unread count after.
pub async fn read(
    db: impl Acquire<'_, Database = Postgres>,
    user: &UserId,
    target: ReadTarget<'_>,
) -> Result<u64, StoreError> {
    let all = matches!(target, ReadTarget::All);
    let mut tx = db.begin().await?;
    lock_user(&mut tx, user).await?;
    let mut read = mark_read(&mut tx, user, target).await?;
    let unread = unread(&mut tx, user).await?;
    if !read.is_empty() {
        read.sort_unstable_by(|a, b| b.cmp(a));
        read.truncate(MAX_READ_IDS);
        let event = ReadEvent {
            ids: &read,
            unread,
            all,
        };
        let data = serde_json::to_string(&event).map_err(|e| StoreError::Row(e.to_string()))?;
        let channel = ChannelName::new(switchboard_schemas::Namespace::User, user.as_str())
            .map_err(|e| StoreError::Row(e.to_string()))?;
        emit(
            &mut tx,
            &channel,
            switchboard_schemas::event::types::NOTIFICATION_READ,
            &data,
            None,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(unread)
}

/// Marks notifications read in the caller's transaction and cancels their push and email
/// still waiting; the ids that were unread.
pub async fn mark_read(
    conn: &mut PgConnection,
    user: &UserId,
    target: ReadTarget<'_>,
) -> Result<Vec<String>, StoreError> {
    let ids: Vec<String> = match target {
        ReadTarget::Ids(ids) => {
            sqlx::query_scalar(READ_IDS)
                .bind(user.as_str())
                .bind(ids)
                .fetch_all(&mut *conn)
                .await?
        }
        ReadTarget::All => {
            sqlx::query_scalar(READ_ALL)
                .bind(user.as_str())
                .fetch_all(&mut *conn)
                .await?
        }
        ReadTarget::MessagesUpTo { channel, seq } => {
            sqlx::query_scalar(READ_MESSAGES_UP_TO)
                .bind(user.as_str())
                .bind(channel.as_str())
                .bind(i64::try_from(seq).unwrap_or(i64::MAX))
                .fetch_all(&mut *conn)
                .await?
        }
    };
    if !ids.is_empty() {
        sqlx::query(CANCEL_PENDING).bind(&ids).execute(conn).await?;
    }
    Ok(ids)
}

/// Deletes notifications, deliveries and processed-event marks older than `days`, at
/// most `batch` rows per statement; the number of notifications deleted.
pub async fn expire(db: &PgPool, days: u32, batch: i64) -> Result<u64, StoreError> {
    let days = i32::try_from(days).unwrap_or(i32::MAX);
    let notifications = delete_in_batches(db, batch, || {
        sqlx::query(EXPIRE_NOTIFICATIONS).bind(days).bind(batch)
    })
    .await?;
    delete_in_batches(db, batch, || {
        sqlx::query(EXPIRE_DELIVERIES).bind(days).bind(batch)
    })
    .await?;
    delete_in_batches(db, batch, || {
        sqlx::query(EXPIRE_PROCESSED)
            .bind(days)
            .bind(batch)
            .bind(CONSUMER)
    })
    .await?;
    Ok(notifications)
}

/// Runs `statement`, a DELETE of at most `batch` rows, until it deletes fewer; the rows
/// deleted.
async fn delete_in_batches<'q>(
    db: &PgPool,
    batch: i64,
    statement: impl Fn() -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let deleted = statement().execute(db).await?.rows_affected();
        total += deleted;
        if deleted < batch as u64 {
            return Ok(total);
        }
    }
}

pub fn priority_name(priority: Priority) -> &'static str {
    match priority {
        Priority::Low => "low",
        Priority::Normal => "normal",
        Priority::High => "high",
        Priority::Urgent => "urgent",
    }
}

fn parse_priority(name: &str) -> Option<Priority> {
    [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Urgent,
    ]
    .into_iter()
    .find(|priority| priority_name(*priority) == name)
}

/// A `timestamptz` read as microseconds since the epoch.
fn timestamp(micros: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_unix_nanos(i128::from(micros) * 1000)
        .map_err(|e| StoreError::Row(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_names_are_the_json_ones() {
        for name in ["low", "normal", "high", "urgent"] {
            let priority = parse_priority(name).unwrap();
            assert_eq!(priority_name(priority), name);
            assert_eq!(
                serde_json::to_string(&priority).unwrap(),
                format!("\"{name}\"")
            );
        }
        assert_eq!(parse_priority("huge"), None);
    }
}
