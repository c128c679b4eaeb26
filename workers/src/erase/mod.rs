//! Erasure (docs/protocol.md §10.14): the service-only RPCs `erase.user` and
//! `erase.channel`, and what a deleted message takes with it from the notifications.
//!
//! | method | params | result |
//! | --- | --- | --- |
//! | `erase.user` | `{"user":"u1"}` | `{"user":"u1","removed":{"events":..,"archive":..,"search":..,"inbox":..,"notifications":..,"deliveries":..,"outbox":..}}` |
//! | `erase.channel` | `{"ch":"conversation:c1"}` | `{"ch":"conversation:c1","removed":{...}}` |
//!
//! `erase.user` removes every message the user sent (`message.new`, `.edited`,
//! `.deleted` with the user as actor, on any channel): their copies in `EVENTS` are
//! erased one by one (JetStream overwrites a deleted message), their archive rows are
//! blanked like a deleted message (the seq stays, the text and data go, so history keeps
//! its order and search finds nothing), the inbox entries of their conversations are
//! recounted, and the notifications made from them are deleted with their push and
//! email copies and the `user.notification` events that announced them (outbox rows and
//! copies in `EVENTS`). `erase.channel` purges the channel's subject from `EVENTS` and
//! deletes its archive rows, inbox entries and notifications (with the same copies).
//! Both answer what they removed.
//!
//! # Order, and jobs working meanwhile
//!
//! 1. The stream is read for the events to erase (a user's messages: the whole stream,
//!    in batched direct gets, so this takes time on a large stream; the CLI waits).
//! 2. Their ids go to `switchboard.erased_events`: from then on triggers drop any row a
//!    job would still write for them (a message it fetched before it left the stream).
//! 3. They leave `EVENTS`; the erasure then waits (at most [`SETTLE`]) until the jobs
//!    that copy events into PostgreSQL (`archive`, `notifications`) are past them.
//! 4. One PostgreSQL transaction cleans the archive, the inbox and the notifications.
//! 5. The `user.notification` events of the deleted notifications leave `EVENTS`.
//!
//! The methods are service-only (backends and operators decide on erasure, not users):
//! the responder refuses a user's token with `forbidden` before anything here runs.
//! Every workers process answers them, in the queue group `erase`.

mod store;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde::Deserialize;
use sqlx::PgPool;
use switchboard_bus::EVENTS_STREAM;
use switchboard_bus::store::Store;
use switchboard_schemas::event::types;
use switchboard_schemas::{ChannelName, Envelope, ErrorCode, Namespace, SubjectKind, UserId};

use crate::job::Delivery;
use crate::responder::{Call, Method, Reply, RpcError, Service};
pub use store::Removed;

const USER: &str = "erase.user";
const CHANNEL: &str = "erase.channel";
/// The types of message a user sends (`message.receipt` is the workers', about the user).
const SENT: [&str; 3] = [
    types::MESSAGE_NEW,
    types::MESSAGE_EDITED,
    types::MESSAGE_DELETED,
];
/// The durable consumers whose jobs copy events into PostgreSQL.
const COPIERS: [&str; 2] = ["archive", "notifications"];
/// Longest wait for them before PostgreSQL is cleaned anyway.
const SETTLE: Duration = Duration::from_secs(30);
/// Events read from the stream per direct-get request.
const SCAN_BATCH: usize = 1000;

/// `erase.*` in the queue group `erase`.
pub struct Erase {
    db: PgPool,
    store: Store,
    js: jetstream::Context,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserParams {
    user: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelParams {
    ch: String,
}

impl Erase {
    pub fn new(db: PgPool, client: async_nats::Client) -> Erase {
        Erase {
            db,
            store: Store::new(client.clone()),
            js: jetstream::new(client),
        }
    }

    async fn erase_user(&self, user: &UserId) -> Result<Removed, String> {
        let (found, through) = self
            .scan("rt.>", |event| {
                SENT.contains(&event.ty.as_str())
                    && event.actor.as_ref().is_some_and(|a| a.id == user.as_str())
            })
            .await?;
        self.mark(&found).await?;
        let stream = self.stream().await?;
        let mut events = 0;
        for (seq, _) in &found {
            if erase_one(&stream, *seq).await? {
                events += 1;
            }
        }
        self.settle(&stream, through).await;
        let ids = found.into_iter().map(|(_, id)| id).collect();
        let (mut removed, announced) = store::erase_user(&self.db, user.as_str(), &ids)
            .await
            .map_err(|e| e.to_string())?;
        removed.events = events + self.unannounce(&stream, &announced).await?;
        Ok(removed)
    }

    async fn erase_channel(&self, channel: &ChannelName) -> Result<Removed, String> {
        let subject = channel.subject(SubjectKind::Durable);
        let (found, through) = self.scan(&subject, |_| true).await?;
        self.mark(&found).await?;
        let stream = self.stream().await?;
        let purged = stream
            .purge()
            .filter(subject)
            .await
            .map_err(|e| format!("purging EVENTS: {e}"))?;
        self.settle(&stream, through).await;
        let ids = found.into_iter().map(|(_, id)| id).collect();
        let (mut removed, announced) = store::erase_channel(&self.db, channel.as_str(), &ids)
            .await
            .map_err(|e| e.to_string())?;
        removed.events = purged.purged + self.unannounce(&stream, &announced).await?;
        Ok(removed)
    }

    /// Marks the events erased before they leave the stream (see [`store::record_erased`]).
    async fn mark(&self, found: &[(u64, String)]) -> Result<(), String> {
        let ids: Vec<String> = found.iter().map(|(_, id)| id.clone()).collect();
        store::record_erased(&self.db, &ids)
            .await
            .map_err(|e| e.to_string())
    }

    /// Erases from the stream the `user.notification` events that announced deleted
    /// notifications (their outbox rows are gone, so no more can come); how many.
    async fn unannounce(
        &self,
        stream: &jetstream::stream::Stream,
        announced: &store::Announced,
    ) -> Result<u64, String> {
        if announced.is_empty() {
            return Ok(0);
        }
        let user_channels = format!("rt.{}.>", Namespace::User.as_str());
        let (found, _) = self
            .scan(&user_channels, |event| {
                event.ty.as_str() == types::USER_NOTIFICATION
                    && announced.contains(event.id.as_str())
            })
            .await?;
        let mut erased = 0;
        for (seq, _) in &found {
            if erase_one(stream, *seq).await? {
                erased += 1;
            }
        }
        Ok(erased)
    }

    async fn stream(&self) -> Result<jetstream::stream::Stream, String> {
        self.js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| format!("reading EVENTS: {e}"))
    }

    /// (seq, event id) of every stored event on `subject` (wildcards allowed) that
    /// `wanted` picks, and the stream's last seq when the scan began; undecodable events
    /// are skipped.
    async fn scan(
        &self,
        subject: &str,
        wanted: impl Fn(&Envelope) -> bool,
    ) -> Result<(Vec<(u64, String)>, u64), String> {
        let position = self.store.position().await.map_err(|e| e.to_string())?;
        let mut found = Vec::new();
        let mut next = position.first_seq.max(1);
        while next <= position.last_seq {
            let page = self
                .store
                .forward(subject, next, SCAN_BATCH)
                .await
                .map_err(|e| format!("reading EVENTS: {e}"))?;
            let Some(last) = page.last() else { break };
            next = last.seq + 1;
            for stored in page {
                if stored.seq > position.last_seq {
                    break;
                }
                if let Ok(event) = stored.envelope()
                    && wanted(&event)
                {
                    found.push((stored.seq, event.id.as_str().to_string()));
                }
            }
        }
        Ok((found, position.last_seq))
    }

    /// Waits until every copying job has handled the stream up to `through` (or has
    /// nothing left to handle), at most [`SETTLE`]; a job that is not set up counts as
    /// done.
    async fn settle(&self, stream: &jetstream::stream::Stream, through: u64) {
        let deadline = Instant::now() + SETTLE;
        for name in COPIERS {
            loop {
                let Ok(info) = stream.consumer_info(name).await else {
                    break;
                };
                let idle = info.num_pending == 0 && info.num_ack_pending == 0;
                if idle || info.ack_floor.stream_sequence >= through {
                    break;
                }
                if Instant::now() > deadline {
                    tracing::warn!(
                        consumer = name,
                        through,
                        ack_floor = info.ack_floor.stream_sequence,
                        "erasing without waiting longer for this job: a message it fetched \
                         before the erasure may still be copied (run the erasure again later)"
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Erases one message from the stream (JetStream overwrites it); `false` if it was gone.
async fn erase_one(stream: &jetstream::stream::Stream, seq: u64) -> Result<bool, String> {
    use jetstream::stream::DeleteMessageErrorKind;
    match stream.delete_message(seq).await {
        Ok(done) => Ok(done),
        // Already deleted, expired or purged: nothing left to erase.
        Err(e) if matches!(e.kind(), DeleteMessageErrorKind::JetStream(_)) => Ok(false),
        Err(e) => Err(format!("erasing seq {seq} from EVENTS: {e}")),
    }
}

impl Service for Erase {
    const NAME: &'static str = "erase";

    fn methods(&self) -> &'static [Method] {
        const METHODS: &[Method] = &[Method::service_only(USER), Method::service_only(CHANNEL)];
        METHODS
    }

    async fn call(&self, method: &str, call: Call) -> Reply {
        let unavailable = |e: String| RpcError::unavailable(method, e);
        match method {
            USER => {
                let params: UserParams = call.params()?;
                let user = UserId::parse(&params.user).map_err(|_| {
                    RpcError::new(
                        ErrorCode::BadRequest,
                        "user must be 1 to 128 characters of [A-Za-z0-9_-]",
                    )
                })?;
                let removed = self.erase_user(&user).await.map_err(unavailable)?;
                tracing::info!(by = %call.caller, user = user.as_str(), ?removed, "user's messages erased");
                Ok(serde_json::json!({ "user": user.as_str(), "removed": removed }))
            }
            CHANNEL => {
                let params: ChannelParams = call.params()?;
                let channel = ChannelName::parse(&params.ch)
                    .map_err(|e| RpcError::new(ErrorCode::BadRequest, e.to_string()))?;
                if channel.alias().is_some() {
                    return Err(RpcError::new(
                        ErrorCode::BadRequest,
                        "erase the base channel, not an alias",
                    ));
                }
                let removed = self.erase_channel(&channel).await.map_err(unavailable)?;
                tracing::info!(by = %call.caller, ch = channel.as_str(), ?removed, "channel erased");
                Ok(serde_json::json!({ "ch": channel.as_str(), "removed": removed }))
            }
            _ => Err(RpcError::new(ErrorCode::NotFound, "no such method")),
        }
    }
}

/// For a `message.deleted` event: blanks the notifications made from the original
/// message (their `message`, and that of their push and email copies). Anything else,
/// or an event that cannot be read, changes nothing.
pub async fn forget_deleted(db: &PgPool, delivery: &Delivery<'_>) -> Result<u64, sqlx::Error> {
    #[derive(Deserialize)]
    struct Target {
        seq: Option<u64>,
    }
    let Ok((SubjectKind::Durable, channel)) =
        ChannelName::from_subject(delivery.message.subject.as_str())
    else {
        return Ok(0);
    };
    let Ok(event) = Envelope::decode(&delivery.message.payload, delivery.is_json()) else {
        return Ok(0);
    };
    if event.ty.as_str() != types::MESSAGE_DELETED {
        return Ok(0);
    }
    let Some(seq) = event
        .data
        .decode::<Target>()
        .ok()
        .and_then(|t| t.seq)
        .and_then(|s| i64::try_from(s).ok())
    else {
        return Ok(0);
    };
    store::blank_notifications(db, channel.as_str(), seq).await
}
