//! What this edge tells the rest of the system about its live connections, through three
//! KV buckets (docs/protocol.md, section 9.5 and "Presence"):
//!
//! - `presence`: one entry per connection, `<user>.<conn>`, with device, status and text.
//!   The presence worker aggregates a user's entries into `user.presence` events.
//! - `occupancy`: one entry per subscription to a channel with presence on,
//!   `<ns>.<id>.<user>.<conn>`, with the connection's status. `who` reads it.
//! - `edges`: this edge's heartbeat, `<edge id>`, rewritten every heartbeat with a TTL of
//!   two heartbeats.
//!
//! Connection entries are written only when they change: an idle connection costs no
//! write at all, so the idle cost grows with the number of edges, not of connections.
//! Their liveness is the edge's: a clean close deletes them, and an edge killed outright
//! stops its heartbeat, whose expiry marker tells the presence worker to delete every
//! entry of that edge written before the lapse (workers/src/presence/reaper.rs). Nobody
//! stays "online" because an edge died.
//!
//! If this edge's own heartbeat lapsed while it lived (NATS out of reach for longer than
//! the TTL), the workers may have deleted its entries meanwhile. Each heartbeat is written
//! expecting the revision of the previous one, so the first write after a lapse fails on
//! the expiry marker in between; the edge then writes all its entries again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;
use serde::Serialize;
use switchboard_bus::{EDGES_BUCKET, OCCUPANCY_BUCKET, PRESENCE_BUCKET, headers};
use switchboard_schemas::{ChannelName, PresenceStatus};

/// How long (seconds) a delete marker stays in the bucket.
const DELETE_MARKER_TTL: &str = "300";

/// The value of a `presence` entry (docs/protocol.md, "Presence").
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionPresence<'a> {
    pub user: &'a str,
    pub conn: &'a str,
    pub device: Option<&'a str>,
    pub status: PresenceStatus,
    pub text: Option<&'a str>,
    pub edge: &'a str,
    /// When it was last set, unix milliseconds.
    pub at: i64,
}

/// The value of an `edges` entry: which edge, how often it beats, and since when this
/// process has been that edge (unix milliseconds). An edge restarted under the same id
/// (`SWITCHBOARD_EDGE_ID`) beats with a new `started`: the entries of the process before
/// it are ended like those of a lapsed heartbeat.
#[derive(Debug, Serialize)]
struct Heartbeat<'a> {
    edge: &'a str,
    #[serde(rename = "heartbeatMs")]
    heartbeat_ms: u128,
    started: i64,
}

/// Every entry this edge owns, by KV subject, with its current value, and its heartbeat.
#[derive(Debug)]
pub struct Presence {
    nats: async_nats::Client,
    js: async_nats::jetstream::Context,
    edge: Arc<str>,
    heartbeat: Duration,
    started: i64,
    ttl: String,
    entries: Mutex<HashMap<String, Bytes>>,
    /// The revision of this edge's last heartbeat, `None` before the first.
    last_beat: tokio::sync::Mutex<Option<u64>>,
}

/// The KV subject of a connection's presence entry.
pub fn presence_subject(user: &str, conn: &str) -> String {
    format!("$KV.{PRESENCE_BUCKET}.{user}.{conn}")
}

/// The KV subject of a connection's occupancy of a channel.
pub fn occupancy_subject(channel: &ChannelName, user: &str, conn: &str) -> String {
    format!(
        "$KV.{OCCUPANCY_BUCKET}.{}.{}.{user}.{conn}",
        channel.namespace().as_str(),
        channel.id()
    )
}

/// The key filter of everyone occupying `channel` (for [`Store::scan_bucket`]).
///
/// [`Store::scan_bucket`]: switchboard_bus::store::Store::scan_bucket
pub fn occupancy_filter(channel: &ChannelName) -> String {
    format!("{}.{}.>", channel.namespace().as_str(), channel.id())
}

/// Why a heartbeat was not written.
#[derive(Debug, thiserror::Error)]
pub enum BeatError {
    #[error("heartbeat not written: {0}")]
    Publish(#[from] async_nats::jetstream::context::PublishError),
}

impl Presence {
    pub fn new(nats: async_nats::Client, edge: Arc<str>, heartbeat: Duration) -> Presence {
        // Two heartbeats, in whole seconds, at least one.
        let ttl = (heartbeat.as_millis() * 2).div_ceil(1000).max(1);
        Presence {
            js: async_nats::jetstream::new(nats.clone()),
            nats,
            edge,
            heartbeat,
            started: now_ms(),
            ttl: ttl.to_string(),
            entries: Mutex::default(),
            last_beat: tokio::sync::Mutex::new(None),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bytes>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes (or rewrites) an entry now; it lives as long as this edge's heartbeat.
    pub async fn put(&self, subject: String, value: Bytes) {
        self.entries().insert(subject.clone(), value.clone());
        self.publish(subject, value).await;
    }

    /// Deletes an entry (a clean close or unsubscribe).
    pub async fn delete(&self, subject: String) {
        if self.entries().remove(&subject).is_none() {
            return;
        }
        let mut h = async_nats::HeaderMap::new();
        h.insert("KV-Operation", "DEL");
        // A delete marker is kept like any value: let it expire, or every connection ever
        // made would leave one behind. Watchers see it live; five minutes is plenty.
        h.insert(headers::NATS_TTL, DELETE_MARKER_TTL);
        if let Err(e) = self
            .nats
            .publish_with_headers(subject, h, Bytes::new())
            .await
        {
            tracing::debug!(error = %e, "presence delete not sent; the heartbeat rewrites the rest");
        }
    }

    async fn publish(&self, subject: String, value: Bytes) {
        if let Err(e) = self.nats.publish(subject, value).await {
            tracing::debug!(error = %e, "presence write not sent; rewritten after a lapse");
        }
    }

    /// Writes this edge's heartbeat with a TTL of two heartbeats, expecting the previous
    /// one's revision. When something else came in between (the previous one expired, or
    /// the workers ended this edge), every entry is written again first.
    pub async fn beat(&self) -> Result<(), BeatError> {
        let mut last = self.last_beat.lock().await;
        let subject = format!("$KV.{EDGES_BUCKET}.{}", self.edge);
        let value = Bytes::from(
            serde_json::to_vec(&Heartbeat {
                edge: &self.edge,
                heartbeat_ms: self.heartbeat.as_millis(),
                started: self.started,
            })
            .unwrap_or_default(),
        );
        let write = |expect: Option<u64>| {
            let mut h = async_nats::HeaderMap::new();
            h.insert(headers::NATS_TTL, self.ttl.as_str());
            if let Some(revision) = expect {
                h.insert(
                    "Nats-Expected-Last-Subject-Sequence",
                    revision.to_string().as_str(),
                );
            }
            let js = self.js.clone();
            let subject = subject.clone();
            let value = value.clone();
            async move { js.publish_with_headers(subject, h, value).await?.await }
        };
        let ack = match write(*last).await {
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                tracing::warn!(
                    edge = %self.edge,
                    "this edge's heartbeat lapsed: writing its presence entries again"
                );
                let ack = write(None).await?;
                self.rewrite().await;
                ack
            }
            other => other?,
        };
        *last = Some(ack.sequence);
        Ok(())
    }

    /// Writes every entry again (after a lapse of the heartbeat), then flushes once.
    async fn rewrite(&self) {
        let entries: Vec<(String, Bytes)> = self
            .entries()
            .iter()
            .map(|(s, v)| (s.clone(), v.clone()))
            .collect();
        for (subject, value) in entries {
            self.publish(subject, value).await;
        }
        let _ = self.nats.flush().await;
    }

    /// Beats every heartbeat for as long as the presence registry lives.
    async fn beat_every(presence: Weak<Presence>, heartbeat: Duration) {
        let mut ticker = tokio::time::interval(heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some(presence) = presence.upgrade() else {
                break;
            };
            if let Err(e) = presence.beat().await {
                tracing::warn!(error = %e, "edge heartbeat not written; retrying next beat");
            }
        }
    }

    /// Deletes everything this edge wrote, its heartbeat last (a drained edge leaves
    /// nothing behind).
    pub async fn clear(&self) {
        let subjects: Vec<String> = self.entries().keys().cloned().collect();
        for subject in subjects {
            self.delete(subject).await;
        }
        let mut h = async_nats::HeaderMap::new();
        h.insert("KV-Operation", "DEL");
        h.insert(headers::NATS_TTL, DELETE_MARKER_TTL);
        let _ = self
            .nats
            .publish_with_headers(format!("$KV.{EDGES_BUCKET}.{}", self.edge), h, Bytes::new())
            .await;
        let _ = self.nats.flush().await;
    }
}

/// A connection's presence, as the session keeps it.
#[derive(Debug, Clone)]
pub struct ConnState {
    pub status: PresenceStatus,
    pub text: Option<String>,
    pub device: Option<String>,
}

impl ConnState {
    pub fn encode(&self, user: &str, conn: &str, edge: &str) -> Bytes {
        let value = ConnectionPresence {
            user,
            conn,
            device: self.device.as_deref(),
            status: self.status,
            text: self.text.as_deref(),
            edge,
            at: now_ms(),
        };
        Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
    }

    /// The occupancy value: enough for `who` to aggregate statuses, and the edge whose
    /// heartbeat keeps it.
    pub fn occupancy(&self, edge: &str) -> Bytes {
        Bytes::from(
            serde_json::to_vec(&serde_json::json!({ "status": self.status, "edge": edge }))
                .unwrap_or_default(),
        )
    }
}

/// Writes the first heartbeat (before any connection has an entry), then keeps beating.
pub async fn start(presence: &Arc<Presence>, heartbeat: Duration) -> Result<(), BeatError> {
    presence.beat().await?;
    tokio::spawn(Presence::beat_every(Arc::downgrade(presence), heartbeat));
    Ok(())
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
