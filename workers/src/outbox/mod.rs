//! The outbox relay (docs/operations.md, section 6): publishes the rows applications add to
//! `switchboard.outbox` with `switchboard.emit(...)` inside their own transactions.
//!
//! # Guarantees
//!
//! - **Nothing lost.** A row is marked sent only after JetStream acknowledged its event;
//!   a relay (or PostgreSQL, or NATS) that dies in between leaves the row unsent, and it
//!   is published again.
//! - **Nothing doubled.** The event id is the row's `event_id` and the message's
//!   `Nats-Msg-Id`, so publishing a row again within the `EVENTS` duplicate window (10
//!   minutes) stores nothing new. Rows are marked sent after each batch, so what may be
//!   published twice is at most one batch, at once.
//! - **In order, one publisher.** Copies of the relay elect a leader with a PostgreSQL
//!   session advisory lock held on a dedicated connection; only the leader publishes.
//!   It reads unsent rows in `seq` order and publishes them one at a time, each after
//!   the previous one's acknowledgement, so the stream holds them in that order. If the
//!   leader's connection dies, PostgreSQL releases the lock and a standby copy takes
//!   over within one poll interval; a leader that lost its lock mid-batch is stopped by
//!   its next query, and anything both published is deduplicated. Rows of one
//!   transaction keep their order. Across transactions, `seq` is taken at insert but a
//!   row is visible only from its commit: the relay publishes the rows visible when it
//!   reads in `seq` order, so a row whose transaction commits after rows with a higher
//!   `seq` were published comes after them.
//! - **Prompt and patient.** `switchboard.emit` sends `pg_notify('switchboard_outbox')`
//!   at commit; a listener wakes the leader at once. The leader also polls, since a
//!   notification is only a hint (lost while the listener reconnects, absent for rows
//!   inserted by hand). PostgreSQL or NATS going away is waited out with backoff.
//! - **Never stuck.** A row that can never become an event (see [`row`]) is set aside
//!   with `failed_at` and `error`, and logged; the rows behind it go on.
//!
//! Sent rows are deleted after a configurable time (default 7 days). While a row is
//! kept, emitting its event id again is a no-op; after that it would publish again.
//!
//! Every copy, leader or not, reports the backlog (`switchboard_outbox_pending`, and the
//! age of the oldest unsent row as `switchboard_outbox_oldest_seconds`) every 5 s; the
//! leader counts each row it publishes as a message of the job `outbox`
//! (docs/operations.md §7).
//!
//! It owns `switchboard.outbox`'s `sent_at`, `failed_at` and `error`, and publishes on
//! whatever channels the rows name; it reads nothing else.

pub mod row;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http::Readiness;
use crate::telemetry::{Handled, JobMetrics};

use async_nats::jetstream::context::PublishErrorKind;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use switchboard_bus::{PublishError, Publisher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use row::OutboxRow;

/// The channel `switchboard.emit` notifies at commit.
pub const NOTIFY_CHANNEL: &str = "switchboard_outbox";

/// The advisory lock key of the leader: `hashtextextended('switchboard.outbox.relay', 0)`.
const TRY_LEAD: &str =
    "SELECT pg_try_advisory_lock(hashtextextended('switchboard.outbox.relay', 0))";

const PENDING: &str = "
SELECT seq, event_id, channel, type, data::text, actor::text,
       (extract(epoch FROM created_at) * 1000000)::bigint
  FROM switchboard.outbox
 WHERE sent_at IS NULL AND failed_at IS NULL
 ORDER BY seq
 LIMIT $1";

/// A row of [`PENDING`], in its column order.
type PendingRow = (i64, String, String, String, String, Option<String>, i64);

/// The backlog: rows waiting, and the age in seconds of the oldest.
const BACKLOG: &str = "
SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
  FROM switchboard.outbox
 WHERE sent_at IS NULL AND failed_at IS NULL";

/// How often every copy reads [`BACKLOG`].
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

const MARK_SENT: &str = "UPDATE switchboard.outbox SET sent_at = now() WHERE seq = ANY($1)";

const MARK_FAILED: &str =
    "UPDATE switchboard.outbox SET failed_at = now(), error = $2 WHERE seq = $1";

const DELETE_SENT: &str = "
DELETE FROM switchboard.outbox WHERE seq IN (
    SELECT seq FROM switchboard.outbox
     WHERE sent_at < now() - make_interval(hours => $1) LIMIT 10000)";

/// Longest any one PostgreSQL statement of the relay may take: a leader whose connection
/// hangs gives up rather than publish on after it may have lost its lock.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the leader deletes old sent rows.
const CLEANUP_EVERY: Duration = Duration::from_secs(600);
/// Shortest time between two rounds started by a `NOTIFY` ([`crate::pace`]). Rows
/// committed one at a time (a trigger, a notification) would otherwise cost a round each
/// (a read, a mark and its commit).
const ROUND_SPACING: Duration = Duration::from_millis(5);

/// The relay's settings (flags and environment variables).
#[derive(Debug, Clone, clap::Args)]
pub struct OutboxConfig {
    /// Rows read, published and marked sent together.
    #[arg(long, env = "SWITCHBOARD_OUTBOX_BATCH", default_value_t = 200)]
    pub outbox_batch: u32,

    /// How often the leader looks for rows without a pg_notify wake-up, and how often a
    /// standby copy tries to take over.
    #[arg(long, env = "SWITCHBOARD_OUTBOX_POLL_MS", default_value_t = 1_000)]
    pub outbox_poll_ms: u64,

    /// Hours sent rows are kept before they are deleted; 0 keeps them forever.
    #[arg(
        long,
        env = "SWITCHBOARD_OUTBOX_KEEP_SENT_HOURS",
        default_value_t = 168
    )]
    pub outbox_keep_sent_hours: u32,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("PostgreSQL did not answer within {STATEMENT_TIMEOUT:?}")]
    Timeout,
}

/// Runs the relay until `shutdown`.
pub async fn run(
    db: PgConnectOptions,
    publisher: Publisher,
    config: OutboxConfig,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) {
    // Named, so the leader's session is easy to find in pg_stat_activity.
    let db = db.application_name("switchboard-outbox-relay");
    let wake = Arc::new(Notify::new());
    let listener = tokio::spawn(listen(db.clone(), wake.clone(), shutdown.clone()));
    let backlog = tokio::spawn(watch_backlog(db.clone(), shutdown.clone()));
    let relay = Relay {
        metrics: JobMetrics::new("outbox"),
        readiness,
        db,
        publisher,
        batch: i64::from(config.outbox_batch.max(1)),
        poll: Duration::from_millis(config.outbox_poll_ms.max(10)),
        keep_sent_hours: config.outbox_keep_sent_hours,
        wake,
        shutdown,
    };
    let mut backoff = Backoff::standard();
    while !relay.shutdown.is_cancelled() {
        match relay.lead(&mut backoff).await {
            Ok(()) => break,
            Err(error) => {
                relay.readiness.bound("outbox", false);
                tracing::warn!(%error, "outbox relay interrupted; connecting again");
                if !relay.pause(backoff.next_delay()).await {
                    break;
                }
            }
        }
    }
    let _ = listener.await;
    let _ = backlog.await;
    tracing::info!("outbox relay stopped");
}

struct Relay {
    db: PgConnectOptions,
    publisher: Publisher,
    batch: i64,
    poll: Duration,
    keep_sent_hours: u32,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    metrics: JobMetrics,
    readiness: Arc<Readiness>,
}

impl Relay {
    /// Waits to become the leader, then publishes until shutdown (`Ok`) or until the
    /// connection that holds the lock fails (`Err`).
    async fn lead(&self, backoff: &mut Backoff) -> Result<(), RelayError> {
        let mut conn = timed(PgConnection::connect_with(&self.db)).await?;
        // Leading or standing by, this copy is doing its part.
        self.readiness.bound("outbox", true);
        let mut standing_by = false;
        loop {
            let leader: bool = timed(sqlx::query_scalar(TRY_LEAD).fetch_one(&mut conn)).await?;
            if leader {
                break;
            }
            if !standing_by {
                tracing::info!("outbox relay standing by: another copy is publishing");
                standing_by = true;
            }
            if !self.pause(self.poll).await {
                return Ok(());
            }
        }
        tracing::info!("outbox relay leading");
        backoff.reset();
        let mut last_cleanup: Option<Instant> = None;
        loop {
            let round = tokio::time::Instant::now();
            self.drain(&mut conn).await?;
            if self.shutdown.is_cancelled() {
                // Closing the session releases the lock for a standby copy at once.
                let _ = conn.close().await;
                return Ok(());
            }
            if self.keep_sent_hours > 0
                && last_cleanup.is_none_or(|at| at.elapsed() > CLEANUP_EVERY)
            {
                let hours = i32::try_from(self.keep_sent_hours).unwrap_or(i32::MAX);
                let deleted =
                    timed(sqlx::query(DELETE_SENT).bind(hours).execute(&mut conn)).await?;
                if deleted.rows_affected() > 0 {
                    tracing::info!(
                        deleted = deleted.rows_affected(),
                        "old sent outbox rows deleted"
                    );
                }
                last_cleanup = Some(Instant::now());
            }
            // On shutdown the next `drain` reads nothing and the loop returns.
            crate::pace::next_round(&self.wake, &self.shutdown, round, ROUND_SPACING, self.poll)
                .await;
        }
    }

    /// Publishes unsent rows batch by batch until none is left or shutdown.
    async fn drain(&self, conn: &mut PgConnection) -> Result<(), RelayError> {
        while !self.shutdown.is_cancelled() {
            let rows: Vec<PendingRow> = timed(
                sqlx::query_as(PENDING)
                    .bind(self.batch)
                    .fetch_all(&mut *conn),
            )
            .await?;
            let full = rows.len() as i64 == self.batch;
            let mut sent = Vec::with_capacity(rows.len());
            for (seq, event_id, channel, ty, data, actor, created_micros) in rows {
                let row = OutboxRow {
                    seq,
                    event_id,
                    channel,
                    ty,
                    data,
                    actor,
                    created_micros,
                };
                let started = Instant::now();
                let publish = self.publish(&row).await;
                match &publish {
                    Publish::Sent => self.metrics.handled(Handled::Ok, started.elapsed()),
                    Publish::Failed(_) => self.metrics.handled(Handled::Error, started.elapsed()),
                    Publish::Stopped => {}
                }
                match publish {
                    Publish::Sent => sent.push(row.seq),
                    Publish::Failed(reason) => {
                        tracing::warn!(seq = row.seq, event_id = %row.event_id, %reason, "outbox row can never be published; set aside");
                        timed(
                            sqlx::query(MARK_FAILED)
                                .bind(row.seq)
                                .bind(&reason)
                                .execute(&mut *conn),
                        )
                        .await?;
                    }
                    Publish::Stopped => {
                        mark_sent(conn, &sent).await?;
                        return Ok(());
                    }
                }
            }
            mark_sent(conn, &sent).await?;
            if !full {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Publishes one row, waiting out NATS being away.
    async fn publish(&self, row: &OutboxRow) -> Publish {
        let (channel, envelope) = match row.to_event() {
            Ok(event) => event,
            Err(reason) => return Publish::Failed(reason.to_string()),
        };
        let mut backoff = Backoff::standard();
        loop {
            match self.publisher.publish(&channel, &envelope).await {
                Ok(published) => {
                    tracing::trace!(
                        seq = row.seq,
                        stream_seq = published.seq,
                        duplicate = published.duplicate,
                        "outbox row published"
                    );
                    return Publish::Sent;
                }
                Err(PublishError::Publish { source, .. })
                    if source.kind() == PublishErrorKind::MaxPayloadExceeded =>
                {
                    return Publish::Failed(format!("the event is too large for NATS: {source}"));
                }
                Err(error) => {
                    self.metrics.retried();
                    tracing::warn!(seq = row.seq, %error, "publishing an outbox row failed; retrying");
                    if !self.pause(backoff.next_delay()).await {
                        return Publish::Stopped;
                    }
                }
            }
        }
    }

    /// Sleeps for `delay`; false if shutdown came first.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

/// What became of one row.
enum Publish {
    Sent,
    Failed(String),
    /// Shutdown came while NATS was away.
    Stopped,
}

async fn mark_sent(conn: &mut PgConnection, seqs: &[i64]) -> Result<(), RelayError> {
    if !seqs.is_empty() {
        timed(sqlx::query(MARK_SENT).bind(seqs).execute(conn)).await?;
    }
    Ok(())
}

async fn timed<T>(
    statement: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, RelayError> {
    tokio::time::timeout(STATEMENT_TIMEOUT, statement)
        .await
        .map_err(|_| RelayError::Timeout)?
        .map_err(RelayError::from)
}

/// Sets `switchboard_outbox_pending`, `switchboard_outbox_oldest_seconds` and the job's
/// `switchboard_worker_pending` from [`BACKLOG`] every [`BACKLOG_EVERY`] until shutdown;
/// a failed read leaves the last values (PostgreSQL away shows in `/readyz`).
async fn watch_backlog(db: PgConnectOptions, shutdown: CancellationToken) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(STATEMENT_TIMEOUT)
        .connect_lazy_with(db);
    let pending = crate::telemetry::outbox_pending();
    let oldest = crate::telemetry::outbox_oldest();
    let job = JobMetrics::new("outbox");
    let mut every = tokio::time::interval(BACKLOG_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = every.tick() => {}
        }
        match timed(sqlx::query_as::<_, (i64, f64)>(BACKLOG).fetch_one(&pool)).await {
            Ok((rows, age)) => {
                pending.set(rows as f64);
                oldest.set(age);
                job.pending(u64::try_from(rows).unwrap_or(0));
            }
            Err(error) => tracing::debug!(%error, "reading the outbox backlog failed"),
        }
    }
    pool.close().await;
}

/// Wakes the leader on every `pg_notify` of [`NOTIFY_CHANNEL`], until shutdown.
async fn listen(db: PgConnectOptions, wake: Arc<Notify>, shutdown: CancellationToken) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(STATEMENT_TIMEOUT)
        .connect_lazy_with(db);
    let mut backoff = Backoff::standard();
    while !shutdown.is_cancelled() {
        let error = tokio::select! {
            () = shutdown.cancelled() => break,
            result = wake_on_notify(&pool, &wake, &mut backoff) => {
                let Err(error) = result;
                error
            }
        };
        tracing::debug!(%error, "outbox listener lost PostgreSQL; the relay polls meanwhile");
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    pool.close().await;
}

/// Listens and wakes the leader until an error. After a lost connection (which the
/// listener makes again by itself) it wakes the leader too: notifications may have been
/// missed meanwhile.
async fn wake_on_notify(
    pool: &sqlx::PgPool,
    wake: &Notify,
    backoff: &mut Backoff,
) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    backoff.reset();
    wake.notify_one();
    loop {
        // `None` is a lost and remade connection; either way, look for rows.
        listener.try_recv().await?;
        wake.notify_one();
    }
}
