//! `bench fanout` and `bench channels`: subscribers spread over one channel or many, and
//! a publisher at a fixed rate; every subscriber must get each event of its channel
//! exactly once.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::reader::spawn_reader;
use super::{Bench, Latency, Report};

impl Bench {
    /// `channels` channels with `per_channel` subscribers each; `rate` events/s in all.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn fanout(
        &self,
        name: &str,
        parameters: serde_json::Value,
        channels: usize,
        per_channel: usize,
        rate: u64,
        size: usize,
        duration: u64,
    ) -> anyhow::Result<Report> {
        let names: Vec<String> = (0..channels)
            .map(|c| format!("domain:bench-{}-{c}", self.run_id))
            .collect();
        let mut readers = Vec::new();
        eprintln!("opening {} subscribers", channels * per_channel);
        for (c, channel) in names.iter().enumerate() {
            for s in 0..per_channel {
                let mut socket = self.open(&format!("b{c}x{s}"), &[]).await?;
                Self::subscribe(&mut socket, std::slice::from_ref(channel)).await?;
                readers.push(spawn_reader(socket));
            }
        }
        let total = rate * duration;
        eprintln!("publishing {total} events over {duration} s");
        let before = self.usage();
        let started = Instant::now();
        let published = self.publish_paced(&names, total, rate, size).await?;
        // Let the last deliveries land.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = self.usage();
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
        self.fill_usage(&mut report, before, after);
        report.seconds = elapsed;
        Ok(report)
    }
}
