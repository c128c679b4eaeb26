//! Ending the entries of edges that are gone.
//!
//! The edges write their connections' entries in the buckets `presence` and `occupancy`
//! only when they change, with no TTL; each edge keeps one heartbeat entry in the bucket
//! `edges` instead, with a TTL of two heartbeats (docs/protocol.md, "Presence"). The reaper
//! follows all three buckets and deletes an edge's entries when:
//!
//! - its heartbeat lapses (an expiry marker) or is deleted: every entry of that edge
//!   written before the marker;
//! - it beats with a newer `started` (the edge was restarted under the same
//!   `SWITCHBOARD_EDGE_ID`): every entry written before that start;
//! - it has entries but no heartbeat at all for [`UNKNOWN_GRACE`] (its marker was never
//!   seen, say because every worker was down when it lapsed): every entry older than that.
//!
//! Each delete expects the revision the reaper last saw for that key, so an entry the
//! edge wrote again meanwhile (an edge whose heartbeat lapsed while it lived rewrites
//! everything) is left alone. Every copy of the worker reaps; the second delete of an
//! entry fails on the expected revision and is ignored. The presence watcher sees the
//! delete markers and publishes `offline` as for a clean close.
//!
//! Which edge wrote an entry comes from its value's `edge` field; an entry without one
//! (written by something that is not an edge) is left alone.
//!
//! The reaper watches `occupancy` and `edges` itself; what it knows of `presence` comes
//! from the presence watcher, which reads every write of that bucket anyway
//! ([`Entries`]). A second watch of the same bucket would have every connection's
//! coming and going delivered twice to each worker (BENCHMARKS.md, "Where a
//! connection's set-up goes, again"). The watcher reads the bucket as it publishes: while
//! it cannot publish (PostgreSQL or NATS out of reach) the reaper learns of newer entries
//! late, and an edge that died meanwhile has those ended by the sweep below rather than
//! at its lapse; no user is told anything before the watcher is back in any case.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use switchboard_bus::{EDGES_BUCKET, OCCUPANCY_BUCKET, headers};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// How long entries of an edge with no heartbeat are left before they are ended.
pub const UNKNOWN_GRACE: Duration = Duration::from_secs(10);
/// How often edges without a heartbeat are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How long (seconds) the delete markers the reaper writes stay in the bucket.
const DELETE_MARKER_TTL: &str = "300";

/// One connection entry the reaper knows of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    revision: u64,
    created: OffsetDateTime,
}

/// What the reaper knows of one edge.
#[derive(Debug, Default)]
struct EdgeState {
    /// Whether its heartbeat is there now.
    live: bool,
    /// The `started` of its latest heartbeat (unix milliseconds).
    started: Option<i64>,
    /// Its entries, by (bucket, key).
    entries: HashMap<(&'static str, String), Seen>,
}

/// An edge's entries to end: (bucket, key, revision).
type Doomed = Vec<(&'static str, String, u64)>;

/// Every edge and entry seen in the three buckets (pure bookkeeping; no I/O).
#[derive(Debug, Default)]
pub struct Ledger {
    edges: HashMap<String, EdgeState>,
    /// The edge of each entry, to find it again when the entry is deleted.
    owners: HashMap<(&'static str, String), String>,
}

/// The edge named in an entry's value (`"edge"`), if any.
pub fn edge_of(value: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Owned {
        edge: String,
    }
    serde_json::from_slice::<Owned>(value)
        .ok()
        .map(|o| o.edge)
        .filter(|edge| !edge.is_empty())
}

impl Ledger {
    /// A write to `presence` or `occupancy`, by `edge` when its value names one. Returns
    /// nothing to reap: entries are judged by their edge's heartbeat, not as they come.
    pub fn entry(
        &mut self,
        bucket: &'static str,
        key: &str,
        operation: kv::Operation,
        edge: Option<String>,
        seen: (u64, OffsetDateTime),
    ) {
        let slot = (bucket, key.to_string());
        if let Some(owner) = self.owners.remove(&slot)
            && let Some(state) = self.edges.get_mut(&owner)
        {
            state.entries.remove(&slot);
        }
        let (kv::Operation::Put, Some(edge)) = (operation, edge) else {
            return;
        };
        let (revision, created) = seen;
        self.edges
            .entry(edge.clone())
            .or_default()
            .entries
            .insert(slot.clone(), Seen { revision, created });
        self.owners.insert(slot, edge);
    }

    /// A write to `edges`: a heartbeat (`Put`, with its `started`) or its end. Returns
    /// the entries that ended with it.
    pub fn heartbeat(
        &mut self,
        edge: &str,
        operation: kv::Operation,
        started: Option<i64>,
        created: OffsetDateTime,
    ) -> Doomed {
        let state = self.edges.entry(edge.to_string()).or_default();
        match operation {
            kv::Operation::Put => {
                state.live = true;
                let restarted =
                    matches!((state.started, started), (Some(old), Some(new)) if new > old);
                if started.is_some() {
                    state.started = started;
                }
                match started {
                    Some(ms) if restarted => doomed(state, from_ms(ms)),
                    _ => Vec::new(),
                }
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                state.live = false;
                doomed(state, created)
            }
        }
    }

    /// Entries older than `cutoff` of every edge with no heartbeat now.
    pub fn orphans(&self, cutoff: OffsetDateTime) -> Doomed {
        self.edges
            .values()
            .filter(|state| !state.live)
            .flat_map(|state| doomed(state, cutoff))
            .collect()
    }

    /// Forgets every entry of `bucket` (its watch is read again from the start).
    pub fn forget_bucket(&mut self, bucket: &'static str) {
        self.owners.retain(|(b, _), _| *b != bucket);
        for state in self.edges.values_mut() {
            state.entries.retain(|(b, _), _| *b != bucket);
        }
    }

    /// Forgets what the heartbeats said (the `edges` watch is read again from the start:
    /// an edge whose heartbeat and marker are both gone meanwhile is not heard again).
    pub fn forget_heartbeats(&mut self) {
        for state in self.edges.values_mut() {
            state.live = false;
            state.started = None;
        }
    }

    /// Forgets edges with nothing left and no heartbeat.
    pub fn prune(&mut self) {
        self.edges
            .retain(|_, state| state.live || !state.entries.is_empty());
    }
}

fn doomed(state: &EdgeState, before: OffsetDateTime) -> Doomed {
    state
        .entries
        .iter()
        .filter(|(_, seen)| seen.created < before)
        .map(|((bucket, key), seen)| (*bucket, key.clone(), seen.revision))
        .collect()
}

fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The ledger the reaper judges by, shared with the presence watcher, which tells it
/// of every `presence` write it reads.
#[derive(Debug, Clone, Default)]
pub struct Entries(Arc<Mutex<Ledger>>);

impl Entries {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write to `bucket`, as a watch delivered it.
    pub fn observe(&self, bucket: &'static str, entry: &kv::Entry) {
        let edge = edge_of(&entry.value);
        self.ledger().entry(
            bucket,
            &entry.key,
            entry.operation,
            edge,
            (entry.revision, entry.created),
        );
    }

    /// `bucket`'s watch starts again from the start.
    pub fn restart(&self, bucket: &'static str) {
        self.ledger().forget_bucket(bucket);
    }
}

/// Why the watches have to be set up again.
#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("KV bucket unavailable (has `switchboard init` run?): {0}")]
    Bucket(#[from] jetstream::context::KeyValueError),
    #[error("cannot watch: {0}")]
    Watch(#[from] kv::WatchError),
    #[error("watch interrupted: {0}")]
    Watcher(#[from] kv::WatcherError),
    #[error("watch ended")]
    Ended,
}

pub struct Reaper {
    js: jetstream::Context,
    entries: Entries,
}

impl Reaper {
    /// A reaper judging by `entries`, whose `presence` writes the presence watcher
    /// reports.
    pub fn new(js: jetstream::Context, entries: Entries) -> Reaper {
        Reaper { js, entries }
    }

    /// Follows the buckets until `shutdown` fires, setting the watches up again (from
    /// the start, so nothing is missed) when they fail.
    pub async fn run(&self, shutdown: &CancellationToken) {
        let mut backoff = Backoff::standard();
        loop {
            // The presence entries stay: the watcher's own watch reports them.
            self.entries.restart(OCCUPANCY_BUCKET);
            self.entries.ledger().forget_heartbeats();
            match self.follow(&mut backoff, shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, "edge heartbeat watch unavailable; reading the buckets again");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    async fn follow(
        &self,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<(), WatchError> {
        let watch = |bucket: &'static str| async move {
            let store = self.js.get_key_value(bucket).await?;
            Ok::<_, WatchError>(store.watch_with_history(">").await?)
        };
        let mut occupancy = watch(OCCUPANCY_BUCKET).await?;
        let mut edges = watch(EDGES_BUCKET).await?;
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.tick().await;
        tracing::info!("following the edges' heartbeats");
        loop {
            let doomed = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                entry = occupancy.next() => {
                    let entry = entry.ok_or(WatchError::Ended)??;
                    self.entries.observe(OCCUPANCY_BUCKET, &entry);
                    continue;
                }
                entry = edges.next() => {
                    let entry = entry.ok_or(WatchError::Ended)??;
                    let started = serde_json::from_slice::<serde_json::Value>(&entry.value)
                        .ok()
                        .and_then(|v| v["started"].as_i64());
                    let mut ledger = self.entries.ledger();
                    ledger.heartbeat(&entry.key, entry.operation, started, entry.created)
                }
                _ = sweep.tick() => {
                    backoff.reset();
                    let mut ledger = self.entries.ledger();
                    let doomed = ledger.orphans(OffsetDateTime::now_utc() - UNKNOWN_GRACE);
                    ledger.prune();
                    doomed
                }
            };
            self.reap(doomed).await;
        }
    }

    /// Deletes each entry if it is still at the revision seen.
    async fn reap(&self, doomed: Doomed) {
        if doomed.is_empty() {
            return;
        }
        let mut ended = 0;
        for (bucket, key, revision) in &doomed {
            let mut h = async_nats::HeaderMap::new();
            h.insert("KV-Operation", "DEL");
            h.insert(headers::NATS_TTL, DELETE_MARKER_TTL);
            h.insert(
                "Nats-Expected-Last-Subject-Sequence",
                revision.to_string().as_str(),
            );
            let subject = format!("$KV.{bucket}.{key}");
            let written = match self
                .js
                .publish_with_headers(subject, h, Default::default())
                .await
            {
                Ok(ack) => ack.await.map(|_| ()),
                Err(e) => Err(e),
            };
            match written {
                Ok(()) => ended += 1,
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {}
                Err(e) => {
                    tracing::warn!(%bucket, %key, error = %e, "entry of a gone edge not deleted; retried by the next sweep");
                }
            }
        }
        tracing::info!(
            entries = ended,
            "ended the presence and occupancy entries of edges that are gone"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv::Operation::{Delete, Purge, Put};
    use switchboard_bus::PRESENCE_BUCKET;

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn entries_name_their_edge_in_the_value() {
        assert_eq!(
            edge_of(br#"{"user":"u1","edge":"edge-01","status":"online"}"#).as_deref(),
            Some("edge-01")
        );
        assert_eq!(edge_of(br#"{"status":"online"}"#), None);
        assert_eq!(edge_of(br#"{"edge":""}"#), None);
        assert_eq!(edge_of(b""), None);
    }

    fn put(ledger: &mut Ledger, bucket: &'static str, key: &str, edge: &str, rev: u64, s: i64) {
        ledger.entry(bucket, key, Put, Some(edge.to_string()), (rev, at(s)));
    }

    fn delete(ledger: &mut Ledger, bucket: &'static str, key: &str, rev: u64, s: i64) {
        ledger.entry(bucket, key, Delete, None, (rev, at(s)));
    }

    /// Edge `e1` beating since 0, with a presence entry (revision 7) and an occupancy
    /// entry (revision 3) written at 1.
    fn one_edge_with_two_entries() -> Ledger {
        let mut ledger = Ledger::default();
        assert!(ledger.heartbeat("e1", Put, Some(1), at(0)).is_empty());
        put(&mut ledger, PRESENCE_BUCKET, "u1.e1-1", "e1", 7, 1);
        put(
            &mut ledger,
            OCCUPANCY_BUCKET,
            "project.p1.u1.e1-1",
            "e1",
            3,
            1,
        );
        ledger
    }

    #[test]
    fn a_lapsed_heartbeat_ends_the_entries_written_before_it() {
        let mut ledger = one_edge_with_two_entries();
        put(&mut ledger, PRESENCE_BUCKET, "u2.e1-2", "e1", 8, 2);
        delete(&mut ledger, PRESENCE_BUCKET, "u2.e1-2", 9, 3);
        put(&mut ledger, PRESENCE_BUCKET, "u3.e2-1", "e2", 10, 3);
        // Not an edge's: never reaped.
        ledger.entry(PRESENCE_BUCKET, "u4.c1", Put, None, (11, at(3)));
        let mut doomed = ledger.heartbeat("e1", Purge, None, at(10));
        doomed.sort();
        assert_eq!(
            doomed,
            [
                (OCCUPANCY_BUCKET, "project.p1.u1.e1-1".to_string(), 3),
                (PRESENCE_BUCKET, "u1.e1-1".to_string(), 7),
            ]
        );
    }

    #[test]
    fn entries_rewritten_after_the_lapse_are_kept() {
        let mut ledger = Ledger::default();
        ledger.heartbeat("e1", Put, Some(1), at(0));
        put(&mut ledger, PRESENCE_BUCKET, "u1.e1-1", "e1", 7, 1);
        put(&mut ledger, PRESENCE_BUCKET, "u1.e1-1", "e1", 12, 11);
        assert!(ledger.heartbeat("e1", Delete, None, at(10)).is_empty());
    }

    #[test]
    fn a_restart_under_the_same_id_ends_the_previous_process_entries() {
        let mut ledger = Ledger::default();
        ledger.heartbeat("e1", Put, Some(1_800_000_000_000), at(0));
        put(&mut ledger, PRESENCE_BUCKET, "u1.e1-1", "e1", 7, 1);
        assert!(
            ledger
                .heartbeat("e1", Put, Some(1_800_000_000_000), at(2))
                .is_empty(),
            "the same process beating again ends nothing"
        );
        let restarted = 1_800_000_005_000;
        put(&mut ledger, PRESENCE_BUCKET, "u2.e1-1", "e1", 9, 6);
        assert_eq!(
            ledger.heartbeat("e1", Put, Some(restarted), at(6)),
            [(PRESENCE_BUCKET, "u1.e1-1".to_string(), 7)]
        );
    }

    #[test]
    fn a_bucket_read_again_forgets_only_its_own_entries() {
        let mut ledger = one_edge_with_two_entries();
        ledger.forget_bucket(OCCUPANCY_BUCKET);
        ledger.forget_heartbeats();
        assert!(
            ledger.orphans(at(0)).is_empty(),
            "nothing is older than the cutoff"
        );
        assert_eq!(
            ledger.orphans(at(2)),
            [(PRESENCE_BUCKET, "u1.e1-1".to_string(), 7)],
            "the presence entry is kept, and its edge is unheard until its heartbeat is read again"
        );
        ledger.heartbeat("e1", Put, Some(1), at(3));
        assert!(ledger.orphans(at(4)).is_empty());
    }

    #[test]
    fn entries_of_an_edge_never_heard_are_orphans_after_the_grace() {
        let mut ledger = Ledger::default();
        put(&mut ledger, PRESENCE_BUCKET, "u1.old-1", "old", 1, 0);
        ledger.heartbeat("live", Put, Some(1), at(0));
        put(&mut ledger, PRESENCE_BUCKET, "u2.live-1", "live", 2, 0);
        assert!(ledger.orphans(at(0)).is_empty());
        assert_eq!(
            ledger.orphans(at(1)),
            [(PRESENCE_BUCKET, "u1.old-1".to_string(), 1)]
        );
        delete(&mut ledger, PRESENCE_BUCKET, "u1.old-1", 3, 2);
        ledger.prune();
        assert_eq!(ledger.edges.len(), 1);
    }
}
