//! `bench chat`: pairs in conversations send `pub` frames to each other at a total rate,
//! evenly spread; measures send -> recipient (the publisher's timestamp in the event) and
//! send -> `ok` (the frame id is the send time). Conversations are granted by the token,
//! so the scenario needs no workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use super::reader::{scan_number, spawn_reader};
use super::{Bench, Latency, Report, unix_micros};

impl Bench {
    pub(super) async fn chat(
        &self,
        pairs: usize,
        rate: u64,
        duration: u64,
    ) -> anyhow::Result<Report> {
        // A token grant instead of membership: the bench needs no workers.
        let pattern = "conversation:*";
        let mut senders = Vec::new();
        let acked = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
        let mut readers = Vec::new();
        for p in 0..pairs {
            let channel = format!("conversation:bench-{}-{p}", self.run_id);
            // Senders do not subscribe: their socket carries only their own `ok`s. It is
            // read from the start, as a client would, so that the edge's pings are answered
            // however long the other pairs take to open.
            let (write, read) = self.open(&format!("a{p}"), &[pattern]).await?.split();
            let acks = tokio::spawn(record_acks(read, acked.clone()));
            let mut b = self.open(&format!("b{p}"), &[pattern]).await?;
            Self::subscribe(&mut b, std::slice::from_ref(&channel)).await?;
            readers.push(spawn_reader(b));
            senders.push((channel, write, acks));
        }
        let total = rate * duration;
        let before = self.usage();
        let started = Instant::now();
        let sent = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        let per_pair = total / pairs as u64;
        // One schedule for every pair, each in its own slot of it: the i-th message of pair
        // p is the (i * pairs + p)-th of the whole run, so the edge sees `rate` messages a
        // second evenly, as from users who type independently, not a burst of one message
        // per pair at each tick (which measured how long a burst takes to drain).
        let interval = 1.0 / rate.max(1) as f64;
        let pair_count = pairs as u64;
        for (p, (channel, mut write, acks)) in senders.into_iter().enumerate() {
            let sent = sent.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..per_pair {
                    let slot = i * pair_count + p as u64;
                    let due = started + Duration::from_secs_f64(slot as f64 * interval);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        tokio::time::sleep(wait).await;
                    }
                    // The frame id is the send time, so the `ok` says how long it took.
                    let t = unix_micros();
                    let frame = json!({"op":"pub","id": t,"ch": channel,"type":"message.new",
                                       "data":{"text":"hello","t": t}});
                    if write
                        .send(Message::Text(frame.to_string().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                acks.abort();
            }));
        }
        for task in tasks {
            task.await?;
        }
        let after = self.usage();
        let elapsed = started.elapsed().as_secs_f64() - 2.0;
        let mut report = Report {
            scenario: "chat".into(),
            parameters: json!({"pairs": pairs, "rate": rate, "duration": duration}),
            published: sent.load(Ordering::Relaxed),
            ..Report::default()
        };
        let mut delivered = Histogram::<u64>::new(3)?;
        for reader in readers {
            let (tally, histogram) = reader.finish();
            report.deliveries += tally.received;
            report.duplicated += tally.duplicated;
            delivered.add(&histogram)?;
        }
        report.missing = report
            .published
            .saturating_sub(report.deliveries - report.duplicated);
        report.deliveries_per_s = report.deliveries as f64 / elapsed;
        report.latency_ms = Latency::of(&delivered);
        report.ack_latency_ms = Some(Latency::of(&*acked.lock().await));
        self.fill_usage(&mut report, before, after);
        report.seconds = elapsed;
        Ok(report)
    }
}

/// Records the time to each `ok` on a sender's socket (its id is the send time) until the
/// socket closes; other frames (`welcome`, pings) pass.
async fn record_acks(
    mut read: futures_util::stream::SplitStream<super::Socket>,
    acked: Arc<Mutex<Histogram<u64>>>,
) {
    while let Some(Ok(message)) = read.next().await {
        if let Message::Text(text) = message
            && let Some(t) = scan_number(&text, "\"id\":")
        {
            let _ = acked.lock().await.record(unix_micros().saturating_sub(t));
        }
    }
}
