//! The archive's durable consumer: like every job's ([`crate::job`]), but handled a
//! batch at a time, because one PostgreSQL transaction per event cannot keep up with the
//! archive's write budget (10,000 events/s, docs/operations.md §12).
//!
//! It keeps the job framework's guarantees, batch-wise:
//!
//! - **Binding.** The durable consumer `archive` is created or updated to the configured
//!   namespaces; every copy binds to it. A pull that fails binds again after a backoff.
//!   The stream's epoch is read after binding: a recreated stream deletes the consumer,
//!   so a batch never mixes two epochs.
//! - **Batches.** What has arrived (up to [`BATCH`] messages) is written in one
//!   transaction ([`super::store`]), then every message of it is acked. Nothing is
//!   acked before the commit.
//! - **Poison.** A message that cannot be archived is logged with its stream sequence,
//!   counted (`outcome="error"`) and acked with the batch.
//! - **Transient failures.** The whole batch is retried in place with capped, jittered
//!   backoff, telling JetStream it is still in progress.
//! - **Watching.** Every message is counted like any job's
//!   (`switchboard_worker_messages_total{job="archive"}`), the backlog is read every 5 s,
//!   and readiness says whether the consumer is bound.
//! - **Shutdown.** The batch in hand is finished (or, while waiting to be retried, handed
//!   back), and what was fetched but not started is handed back too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures_util::{FutureExt, StreamExt};
use switchboard_bus::store::Store;
use switchboard_bus::{EVENTS_STREAM, headers};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::record::Record;
use super::store::ArchiveStore;
use crate::backoff::Backoff;
use crate::inbox::Signals;
use crate::job::{Settings, hand_back, watch_pending};
use crate::telemetry::{Handled, JobMetrics};

/// The durable consumer's name, and the job's name in logs and metrics.
pub const NAME: &str = "archive";
/// Messages written in one transaction at most.
const BATCH: usize = 2_000;
/// How long a batch waits for one more message before it is written.
const LINGER: Duration = Duration::from_millis(2);
/// The longest a batch gathers messages, so a steady trickle is still archived within
/// the second the protocol promises.
const GATHER: Duration = Duration::from_millis(50);
/// Unacked messages the consumer hands out across all copies (two batches each for a
/// few copies).
const MAX_ACK_PENDING: i64 = 16_000;
/// How long one pull request waits on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);

/// Runs the consumer until `shutdown` fires.
pub struct Consumer {
    pub store: ArchiveStore,
    pub js: jetstream::Context,
    pub positions: Store,
    /// `rt.<ns>.>` for each archived namespace.
    pub subjects: Vec<String>,
    pub settings: Settings,
    pub signals: Arc<Signals>,
    pub shutdown: CancellationToken,
}

/// Why the consumer must be bound again.
#[derive(Debug, thiserror::Error)]
enum ConsumeError {
    #[error(
        "cannot bind consumer {NAME} on stream {EVENTS_STREAM} (has `switchboard init` run?): {0}"
    )]
    Bind(jetstream::stream::ConsumerError),
    #[error("cannot read the stream's epoch: {0}")]
    Epoch(switchboard_bus::store::StoreError),
    #[error("pull failed: {0}")]
    Pull(String),
}

enum Flow {
    Continue,
    Stop,
}

impl Consumer {
    pub async fn run(self) {
        let metrics = JobMetrics::new(NAME);
        tracing::info!(job = NAME, subjects = ?self.subjects, "job started");
        let mut backoff = Backoff::standard();
        while !self.shutdown.is_cancelled() {
            match self.consume(&metrics, &mut backoff).await {
                Ok(()) => break,
                Err(error) => {
                    self.settings.readiness.bound(NAME, false);
                    tracing::warn!(job = NAME, %error, "consumer unavailable; binding again");
                    if !self.pause(backoff.next_delay()).await {
                        break;
                    }
                }
            }
        }
        tracing::info!(job = NAME, "job stopped");
    }

    async fn consume(
        &self,
        metrics: &JobMetrics,
        backoff: &mut Backoff,
    ) -> Result<(), ConsumeError> {
        let config = pull::Config {
            durable_name: Some(NAME.to_string()),
            description: Some("archive worker: events -> switchboard.archive and the inbox".into()),
            filter_subjects: self.subjects.clone(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            max_ack_pending: MAX_ACK_PENDING,
            ..Default::default()
        };
        let mut consumer = self
            .js
            .create_consumer_on_stream(config, EVENTS_STREAM)
            .await
            .map_err(ConsumeError::Bind)?;
        let position = self
            .positions
            .position()
            .await
            .map_err(ConsumeError::Epoch)?;
        let epoch = position.epoch;
        // Where the archive is complete from (int.archive.read `from`): a fresh consumer
        // starts at the stream's oldest event; one that finds the stream's oldest event
        // past what it had been handed may have missed events retention took meanwhile.
        let delivered = consumer
            .info()
            .await
            .map_err(|e| ConsumeError::Pull(e.to_string()))?
            .delivered
            .stream_sequence;
        let missed = delivered == 0 || position.first_seq > delivered + 1;
        self.store
            .note_coverage(&epoch, position.first_seq, missed)
            .await
            .map_err(|e| ConsumeError::Pull(format!("recording the archive's coverage: {e}")))?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|e| ConsumeError::Pull(e.to_string()))?;
        self.settings.readiness.bound(NAME, true);
        let _pending = AbortOnDropHandle::new(tokio::spawn(watch_pending(
            consumer.clone(),
            metrics.clone(),
        )));
        tracing::info!(job = NAME, %epoch, "consuming");
        loop {
            let first = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Ok(()),
                next = messages.next() => next,
            };
            let first = match first {
                Some(Ok(message)) => message,
                Some(Err(error)) => return Err(ConsumeError::Pull(error.to_string())),
                None => return Err(ConsumeError::Pull("the pull stream ended".into())),
            };
            let mut batch = vec![first];
            let mut failed = None;
            // What has arrived, and what keeps arriving without a pause of LINGER, for at
            // most GATHER: a busy stream fills batches, a quiet one waits at most LINGER.
            let gathering = Instant::now();
            while batch.len() < BATCH && gathering.elapsed() < GATHER {
                let next = match messages.next().now_or_never() {
                    Some(next) => next,
                    None => match tokio::time::timeout(LINGER, messages.next()).await {
                        Ok(next) => next,
                        Err(_) => break,
                    },
                };
                match next {
                    Some(Ok(message)) => batch.push(message),
                    Some(Err(error)) => {
                        failed = Some(ConsumeError::Pull(error.to_string()));
                        break;
                    }
                    None => break,
                }
            }
            backoff.reset();
            let gathered = gathering.elapsed();
            if let Flow::Stop = self.process(&epoch, batch, gathered, metrics).await {
                hand_back(&mut messages).await;
                return Ok(());
            }
            if let Some(error) = failed {
                return Err(error);
            }
        }
    }

    /// Archives one batch to the end: acked when written, retried in place while the
    /// failure is transient.
    async fn process(
        &self,
        epoch: &str,
        batch: Vec<jetstream::Message>,
        gathered: Duration,
        metrics: &JobMetrics,
    ) -> Flow {
        let processing = Instant::now();
        let mut records = Vec::with_capacity(batch.len());
        let mut poison = 0;
        for message in &batch {
            let Ok(info) = message.info() else {
                tracing::warn!(job = NAME, subject = %message.subject, "message without JetStream metadata skipped");
                continue;
            };
            let seq = info.stream_sequence;
            let json = message
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::CONTENT_TYPE))
                .is_some_and(|value| value.as_str().starts_with(headers::JSON));
            match Record::read(&message.subject, seq, &message.payload, json) {
                Ok(record) => records.push(record),
                Err(reason) => {
                    poison += 1;
                    metrics.handled(Handled::Error, Duration::ZERO);
                    tracing::warn!(job = NAME, seq, %reason, "poison message skipped");
                }
            }
        }
        let parsed = processing.elapsed();
        let written;
        let mut backoff = Backoff::standard();
        let mut attempt: u32 = 0;
        loop {
            let started = Instant::now();
            let result = if records.is_empty() {
                Ok(Default::default())
            } else {
                self.store.write(epoch, &records).await
            };
            let took = started.elapsed() / u32::try_from(records.len().max(1)).unwrap_or(1);
            match result {
                Ok(changed) => {
                    written = started.elapsed();
                    for _ in &records {
                        metrics.handled(Handled::Ok, took);
                    }
                    self.signals.changed(changed).await;
                    break;
                }
                Err(error) if is_bad_data(&error) && !records.is_empty() => {
                    // Something in the batch PostgreSQL will never take: find it by
                    // writing each alone (idempotent), set it aside, write the rest.
                    let before = records.len();
                    records = self.set_aside_bad_data(epoch, records, metrics).await;
                    poison += before - records.len();
                    tracing::warn!(job = NAME, %error, "a batch held data PostgreSQL refuses");
                }
                Err(error) => {
                    for _ in &records {
                        metrics.handled(Handled::Retry, took);
                    }
                    attempt += 1;
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        job = NAME,
                        first_seq = records.first().map(|r| r.seq),
                        messages = records.len(),
                        attempt,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        %error,
                        "archiving failed; retrying"
                    );
                    for message in &batch {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                    if !self.pause(delay).await {
                        for message in &batch {
                            let _ = message.ack_with(AckKind::Nak(None)).await;
                        }
                        return Flow::Stop;
                    }
                }
            }
        }
        for message in &batch {
            if let Err(error) = message.ack().await {
                // Not fatal: the message comes back after `ack_wait` and archiving it
                // again changes nothing.
                tracing::warn!(job = NAME, %error, "ack failed");
            }
        }
        tracing::debug!(
            job = NAME,
            archived = records.len(),
            poison,
            gather_ms = millis(gathered),
            parse_ms = millis(parsed),
            write_ms = millis(written),
            total_ms = millis(processing.elapsed()),
            "batch archived"
        );
        Flow::Continue
    }

    /// `records` without those PostgreSQL refuses as data (logged and counted as poison).
    async fn set_aside_bad_data(
        &self,
        epoch: &str,
        records: Vec<Record>,
        metrics: &JobMetrics,
    ) -> Vec<Record> {
        let mut kept = Vec::with_capacity(records.len());
        for record in records {
            match self.store.write(epoch, std::slice::from_ref(&record)).await {
                Err(error) if is_bad_data(&error) => {
                    metrics.handled(Handled::Error, Duration::ZERO);
                    tracing::warn!(job = NAME, seq = record.seq, %error, "poison message skipped");
                }
                _ => kept.push(record),
            }
        }
        kept
    }

    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// A data exception (SQLSTATE class 22): the input, not the database, is at fault.
fn is_bad_data(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code.starts_with("22"))
}
