//! Erasure (docs/protocol.md §10.14): the service-only RPCs `erase.user` and
//! `erase.channel`, and what a deleted message takes with it from the notifications.
//!
//! | method | params | result |
//! | --- | --- | --- |
//! | `erase.user` | `{"user":"u1"}` | `{"user":"u1","removed":{"events":..,"archive":..,"search":..,"inbox":..,"notifications":..,"deliveries":..}}` |
//! | `erase.channel` | `{"ch":"conversation:c1"}` | `{"ch":"conversation:c1","removed":{...}}` |
//!
//! `erase.user` removes every message the user sent (`message.new`, `.edited`,
//! `.deleted` with the user as actor, on any channel): their copies in `EVENTS` are
//! erased one by one (JetStream overwrites a deleted message), their archive rows are
//! blanked like a deleted message (the seq stays, the text and data go, so history keeps
//! its order and search finds nothing), the inbox entries of their conversations are
//! recounted, and the notifications made from them are deleted with their push and
//! email copies. `erase.channel` purges the channel's subject from `EVENTS` and deletes
//! its archive rows, inbox entries and notifications. Both answer what they removed.
//!
//! `EVENTS` is done first: once a message is gone from the stream the archive job cannot
//! archive it again after the archive was cleaned. Finding a user's messages reads the
//! whole stream (batched direct gets), so an erasure takes time on a large stream; the
//! CLI waits as long as it needs.
//!
//! The methods are service-only (backends and operators decide on erasure, not users):
//! the responder refuses a user's token with `forbidden` before anything here runs.
//! Every workers process answers them, in the queue group `erase`.

mod store;

use async_nats::jetstream;
use serde::Deserialize;
use sqlx::PgPool;
use switchboard_bus::EVENTS_STREAM;
use switchboard_bus::store::Store;
use switchboard_schemas::event::types;
use switchboard_schemas::{ChannelName, Envelope, ErrorCode, SubjectKind, UserId};

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
        let found = self
            .scan("rt.>", |event| {
                SENT.contains(&event.ty.as_str())
                    && event.actor.as_ref().is_some_and(|a| a.id == user.as_str())
            })
            .await?;
        let stream = self.stream().await?;
        let mut events = 0;
        for (seq, _) in &found {
            if erase_one(&stream, *seq).await? {
                events += 1;
            }
        }
        let ids = found.into_iter().map(|(_, id)| id).collect();
        let mut removed = store::erase_user(&self.db, user.as_str(), &ids)
            .await
            .map_err(|e| e.to_string())?;
        removed.events = events;
        Ok(removed)
    }

    async fn erase_channel(&self, channel: &ChannelName) -> Result<Removed, String> {
        let subject = channel.subject(SubjectKind::Durable);
        let found = self.scan(&subject, |_| true).await?;
        let purged = self
            .stream()
            .await?
            .purge()
            .filter(subject)
            .await
            .map_err(|e| format!("purging EVENTS: {e}"))?;
        let ids = found.into_iter().map(|(_, id)| id).collect();
        let mut removed = store::erase_channel(&self.db, channel.as_str(), &ids)
            .await
            .map_err(|e| e.to_string())?;
        removed.events = purged.purged;
        Ok(removed)
    }

    async fn stream(&self) -> Result<jetstream::stream::Stream, String> {
        self.js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| format!("reading EVENTS: {e}"))
    }

    /// (seq, event id) of every stored event on `subject` (wildcards allowed) that
    /// `wanted` picks; undecodable events are skipped.
    async fn scan(
        &self,
        subject: &str,
        wanted: impl Fn(&Envelope) -> bool,
    ) -> Result<Vec<(u64, String)>, String> {
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
        Ok(found)
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
