//! `bench fanout` and `bench channels`: subscribers spread over one channel or many, and
//! a publisher at a fixed rate; every subscriber must get each event of its channel
//! exactly once.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::peer::Target;
use super::{Latency, Report, fill_usage};

/// `channels` channels with `per_channel` subscribers each; `rate` events/s in all, on
/// the edge or a peer ([`Target`]).
#[allow(clippy::too_many_arguments)]
pub(super) async fn fanout(
    target: &impl Target,
    name: &str,
    parameters: serde_json::Value,
    channels: usize,
    per_channel: usize,
    rate: u64,
    size: usize,
    duration: u64,
) -> anyhow::Result<Report> {
    let names: Vec<String> = (0..channels)
        .map(|c| format!("domain:bench-{}-{c}", target.run_id()))
        .collect();
    let mut readers = Vec::new();
    eprintln!("opening {} subscribers", channels * per_channel);
    for (c, channel) in names.iter().enumerate() {
        for s in 0..per_channel {
            let socket = target
                .subscribed(format!("b{c}x{s}"), vec![channel.clone()])
                .await?;
            readers.push(target.read(socket));
        }
    }
    let total = rate * duration;
    eprintln!("publishing {total} events over {duration} s");
    let before = target.usage();
    let started = Instant::now();
    let published = target.publish_paced(&names, total, rate, size).await?;
    // Let the last deliveries land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = target.usage();
    let elapsed = started.elapsed().as_secs_f64() - 2.0;
    let mut report = Report {
        scenario: name.to_string(),
        parameters,
        published: published.len() as u64,
        ..Report::default()
    };
    let mut latency = Histogram::<u64>::new(3)?;
    for (i, reader) in readers.into_iter().enumerate() {
        let (tally, histogram) = reader.finish();
        let expected = published
            .iter()
            .filter(|(c, _)| *c == i / per_channel)
            .count() as u64;
        report.deliveries += tally.received;
        report.duplicated += tally.duplicated;
        report.missing += expected.saturating_sub(tally.received - tally.duplicated);
        latency.add(&histogram)?;
    }
    report.deliveries_per_s = report.deliveries as f64 / elapsed;
    report.latency_ms = Latency::of(&latency);
    fill_usage(&mut report, before, after);
    report.seconds = elapsed;
    Ok(report)
}
