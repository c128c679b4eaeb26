//! What every job shares: a durable pull consumer whose messages are handled one at a
//! time, in the order the consumer delivers them.
//!
//! A job only says which messages it wants ([`Job::consumer`]) and what one message does
//! ([`Job::handle`]); [`run`] owns everything around that:
//!
//! - **Binding.** The durable consumer is created or updated to the job's settings, so
//!   every copy of the worker binds to the same one and JetStream spreads the messages
//!   among them. A pull that fails (NATS restarted, consumer deleted) binds again after a
//!   backoff.
//! - **Acknowledging.** A message is acked once handled, including one the job ignores.
//! - **Poison.** A message the job calls [`JobError::Poison`] is logged with its stream
//!   sequence, counted and acked: a bad message never blocks the consumer.
//! - **Transient failures.** On [`JobError::Transient`] the same message is retried in
//!   place with capped, jittered backoff, telling JetStream it is still in progress, so
//!   the messages behind it wait their turn instead of overtaking it.
//! - **Watching.** Each attempt is counted and timed by outcome (`ok`, `retry`, `error`),
//!   the consumer's backlog is read every 5 s, and the job says whether its consumer is
//!   bound, for `/readyz` (docs/operations.md §7). Each message is handled in span
//!   `message`, continuing the trace of the message's `traceparent`.
//! - **Shutdown.** When `shutdown` fires, the message in hand is finished (or, if it is
//!   waiting to be retried, handed back), the rest of the fetched batch is handed back
//!   for another copy to take at once, and `run` returns.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures_util::{FutureExt, Stream, StreamExt};
use switchboard_bus::{headers, traces};
use switchboard_schemas::{Namespace, SubjectKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::http::Readiness;
use crate::telemetry::{Handled, JobMetrics};

/// Messages per pull request.
const BATCH: usize = 100;
/// How long a pull request waits for messages before it is renewed. Short, so a pull
/// lost in a NATS restart is noticed quickly.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// Unacked messages the consumer hands out across all copies of the worker.
const MAX_ACK_PENDING: i64 = 1_000;
/// How often the consumer's backlog is read for `switchboard_worker_pending`.
const PENDING_EVERY: Duration = Duration::from_secs(5);

/// One job: a durable consumer, and what each of its messages does.
///
/// Handlers must be idempotent: a message may be delivered again after a crash, a
/// timeout or a NATS restart, and to another copy of the worker.
pub trait Job: Send + Sync + 'static {
    /// The durable consumer's name, and the job's name in logs.
    const NAME: &'static str;

    /// Which stream and subjects the job consumes.
    fn consumer(&self) -> ConsumerSpec;

    /// Handles one message. Returning decides the message's fate: `Ok` and
    /// [`JobError::Poison`] ack it, [`JobError::Transient`] retries it.
    fn handle(
        &self,
        delivery: &Delivery<'_>,
    ) -> impl Future<Output = Result<Outcome, JobError>> + Send;
}

/// The stream and subjects a job's consumer reads.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: &'static str,
    /// At least one subject.
    pub filter_subjects: Vec<String>,
    pub description: &'static str,
}

/// The durable subjects of every namespace for which `reads` holds (`rt.<ns>.>` each):
/// a consumer reads only what its job may act on, and every message it is spared is a
/// delivery and an ack fewer in nats-server and in the worker.
pub fn durable_subjects(reads: impl Fn(Namespace) -> bool) -> Vec<String> {
    Namespace::ALL
        .into_iter()
        .filter(|ns| reads(*ns))
        .map(|ns| SubjectKind::Durable.namespace_wildcard(ns))
        .collect()
}

/// Settings every job's consumer shares.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long JetStream waits for an ack before delivering a message again.
    pub ack_wait: Duration,
    /// Where each job says whether its consumer is bound.
    pub readiness: Arc<Readiness>,
}

/// One delivered message, with its place in the stream.
#[derive(Debug)]
pub struct Delivery<'a> {
    /// The stream sequence: the event's `seq`, and the order JetStream stored it in.
    pub seq: u64,
    /// How many times this message has been delivered (1 the first time).
    pub delivered: i64,
    pub message: &'a async_nats::Message,
}

impl Delivery<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(name))
            .map(|value| value.as_str())
    }

    /// Whether the payload is a JSON envelope rather than postcard.
    pub fn is_json(&self) -> bool {
        self.header(headers::CONTENT_TYPE)
            .is_some_and(|value| value.starts_with(headers::JSON))
    }
}

/// What a handled message amounted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The message changed (or re-asserted) state.
    Applied,
    /// The message is not for this job.
    Ignored,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The message itself is unusable: logged, counted, acked, never retried.
    #[error("poison message: {0}")]
    Poison(String),
    /// Something the message needs is unavailable (PostgreSQL, NATS): retried.
    #[error(transparent)]
    Transient(Box<dyn std::error::Error + Send + Sync>),
}

impl JobError {
    pub fn poison(reason: impl std::fmt::Display) -> JobError {
        JobError::Poison(reason.to_string())
    }

    pub fn transient(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> JobError {
        JobError::Transient(error.into())
    }
}

/// PostgreSQL out of reach, or a statement failing: retried like any transient error.
impl From<sqlx::Error> for JobError {
    fn from(error: sqlx::Error) -> JobError {
        JobError::transient(error)
    }
}

/// Runs `job` until `shutdown` fires, surviving NATS and PostgreSQL outages.
pub async fn run<J: Job>(
    job: J,
    js: jetstream::Context,
    settings: Settings,
    shutdown: CancellationToken,
) {
    let runner = Runner {
        job,
        js,
        settings,
        shutdown,
        counts: Counts::default(),
        metrics: JobMetrics::new(J::NAME),
    };
    runner.run().await;
}

struct Runner<J> {
    job: J,
    js: jetstream::Context,
    settings: Settings,
    shutdown: CancellationToken,
    counts: Counts,
    metrics: JobMetrics,
}

/// Running totals, logged when the job stops and with every poison message.
#[derive(Debug, Default)]
struct Counts {
    applied: AtomicU64,
    ignored: AtomicU64,
    poison: AtomicU64,
    retries: AtomicU64,
}

impl Counts {
    /// Adds one and returns the new total.
    fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Why the consumer must be bound again.
#[derive(Debug, thiserror::Error)]
enum ConsumeError {
    #[error(
        "cannot bind consumer {consumer} on stream {stream} (has `switchboard init` run?): {source}"
    )]
    Bind {
        consumer: &'static str,
        stream: &'static str,
        source: jetstream::stream::ConsumerError,
    },
    #[error("pull request failed: {0}")]
    Pull(#[from] pull::BatchError),
    #[error("pull interrupted: {0}")]
    Delivery(async_nats::Error),
}

/// Whether to go on after a message.
enum Flow {
    Continue,
    Stop,
}

impl<J: Job> Runner<J> {
    async fn run(&self) {
        tracing::info!(job = J::NAME, "job started");
        let mut backoff = Backoff::standard();
        while !self.shutdown.is_cancelled() {
            match self.consume(&mut backoff).await {
                Ok(()) => break,
                Err(error) => {
                    self.settings.readiness.bound(J::NAME, false);
                    tracing::warn!(job = J::NAME, %error, "consumer unavailable; binding again");
                    if !self.pause(backoff.next_delay()).await {
                        break;
                    }
                }
            }
        }
        let counts = &self.counts;
        tracing::info!(
            job = J::NAME,
            applied = counts.applied.load(Ordering::Relaxed),
            ignored = counts.ignored.load(Ordering::Relaxed),
            poison = counts.poison.load(Ordering::Relaxed),
            retries = counts.retries.load(Ordering::Relaxed),
            "job stopped"
        );
    }

    /// Binds the consumer and handles its messages until shutdown (`Ok`) or until the
    /// consumer needs binding again (`Err`).
    async fn consume(&self, backoff: &mut Backoff) -> Result<(), ConsumeError> {
        let consumer = self.bind().await?;
        self.settings.readiness.bound(J::NAME, true);
        let _pending = AbortOnDropHandle::new(tokio::spawn(watch_pending(
            consumer.clone(),
            self.metrics.clone(),
        )));
        tracing::info!(job = J::NAME, "consuming");
        loop {
            let mut batch = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Ok(()),
                batch = consumer.batch().max_messages(BATCH).expires(PULL_EXPIRES).messages() => batch?,
            };
            loop {
                // The server ends a pull when it expires; this bound catches a pull the
                // server forgot (a restart), so a new one is sent.
                let next = tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => {
                        hand_back(&mut batch).await;
                        return Ok(());
                    }
                    next = tokio::time::timeout(PULL_EXPIRES * 2, batch.next()) => next,
                };
                let message = match next {
                    Ok(Some(message)) => message.map_err(ConsumeError::Delivery)?,
                    Ok(None) | Err(_) => break,
                };
                backoff.reset();
                if let Flow::Stop = self.process(message).await {
                    hand_back(&mut batch).await;
                    return Ok(());
                }
            }
        }
    }

    async fn bind(&self) -> Result<jetstream::consumer::PullConsumer, ConsumeError> {
        let spec = self.job.consumer();
        let config = pull::Config {
            durable_name: Some(J::NAME.to_string()),
            description: Some(spec.description.to_string()),
            // A single subject stays in `filter_subject`, where consumers made by earlier
            // versions have it.
            filter_subject: match spec.filter_subjects.as_slice() {
                [one] => one.clone(),
                _ => String::new(),
            },
            filter_subjects: match spec.filter_subjects.len() {
                1 => Vec::new(),
                _ => spec.filter_subjects,
            },
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            max_ack_pending: MAX_ACK_PENDING,
            ..Default::default()
        };
        self.js
            .create_consumer_on_stream(config, spec.stream)
            .await
            .map_err(|source| ConsumeError::Bind {
                consumer: J::NAME,
                stream: spec.stream,
                source,
            })
    }

    /// Handles one message to the end: acked when handled or poison, retried in place
    /// while the failure is transient.
    async fn process(&self, message: jetstream::Message) -> Flow {
        let (seq, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(error) => {
                tracing::warn!(job = J::NAME, %error, subject = %message.subject, "message without JetStream metadata skipped");
                return Flow::Continue;
            }
        };
        let span = tracing::info_span!(
            "message",
            job = J::NAME,
            seq,
            delivered,
            subject = %message.subject,
            trace_id = tracing::field::Empty,
        );
        // The message's `traceparent` is this span's parent: the job continues the trace of
        // whoever published the event (docs/operations.md, "Traces").
        let incoming = message
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::TRACEPARENT))
            .map(|value| value.as_str());
        traces::continue_trace(&span, incoming);
        if delivered > 1 {
            tracing::debug!(parent: &span, "delivered again");
        }
        let delivery = Delivery {
            seq,
            delivered,
            message: &message.message,
        };
        let mut backoff = Backoff::standard();
        let mut attempt: u32 = 0;
        loop {
            let started = Instant::now();
            let result = self.job.handle(&delivery).instrument(span.clone()).await;
            let handled = match &result {
                Ok(_) => Handled::Ok,
                Err(JobError::Transient(_)) => Handled::Retry,
                Err(JobError::Poison(_)) => Handled::Error,
            };
            self.metrics.handled(handled, started.elapsed());
            match result {
                Ok(Outcome::Applied) => {
                    Counts::bump(&self.counts.applied);
                }
                Ok(Outcome::Ignored) => {
                    Counts::bump(&self.counts.ignored);
                }
                Err(JobError::Poison(reason)) => {
                    let total = Counts::bump(&self.counts.poison);
                    tracing::warn!(parent: &span, seq, %reason, poison_total = total, "poison message skipped");
                }
                Err(JobError::Transient(error)) => {
                    Counts::bump(&self.counts.retries);
                    attempt += 1;
                    let delay = backoff.next_delay();
                    // The attempt number and the delay say, in the log, that the wait grows.
                    tracing::warn!(
                        parent: &span,
                        seq,
                        attempt,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        %error,
                        "handling failed; retrying"
                    );
                    // Keeps JetStream from delivering it to another copy meanwhile.
                    let _ = message.ack_with(AckKind::Progress).await;
                    if self.pause(delay).await {
                        continue;
                    }
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                    return Flow::Stop;
                }
            }
            if let Err(error) = message.ack().await {
                // Not fatal: the message comes back after `ack_wait` and handling it
                // again changes nothing.
                tracing::warn!(parent: &span, seq, %error, "ack failed");
            }
            return Flow::Continue;
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

/// Keeps `switchboard_worker_pending{job}` at the consumer's backlog: messages not yet
/// delivered plus those delivered and not acked, across every copy of the worker. A
/// failed read leaves the last value; a consumer gone for good fails the pull too, and
/// binding again starts a new watch.
pub(crate) async fn watch_pending(
    mut consumer: jetstream::consumer::PullConsumer,
    metrics: JobMetrics,
) {
    let mut every = tokio::time::interval(PENDING_EVERY);
    loop {
        every.tick().await;
        match consumer.info().await {
            Ok(info) => metrics.pending(info.num_pending + info.num_ack_pending as u64),
            Err(error) => tracing::debug!(%error, "reading the consumer's backlog failed"),
        }
    }
}

/// Naks what this process fetched but will not handle (a pull batch or a message stream),
/// so another copy gets it at once instead of after `ack_wait`.
pub(crate) async fn hand_back<E>(
    messages: &mut (impl Stream<Item = Result<jetstream::Message, E>> + Unpin),
) {
    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
        let _ = message.ack_with(AckKind::Nak(None)).await;
    }
}
