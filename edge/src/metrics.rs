//! The counters an operator asks about, exposed at `GET /metrics` in Prometheus text form
//! (docs/operations.md §7).
//!
//! The registry is a [`switchboard_bus::exposition::Exposition`] owned by this struct, in
//! turn owned by the [`Edge`](crate::Edge): no global state. Every label set is fixed and
//! small (client ops, auth failure reasons), so each series' handle is registered once,
//! here, and kept: the hot path (a delivery, a frame) pays one relaxed atomic add through
//! the handle and never looks a metric up by name.
//!
//! The three gauges of open things stay plain atomics, copied into the registry when
//! scraped: `switchboard status` reads them too (the edge's status answer), and the
//! registry's gauges cannot be read back.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use switchboard_bus::exposition::Exposition;

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

const FANOUT_LATENCY: &str = "switchboard_edge_fanout_latency_seconds";

/// Upper bounds (seconds) of the fan-out latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug)]
pub struct Metrics {
    pub connections: AtomicI64,
    /// Connections speaking plain HTTP (not upgraded to a WebSocket).
    pub http_connections: AtomicI64,
    pub http_refused: Counter,
    pub header_timeouts: Counter,
    pub subscriptions: AtomicI64,
    frames_in: [Counter; OPS.len()],
    pub frames_out: Counter,
    pub deliveries: Counter,
    pub slow_consumers: Counter,
    auth_failures: [Counter; AUTH_REASONS.len()],
    pub rate_limited: Counter,
    pub replayed: Counter,
    pub repaired: Counter,
    pub undecodable: Counter,
    pub nats_reconnects: Counter,
    pub published: Counter,
    latency: Histogram,
    /// Copies of the atomics above and of the hub's channel count, set when scraped.
    sampled: Sampled,
    exposition: Arc<Exposition>,
}

#[derive(Debug)]
struct Sampled {
    connections: Gauge,
    http_connections: Gauge,
    subscriptions: Gauge,
    channels: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let exposition = Arc::new(Exposition::local(
            "edge",
            &[(FANOUT_LATENCY, &LATENCY_BUCKETS)],
        ));
        exposition.with(|| Metrics::register(exposition.clone()))
    }
}

impl Metrics {
    /// Describes every series and registers its handle; runs with `exposition` as the
    /// recorder.
    fn register(exposition: Arc<Exposition>) -> Metrics {
        use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
        let gauges = [
            (
                "switchboard_edge_connections",
                "Open authenticated WebSocket, SSE and long-poll sessions.",
            ),
            (
                "switchboard_edge_http_connections",
                "Connections speaking plain HTTP: before a WebSocket upgrade, SSE, long polls, other requests.",
            ),
            (
                "switchboard_edge_subscriptions",
                "Live subscriptions across all sessions.",
            ),
            (
                "switchboard_edge_channels",
                "Channels this edge holds a NATS subscription for.",
            ),
        ];
        for (name, help) in gauges {
            describe_gauge!(name, help);
        }
        let counters = [
            (
                "switchboard_edge_frames_in_total",
                "Client frames received, by op.",
            ),
            (
                "switchboard_edge_auth_failures_total",
                "Refused tokens, by reason.",
            ),
            (
                "switchboard_edge_frames_out_total",
                "Frames written to sockets.",
            ),
            (
                "switchboard_edge_deliveries_total",
                "Events queued for a subscriber.",
            ),
            (
                "switchboard_edge_slow_consumer_closes_total",
                "Sessions closed because their queue was full.",
            ),
            (
                "switchboard_edge_rate_limited_total",
                "Frames answered rate_limited.",
            ),
            (
                "switchboard_edge_replayed_events_total",
                "Stored events replayed to resuming subscribers.",
            ),
            (
                "switchboard_edge_repaired_events_total",
                "Events read back from the stream after a gap on the live path.",
            ),
            (
                "switchboard_edge_undecodable_messages_total",
                "Messages from NATS that could not be decoded and were skipped.",
            ),
            (
                "switchboard_edge_nats_reconnects_total",
                "Reconnections to NATS.",
            ),
            (
                "switchboard_edge_http_refused_total",
                "Connections answered 503 because SWITCHBOARD_MAX_HTTP_CONNECTIONS were open.",
            ),
            (
                "switchboard_edge_header_timeouts_total",
                "Connections closed because a request head was not complete within SWITCHBOARD_HEADER_TIMEOUT_MS.",
            ),
            (
                "switchboard_edge_published_total",
                "Events published by clients and the HTTP API.",
            ),
        ];
        for (name, help) in counters {
            describe_counter!(name, help);
        }
        describe_histogram!(
            FANOUT_LATENCY,
            "Time from JetStream storing an event to its frame being queued for sockets."
        );
        Metrics {
            connections: AtomicI64::new(0),
            http_connections: AtomicI64::new(0),
            subscriptions: AtomicI64::new(0),
            http_refused: counter!("switchboard_edge_http_refused_total"),
            header_timeouts: counter!("switchboard_edge_header_timeouts_total"),
            frames_in: OPS.map(|op| counter!("switchboard_edge_frames_in_total", "op" => op)),
            frames_out: counter!("switchboard_edge_frames_out_total"),
            deliveries: counter!("switchboard_edge_deliveries_total"),
            slow_consumers: counter!("switchboard_edge_slow_consumer_closes_total"),
            auth_failures: AUTH_REASONS
                .map(|reason| counter!("switchboard_edge_auth_failures_total", "reason" => reason)),
            rate_limited: counter!("switchboard_edge_rate_limited_total"),
            replayed: counter!("switchboard_edge_replayed_events_total"),
            repaired: counter!("switchboard_edge_repaired_events_total"),
            undecodable: counter!("switchboard_edge_undecodable_messages_total"),
            nats_reconnects: counter!("switchboard_edge_nats_reconnects_total"),
            published: counter!("switchboard_edge_published_total"),
            latency: metrics::histogram!(FANOUT_LATENCY),
            sampled: Sampled {
                connections: gauge!("switchboard_edge_connections"),
                http_connections: gauge!("switchboard_edge_http_connections"),
                subscriptions: gauge!("switchboard_edge_subscriptions"),
                channels: gauge!("switchboard_edge_channels"),
            },
            exposition,
        }
    }

    pub fn frame_in(&self, op: &str) {
        let index = OPS.iter().position(|o| *o == op).unwrap_or(OPS.len() - 1);
        self.frames_in[index].increment(1);
    }

    pub fn auth_failure(&self, reason: &str) {
        if let Some(index) = AUTH_REASONS.iter().position(|r| *r == reason) {
            self.auth_failures[index].increment(1);
        }
    }

    pub fn count(&self, counter: &Counter, n: u64) {
        counter.increment(n);
    }

    pub fn gauge(&self, gauge: &AtomicI64, delta: i64) {
        gauge.fetch_add(delta, Ordering::Relaxed);
    }

    /// Records how long an event took from being stored to being queued for sockets.
    pub fn observe_latency(&self, latency: Duration) {
        self.latency.record(latency.as_secs_f64());
    }

    /// The Prometheus text exposition; `channels` is the number of channels held now.
    pub fn render(&self, channels: usize) -> String {
        let load = |gauge: &AtomicI64| gauge.load(Ordering::Relaxed) as f64;
        let sampled = &self.sampled;
        sampled.connections.set(load(&self.connections));
        sampled.http_connections.set(load(&self.http_connections));
        sampled.subscriptions.set(load(&self.subscriptions));
        sampled.channels.set(channels as f64);
        self.exposition.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_series_is_there_from_the_start_and_moves_through_its_handle() {
        let metrics = Metrics::default();
        let before = metrics.render(0);
        assert_eq!(value(&before, "switchboard_edge_connections"), Some(0.0));
        assert_eq!(
            value(
                &before,
                "switchboard_edge_auth_failures_total{reason=\"expired\"}"
            ),
            Some(0.0)
        );
        metrics.gauge(&metrics.connections, 1);
        metrics.count(&metrics.deliveries, 3);
        metrics.frame_in("sub");
        metrics.frame_in("bogus");
        metrics.auth_failure("expired");
        metrics.observe_latency(Duration::from_millis(3));
        let after = metrics.render(2);
        for (series, expected) in [
            ("switchboard_edge_connections", 1.0),
            ("switchboard_edge_channels", 2.0),
            ("switchboard_edge_deliveries_total", 3.0),
            ("switchboard_edge_frames_in_total{op=\"sub\"}", 1.0),
            ("switchboard_edge_frames_in_total{op=\"invalid\"}", 1.0),
            (
                "switchboard_edge_auth_failures_total{reason=\"expired\"}",
                1.0,
            ),
            (
                "switchboard_edge_fanout_latency_seconds_bucket{le=\"0.005\"}",
                1.0,
            ),
            ("switchboard_edge_fanout_latency_seconds_count", 1.0),
        ] {
            assert_eq!(
                value(&after, series),
                Some(expected),
                "{series} in\n{after}"
            );
        }
        assert!(after.contains("switchboard_build_info{binary=\"edge\""));
    }
}
