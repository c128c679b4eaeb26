//! What this edge tells the rest of the system about its live connections, through two
//! KV buckets with per-message TTL:
//!
//! - `presence`: one entry per connection, `<user>.<conn>`, with device, status and text.
//!   The presence worker aggregates a user's entries into `user.presence` events.
//! - `occupancy`: one entry per subscription to a channel with presence on,
//!   `<ns>.<id>.<user>.<conn>`, with the connection's status. `who` reads it.
//!
//! Entries are written with `Nats-TTL` of two heartbeats and refreshed every heartbeat by
//! one task for the whole edge, in one batch (never one timer per connection). A clean
//! close deletes them; an edge killed outright stops refreshing, its entries expire, and
//! watchers see the expiry markers: nobody stays "online" because an edge died.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use switchboard_bus::{OCCUPANCY_BUCKET, PRESENCE_BUCKET, headers};
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

/// Every entry this edge owns, by KV subject, with its current value.
#[derive(Debug)]
pub struct Presence {
    nats: async_nats::Client,
    ttl: String,
    entries: Mutex<HashMap<String, Bytes>>,
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

impl Presence {
    pub fn new(nats: async_nats::Client, heartbeat: Duration) -> Presence {
        // Two heartbeats, in whole seconds, at least one.
        let ttl = (heartbeat.as_millis() * 2).div_ceil(1000).max(1);
        Presence {
            nats,
            ttl: ttl.to_string(),
            entries: Mutex::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bytes>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes (or rewrites) an entry now and keeps it refreshed.
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
        // A delete marker is kept like any value: let it expire too, or every connection
        // ever made would leave one behind. Watchers see it live; five minutes is plenty.
        h.insert(headers::NATS_TTL, DELETE_MARKER_TTL);
        if let Err(e) = self
            .nats
            .publish_with_headers(subject, h, Bytes::new())
            .await
        {
            tracing::debug!(error = %e, "presence delete not sent; the entry will expire");
        }
    }

    async fn publish(&self, subject: String, value: Bytes) {
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::NATS_TTL, self.ttl.as_str());
        if let Err(e) = self.nats.publish_with_headers(subject, h, value).await {
            tracing::debug!(error = %e, "presence write not sent; the next refresh retries");
        }
    }

    /// Rewrites every entry with a fresh TTL, then flushes once.
    pub async fn refresh(&self) {
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

    /// Refreshes every heartbeat for as long as the presence registry lives.
    pub async fn refresh_every(presence: Weak<Presence>, heartbeat: Duration) {
        let mut ticker = tokio::time::interval(heartbeat);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some(presence) = presence.upgrade() else {
                break;
            };
            presence.refresh().await;
        }
    }

    /// Deletes everything this edge wrote (a drained edge leaves nothing to expire).
    pub async fn clear(&self) {
        let subjects: Vec<String> = self.entries().keys().cloned().collect();
        for subject in subjects {
            self.delete(subject).await;
        }
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
            at: (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
        };
        Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
    }

    /// The occupancy value: enough for `who` to aggregate statuses.
    pub fn occupancy(&self) -> Bytes {
        Bytes::from(
            serde_json::to_vec(&serde_json::json!({ "status": self.status })).unwrap_or_default(),
        )
    }
}

/// Keeps [`Presence::refresh_every`] running for `presence`.
pub fn start(presence: &Arc<Presence>, heartbeat: Duration) {
    tokio::spawn(Presence::refresh_every(Arc::downgrade(presence), heartbeat));
}
