//! The cursors in `switchboard.receipt_cursors`, and the `message.receipt` event each
//! move publishes.
//!
//! # Why nothing is lost or published twice
//!
//! One PostgreSQL transaction per command, after one read of the stream:
//!
//! 0. read the conversation's last stored seq (a direct get of the last message on
//!    `rt.conversation.<id>`) and clamp the command's cursors to it: a cursor never
//!    points past the conversation (docs/protocol.md §4.6), whatever a client claims;
//! 1. raise the (conversation, user) row to the maximum of what it holds and what the
//!    command says, only if that moves a cursor (the upsert's `WHERE`); the row stays
//!    locked until commit, so a second copy of the worker handling the same user waits;
//! 2. if a cursor moved, publish `message.receipt` with the new pair and wait for the
//!    PubAck. Its event id is derived from (conversation, user, delivered, read), so a
//!    publish repeated after a crash, by this copy or another, is stored once;
//! 3. commit; then the caller acks the command.
//!
//! A crash before the commit rolls the row back and leaves the command unacked: its
//! redelivery recomputes the same pair and the same event id. A crash after the commit
//! leaves a row that the redelivered command no longer moves: no second event. A
//! command older than the row (regressing) moves nothing and publishes nothing.
//!
//! The clamp is the one input that can differ on a redelivery (the conversation may
//! have grown meanwhile). Then the redelivery publishes the larger pair under its own
//! id: one more forward move, never a repeat or a step back, and never past a stored
//! message.

use async_nats::jetstream;
use sqlx::{Connection, PgPool};
use switchboard_bus::store::{Store, StoreError};
use switchboard_bus::{PublishError, Publisher};
use switchboard_schemas::event::types;
use switchboard_schemas::shapes::ReceiptData;
use switchboard_schemas::{
    Actor, ChannelName, Envelope, EventId, EventType, RawJson, SubjectKind, UserId,
};

use super::command::Receipt;
use crate::dedicated::Dedicated;

const ADVANCE: &str = "
INSERT INTO switchboard.receipt_cursors AS c (conversation, user_id, delivered, read)
VALUES ($1, $2, $3, $4)
ON CONFLICT (conversation, user_id) DO UPDATE
   SET delivered = GREATEST(c.delivered, EXCLUDED.delivered),
       read = GREATEST(c.read, EXCLUDED.read),
       updated_at = now()
 WHERE EXCLUDED.delivered > c.delivered OR EXCLUDED.read > c.read
RETURNING delivered, read";

const LIST: &str = "
SELECT user_id, delivered, read FROM switchboard.receipt_cursors
 WHERE conversation = $1
 ORDER BY user_id";

const PARTICIPANT: &str = "
SELECT EXISTS (SELECT 1 FROM switchboard.channel_members
                WHERE channel = $1 AND user_id = $2 AND active)";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("reading the conversation's last seq: {0}")]
    Store(#[from] StoreError),
}

/// A user's two cursors on a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursors {
    pub delivered: u64,
    pub read: u64,
}

/// Reads and moves receipt cursors; publishes `message.receipt`.
pub struct Ledger {
    db: PgPool,
    /// The connection receipts are applied on, one at a time (the job's).
    conn: Dedicated,
    publisher: Publisher,
    store: Store,
}

impl Ledger {
    pub fn new(db: PgPool, client: async_nats::Client, js: jetstream::Context) -> Ledger {
        Ledger {
            conn: Dedicated::new(&db),
            db,
            publisher: Publisher::from_context(js),
            store: Store::new(client),
        }
    }

    /// Applies `receipt`, clamped to the conversation's last seq; the new cursors if it
    /// moved one (and the event was stored), `None` if it moved nothing. See the module
    /// docs for the order of steps.
    pub async fn apply(&self, receipt: &Receipt) -> Result<Option<Cursors>, LedgerError> {
        let last = self.last_seq(&receipt.conversation).await?;
        let Some(receipt) = receipt.clone().clamped(last) else {
            tracing::debug!(
                conversation = %receipt.conversation,
                user = %receipt.user,
                "receipt for a conversation with no stored event ignored"
            );
            return Ok(None);
        };
        // On the job's own connection: this runs once per receipt ([`Dedicated`]).
        self.conn
            .run(async |conn| {
                let mut tx = conn.begin().await?;
                let moved: Option<(i64, i64)> = sqlx::query_as(ADVANCE)
                    .bind(receipt.conversation.as_str())
                    .bind(receipt.user.as_str())
                    .bind(bigint(receipt.delivered))
                    .bind(bigint(receipt.read))
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some((delivered, read)) = moved else {
                    return Ok(None);
                };
                let cursors = Cursors {
                    delivered: unsigned(delivered),
                    read: unsigned(read),
                };
                let event = receipt_event(&receipt.conversation, &receipt.user, cursors);
                self.publisher
                    .publish(&receipt.conversation, &event)
                    .await?;
                tx.commit().await?;
                Ok(Some(cursors))
            })
            .await
    }

    /// The seq of the newest event stored on `conversation` (messages, membership events
    /// and receipts alike), 0 if it holds none.
    async fn last_seq(&self, conversation: &ChannelName) -> Result<u64, StoreError> {
        let subject = conversation.subject(SubjectKind::Durable);
        let last = self.store.last_at_or_before(&subject, None).await?;
        Ok(last.map_or(0, |event| event.seq))
    }

    /// Every participant's cursors on `conversation`, by user id.
    pub async fn cursors(
        &self,
        conversation: &ChannelName,
    ) -> Result<Vec<(String, Cursors)>, sqlx::Error> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(LIST)
            .bind(conversation.as_str())
            .fetch_all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(user, delivered, read)| {
                let cursors = Cursors {
                    delivered: unsigned(delivered),
                    read: unsigned(read),
                };
                (user, cursors)
            })
            .collect())
    }

    /// Whether `user` is an active participant of `conversation` (the membership mirror).
    pub async fn is_participant(
        &self,
        conversation: &ChannelName,
        user: &UserId,
    ) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(PARTICIPANT)
            .bind(conversation.as_str())
            .bind(user.as_str())
            .fetch_one(&self.db)
            .await
    }
}

/// `message.receipt` for `user`'s cursors on `conversation`, with an id that depends only
/// on them, so every publish of the same move is one stored event.
pub fn receipt_event(conversation: &ChannelName, user: &UserId, cursors: Cursors) -> Envelope {
    let data = ReceiptData {
        user: user.to_string(),
        delivered: cursors.delivered,
        read: cursors.read,
    };
    let mut event = Envelope::new(
        EventType::parse(types::MESSAGE_RECEIPT).expect("message.receipt is an event type"),
        RawJson::encode(&data).expect("receipt data serializes"),
    );
    event.id = EventId::derive(&[
        types::MESSAGE_RECEIPT,
        conversation.as_str(),
        user.as_str(),
        &cursors.delivered.to_string(),
        &cursors.read.to_string(),
    ]);
    event.actor = Some(Actor {
        id: user.to_string(),
        kind: "user".into(),
    });
    event
}

/// Commands are checked to fit (`Receipt::read`), so this never saturates in practice.
fn bigint(cursor: u64) -> i64 {
    i64::try_from(cursor).unwrap_or(i64::MAX)
}

/// The table's CHECKs keep cursors non-negative.
fn unsigned(cursor: i64) -> u64 {
    u64::try_from(cursor).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_id_depends_only_on_the_move() {
        let conversation = ChannelName::parse("conversation:c1").unwrap();
        let user = UserId::parse("u2").unwrap();
        let cursors = Cursors {
            delivered: 5,
            read: 4,
        };
        let first = receipt_event(&conversation, &user, cursors);
        let again = receipt_event(&conversation, &user, cursors);
        assert_eq!(first.id, again.id);
        assert_eq!(first.ty.as_str(), "message.receipt");
        assert_eq!(
            first.data.as_str(),
            r#"{"user":"u2","delivered":5,"read":4}"#
        );
        let actor = first.actor.unwrap();
        assert_eq!((actor.id.as_str(), actor.kind.as_str()), ("u2", "user"));

        let other = receipt_event(
            &conversation,
            &user,
            Cursors {
                delivered: 5,
                read: 5,
            },
        );
        assert_ne!(other.id, again.id);
    }
}
