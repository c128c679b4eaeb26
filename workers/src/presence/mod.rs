//! The presence job: turns the edges' per-connection entries in the KV bucket `presence`
//! into one `user.presence` event per change on `presence:<user>`, and answers who may
//! see it (docs/protocol.md §9).
//!
//! Unlike the other jobs it has no durable consumer: every copy watches the whole
//! bucket, delete markers included, so a user whose edge died goes offline when the
//! reaper ends that edge's entries.
//!
//! - [`entry`]: a bucket entry becomes a typed change to one connection.
//! - [`board`]: connections per user, the aggregate others see, and the transitions
//!   between it and what was last published (pure).
//! - [`watcher`]: follows the bucket, publishes transitions with event ids derived from
//!   the revision behind them, rebuilds after a restart without false transitions.
//! - [`reaper`]: ends the entries of an edge whose heartbeat (bucket `edges`) lapsed, so a
//!   user whose edge died goes offline although entries carry no TTL of their own. It
//!   knows the `presence` entries from the watcher, which reads them anyway.
//! - [`state`]: the last published summary and last-seen per user, written to
//!   PostgreSQL shortly after they are published.
//! - [`privacy`]: each user's setting and the one rule of who may see whom.
//! - [`service`]: the RPCs (`presence.privacy.set|get`, `presence.get`, and the edge's
//!   internal `presence.authorize` and `presence.visible`), and the `int.privacy.<user>`
//!   notice of a changed setting.
//!
//! It owns `switchboard.presence_state` and `switchboard.presence_privacy`; of the
//! buckets (the edges own them) it only reads, and deletes the entries of gone edges; it
//! reads `switchboard.channel_members`.

pub mod board;
pub mod entry;
pub mod privacy;
pub mod reaper;
pub mod service;
pub mod state;
pub mod watcher;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use privacy::{Privacy, Visibility};
pub use service::PresenceService;
pub use watcher::Watcher;

use crate::responder;
use state::State;

/// Runs the watcher and the RPC service until `shutdown` fires.
pub async fn run(
    db: PgPool,
    client: async_nats::Client,
    js: jetstream::Context,
    save_after: Duration,
    readiness: Arc<crate::http::Readiness>,
    shutdown: CancellationToken,
) {
    let state = State::new(db.clone(), save_after);
    let entries = reaper::Entries::default();
    let reaper = reaper::Reaper::new(js.clone(), entries.clone());
    let watcher = Watcher::new(client.clone(), js, state.clone(), readiness, entries);
    let service = Arc::new(PresenceService::new(
        Privacy::new(db),
        state,
        client.clone(),
    ));
    tokio::join!(
        watcher.run(&shutdown),
        reaper.run(&shutdown),
        responder::serve(service, client, shutdown.clone()),
    );
}
