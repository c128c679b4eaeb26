//! What the presence job keeps in PostgreSQL: the last summary published for each user
//! (`switchboard.presence_state`, read back after a restart) and when each user was last
//! seen (`switchboard.presence_last_seen`).
//!
//! # Why a crash loses no transition
//!
//! A batch of transitions is saved (the users' rows, and the batch's encoded events as
//! one row of `switchboard.presence_pending`, in one transaction), then published, then
//! its pending row is deleted. A worker that starts publishes what is still pending
//! before anything else; the event id makes a repeat of an event JetStream already
//! stored a no-op. So the rows always describe what watchers were told, or are about to
//! be told, and the comparison after a restart starts from the truth.
//!
//! A user's row changes once per transition, in place: no column of it is indexed but
//! the user id, so the update is heap-only, and the pending events cost one insert and
//! one delete per batch, not two more writes per user.
//!
//! Rows only move forward: a copy of the worker that lags behind another never writes
//! an older state over a newer one.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::{Connection, PgPool};
use switchboard_schemas::shapes::PresenceData;
use switchboard_schemas::{Timestamp, UserId, VisibleStatus};
use time::OffsetDateTime;

use super::board::{Published, Summary, Transition};
use crate::dedicated::Dedicated;

const PRESENT: &str = "
SELECT user_id, status, devices, text, revision FROM switchboard.presence_state
 WHERE status <> 'offline'";

/// When each of the users `$1` last went offline (users never seen have no row).
const LAST_SEEN: &str = "
SELECT user_id, (extract(epoch FROM last_seen) * 1000000)::bigint
  FROM switchboard.presence_last_seen WHERE user_id = ANY($1::text[])";

/// Summaries of the users `$1`, in their order; a user never seen has no rows.
const SUMMARIES: &str = "
SELECT a.user_id, s.status, s.devices, s.text,
       (extract(epoch FROM l.last_seen) * 1000000)::bigint
  FROM unnest($1::text[]) WITH ORDINALITY AS a (user_id, ord)
  LEFT JOIN switchboard.presence_state s ON s.user_id = a.user_id
  LEFT JOIN switchboard.presence_last_seen l ON l.user_id = a.user_id
 ORDER BY a.ord";

const PENDING: &str = "
SELECT batch, users, events FROM switchboard.presence_pending
 ORDER BY created_at, batch";

/// `ON CONFLICT`: a save retried after an unclear commit finds its batch saved already.
const SAVE_PENDING: &str = "
INSERT INTO switchboard.presence_pending (batch, users, events)
VALUES ($1, $2, $3)
ON CONFLICT (batch) DO NOTHING";

const DONE: &str = "DELETE FROM switchboard.presence_pending WHERE batch = $1";

// The statements below take one row per user of a batch (no user twice: `ON CONFLICT`
// may touch a row once per statement), as parallel arrays.
const SAVE_STATE: &str = "
INSERT INTO switchboard.presence_state AS s (user_id, status, devices, text, revision)
SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::bigint[])
ON CONFLICT (user_id) DO UPDATE
   SET status = EXCLUDED.status, devices = EXCLUDED.devices, text = EXCLUDED.text,
       revision = EXCLUDED.revision, updated_at = now()
 WHERE s.revision <= EXCLUDED.revision";

const SAVE_LAST_SEEN: &str = "
INSERT INTO switchboard.presence_last_seen AS l (user_id, last_seen, status)
SELECT user_id, timestamptz 'epoch' + micros * interval '1 microsecond', 'offline'
  FROM unnest($1::text[], $2::bigint[]) AS o (user_id, micros)
ON CONFLICT (user_id) DO UPDATE
   SET last_seen = EXCLUDED.last_seen, status = EXCLUDED.status
 WHERE l.last_seen <= EXCLUDED.last_seen";

const SAVE_STATUS: &str = "
UPDATE switchboard.presence_last_seen l SET status = o.status
  FROM unnest($1::text[], $2::text[]) AS o (user_id, status)
 WHERE l.user_id = o.user_id";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
}

/// Reads and writes the presence tables.
#[derive(Clone)]
pub struct State {
    /// For [`State::summaries`], which RPCs call concurrently.
    db: PgPool,
    /// For the watcher's steps, taken one at a time, every batch: a connection of its own
    /// saves the round trip sqlx makes with each pooled one it takes back ([`Dedicated`]).
    watching: Arc<Dedicated>,
}

impl State {
    pub fn new(db: PgPool) -> State {
        State {
            watching: Arc::new(Dedicated::new(&db)),
            db,
        }
    }

    /// Every user last published as present (not offline). Rows that are not valid
    /// (written by hand) are skipped with a warning.
    pub async fn present(&self) -> Result<Vec<(UserId, Published)>, StateError> {
        let rows: Vec<(String, String, i32, Option<String>, i64)> = self
            .watching
            .run(async |conn| sqlx::query_as(PRESENT).fetch_all(conn).await)
            .await?;
        let mut present = Vec::with_capacity(rows.len());
        for (user, status, devices, text, revision) in rows {
            let (Ok(id), Some(status)) = (UserId::parse(&user), parse_status(&status)) else {
                tracing::warn!(user, status, "unreadable presence_state row skipped");
                continue;
            };
            let summary = Summary {
                status,
                devices: u32::try_from(devices).unwrap_or(0),
                text,
            };
            let revision = u64::try_from(revision).unwrap_or(0);
            present.push((id, Published { summary, revision }));
        }
        Ok(present)
    }

    /// When each of `users` was last seen going offline, for those ever seen.
    pub async fn last_seen(
        &self,
        users: &[&UserId],
    ) -> Result<HashMap<String, Timestamp>, StateError> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
        let rows: Vec<(String, Option<i64>)> = self
            .watching
            .run(async |conn| sqlx::query_as(LAST_SEEN).bind(&ids).fetch_all(conn).await)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(user, micros)| Some((user, timestamp_from_micros(micros?)?)))
            .collect())
    }

    /// What `users` look like to others now, in the order given, in the shape of
    /// `user.presence` data: a user with no row is `offline` (never seen, or invisible
    /// everywhere since their first connection), `lastSeen` is when they last went
    /// offline.
    pub async fn summaries(&self, users: &[UserId]) -> Result<Vec<PresenceData>, StateError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
        type Row = (
            String,
            Option<String>,
            Option<i32>,
            Option<String>,
            Option<i64>,
        );
        let rows: Vec<Row> = sqlx::query_as(SUMMARIES)
            .bind(&ids)
            .fetch_all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(user, status, devices, text, last_seen)| {
                let status = status
                    .as_deref()
                    .and_then(parse_status)
                    .unwrap_or(VisibleStatus::Offline);
                // An offline user shows no device and no text, whatever a row says.
                let present = status != VisibleStatus::Offline;
                PresenceData {
                    user,
                    status,
                    devices: devices
                        .filter(|_| present)
                        .and_then(|d| u32::try_from(d).ok())
                        .unwrap_or(0),
                    last_seen: last_seen.and_then(timestamp_from_micros),
                    text: text.filter(|_| present),
                }
            })
            .collect())
    }

    /// Batches saved but maybe not published, oldest first.
    pub async fn pending(&self) -> Result<Vec<Pending>, StateError> {
        let rows: Vec<(i64, Vec<String>, Vec<Vec<u8>>)> = self
            .watching
            .run(async |conn| sqlx::query_as(PENDING).fetch_all(conn).await)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(batch, users, events)| Pending {
                batch,
                events: users.into_iter().zip(events).collect(),
            })
            .collect())
    }

    /// Records transitions about to be published, each with its encoded event, in one
    /// transaction: the users' states, for those going offline last-seen, and the events
    /// as pending batch `batch` (a number the caller chose, the same for every attempt).
    /// No user may appear twice.
    pub async fn save(
        &self,
        batch: i64,
        transitions: &[(&Transition, Vec<u8>)],
    ) -> Result<(), StateError> {
        let mut state = StateRows::default();
        let (mut offline, mut online) = (Vec::new(), Vec::new());
        for (transition, event) in transitions {
            let summary = &transition.summary;
            let user = transition.user.as_str();
            let status = status_name(summary.status);
            state.users.push(user);
            state.statuses.push(status);
            state
                .devices
                .push(i32::try_from(summary.devices).unwrap_or(i32::MAX));
            state.texts.push(summary.text.as_deref());
            state.revisions.push(bigint(transition.revision()));
            state.events.push(event.as_slice());
            if summary.is_offline() {
                offline.push((user, unix_micros(transition.at)));
            } else {
                online.push((user, status));
            }
        }
        let (offline_users, offline_at): (Vec<&str>, Vec<i64>) = offline.into_iter().unzip();
        let (online_users, online_statuses): (Vec<&str>, Vec<&str>) = online.into_iter().unzip();
        self.watching
            .run(async |conn| {
                let mut tx = conn.begin().await?;
                sqlx::query(SAVE_STATE)
                    .bind(&state.users)
                    .bind(&state.statuses)
                    .bind(&state.devices)
                    .bind(&state.texts)
                    .bind(&state.revisions)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(SAVE_PENDING)
                    .bind(batch)
                    .bind(&state.users)
                    .bind(&state.events)
                    .execute(&mut *tx)
                    .await?;
                if !offline_users.is_empty() {
                    sqlx::query(SAVE_LAST_SEEN)
                        .bind(&offline_users)
                        .bind(&offline_at)
                        .execute(&mut *tx)
                        .await?;
                }
                if !online_users.is_empty() {
                    sqlx::query(SAVE_STATUS)
                        .bind(&online_users)
                        .bind(&online_statuses)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok::<_, sqlx::Error>(())
            })
            .await?;
        Ok(())
    }

    /// Notes that every event of pending batch `batch` is stored in JetStream.
    pub async fn done(&self, batch: i64) -> Result<(), StateError> {
        self.watching
            .run(async |conn| sqlx::query(DONE).bind(batch).execute(conn).await)
            .await?;
        Ok(())
    }
}

/// A batch of events saved but maybe not published: (user, encoded envelope) each.
pub struct Pending {
    pub batch: i64,
    pub events: Vec<(String, Vec<u8>)>,
}

/// A number for a new pending batch: random, so that copies of the worker never choose
/// the same.
pub fn new_batch() -> i64 {
    use rand_core::{OsRng, RngCore};
    (OsRng.next_u64() >> 1) as i64
}

/// The columns of `presence_state` rows for [`State::save`], one array each.
#[derive(Default)]
struct StateRows<'a> {
    users: Vec<&'a str>,
    statuses: Vec<&'static str>,
    devices: Vec<i32>,
    texts: Vec<Option<&'a str>>,
    revisions: Vec<i64>,
    events: Vec<&'a [u8]>,
}

/// Bucket revisions are stream sequences; they fit a bigint.
fn bigint(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

fn timestamp_from_micros(micros: i64) -> Option<Timestamp> {
    Timestamp::from_unix_nanos(i128::from(micros) * 1000).ok()
}

/// Microseconds since the epoch: PostgreSQL's precision.
pub fn unix_micros(instant: OffsetDateTime) -> i64 {
    i64::try_from(instant.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

fn status_name(status: VisibleStatus) -> &'static str {
    match status {
        VisibleStatus::Online => "online",
        VisibleStatus::Away => "away",
        VisibleStatus::Busy => "busy",
        VisibleStatus::Offline => "offline",
    }
}

fn parse_status(name: &str) -> Option<VisibleStatus> {
    [
        VisibleStatus::Online,
        VisibleStatus::Away,
        VisibleStatus::Busy,
        VisibleStatus::Offline,
    ]
    .into_iter()
    .find(|status| status_name(*status) == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_are_the_json_ones() {
        for name in ["online", "away", "busy", "offline"] {
            let status = parse_status(name).unwrap();
            assert_eq!(status_name(status), name);
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{name}\"")
            );
        }
        assert_eq!(parse_status("invisible"), None);
    }
}
