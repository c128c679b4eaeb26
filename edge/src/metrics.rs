//! The counters an operator asks about, exposed at `GET /metrics` in Prometheus text form.
//!
//! Every label set is fixed and small (client ops, auth failure reasons), so the registry
//! is plain atomics in one struct owned by the [`Edge`](crate::Edge): no global state, and
//! the hot path pays one relaxed atomic add.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Client frame ops counted by `switchboard_edge_frames_in_total{op}`.
pub const OPS: [&str; 14] = [
    "hello", "sub", "unsub", "pub", "sig", "ack", "read", "presence", "who", "history", "refresh",
    "ping", "rpc", "invalid",
];

/// Reasons counted by `switchboard_edge_auth_failures_total{reason}`.
pub const AUTH_REASONS: [&str; 10] = [
    "missing",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "wrong_algorithm",
    "wrong_issuer",
    "wrong_audience",
    "malformed",
    "unknown_key",
    "hello_timeout",
];

/// Upper bounds (seconds) of the latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: AtomicI64,
    /// Connections speaking plain HTTP (not upgraded to a WebSocket).
    pub http_connections: AtomicI64,
    pub http_refused: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub subscriptions: AtomicI64,
    frames_in: [AtomicU64; OPS.len()],
    pub frames_out: AtomicU64,
    pub deliveries: AtomicU64,
    pub slow_consumers: AtomicU64,
    auth_failures: [AtomicU64; AUTH_REASONS.len()],
    pub rate_limited: AtomicU64,
    pub replayed: AtomicU64,
    pub repaired: AtomicU64,
    pub undecodable: AtomicU64,
    pub nats_reconnects: AtomicU64,
    pub published: AtomicU64,
    latency: Histogram,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    pub fn frame_in(&self, op: &str) {
        let index = OPS.iter().position(|o| *o == op).unwrap_or(OPS.len() - 1);
        add(&self.frames_in[index], 1);
    }

    pub fn auth_failure(&self, reason: &str) {
        if let Some(index) = AUTH_REASONS.iter().position(|r| *r == reason) {
            add(&self.auth_failures[index], 1);
        }
    }

    pub fn count(&self, counter: &AtomicU64, n: u64) {
        add(counter, n);
    }

    pub fn gauge(&self, gauge: &AtomicI64, delta: i64) {
        gauge.fetch_add(delta, Ordering::Relaxed);
    }

    /// Records how long an event took from being stored to being queued for sockets.
    pub fn observe_latency(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        for (bucket, bound) in self.latency.buckets.iter().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                add(bucket, 1);
            }
        }
        add(&self.latency.count, 1);
        add(&self.latency.sum_micros, latency.as_micros() as u64);
    }

    /// The Prometheus text exposition; `channels` is the number of channels held now.
    pub fn render(&self, channels: usize) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gauge = |out: &mut String, name: &str, help: &str, value: i64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        gauge(
            &mut out,
            "switchboard_edge_connections",
            "Open authenticated WebSocket, SSE and long-poll sessions.",
            self.connections.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "switchboard_edge_http_connections",
            "Connections speaking plain HTTP: before a WebSocket upgrade, SSE, long polls, other requests.",
            self.http_connections.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "switchboard_edge_subscriptions",
            "Live subscriptions across all sessions.",
            self.subscriptions.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "switchboard_edge_channels",
            "Channels this edge holds a NATS subscription for.",
            channels as i64,
        );
        let _ = writeln!(
            out,
            "# HELP switchboard_edge_frames_in_total Client frames received, by op.\n# TYPE switchboard_edge_frames_in_total counter"
        );
        for (op, value) in OPS.iter().zip(&self.frames_in) {
            let _ = writeln!(
                out,
                "switchboard_edge_frames_in_total{{op=\"{op}\"}} {}",
                load(value)
            );
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_edge_auth_failures_total Refused tokens, by reason.\n# TYPE switchboard_edge_auth_failures_total counter"
        );
        for (reason, value) in AUTH_REASONS.iter().zip(&self.auth_failures) {
            let _ = writeln!(
                out,
                "switchboard_edge_auth_failures_total{{reason=\"{reason}\"}} {}",
                load(value)
            );
        }
        for (name, help, value) in [
            (
                "switchboard_edge_frames_out_total",
                "Frames written to sockets.",
                &self.frames_out,
            ),
            (
                "switchboard_edge_deliveries_total",
                "Events queued for a subscriber.",
                &self.deliveries,
            ),
            (
                "switchboard_edge_slow_consumer_closes_total",
                "Sessions closed because their queue was full.",
                &self.slow_consumers,
            ),
            (
                "switchboard_edge_rate_limited_total",
                "Frames answered rate_limited.",
                &self.rate_limited,
            ),
            (
                "switchboard_edge_replayed_events_total",
                "Stored events replayed to resuming subscribers.",
                &self.replayed,
            ),
            (
                "switchboard_edge_repaired_events_total",
                "Events read back from the stream after a gap on the live path.",
                &self.repaired,
            ),
            (
                "switchboard_edge_undecodable_messages_total",
                "Messages from NATS that could not be decoded and were skipped.",
                &self.undecodable,
            ),
            (
                "switchboard_edge_nats_reconnects_total",
                "Reconnections to NATS.",
                &self.nats_reconnects,
            ),
            (
                "switchboard_edge_http_refused_total",
                "Connections answered 503 because SWITCHBOARD_MAX_HTTP_CONNECTIONS were open.",
                &self.http_refused,
            ),
            (
                "switchboard_edge_header_timeouts_total",
                "Connections closed because a request head was not complete within SWITCHBOARD_HEADER_TIMEOUT_MS.",
                &self.header_timeouts,
            ),
            (
                "switchboard_edge_published_total",
                "Events published by clients and the HTTP API.",
                &self.published,
            ),
        ] {
            counter(&mut out, name, help, load(value));
        }
        let name = "switchboard_edge_fanout_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from JetStream storing an event to its frame being queued for sockets.\n# TYPE {name} histogram"
        );
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency.buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", load(bucket));
        }
        let count = load(&self.latency.count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            load(&self.latency.sum_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}
