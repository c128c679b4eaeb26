//! The receipts job: keeps each participant's delivered/read cursors on a conversation
//! and tells the conversation when they move (docs/protocol.md §10.5).
//!
//! - **Commands.** Edges coalesce their clients' `ack`/`read` frames and send one JSON
//!   command per conversation on `cmd.receipts.<conversation id>` (stream `CMDS`, a work
//!   queue). This job is the durable consumer of those subjects: [`command`] makes each
//!   one a typed [`Receipt`], [`ledger`] clamps it to the conversation's last stored seq,
//!   raises the cursors in PostgreSQL and publishes `message.receipt`
//!   (`{"user","delivered","read"}`, actor the user) on the conversation when one moved,
//!   idempotently.
//! - **RPC `receipts.get`.** `{"channel":"conversation:c1"}` -> every participant's
//!   cursors, for clients that start cold; only an active participant may ask.
//!
//! It owns `switchboard.receipt_cursors`; it reads `switchboard.channel_members` (the
//! membership job's mirror) and the last event of each conversation in `EVENTS`, and
//! writes nothing else.

pub mod command;
pub mod ledger;

use std::sync::Arc;

use async_nats::jetstream;
use serde::Deserialize;
use sqlx::PgPool;
use switchboard_bus::CMDS_STREAM;
use switchboard_schemas::shapes::{ReceiptCommand, ReceiptData};
use switchboard_schemas::{ChannelName, ErrorCode, Namespace};
use tokio_util::sync::CancellationToken;

pub use command::Receipt;
pub use ledger::{Cursors, Ledger};

use crate::job::{self, ConsumerSpec, Delivery, Job, JobError, Outcome, Settings};
use crate::responder::{self, Call, Method, Reply, RpcError, Service};

/// Runs the consumer and the `receipts.get` service until `shutdown` fires.
pub async fn run(
    db: PgPool,
    client: async_nats::Client,
    js: jetstream::Context,
    settings: Settings,
    shutdown: CancellationToken,
) {
    let ledger = Arc::new(Ledger::new(db, client.clone(), js.clone()));
    let service = Arc::new(ReceiptsService {
        ledger: ledger.clone(),
    });
    tokio::join!(
        job::run(Receipts { ledger }, js, settings, shutdown.clone()),
        responder::serve(service, client, shutdown),
    );
}

/// The consumer of `cmd.receipts.>`.
pub struct Receipts {
    ledger: Arc<Ledger>,
}

impl Job for Receipts {
    const NAME: &'static str = "receipts";

    fn consumer(&self) -> ConsumerSpec {
        ConsumerSpec {
            stream: CMDS_STREAM,
            filter_subjects: vec![ReceiptCommand::SUBJECTS.to_string()],
            description: "receipts worker: cursors -> PostgreSQL and message.receipt events",
        }
    }

    async fn handle(&self, delivery: &Delivery<'_>) -> Result<Outcome, JobError> {
        let receipt = Receipt::read(&delivery.message.subject, &delivery.message.payload)
            .map_err(JobError::poison)?;
        let Some(receipt) = receipt else {
            return Ok(Outcome::Ignored);
        };
        let moved = self
            .ledger
            .apply(&receipt)
            .await
            .map_err(JobError::transient)?;
        match moved {
            Some(cursors) => {
                tracing::debug!(
                    conversation = %receipt.conversation,
                    user = %receipt.user,
                    delivered = cursors.delivered,
                    read = cursors.read,
                    "receipt published"
                );
                Ok(Outcome::Applied)
            }
            None => Ok(Outcome::Ignored),
        }
    }
}

/// `svc.receipts.get`.
struct ReceiptsService {
    ledger: Arc<Ledger>,
}

#[derive(Deserialize)]
struct GetParams {
    channel: String,
}

impl Service for ReceiptsService {
    const NAME: &'static str = "receipts";

    fn methods(&self) -> &'static [Method] {
        const METHODS: &[Method] = &[Method::public("receipts.get")];
        METHODS
    }

    async fn call(&self, method: &str, call: Call) -> Reply {
        let params: GetParams = call.params()?;
        let channel = ChannelName::parse(&params.channel)
            .map_err(|e| RpcError::new(ErrorCode::BadRequest, e.to_string()))?;
        if channel.namespace() != Namespace::Conversation || channel.alias().is_some() {
            return Err(RpcError::new(
                ErrorCode::BadRequest,
                "receipts are only for conversations",
            ));
        }
        let participant = self
            .ledger
            .is_participant(&channel, &call.caller)
            .await
            .map_err(|e| RpcError::unavailable(method, e))?;
        if !participant {
            return Err(RpcError::new(
                ErrorCode::Forbidden,
                "not a participant of this conversation",
            ));
        }
        let cursors = self
            .ledger
            .cursors(&channel)
            .await
            .map_err(|e| RpcError::unavailable(method, e))?;
        let cursors: Vec<ReceiptData> = cursors
            .into_iter()
            .map(|(user, cursors)| ReceiptData {
                user,
                delivered: cursors.delivered,
                read: cursors.read,
            })
            .collect();
        Ok(serde_json::json!({ "cursors": cursors }))
    }
}
