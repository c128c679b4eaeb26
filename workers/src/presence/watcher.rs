//! Following the `presence` bucket and publishing `user.presence` on change.
//!
//! # Start, restart, reconnect
//!
//! A worker that starts reads what was last published: the users present from
//! PostgreSQL, then the `user.presence` events stored after the newest one written there
//! ([`State`]: what a crash published but did not write). Then the watcher reads the
//! bucket from the start (the last write of every key, markers included) without
//! publishing anything, until it has caught up: an entry with nothing pending behind it,
//! or a second with nothing delivered. Only then does it compare each user with what was
//! last published and publish the differences: a user still on the same devices gets
//! nothing, a user whose entries were deleted or expired meanwhile gets their `offline`.
//! From then on every write is compared as it arrives. If the watch fails, the board
//! forgets its connections and the bucket is read again the same way, against what this
//! process published.
//!
//! # One event per change, whatever the number of copies
//!
//! Every copy of the worker watches the whole bucket and sees the same writes in the
//! same order, so each computes the same transitions; each event id is derived from
//! (user, the revision that caused it) and JetStream stores the first copy's publish
//! only. What is published is written to PostgreSQL afterwards, at most a second later
//! and many users at once ([`State::save`]); the stream itself covers a crash in between.
//!
//! A failure to publish is retried in place, with backoff, until it succeeds or the
//! worker stops; later writes wait their turn in the watch. PostgreSQL holds nothing
//! back, whether it refuses or stops answering: saves run beside the watch, and one that
//! fails is tried again later (with backoff), what waits to be written staying in memory
//! (one record per user); an online event whose last-seen only PostgreSQL knows goes out
//! without it ([`State`], "PostgreSQL away").
//!
//! Each bucket entry followed live counts as a message of the job `presence`, each
//! retried step as a retry; the entries behind the current one are its pending count
//! (docs/operations.md §7).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use switchboard_bus::store::{MAX_BATCH, Store, StoreError, StoredEvent};
use switchboard_bus::{PRESENCE_BUCKET, Publisher};
use switchboard_schemas::event::types;
use switchboard_schemas::shapes::PresenceData;
use switchboard_schemas::{
    Actor, ChannelName, Envelope, EventType, Namespace, RawJson, SubjectKind, Timestamp, UserId,
};
use time::OffsetDateTime;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

use super::board::{Board, Mark, Published, Summary, Transition};
use super::entry::{Change, Key};
use super::reaper::Entries;
use super::state::{State, StateError};
use crate::backoff::Backoff;
use crate::http::Readiness;
use crate::telemetry::{Handled, JobMetrics};

/// With nothing delivered for this long, reading the bucket's history is over.
const CAUGHT_UP_IDLE: Duration = Duration::from_secs(1);
/// Most transitions published together (one last-seen query, one round of acks).
const BATCH: usize = 256;
/// Longest a transition waits for others to join its batch: a connection storm costs a
/// few last-seen queries per second instead of one per connection.
const LINGER: Duration = Duration::from_millis(10);

/// Why the watch has to be set up again.
#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("KV bucket {PRESENCE_BUCKET} unavailable (has `switchboard init` run?): {0}")]
    Bucket(#[from] jetstream::context::KeyValueError),
    #[error("cannot watch the bucket: {0}")]
    Watch(#[from] kv::WatchError),
    #[error("watch interrupted: {0}")]
    Watcher(#[from] kv::WatcherError),
    #[error("watch ended")]
    Ended,
}

/// Whether to go on after a step; `Stop` once shutdown fired.
enum Flow {
    Continue,
    Stop,
}

pub struct Watcher {
    js: jetstream::Context,
    publisher: Publisher,
    /// Reads back the events published after the newest one written to PostgreSQL.
    store: Store,
    state: State,
    readiness: Arc<Readiness>,
    metrics: JobMetrics,
    /// Where every entry read is reported to the reaper.
    entries: Entries,
}

impl Watcher {
    pub fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        state: State,
        readiness: Arc<Readiness>,
        entries: Entries,
    ) -> Watcher {
        Watcher {
            publisher: Publisher::from_context(js.clone()),
            store: Store::new(client),
            js,
            state,
            readiness,
            metrics: JobMetrics::new("presence"),
            entries,
        }
    }

    /// Follows the bucket until `shutdown` fires.
    pub async fn run(&self, shutdown: &CancellationToken) {
        tracing::info!(job = "presence", "job started");
        let Some(restart) = self
            .retry(shutdown, "reading presence_state", || self.state.restart())
            .await
        else {
            return;
        };
        let Some(present) = self
            .retry(shutdown, "reading unsaved presence events", || {
                self.replay(&restart.present, restart.newest_seq)
            })
            .await
        else {
            return;
        };
        tracing::info!(present = present.len(), "last published presence read");
        let mut board = Board::new(present);
        let mut backoff = Backoff::standard();
        loop {
            match self.follow(&mut board, &mut backoff, shutdown).await {
                Ok(()) => break,
                Err(error) => {
                    self.readiness.bound("presence", false);
                    tracing::warn!(%error, "presence watch unavailable; reading the bucket again");
                }
            }
            board.forget_connections();
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
        // One attempt: what it misses, the next start reads back from the stream.
        if let Err(error) = self.state.save().await {
            tracing::warn!(%error, "presence not written at shutdown; the next start reads it back");
        }
        tracing::info!(job = "presence", "job stopped");
    }

    /// What was last published for each user present: `present`, as PostgreSQL has it,
    /// brought up to date with the `user.presence` events stored after `newest_seq` (the
    /// newest event written there), which are recorded to be written too.
    async fn replay(
        &self,
        present: &[(UserId, Published)],
        newest_seq: u64,
    ) -> Result<Vec<(UserId, Published)>, StoreError> {
        let mut present: std::collections::HashMap<UserId, Published> =
            present.iter().cloned().collect();
        let subject = SubjectKind::Durable.namespace_wildcard(Namespace::Presence);
        let mut next = newest_seq + 1;
        let mut replayed = 0usize;
        loop {
            let events = self.store.forward(&subject, next, MAX_BATCH).await?;
            let Some(last) = events.last() else {
                break;
            };
            next = last.seq + 1;
            for stored in &events {
                let Some((user, summary, at)) = published_summary(stored) else {
                    tracing::warn!(
                        seq = stored.seq,
                        subject = stored.subject,
                        "not a presence event; skipped"
                    );
                    continue;
                };
                // The revision behind an event is not stored with it: the one PostgreSQL
                // had stays (it only salts the id of a later "vanished" transition).
                let revision = present.get(&user).map_or(0, |p| p.revision);
                self.state.record(&user, &summary, revision, stored.seq, at);
                if summary.is_offline() {
                    present.remove(&user);
                } else {
                    present.insert(user, Published { summary, revision });
                }
                replayed += 1;
                // The first start after an upgrade reads the whole stream's presence.
                if replayed.is_multiple_of(100_000) {
                    tracing::info!(replayed, seq = stored.seq, "reading back presence events");
                }
            }
        }
        if replayed > 0 {
            tracing::info!(
                replayed,
                "presence events published but not written read back"
            );
        }
        Ok(present.into_iter().collect())
    }

    /// Reads the bucket from the start and follows it until shutdown (`Ok`) or until the
    /// watch must be set up again (`Err`). Catching up resets `backoff`.
    async fn follow(
        &self,
        board: &mut Board,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<(), WatchError> {
        let bucket = self.js.get_key_value(PRESENCE_BUCKET).await?;
        let empty = bucket.status().await.is_ok_and(|s| s.values() == 0);
        let mut watch = bucket.watch_with_history(">").await?;
        self.entries.restart(PRESENCE_BUCKET);
        self.readiness.bound("presence", true);
        let mut caught_up = false;
        if empty {
            caught_up = true;
            backoff.reset();
            if let Flow::Stop = self.publish_due(board, shutdown).await {
                return Ok(());
            }
        }
        tracing::info!("watching the presence bucket");
        // Transitions waiting to be published together: a batch gathers for at most
        // LINGER after its first transition, or until it is full.
        let mut batch = Vec::new();
        let mut gathering = Instant::now();
        // The save in flight, if any: it runs beside the watch.
        let mut saving: Option<JoinHandle<Result<(), StateError>>> = None;
        loop {
            let save_due = match saving {
                Some(_) => None,
                None => self.state.save_due(),
            };
            if save_due == Some(Duration::ZERO) {
                let state = self.state.clone();
                saving = Some(tokio::spawn(async move { state.save().await }));
                continue;
            }
            let mut wait = if batch.is_empty() {
                CAUGHT_UP_IDLE
            } else {
                LINGER.saturating_sub(gathering.elapsed())
            };
            // While catching up, a second without entries is what ends it: a save waits.
            if caught_up && let Some(due) = save_due {
                wait = wait.min(due);
            }
            if !batch.is_empty() && (wait.is_zero() || batch.len() >= BATCH) {
                if let Flow::Stop = self.publish(&mut batch, shutdown).await {
                    return Ok(());
                }
                continue;
            }
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                saved = async { saving.as_mut().expect("a save in flight").await },
                    if saving.is_some() =>
                {
                    saving = None;
                    self.saved(saved);
                    continue;
                }
                next = tokio::time::timeout(wait, watch.next()) => next,
            };
            let entry = match next {
                // The batch's time is up: the top of the loop publishes it.
                Err(_linger) if !batch.is_empty() => continue,
                Err(_idle) if caught_up => {
                    self.metrics.pending(0);
                    continue;
                }
                Err(_idle) => {
                    caught_up = true;
                    backoff.reset();
                    if let Flow::Stop = self.publish_due(board, shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
                Ok(None) => {
                    self.publish(&mut batch, shutdown).await;
                    return Err(WatchError::Ended);
                }
                Ok(Some(Err(error))) => {
                    self.publish(&mut batch, shutdown).await;
                    return Err(error.into());
                }
                Ok(Some(Ok(entry))) => entry,
            };
            self.entries.observe(PRESENCE_BUCKET, &entry);
            let started = Instant::now();
            if batch.is_empty() {
                gathering = started;
            }
            self.metrics.pending(entry.delta);
            let Some(user) = observe(board, &entry) else {
                if caught_up {
                    self.metrics.handled(Handled::Error, started.elapsed());
                }
                continue;
            };
            let flow = if caught_up {
                let flow = self.queue(board, &user, &mut batch, shutdown).await;
                self.metrics.handled(Handled::Ok, started.elapsed());
                flow
            } else if entry.delta == 0 {
                caught_up = true;
                backoff.reset();
                self.publish_due(board, shutdown).await
            } else {
                Flow::Continue
            };
            if let Flow::Stop = flow {
                return Ok(());
            }
        }
    }

    /// Adds what one user's change made due to `batch` (publishing the batch first if
    /// it already holds that user: one row per user a batch).
    async fn queue(
        &self,
        board: &mut Board,
        user: &UserId,
        batch: &mut Vec<Transition>,
        shutdown: &CancellationToken,
    ) -> Flow {
        if let Some(transition) = board.transition(user, OffsetDateTime::now_utc()) {
            if batch.iter().any(|t| t.user == transition.user)
                && let Flow::Stop = self.publish(batch, shutdown).await
            {
                return Flow::Stop;
            }
            // The batch is published (retried until it is, or until shutdown) before
            // the next entry is read, so the board may count it published already.
            board.published(&transition);
            batch.push(transition);
        }
        board.settle(user);
        Flow::Continue
    }

    /// Publishes every transition due after reading the bucket from the start.
    async fn publish_due(&self, board: &mut Board, shutdown: &CancellationToken) -> Flow {
        let due = board.transitions(OffsetDateTime::now_utc());
        tracing::info!(
            transitions = due.len(),
            "caught up with the presence bucket"
        );
        for chunk in due.chunks(BATCH) {
            let mut batch = chunk.to_vec();
            if let Flow::Stop = self.publish(&mut batch, shutdown).await {
                return Flow::Stop;
            }
            for transition in chunk {
                board.published(transition);
            }
        }
        board.settle_all();
        Flow::Continue
    }

    /// Publishes a batch of transitions (no user twice) and records them to be written,
    /// each step retried until it is done: last-seen read, all published at once, all
    /// recorded ([`State::record`]). Empties `batch`.
    async fn publish(&self, batch: &mut Vec<Transition>, shutdown: &CancellationToken) -> Flow {
        if batch.is_empty() {
            return Flow::Continue;
        }
        let online: Vec<&UserId> = batch
            .iter()
            .filter(|t| !t.summary.is_offline())
            .map(|t| &t.user)
            .collect();
        let last_seen = match self.state.last_seen(&online).await {
            Ok(last_seen) => last_seen,
            Err(error) => {
                self.metrics.retried();
                tracing::warn!(%error, "last-seen unknown; online events go out without it");
                self.state.last_seen_recorded(&online)
            }
        };
        let events: Vec<(ChannelName, Envelope)> = batch
            .iter()
            .map(|transition| {
                let last_seen = if transition.summary.is_offline() {
                    Some(timestamp(transition.at))
                } else {
                    last_seen.get(transition.user.as_str()).cloned()
                };
                presence_event(transition, last_seen)
            })
            .collect();
        tracing::debug!(transitions = events.len(), "publishing presence");
        let Some(stored) = self
            .retry(shutdown, "publishing user.presence", || {
                // Event ids make a repeat after a partial failure a no-op in JetStream.
                futures_util::future::try_join_all(
                    events
                        .iter()
                        .map(|(channel, event)| self.publisher.publish(channel, event)),
                )
            })
            .await
        else {
            return Flow::Stop;
        };
        for (transition, stored) in batch.iter().zip(stored) {
            self.state.record(
                &transition.user,
                &transition.summary,
                transition.revision(),
                stored.seq,
                transition.at,
            );
        }
        batch.clear();
        Flow::Continue
    }

    /// Reports how a save ended; one that failed is tried again once
    /// [`State::save_due`] says so.
    fn saved(&self, result: Result<Result<(), StateError>, JoinError>) {
        let error = match result {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(error) => error.to_string(),
        };
        self.metrics.retried();
        let retry_in = self.state.save_due();
        tracing::warn!(%error, ?retry_in, "presence not written; trying again later");
    }

    /// Runs `attempt` until it succeeds (`Some`) or shutdown fires (`None`).
    async fn retry<T, E, F, Fut>(
        &self,
        shutdown: &CancellationToken,
        what: &str,
        mut attempt: F,
    ) -> Option<T>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut backoff = Backoff::standard();
        loop {
            match attempt().await {
                Ok(value) => return Some(value),
                Err(error) => {
                    self.metrics.retried();
                    tracing::warn!(%error, "{what} failed; retrying");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
}

/// Applies one bucket entry to the board; the user it concerns, or `None` for a key
/// that is no connection (skipped with a warning).
fn observe(board: &mut Board, entry: &kv::Entry) -> Option<UserId> {
    let key = match Key::parse(&entry.key) {
        Ok(key) => key,
        Err(error) => {
            tracing::warn!(%error, revision = entry.revision, "presence entry skipped");
            return None;
        }
    };
    let change = match entry.operation {
        kv::Operation::Put => Change::live(&entry.key, &entry.value).unwrap_or_else(|error| {
            // What the connection is cannot be known: it does not count.
            tracing::warn!(%error, revision = entry.revision, "presence entry unreadable");
            Change::Gone
        }),
        kv::Operation::Delete | kv::Operation::Purge => Change::Gone,
    };
    let user = key.user.clone();
    let mark = Mark {
        revision: entry.revision,
        at: entry.created,
    };
    board.observe(key, change, mark);
    Some(user)
}

/// The user, summary and time (for an offline summary, its last-seen) of a stored
/// `user.presence` event; `None` for anything else.
fn published_summary(stored: &StoredEvent) -> Option<(UserId, Summary, OffsetDateTime)> {
    let (_, channel) = ChannelName::from_subject(&stored.subject).ok()?;
    let user = UserId::parse(channel.id()).ok()?;
    let event = stored.envelope().ok()?;
    if event.ty.as_str() != types::USER_PRESENCE {
        return None;
    }
    let data: PresenceData = event.data.decode().ok()?;
    let at = data.last_seen.as_ref().unwrap_or(&event.timestamp);
    let summary = Summary {
        status: data.status,
        devices: data.devices,
        text: data.text,
    };
    Some((user, summary, at.as_offset_date_time()))
}

/// `user.presence` on `presence:<user>` for a transition.
pub fn presence_event(
    transition: &Transition,
    last_seen: Option<Timestamp>,
) -> (ChannelName, Envelope) {
    let user = &transition.user;
    let channel = ChannelName::new(Namespace::Presence, user.as_str())
        .expect("a user id is a valid channel id");
    let summary = &transition.summary;
    let data = PresenceData {
        user: user.to_string(),
        status: summary.status,
        devices: summary.devices,
        last_seen,
        text: summary.text.clone(),
    };
    let mut event = Envelope::new(
        EventType::parse(types::USER_PRESENCE).expect("user.presence is an event type"),
        RawJson::encode(&data).expect("presence data serializes"),
    );
    event.id = transition.event_id();
    event.timestamp = timestamp(transition.at);
    event.actor = Some(Actor {
        id: user.to_string(),
        kind: "user".into(),
    });
    (channel, event)
}

fn timestamp(instant: OffsetDateTime) -> Timestamp {
    Timestamp::from_offset_date_time(instant).unwrap_or_else(|_| Timestamp::now())
}

#[cfg(test)]
mod tests {
    use switchboard_schemas::VisibleStatus;

    use super::super::board::{Cause, Summary};
    use super::*;

    #[test]
    fn events_carry_the_summary_and_a_derived_id() {
        let at = OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap();
        let transition = Transition {
            user: UserId::parse("u1").unwrap(),
            summary: Summary {
                status: VisibleStatus::Busy,
                devices: 2,
                text: Some("On site".into()),
            },
            cause: Cause::Revision(42),
            at,
        };
        let (channel, event) = presence_event(&transition, None);
        assert_eq!(channel.as_str(), "presence:u1");
        assert_eq!(event.ty.as_str(), "user.presence");
        assert_eq!(event.id, transition.event_id());
        assert_eq!(
            event.data.as_str(),
            r#"{"user":"u1","status":"busy","devices":2,"text":"On site"}"#
        );
        assert_eq!(event.timestamp.as_offset_date_time(), at);

        let offline = Transition {
            summary: Summary::offline(),
            ..transition
        };
        let (_, event) = presence_event(&offline, Some(timestamp(at)));
        assert_eq!(
            event.data.as_str(),
            r#"{"user":"u1","status":"offline","devices":0,"lastSeen":"2026-11-18T11:06:40Z"}"#
        );
    }
}
