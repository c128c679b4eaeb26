//! `bench connect`: opens authenticated connections as fast as it can, each subscribing
//! its own `user:<id>` and shared channels like a real client, then holds them idle and
//! reads the edge's RSS per connection. Its latency is each connection's set-up time.
//! On the edge, a connection names its channels on the upgrade (`?ch=`, docs/protocol.md
//! section 2), as a client that knows them as it connects does.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use hdrhistogram::Histogram;

use super::peer::Target;
use super::{Latency, Report};

/// `connections` sockets opened `concurrency` at a time on the edge or a peer
/// ([`Target`]), each subscribed to `subs` channels, then held idle.
pub(super) async fn connect(
    target: &impl Target,
    connections: usize,
    subs: usize,
    concurrency: usize,
) -> anyhow::Result<Report> {
    let Some((_, rss_before)) = target.usage() else {
        bail!("connect needs --edge-pid to read the edge's memory");
    };
    let user = |i: usize| format!("c{}-{i}", target.run_id());
    let channels: Vec<Vec<String>> = (0..connections)
        .map(|i| {
            let own = std::iter::once(format!("user:{}", user(i)));
            let shared = (1..subs)
                .map(|s| format!("domain:shared-{}-{}", target.run_id(), (i * subs + s) % 100));
            own.chain(shared).take(subs).collect()
        })
        .collect();
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(connections);
    // Each connection's own time, from dialling to its last subscription confirmed.
    let mut setup = Histogram::<u64>::new(3)?;
    // Each socket is opened by a task of its own, so the generator's handshakes and
    // token minting spread over every core instead of one.
    let mut opening = tokio::task::JoinSet::new();
    let mut next = 0;
    while sockets.len() < connections {
        while next < connections && opening.len() < concurrency {
            let subscribed = target.subscribed(user(next), channels[next].clone());
            opening.spawn(async move {
                let began = Instant::now();
                let socket = subscribed.await?;
                anyhow::Ok((socket, began.elapsed()))
            });
            next += 1;
        }
        if let Some(opened) = opening.join_next().await {
            let (socket, took) = opened??;
            setup.record(took.as_micros() as u64)?;
            sockets.push(socket);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Idle for a moment so the edge's allocations settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu, rss_after) = target.usage().unwrap_or_default();
    let report = Report {
        scenario: "connect".into(),
        parameters: json!({"connections": connections, "subs": subs, "concurrency": concurrency}),
        connections_per_s: Some(connections as f64 / elapsed),
        latency_ms: Latency::of(&setup),
        rss_kib_per_connection: Some(
            rss_after.saturating_sub(rss_before) as f64 / connections as f64,
        ),
        edge_rss_kib: Some(rss_after),
        edge_cpu_s: Some(cpu),
        seconds: elapsed,
        ..Report::default()
    };
    drop(sockets);
    Ok(report)
}
