//! The workers over HTTP (docs/operations.md §7), on `SWITCHBOARD_WORKERS_ADDR`:
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when NATS is connected, PostgreSQL answers and every enabled
//!   job's consumer is bound; otherwise 503, the JSON body naming what is not.
//! - `GET /metrics`: the Prometheus exposition ([`crate::telemetry`]).
//!
//! It owns [`Readiness`], which the jobs set; it reads NATS's connection state and asks
//! PostgreSQL `SELECT 1` per probe, and changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use sqlx::PgPool;
use switchboard_bus::exposition::{self, Exposition};
use tokio_util::sync::CancellationToken;

use crate::config::JobName;

/// How long `/readyz` waits for PostgreSQL before calling it unreachable; below the
/// usual probe timeout (Kubernetes: 1 s default, set it to 3 s or more).
const DATABASE_PROBE: Duration = Duration::from_secs(2);

/// Whether each enabled job's consumer (the presence watch, the outbox relay's
/// connection) is bound right now.
#[derive(Debug)]
pub struct Readiness {
    jobs: Vec<(&'static str, AtomicBool)>,
}

impl Readiness {
    pub fn new(jobs: &[JobName]) -> Readiness {
        Readiness {
            jobs: jobs
                .iter()
                .map(|job| (job.name(), AtomicBool::new(false)))
                .collect(),
        }
    }

    /// Records whether `job`'s consumer is bound; names of jobs not enabled are ignored.
    pub fn bound(&self, job: &str, bound: bool) {
        if let Some((_, flag)) = self.jobs.iter().find(|(name, _)| *name == job) {
            flag.store(bound, Ordering::Relaxed);
        }
    }

    fn unbound(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.jobs
            .iter()
            .filter(|(_, flag)| !flag.load(Ordering::Relaxed))
            .map(|(name, _)| *name)
    }
}

/// What the routes read.
pub struct Probe {
    pub nats: async_nats::Client,
    pub db: PgPool,
    pub readiness: Arc<Readiness>,
    pub exposition: Exposition,
}

pub fn router(probe: Arc<Probe>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(probe)
}

/// Serves [`router`] on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    probe: Arc<Probe>,
    shutdown: CancellationToken,
) {
    let served = axum::serve(listener, router(probe))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "the HTTP listener failed; /readyz and /metrics are gone");
    }
}

async fn ready(State(probe): State<Arc<Probe>>) -> Response {
    let nats = probe.nats.connection_state() == async_nats::connection::State::Connected;
    let postgres = matches!(
        tokio::time::timeout(DATABASE_PROBE, sqlx::query("SELECT 1").execute(&probe.db)).await,
        Ok(Ok(_))
    );
    let mut not_ready: Vec<String> = Vec::new();
    if !nats {
        not_ready.push("nats".into());
    }
    if !postgres {
        not_ready.push("postgres".into());
    }
    not_ready.extend(probe.readiness.unbound().map(|job| format!("job:{job}")));
    let jobs: serde_json::Map<String, serde_json::Value> = probe
        .readiness
        .jobs
        .iter()
        .map(|(name, flag)| {
            let state = if flag.load(Ordering::Relaxed) {
                "bound"
            } else {
                "unbound"
            };
            ((*name).to_string(), state.into())
        })
        .collect();
    let status = if not_ready.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": not_ready.is_empty(),
        "not_ready": not_ready,
        "nats": if nats { "connected" } else { "disconnected" },
        "postgres": if postgres { "reachable" } else { "unreachable" },
        "jobs": jobs,
    });
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(probe): State<Arc<Probe>>) -> Response {
    (
        [(header::CONTENT_TYPE, exposition::CONTENT_TYPE)],
        probe.exposition.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_unbound_until_it_says_so_and_unknown_names_change_nothing() {
        let readiness = Readiness::new(&[JobName::Membership, JobName::Outbox]);
        assert_eq!(
            readiness.unbound().collect::<Vec<_>>(),
            ["membership", "outbox"]
        );
        readiness.bound("membership", true);
        readiness.bound("archive", true);
        assert_eq!(readiness.unbound().collect::<Vec<_>>(), ["outbox"]);
        readiness.bound("outbox", true);
        readiness.bound("membership", false);
        assert_eq!(readiness.unbound().collect::<Vec<_>>(), ["membership"]);
    }
}
