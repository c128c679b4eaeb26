//! What the presence job keeps in PostgreSQL, one row per user in
//! `switchboard.presence_state`: the last summary published (read back after a restart)
//! and when the user last went offline.
//!
//! # Why a crash loses no transition and repeats none
//!
//! The `EVENTS` stream is the record of what watchers were told. A batch of transitions
//! is published first; each user's newest published summary is then kept here in memory
//! ([`State::record`]) and written to PostgreSQL a moment later (a second by default),
//! every user changed meanwhile in one statement ([`State::save`]), each row with the
//! stream seq of the event that published it. A worker that starts reads the users
//! present from the rows, then the `user.presence` events stored after the newest seq
//! any row holds: what a crash published but did not write. So the comparison after a
//! restart starts from what watchers were told, and what a crash left unwritten is
//! written by the next start.
//!
//! A connection storm therefore costs PostgreSQL a few statements per second, whatever
//! the number of users coming and going, and a user who comes and goes within one save
//! costs one row write. `presence.get` ([`State::summaries`]) reads the rows and what is
//! not written yet, so it answers what was published.
//!
//! A row changes in place: no column of it is indexed but the user id, so the update is
//! heap-only. Rows only move forward: a copy of the worker that lags behind another never
//! writes an older event's summary over a newer one's.
//!
//! # PostgreSQL away
//!
//! The watch never waits long for PostgreSQL. Each of its steps here (a save, a
//! last-seen read) is given up after [`ANSWER_WITHIN`], so a server that stopped
//! answering without refusing (stopped, or behind a route that drops packets) counts as
//! a failure like one that refuses. After a failure the records stay in memory, the next
//! save waits out a backoff, and last-seen comes from the records alone, without asking,
//! until a save succeeds again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use switchboard_schemas::shapes::PresenceData;
use switchboard_schemas::{Timestamp, UserId, VisibleStatus};
use time::OffsetDateTime;

use super::board::{Published, Summary};
use crate::backoff::Backoff;
use crate::dedicated::Dedicated;

/// Users waiting that make a save due at once, and the most rows one statement writes.
const SAVE_MOST: usize = 4096;

/// Longest the watch waits for one step on PostgreSQL. A full save of [`SAVE_MOST`] rows
/// takes some 30 ms on the 2-core benchmark machine during a connection storm.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

const PRESENT: &str = "
SELECT user_id, status, devices, text, revision FROM switchboard.presence_state
 WHERE status <> 'offline'";

/// The newest event any row describes: events after it may not be written yet.
const NEWEST_SEQ: &str = "SELECT coalesce(max(seq), 0) FROM switchboard.presence_state";

/// When each of the users `$1` last went offline (users never seen offline are left out).
const LAST_SEEN: &str = "
SELECT user_id, (extract(epoch FROM last_seen) * 1000000)::bigint
  FROM switchboard.presence_state
 WHERE user_id = ANY($1::text[]) AND last_seen IS NOT NULL";

/// Summaries of the users `$1`, in their order; a user never seen has no row.
const SUMMARIES: &str = "
SELECT a.user_id, s.status, s.devices, s.text,
       (extract(epoch FROM s.last_seen) * 1000000)::bigint
  FROM unnest($1::text[]) WITH ORDINALITY AS a (user_id, ord)
  LEFT JOIN switchboard.presence_state s ON s.user_id = a.user_id
 ORDER BY a.ord";

/// One row per user (no user twice: `ON CONFLICT` may touch a row once per statement),
/// as parallel arrays; a null last-seen keeps the one written before.
const SAVE: &str = "
INSERT INTO switchboard.presence_state AS s
       (user_id, status, devices, text, revision, seq, last_seen)
SELECT user_id, status, devices, text, revision, seq,
       timestamptz 'epoch' + micros * interval '1 microsecond'
  FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::bigint[], $6::bigint[],
              $7::bigint[]) AS r (user_id, status, devices, text, revision, seq, micros)
ON CONFLICT (user_id) DO UPDATE
   SET status = EXCLUDED.status, devices = EXCLUDED.devices, text = EXCLUDED.text,
       revision = EXCLUDED.revision, seq = EXCLUDED.seq,
       last_seen = coalesce(EXCLUDED.last_seen, s.last_seen), updated_at = now()
 WHERE s.seq <= EXCLUDED.seq";

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
    /// For the watcher's steps, taken one at a time: a connection of its own saves the
    /// round trip sqlx makes with each pooled one it takes back ([`Dedicated`]).
    watching: Arc<Dedicated>,
    /// Published, not yet written: the watcher adds, saves and empties it, `presence.get`
    /// reads it. With it, whether PostgreSQL failed the watch lately.
    unsaved: Arc<Mutex<Unsaved>>,
    /// Longest a published summary waits before it is written.
    save_after: Duration,
}

/// What a restarting worker starts from: the users last published as present, and the
/// newest stream seq the rows describe.
pub struct Restart {
    pub present: Vec<(UserId, Published)>,
    pub newest_seq: u64,
}

/// A user's newest published summary, not yet written to PostgreSQL.
#[derive(Debug, Clone)]
struct Record {
    summary: Summary,
    revision: u64,
    /// Stream seq of the event that published it.
    seq: u64,
    /// When the user last went offline, if they did since the last save: unix
    /// microseconds, PostgreSQL's precision, so an answer reads the same before and after
    /// the save.
    last_seen: Option<i64>,
}

#[derive(Default)]
struct Unsaved {
    users: HashMap<UserId, Record>,
    /// When the oldest of them was recorded.
    since: Option<Instant>,
    /// Since a step on PostgreSQL failed, until a save succeeds.
    away: Option<Away>,
}

/// PostgreSQL failed the watch: when the next save may be tried.
struct Away {
    backoff: Backoff,
    retry_at: Instant,
}

impl State {
    pub fn new(db: PgPool, save_after: Duration) -> State {
        State {
            watching: Arc::new(Dedicated::with_limit(&db, ANSWER_WITHIN)),
            db,
            unsaved: Arc::default(),
            save_after,
        }
    }

    /// Every user last written as present (not offline), and the newest seq of any row.
    /// Rows that are not valid (written by hand) are skipped with a warning. Read from
    /// the pool, with no limit: the watch waits for it anyway, and the rows may be many.
    pub async fn restart(&self) -> Result<Restart, StateError> {
        type Row = (String, String, i32, Option<String>, i64);
        let rows: Vec<Row> = sqlx::query_as(PRESENT).fetch_all(&self.db).await?;
        let newest_seq: i64 = sqlx::query_scalar(NEWEST_SEQ).fetch_one(&self.db).await?;
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
        Ok(Restart {
            present,
            newest_seq: u64::try_from(newest_seq).unwrap_or(0),
        })
    }

    /// Notes that `summary` was published for `user` by the event at stream seq `seq`,
    /// caused by bucket revision `revision` at `at` (for an offline summary, its
    /// last-seen), to be written by the next [`State::save`].
    pub fn record(
        &self,
        user: &UserId,
        summary: &Summary,
        revision: u64,
        seq: u64,
        at: OffsetDateTime,
    ) {
        let mut unsaved = self.unsaved.lock().expect("presence records poisoned");
        unsaved.since.get_or_insert_with(Instant::now);
        let last_seen = match unsaved.users.get(user) {
            _ if summary.is_offline() => Some(unix_micros(at)),
            Some(earlier) => earlier.last_seen,
            None => None,
        };
        unsaved.users.insert(
            user.clone(),
            Record {
                summary: summary.clone(),
                revision,
                seq,
                last_seen,
            },
        );
    }

    /// How long until a save is due, held back after a failure; `None` with nothing to
    /// save.
    pub fn save_due(&self) -> Option<Duration> {
        let unsaved = self.unsaved.lock().expect("presence records poisoned");
        let since = unsaved.since?;
        let held = unsaved.away.as_ref().map_or(Duration::ZERO, |away| {
            away.retry_at.saturating_duration_since(Instant::now())
        });
        if unsaved.users.len() >= SAVE_MOST {
            return Some(held);
        }
        Some(self.save_after.saturating_sub(since.elapsed()).max(held))
    }

    /// Writes every summary recorded since the last save, with the last-seen of those who
    /// went offline, [`SAVE_MOST`] users a statement. A failure leaves what is not
    /// written for a later save, after a backoff ([`State::save_due`]).
    pub async fn save(&self) -> Result<(), StateError> {
        // What waits now; what is recorded meanwhile waits for the next save.
        let waiting = self
            .unsaved
            .lock()
            .expect("presence records poisoned")
            .users
            .len();
        for _ in 0..waiting.div_ceil(SAVE_MOST) {
            match self.save_some().await {
                Ok(more) => {
                    self.unsaved.lock().expect("presence records poisoned").away = None;
                    if !more {
                        break;
                    }
                }
                Err(error) => {
                    self.failed();
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// A step on PostgreSQL failed: saves wait a little longer each time, last-seen is
    /// not asked for until a save succeeds.
    fn failed(&self) {
        let mut unsaved = self.unsaved.lock().expect("presence records poisoned");
        let away = unsaved.away.get_or_insert_with(|| Away {
            backoff: Backoff::standard(),
            retry_at: Instant::now(),
        });
        away.retry_at = Instant::now() + away.backoff.next_delay();
    }

    /// Writes up to [`SAVE_MOST`] of the records in one statement; whether any are left.
    async fn save_some(&self) -> Result<bool, StateError> {
        let records: Vec<(UserId, Record)> = {
            let unsaved = self.unsaved.lock().expect("presence records poisoned");
            unsaved
                .users
                .iter()
                .take(SAVE_MOST)
                .map(|(user, record)| (user.clone(), record.clone()))
                .collect()
        };
        if records.is_empty() {
            return Ok(false);
        }
        let mut rows = Rows::default();
        for (user, record) in &records {
            let summary = &record.summary;
            rows.users.push(user.as_str());
            rows.statuses.push(status_name(summary.status));
            rows.devices
                .push(i32::try_from(summary.devices).unwrap_or(i32::MAX));
            rows.texts.push(summary.text.as_deref());
            rows.revisions.push(bigint(record.revision));
            rows.seqs.push(bigint(record.seq));
            rows.last_seen.push(record.last_seen);
        }
        self.watching
            .run(async |conn| {
                sqlx::query(SAVE)
                    .bind(&rows.users)
                    .bind(&rows.statuses)
                    .bind(&rows.devices)
                    .bind(&rows.texts)
                    .bind(&rows.revisions)
                    .bind(&rows.seqs)
                    .bind(&rows.last_seen)
                    .execute(conn)
                    .await
            })
            .await?;
        let mut unsaved = self.unsaved.lock().expect("presence records poisoned");
        for (user, saved) in records {
            // Recorded again meanwhile: the newer record waits for the next save.
            if unsaved.users.get(&user).is_some_and(|r| r.seq == saved.seq) {
                unsaved.users.remove(&user);
            }
        }
        if unsaved.users.is_empty() {
            unsaved.since = None;
            return Ok(false);
        }
        Ok(true)
    }

    /// When each of `users` was last seen going offline, for those ever seen. While
    /// PostgreSQL is away (a step failed since the last save), what the records say.
    pub async fn last_seen(
        &self,
        users: &[&UserId],
    ) -> Result<HashMap<String, Timestamp>, StateError> {
        let mut seen = self.last_seen_recorded(users);
        let ask: Vec<&str> = users
            .iter()
            .filter(|user| !seen.contains_key(user.as_str()))
            .map(|user| user.as_str())
            .collect();
        let away = self
            .unsaved
            .lock()
            .expect("presence records poisoned")
            .away
            .is_some();
        if ask.is_empty() || away {
            return Ok(seen);
        }
        let rows: Vec<(String, Option<i64>)> = self
            .watching
            .run(async |conn| sqlx::query_as(LAST_SEEN).bind(&ask).fetch_all(conn).await)
            .await
            .inspect_err(|_| self.failed())?;
        seen.extend(
            rows.into_iter()
                .filter_map(|(user, micros)| Some((user, timestamp_from_micros(micros?)?))),
        );
        Ok(seen)
    }

    /// When each of `users` was last seen going offline, as far as this copy's records not
    /// yet written say: all it knows while PostgreSQL is away.
    pub fn last_seen_recorded(&self, users: &[&UserId]) -> HashMap<String, Timestamp> {
        let unsaved = self.unsaved.lock().expect("presence records poisoned");
        users
            .iter()
            .filter_map(|user| {
                let micros = unsaved.users.get(*user)?.last_seen?;
                Some((user.to_string(), timestamp_from_micros(micros)?))
            })
            .collect()
    }

    /// What `users` look like to others now, in the order given, in the shape of
    /// `user.presence` data: a user with no row is `offline` (never seen, or invisible
    /// everywhere since their first connection), `lastSeen` is when they last went
    /// offline. What was published and not written yet counts.
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
        let unsaved = self.unsaved.lock().expect("presence records poisoned");
        Ok(rows
            .into_iter()
            .zip(users)
            .map(|((user, status, devices, text, last_seen), id)| {
                let saved = Summary {
                    status: status
                        .as_deref()
                        .and_then(parse_status)
                        .unwrap_or(VisibleStatus::Offline),
                    devices: devices.and_then(|d| u32::try_from(d).ok()).unwrap_or(0),
                    text,
                };
                let mut last_seen = last_seen.and_then(timestamp_from_micros);
                let summary = match unsaved.users.get(id) {
                    Some(record) => {
                        if let Some(micros) = record.last_seen {
                            last_seen = timestamp_from_micros(micros);
                        }
                        record.summary.clone()
                    }
                    None => saved,
                };
                // An offline user shows no device and no text, whatever a row says.
                let present = !summary.is_offline();
                PresenceData {
                    user,
                    status: summary.status,
                    devices: if present { summary.devices } else { 0 },
                    last_seen,
                    text: summary.text.filter(|_| present),
                }
            })
            .collect())
    }
}

/// The columns of `presence_state` rows for [`State::save`], one array each.
#[derive(Default)]
struct Rows<'a> {
    users: Vec<&'a str>,
    statuses: Vec<&'static str>,
    devices: Vec<i32>,
    texts: Vec<Option<&'a str>>,
    revisions: Vec<i64>,
    seqs: Vec<i64>,
    last_seen: Vec<Option<i64>>,
}

/// Bucket revisions and stream seqs are stream sequences; they fit a bigint.
fn bigint(sequence: u64) -> i64 {
    i64::try_from(sequence).unwrap_or(i64::MAX)
}

fn timestamp_from_micros(micros: i64) -> Option<Timestamp> {
    Timestamp::from_unix_nanos(i128::from(micros) * 1000).ok()
}

/// Microseconds since the epoch: PostgreSQL's precision.
fn unix_micros(instant: OffsetDateTime) -> i64 {
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
