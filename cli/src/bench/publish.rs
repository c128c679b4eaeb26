//! Publishing for the scenarios: events through JetStream like a backend, paced by a
//! schedule (not a sleep per event) with a bounded window of unacknowledged publishes.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use switchboard_schemas::{ChannelName, Envelope, EventType, RawJson};

use super::{Bench, unix_micros};

impl Bench {
    /// Publishes `total` events round-robin over `channels` at `rate` per second, with
    /// the send time in `data.t`; returns (channel index, seq) of each.
    pub(super) async fn publish_paced(
        &self,
        channels: &[String],
        total: u64,
        rate: u64,
        size: usize,
    ) -> anyhow::Result<Vec<(usize, u64)>> {
        let pad = "x".repeat(size.saturating_sub(60));
        let ty = EventType::parse("bench.tick")?;
        self.publish_each(channels, total, rate, None, |_| {
            let data = RawJson::encode(&json!({"t": unix_micros(), "pad": pad}))?;
            Ok(Envelope::new(ty.clone(), data))
        })
        .await
    }

    /// Publishes `total` events made by `make(i)`, the i-th to `channels[i % len]`, at
    /// `rate` per second through JetStream with a window of unacknowledged publishes;
    /// returns (channel index, seq) of each. `progress` names what is published, to tell
    /// on stderr every 100,000 events.
    pub(super) async fn publish_each(
        &self,
        channels: &[String],
        total: u64,
        rate: u64,
        progress: Option<&str>,
        make: impl Fn(u64) -> anyhow::Result<Envelope>,
    ) -> anyhow::Result<Vec<(usize, u64)>> {
        let parsed: Vec<ChannelName> = channels
            .iter()
            .map(|c| ChannelName::parse(c))
            .collect::<Result<_, _>>()?;
        let started = Instant::now();
        let mut published = Vec::with_capacity(total as usize);
        let mut inflight = futures_util::stream::FuturesOrdered::new();
        for i in 0..total {
            // Paced by schedule, not by sleeps per event: bursts catch up after a stall.
            let due = started + Duration::from_secs_f64(i as f64 / rate.max(1) as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            let c = (i as usize) % parsed.len();
            let event = make(i)?;
            let publisher = self.publisher.clone();
            let channel = parsed[c].clone();
            inflight.push_back(async move {
                publisher
                    .publish(&channel, &event)
                    .await
                    .map(|p| (c, p.seq))
            });
            // A bounded window of unacknowledged publishes keeps the pace at high rates.
            while inflight.len() >= 256 {
                if let Some(done) = inflight.next().await {
                    published.push(done?);
                }
            }
            while let Some(done) = futures_util::FutureExt::now_or_never(inflight.next()).flatten()
            {
                published.push(done?);
            }
            if let Some(what) = progress
                && (i + 1) % 100_000 == 0
            {
                eprintln!(
                    "{what}: {} of {total} published ({:.0}/s)",
                    i + 1,
                    (i + 1) as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        while let Some(done) = inflight.next().await {
            published.push(done?);
        }
        Ok(published)
    }
}
