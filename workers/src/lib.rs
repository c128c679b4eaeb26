//! Switchboard's workers: the jobs that turn the event log into state.
//!
//! # Jobs
//!
//! - [`membership`]: mirrors `member.added/removed` and
//!   `conversation.participant_added/removed` into `switchboard.channel_members` and the
//!   KV bucket `members`, which the edges read to authorize subscriptions and to revoke
//!   them when a member is removed.
//! - [`notifications`]: domain events -> per-user notifications by configurable rules,
//!   `user.notification` with the unread count, push and email for offline users, the
//!   `svc.notifications.*` RPCs, and retention.
//! - [`outbox`]: the relay that publishes the rows of `switchboard.outbox`, which
//!   applications write with `switchboard.emit(...)` in their own transactions. Not a
//!   JetStream consumer: copies elect one publisher with a PostgreSQL advisory lock.
//! - [`receipts`]: keeps per-(conversation, user) delivered/read cursors from the edges'
//!   `cmd.receipts.*` commands and publishes `message.receipt`; serves `receipts.get`.
//! - [`archive`]: keeps every event of the archived namespaces in PostgreSQL after the
//!   stream lets it go, keeps each user's [`inbox`] of conversations (unread counts, last
//!   message, `inbox` signals), serves `int.archive.read` for the edges, `inbox.*` and
//!   `messages.search` ([`search`]). Batches its writes (see [`archive::consumer`]).
//! - [`erase`]: the service-only `erase.user` and `erase.channel`, answered by every
//!   process: a user's messages or a conversation, out of `EVENTS`, the archive, search,
//!   the inbox and the notifications.
//! - [`presence`]: watches the KV bucket `presence` (one entry per live connection),
//!   publishes `user.presence` when a user's aggregate changes and stores last-seen;
//!   serves `presence.privacy.*` and `presence.authorize`. It has no durable consumer:
//!   every copy watches the whole bucket and event ids derived from the bucket revision
//!   make their publishes one event.
//!
//! # How they scale
//!
//! Each job is one JetStream durable pull consumer named after the job. Every copy of
//! the worker binds to the same consumer, so N copies compete for its messages and
//! JetStream hands each message to one of them; a copy that dies leaves its unacked
//! messages to be delivered again, to whoever pulls next, after the ack wait. Within a
//! copy a job handles one message at a time in delivery order.
//!
//! Because a message can be delivered more than once, and copies can handle neighbours
//! out of order, every write is idempotent and order-safe: the membership job keys each
//! row by (channel, user) and applies an event only if its stream sequence is newer than
//! the row's.
//!
//! # Failures
//!
//! A message that can never be handled (an undecodable envelope, bad data) is poison:
//! logged with its stream sequence, counted and acked, never blocking the consumer. A
//! failure outside the message (PostgreSQL or NATS away) is retried in place with capped,
//! jittered backoff until it succeeds; the client reconnects to NATS by itself, and a
//! consumer that stops answering is bound again. See [`job`] for the details.
//!
//! # Watching them
//!
//! [`http`] serves `/healthz`, `/readyz` and `/metrics` on `SWITCHBOARD_WORKERS_ADDR`;
//! [`telemetry`] names the metrics (docs/operations.md §7).
//!
//! # Modules
//!
//! - [`config`]: the one configuration struct (flags and environment).
//! - [`job`]: the [`Job`](job::Job) trait and the loop that runs one job.
//! - [`membership`]: the membership job.
//! - [`notifications`]: the notifications job.
//! - [`outbox`]: the outbox relay.
//! - [`receipts`]: the receipts job and `receipts.get`.
//! - [`presence`]: the presence job and the presence privacy RPCs.
//! - `responder`: serving `svc.<method>` request/reply RPCs.
//! - [`http`] and [`telemetry`]: health, readiness and metrics.

pub mod archive;
mod backoff;
pub mod config;
mod dedicated;
pub mod erase;
pub mod http;
pub mod inbox;
pub mod job;
pub mod membership;
pub mod notifications;
pub mod outbox;
mod pace;
pub mod presence;
pub mod receipts;
mod responder;
pub mod search;
pub mod telemetry;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use sqlx::postgres::PgPoolOptions;
use switchboard_bus::Role;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use switchboard_bus::exposition::Exposition;

use crate::config::{JobName, WorkersConfig};
use crate::http::{Probe, Readiness};
use crate::job::Settings;
use crate::membership::Membership;

/// Why the workers could not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    #[error("invalid NATS URL {url}: {source}")]
    Nats {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error(transparent)]
    NatsSetup(#[from] switchboard_bus::connect::ConnectSetupError),
    #[error("invalid PostgreSQL URL (DATABASE_URL): {0}")]
    Database(sqlx::Error),
    #[error("job {0} crashed")]
    JobCrashed(JobName),
    #[error(transparent)]
    Notifications(#[from] notifications::SetupError),
    #[error("cannot listen on {addr} (SWITCHBOARD_WORKERS_ADDR): {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Runs the configured jobs until `shutdown` fires and every job has finished the
/// message in hand.
///
/// Neither NATS nor PostgreSQL needs to be up when this starts: jobs wait for them.
/// `/metrics` renders `exposition`, the registry the jobs record into.
pub async fn run(
    config: WorkersConfig,
    exposition: Exposition,
    shutdown: CancellationToken,
) -> Result<(), WorkersError> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| WorkersError::Listen {
            addr: config.addr,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(config.addr);
    let client = config
        .nats
        .connect_options(Role::Workers, "switchboard-workers")
        .await?
        .retry_on_initial_connect()
        .connect(config.nats.servers())
        .await
        .map_err(|source| WorkersError::Nats {
            url: config.nats.redacted_url(),
            source,
        })?;
    // No ping before each use (sqlx's default): it doubles the round trips of every
    // single-statement query. A connection broken meanwhile (PostgreSQL restarted) fails
    // its statement instead, which is a transient error every job retries, and sqlx
    // closes it rather than returning it to the pool (docs/operations.md, section 2).
    let db = PgPoolOptions::new()
        .max_connections(config.db_connections.max(1))
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&config.database_url)
        .map_err(WorkersError::Database)?;
    let js = jetstream::new(client.clone());
    let readiness = Arc::new(Readiness::new(&config.jobs()));
    let settings = Settings {
        ack_wait: config.ack_wait(),
        readiness: readiness.clone(),
    };
    let probe = Arc::new(Probe {
        nats: client.clone(),
        db: db.clone(),
        readiness: readiness.clone(),
        exposition,
    });
    let http = tokio::spawn(http::serve(listener, probe, shutdown.clone()));
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");

    let mut jobs = JoinSet::new();
    let mut names = HashMap::new();
    for name in config.jobs() {
        let (js, settings, shutdown) = (js.clone(), settings.clone(), shutdown.clone());
        let handle = match name {
            JobName::Membership => jobs.spawn(job::run(
                Membership::new(db.clone(), js.clone()),
                js,
                settings,
                shutdown,
            )),
            JobName::Receipts => jobs.spawn(receipts::run(
                db.clone(),
                client.clone(),
                js,
                settings,
                shutdown,
            )),
            JobName::Presence => jobs.spawn(presence::run(
                db.clone(),
                client.clone(),
                js,
                config.presence_save(),
                readiness.clone(),
                shutdown,
            )),
            JobName::Notifications => {
                let service =
                    notifications::Service::new(&config.notifications, db.clone(), client.clone())?;
                jobs.spawn(service.run(settings, shutdown))
            }
            JobName::Archive => jobs.spawn(archive::run(
                config.archive.clone(),
                db.clone(),
                client.clone(),
                js,
                settings,
                shutdown,
            )),
            JobName::Outbox => jobs.spawn(outbox::run(
                (*db.connect_options()).clone(),
                switchboard_bus::Publisher::from_context(js),
                config.outbox.clone(),
                readiness.clone(),
                shutdown,
            )),
        };
        names.insert(handle.id(), name);
    }
    // Erasure is no job of its own: every process answers `erase.*`.
    jobs.spawn(responder::serve(
        Arc::new(erase::Erase::new(db.clone(), client.clone())),
        client.clone(),
        shutdown.clone(),
    ));
    let result = wait_for(jobs, &names, &shutdown).await;
    let _ = http.await;

    // Acks are published without waiting for the server; send what is buffered before
    // the process goes away.
    if tokio::time::timeout(Duration::from_secs(2), client.flush())
        .await
        .is_err()
    {
        tracing::warn!("NATS flush timed out; unsent acks will be redelivered");
    }
    db.close().await;
    result
}

/// Waits for every job; if one panics, stops the others and reports it.
async fn wait_for(
    mut jobs: JoinSet<()>,
    names: &HashMap<tokio::task::Id, JobName>,
    shutdown: &CancellationToken,
) -> Result<(), WorkersError> {
    let mut crashed = None;
    while let Some(joined) = jobs.join_next().await {
        if let Err(error) = joined {
            let name = names.get(&error.id()).copied();
            tracing::error!(job = ?name, %error, "a job crashed; stopping the others");
            shutdown.cancel();
            crashed = crashed.or(name);
        }
    }
    match crashed {
        Some(name) => Err(WorkersError::JobCrashed(name)),
        None => Ok(()),
    }
}
