//! The workers' metrics (docs/operations.md §7), served at `GET /metrics` by [`http`].
//!
//! The binary installs one global registry ([`install`]); jobs and sinks record through
//! the `metrics` facade, so nothing has to carry a registry around, and a library user
//! without a recorder pays nothing. Each job registers its handles once ([`JobMetrics`])
//! and keeps them: no per-message lookup by name.
//!
//! [`http`]: crate::http

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use switchboard_bus::exposition::{AlreadyInstalled, Exposition};

pub const MESSAGES: &str = "switchboard_worker_messages_total";
pub const PENDING: &str = "switchboard_worker_pending";
pub const HANDLE_SECONDS: &str = "switchboard_worker_handle_seconds";
pub const OUTBOX_PENDING: &str = "switchboard_outbox_pending";
pub const OUTBOX_OLDEST: &str = "switchboard_outbox_oldest_seconds";
pub const DELIVERED: &str = "switchboard_notifications_delivered_total";

/// Bucket bounds (seconds) of [`HANDLE_SECONDS`]: a KV write takes a millisecond, a
/// PostgreSQL transaction a few, a message waiting out an outage many seconds.
const HANDLE_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// Installs the process's registry and describes every series.
pub fn install() -> Result<Exposition, AlreadyInstalled> {
    let exposition = Exposition::global("workers", &[(HANDLE_SECONDS, &HANDLE_BUCKETS)])?;
    metrics::describe_counter!(
        MESSAGES,
        "Messages handled per job, by outcome: ok (applied or ignored), retry (a transient failure, retried in place), error (poison, acked and skipped)."
    );
    metrics::describe_gauge!(
        PENDING,
        "Messages the job has not handled yet: unprocessed plus delivered and unacknowledged (refreshed every 5 s)."
    );
    metrics::describe_histogram!(HANDLE_SECONDS, "Time to handle one message, per attempt.");
    metrics::describe_gauge!(
        OUTBOX_PENDING,
        "Rows of switchboard.outbox neither sent nor set aside (refreshed every 5 s)."
    );
    metrics::describe_gauge!(
        OUTBOX_OLDEST,
        "Age of the oldest row of switchboard.outbox neither sent nor set aside; 0 when none waits."
    );
    metrics::describe_counter!(
        DELIVERED,
        "Push, email and webhook delivery attempts, by sink and outcome (delivered, retry, failed)."
    );
    Ok(exposition)
}

/// What became of one attempt at a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    Ok,
    Retry,
    Error,
}

/// One job's series, registered once.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    ok: Counter,
    retry: Counter,
    error: Counter,
    seconds: Histogram,
    pending: Gauge,
}

impl JobMetrics {
    pub fn new(job: &'static str) -> JobMetrics {
        let messages =
            |outcome: &'static str| metrics::counter!(MESSAGES, "job" => job, "outcome" => outcome);
        JobMetrics {
            ok: messages("ok"),
            retry: messages("retry"),
            error: messages("error"),
            seconds: metrics::histogram!(HANDLE_SECONDS, "job" => job),
            pending: metrics::gauge!(PENDING, "job" => job),
        }
    }

    /// Counts one attempt at a message and how long it took.
    pub fn handled(&self, outcome: Handled, took: Duration) {
        match outcome {
            Handled::Ok => &self.ok,
            Handled::Retry => &self.retry,
            Handled::Error => &self.error,
        }
        .increment(1);
        self.seconds.record(took.as_secs_f64());
    }

    /// Counts a retry whose attempt was not timed (a step inside a longer handling).
    pub fn retried(&self) {
        self.retry.increment(1);
    }

    pub fn pending(&self, messages: u64) {
        self.pending.set(messages as f64);
    }
}

/// Counts one notification delivery attempt's final word: `outcome` is `delivered`,
/// `retry` or `failed`. Deliveries are HTTP requests, so the lookup by name is noise.
pub fn delivered(sink: &str, outcome: &'static str) {
    metrics::counter!(DELIVERED, "sink" => sink.to_owned(), "outcome" => outcome).increment(1);
}

pub fn outbox_pending() -> Gauge {
    metrics::gauge!(OUTBOX_PENDING)
}

pub fn outbox_oldest() -> Gauge {
    metrics::gauge!(OUTBOX_OLDEST)
}
