//! A 100,000-event replay runs in bounded memory.
//!
//! Measured, not assumed: `replay --stats` reports the process's VmHWM (the peak resident
//! set size the kernel recorded, from /proc/self/status) when it ends. The events hold
//! about 110 MB of payload, so a replay that collected them, or let its read-ahead grow
//! with the stream, would show it; the peak must stay under a fixed bound and must not
//! grow with the number of events (the same replay over a tenth of the events peaks
//! about as high).

mod support;

use serde_json::{Value, json};
use support::{Bus, ok, switchboard};
use switchboard_schemas::{Envelope, RawJson};

const EVENTS: u64 = 100_000;
/// Far below the ~110 MB the replayed events weigh.
const PEAK_RSS_BOUND_KIB: u64 = 48 * 1024;
/// How much more the full replay may peak than the one over a tenth of the events
/// (keeping the 90,000 extra events would cost about 100 MB).
const GROWTH_BOUND_KIB: u64 = 16 * 1024;

/// Publishes `EVENTS` events of about 1.1 KiB: nine in ten on project:a, the rest on
/// project:b, so the replay merges two channels. Returns the payload bytes stored.
async fn seed(bus: &Bus) -> u64 {
    let pad = "x".repeat(1024);
    let mut bytes = 0;
    let mut acks = Vec::with_capacity(1000);
    for i in 0..EVENTS {
        let subject = if i % 10 == 9 {
            "rt.project.b"
        } else {
            "rt.project.a"
        };
        let payload = Envelope::new(
            "bid.new".parse().unwrap(),
            RawJson::encode(&json!({ "i": i, "pad": pad })).unwrap(),
        )
        .to_postcard();
        bytes += payload.len() as u64;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Rt-Type", "bid.new");
        acks.push(
            bus.js
                .publish_with_headers(subject, headers, payload.into())
                .await
                .unwrap(),
        );
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks.drain(..) {
        ack.await.unwrap();
    }
    bytes
}

/// Runs a replay of both channels to /dev/null and returns its `--stats`.
fn replay(bus: &Bus, extra: &[&str]) -> Value {
    let args = [
        &[
            "replay",
            "-c",
            "project:a",
            "-c",
            "project:b",
            "--output",
            "/dev/null",
            "--stats",
        ][..],
        extra,
    ]
    .concat();
    let output = switchboard(&bus.admin_env(), &args);
    ok(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stderr}"))
}

#[tokio::test]
async fn a_100k_event_replay_runs_in_bounded_memory() {
    let bus = Bus::start().await;
    let payload_bytes = seed(&bus).await;
    assert!(payload_bytes > 2 * PEAK_RSS_BOUND_KIB * 1024);

    let tenth = replay(&bus, &["--to-seq", &(EVENTS / 10).to_string()]);
    assert_eq!(tenth["events"], EVENTS / 10);
    let full = replay(&bus, &[]);
    assert_eq!(full["events"], EVENTS, "{full}");
    assert_eq!(full["skipped"], 0);

    let peak = full["peak_rss_kib"]
        .as_u64()
        .expect("VmHWM is readable on Linux");
    let tenth_peak = tenth["peak_rss_kib"].as_u64().unwrap();
    eprintln!("peak RSS: {tenth_peak} KiB for 10,000 events, {peak} KiB for 100,000 ({full})");
    assert!(
        peak < PEAK_RSS_BOUND_KIB,
        "peak RSS {peak} KiB for {payload_bytes} bytes replayed"
    );
    assert!(
        peak < tenth_peak + GROWTH_BOUND_KIB,
        "peak RSS grew from {tenth_peak} KiB (10k events) to {peak} KiB (100k)"
    );
}
