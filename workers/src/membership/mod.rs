//! The membership job: mirrors `member.added` / `member.removed` and
//! `conversation.participant_added` / `_removed` into PostgreSQL and the KV bucket
//! `members` (docs/protocol.md, sections 3 and 10.6).
//!
//! Membership events are ordinary events on their channel (`rt.<ns>.<id>`), so the
//! consumer reads the durable events of every namespace but `presence` ([`reads`]) and
//! sets aside all others by their `Rt-Type` header, without decoding them.
//!
//! - [`change`]: a stored message becomes a typed [`Change`], or poison with a reason.
//! - [`mirror`]: a change is written to the row and the key, idempotently and in an
//!   order that survives crashes and redelivery.
//!
//! It owns `switchboard.channel_members` and the `members` bucket; it publishes nothing.

pub mod change;
pub mod mirror;

use async_nats::jetstream;
use sqlx::PgPool;
use switchboard_bus::{EVENTS_STREAM, headers};
use switchboard_schemas::Namespace;

pub use change::Change;
pub use mirror::{Member, Mirror};

use crate::job::{ConsumerSpec, Delivery, Job, JobError, Outcome, durable_subjects};

/// Whether the job reads the events of namespace `ns`: every namespace but `presence`,
/// whose channels have no members (who may watch one is its user's privacy setting,
/// docs/protocol.md §9) and carry one event per user coming and going.
pub fn reads(ns: Namespace) -> bool {
    ns != Namespace::Presence
}

pub struct Membership {
    mirror: Mirror,
}

impl Membership {
    pub fn new(db: PgPool, js: jetstream::Context) -> Membership {
        Membership {
            mirror: Mirror::new(db, js),
        }
    }
}

impl Job for Membership {
    const NAME: &'static str = "membership";

    fn consumer(&self) -> ConsumerSpec {
        ConsumerSpec {
            stream: EVENTS_STREAM,
            filter_subjects: durable_subjects(reads),
            description: "membership worker: member and participant events -> PostgreSQL and KV members",
        }
    }

    async fn handle(&self, delivery: &Delivery<'_>) -> Result<Outcome, JobError> {
        let change = Change::read(
            &delivery.message.subject,
            delivery.header(headers::RT_TYPE),
            &delivery.message.payload,
            delivery.is_json(),
        )
        .map_err(JobError::poison)?;
        let Some(change) = change else {
            return Ok(Outcome::Ignored);
        };
        let member = self
            .mirror
            .apply(&change, delivery.seq)
            .await
            .map_err(JobError::transient)?;
        tracing::debug!(
            event_id = change.event_id.as_str(),
            channel = %change.channel,
            user = %change.user,
            active = member.active,
            "membership mirrored"
        );
        Ok(Outcome::Applied)
    }
}
