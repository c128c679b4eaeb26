//! Reading stored events back from the `EVENTS` stream, by channel subject.
//!
//! Everything here uses JetStream's direct-get API (`$JS.API.DIRECT.GET.EVENTS`): batched
//! forward reads by subject, "last at or before a sequence" for paging backwards, and
//! reads by start time. Direct gets keep no server-side state, unlike consumers, so an
//! edge can afford one per resume, history page or gap repair.

use std::time::Duration;

use async_nats::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use switchboard_schemas::{Envelope, EnvelopeError, Timestamp};

use crate::{EVENTS_STREAM, headers};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The server caps a direct-get batch; asking for more is pointless.
pub const MAX_BATCH: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("NATS request failed: {0}")]
    Nats(String),
    #[error("no answer from JetStream within {0:?}")]
    Timeout(Duration),
    #[error("JetStream answered {status}: {description}")]
    Status { status: u16, description: String },
    #[error("stored message lacks header {0}")]
    MissingHeader(&'static str),
}

/// One stored event as read from the stream, still encoded.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: u64,
    pub subject: String,
    /// `Rt-Type`, when the publisher set it.
    pub ty: Option<String>,
    /// Store time (RFC3339, as JetStream reports it).
    pub time: String,
    pub payload: Bytes,
    /// True for a JSON envelope (`Content-Type: application/json`), false for postcard.
    pub json: bool,
}

impl StoredEvent {
    pub fn envelope(&self) -> Result<Envelope, EnvelopeError> {
        Envelope::decode(&self.payload, self.json)
    }

    /// Reads a republished live message or a direct-get answer; `None` if it is not a
    /// stored event (no `Nats-Sequence`).
    pub fn from_message(message: &async_nats::Message) -> Option<StoredEvent> {
        let h = message.headers.as_ref()?;
        let seq = h.get(headers::NATS_SEQUENCE)?.as_str().parse().ok()?;
        Some(StoredEvent {
            seq,
            subject: h
                .get("Nats-Subject")
                .map_or_else(|| message.subject.to_string(), |s| s.as_str().to_string()),
            ty: h.get(headers::RT_TYPE).map(|v| v.as_str().to_string()),
            time: h
                .get(headers::NATS_TIME_STAMP)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default(),
            payload: message.payload.clone(),
            json: is_json(h),
        })
    }
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(headers::CONTENT_TYPE)
        .is_some_and(|v| v.as_str().starts_with(headers::JSON))
}

/// What a stream looks like now: its incarnation and the range it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamPosition {
    /// Identifies this incarnation of the stream (its creation time in unix nanoseconds):
    /// sequences from another epoch mean nothing here.
    pub epoch: String,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Read access to stored events; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    api: String,
}

impl Store {
    pub fn new(client: async_nats::Client) -> Store {
        Store {
            js: async_nats::jetstream::new(client.clone()),
            api: format!("$JS.API.DIRECT.GET.{EVENTS_STREAM}"),
            client,
        }
    }

    /// The stream's epoch and sequence range.
    pub async fn position(&self) -> Result<StreamPosition, StoreError> {
        let stream = self
            .js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| StoreError::Nats(e.to_string()))?;
        let info = stream.cached_info();
        Ok(StreamPosition {
            epoch: info.created.unix_timestamp_nanos().to_string(),
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
        })
    }

    /// Up to `max` events on `subject` with seq >= `start`, ascending.
    pub async fn forward(
        &self,
        subject: &str,
        start: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let request = serde_json::json!({
            "seq": start.max(1),
            "next_by_subj": subject,
            "batch": max.clamp(1, MAX_BATCH),
        });
        self.batch(request).await
    }

    /// Up to `max` events on `subject` stored at or after `time`, ascending.
    pub async fn forward_from_time(
        &self,
        subject: &str,
        time: &Timestamp,
        max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let request = serde_json::json!({
            "start_time": time.to_string(),
            "next_by_subj": subject,
            "batch": max.clamp(1, MAX_BATCH),
        });
        self.batch(request).await
    }

    /// The newest event on `subject` with seq <= `up_to` (any seq when `up_to` is None).
    pub async fn last_at_or_before(
        &self,
        subject: &str,
        up_to: Option<u64>,
    ) -> Result<Option<StoredEvent>, StoreError> {
        if up_to == Some(0) {
            return Ok(None);
        }
        let request = serde_json::json!({
            "multi_last": [subject],
            "up_to_seq": up_to.unwrap_or(0),
            "batch": 1,
        });
        Ok(self.batch(request).await?.pop())
    }

    /// The seq of the newest event on each of `subjects` (0 for a subject with none), in
    /// one request: the heads of many channels for the price of one. At most
    /// [`MAX_BATCH`] subjects.
    pub async fn heads(&self, subjects: &[String]) -> Result<Vec<u64>, StoreError> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        let request = serde_json::json!({
            "multi_last": subjects,
            "batch": subjects.len().min(MAX_BATCH),
        });
        let newest = self.batch(request).await?;
        Ok(subjects
            .iter()
            .map(|subject| {
                newest
                    .iter()
                    .filter(|e| &e.subject == subject)
                    .map(|e| e.seq)
                    .max()
                    .unwrap_or(0)
            })
            .collect())
    }

    /// The newest `count` events on `subject` with seq < `before`, ascending.
    ///
    /// JetStream pages only forwards, so this steps back one event per request; callers
    /// keep `count` small (history pages are at most 100).
    pub async fn newest(
        &self,
        subject: &str,
        before: Option<u64>,
        count: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut events = Vec::with_capacity(count);
        let mut up_to = before.map(|b| b.saturating_sub(1));
        // A `before` past the newest event pages from the newest (docs/protocol.md,
        // section 4.7); JetStream answers nothing to an `up_to_seq` past the stream's end.
        if let Some(limit) = up_to
            && let Some(newest) = self.last_at_or_before(subject, None).await?
            && limit >= newest.seq
        {
            up_to = None;
        }
        while events.len() < count {
            match self.last_at_or_before(subject, up_to).await? {
                Some(event) => {
                    up_to = Some(event.seq - 1);
                    events.push(event);
                }
                None => break,
            }
        }
        events.reverse();
        Ok(events)
    }

    /// The event stored at `seq`, whatever its subject.
    pub async fn get(&self, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
        let request = serde_json::json!({ "seq": seq, "batch": 1 });
        Ok(self
            .batch(request)
            .await?
            .into_iter()
            .find(|e| e.seq == seq))
    }

    /// Sends one batched direct-get request and reads its answers as stored events.
    async fn batch(&self, request: serde_json::Value) -> Result<Vec<StoredEvent>, StoreError> {
        direct_get(&self.client, &self.api, &request)
            .await?
            .iter()
            .map(|m| {
                StoredEvent::from_message(m)
                    .ok_or(StoreError::MissingHeader(headers::NATS_SEQUENCE))
            })
            .collect()
    }

    /// The live entries of KV `bucket` whose keys match `filter` (NATS wildcards allowed),
    /// as (key, value), read in one direct get. Deleted and expired entries are left out.
    pub async fn scan_bucket(
        &self,
        bucket: &str,
        filter: &str,
    ) -> Result<Vec<(String, Bytes)>, StoreError> {
        let prefix = format!("$KV.{bucket}.");
        let request = serde_json::json!({
            "multi_last": [format!("{prefix}{filter}")],
            "batch": MAX_BATCH,
        });
        let api = format!("$JS.API.DIRECT.GET.KV_{bucket}");
        let messages = direct_get(&self.client, &api, &request).await?;
        Ok(messages
            .into_iter()
            .filter(|m| {
                // Deletes and purges (including TTL expiry) are markers, not values.
                m.headers.as_ref().is_none_or(|h| {
                    h.get("KV-Operation").is_none() && h.get("Nats-Marker-Reason").is_none()
                })
            })
            .filter_map(|m| {
                let subject = m
                    .headers
                    .as_ref()?
                    .get("Nats-Subject")?
                    .as_str()
                    .to_string();
                let key = subject.strip_prefix(&prefix)?.to_string();
                Some((key, m.payload))
            })
            .collect())
    }
}

/// Sends one batched direct-get request to `api` and collects the answers up to the end
/// of the batch.
async fn direct_get(
    client: &async_nats::Client,
    api: &str,
    request: &serde_json::Value,
) -> Result<Vec<async_nats::Message>, StoreError> {
    let nats = |e: &dyn std::fmt::Display| StoreError::Nats(e.to_string());
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| nats(&e))?;
    client
        .publish_with_reply(api.to_string(), inbox, request.to_string().into())
        .await
        .map_err(|e| nats(&e))?;
    let mut messages = Vec::new();
    loop {
        let message = tokio::time::timeout(REQUEST_TIMEOUT, replies.next())
            .await
            .map_err(|_| StoreError::Timeout(REQUEST_TIMEOUT))?
            .ok_or_else(|| StoreError::Nats("subscription closed".into()))?;
        match message.status {
            // End of batch, or nothing matched: either way the answer is complete.
            Some(status) if status.as_u16() == 204 || status == StatusCode::NOT_FOUND => {
                return Ok(messages);
            }
            Some(status) if status != StatusCode::OK => {
                return Err(StoreError::Status {
                    status: status.as_u16(),
                    description: message.description.clone().unwrap_or_default(),
                });
            }
            _ => messages.push(message),
        }
    }
}
