//! `bench resume`: a client misses N events while away, then resumes from its last seq;
//! how long until it has every one of them, none twice.

use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::reader::{Tally, scan_number};
use super::{Bench, Report};

impl Bench {
    pub(super) async fn resume(&self, missed: u64, size: usize) -> anyhow::Result<Report> {
        let channel = format!("domain:resume-{}", self.run_id);
        let mut socket = self.open("r1", &[]).await?;
        let frame = json!({"op":"sub","id":1,"ch": channel}).to_string();
        socket.send(Message::Text(frame.into())).await?;
        let ok = loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) if text.contains("\"op\":\"ok\"") => break text,
                Some(Ok(_)) => {}
                other => bail!("no ok: {other:?}"),
            }
        };
        let ok: serde_json::Value = serde_json::from_str(&ok)?;
        let (seq, epoch) = (ok["seq"].as_u64().unwrap_or(0), ok["epoch"].clone());
        drop(socket);
        eprintln!("publishing {missed} events while the client is away");
        let published = self
            .publish_paced(std::slice::from_ref(&channel), missed, 1_000_000, size)
            .await?;
        let before = self.usage();
        let started = Instant::now();
        let mut socket = self.open("r1", &[]).await?;
        let frame = json!({"op":"sub","id":2,"ch": channel,"since":{"seq": seq,"epoch": epoch}});
        socket.send(Message::Text(frame.to_string().into())).await?;
        let mut tally = Tally::default();
        while tally.received < missed {
            match tokio::time::timeout(Duration::from_secs(30), socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    if let Some(seq) = scan_number(&text, "\"seq\":")
                        && text.starts_with("{\"op\":\"evt\"")
                    {
                        tally.count(seq);
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        let catch_up = started.elapsed();
        let after = self.usage();
        let mut report = Report {
            scenario: "resume".into(),
            parameters: json!({"missed": missed, "size": size}),
            published: published.len() as u64,
            deliveries: tally.received,
            duplicated: tally.duplicated,
            missing: missed.saturating_sub(tally.received - tally.duplicated),
            deliveries_per_s: tally.received as f64 / catch_up.as_secs_f64(),
            catch_up_ms: Some(catch_up.as_secs_f64() * 1000.0),
            seconds: catch_up.as_secs_f64(),
            ..Report::default()
        };
        self.fill_usage(&mut report, before, after);
        Ok(report)
    }
}
