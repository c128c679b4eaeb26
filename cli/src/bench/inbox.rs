//! `bench inbox`: a user in many conversations over an archive of M messages. Seeds the
//! archive through JetStream (its write rate), times `inbox.list` and `messages.search`
//! over the user's socket, and how soon the user's device hears of new messages (`inbox`
//! signals). Needs the workers' `archive` and `membership` jobs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use switchboard_schemas::{Actor, Envelope, EventType, RawJson};
use tokio_tungstenite::tungstenite::Message;

use super::{Bench, Latency, Report, Socket, unix_micros};

/// The sizes of the inbox scenario (its flags).
pub(super) struct Size {
    pub(super) conversations: usize,
    pub(super) messages: u64,
    pub(super) requests: u64,
    pub(super) rate: u64,
    pub(super) duration: u64,
}

/// Words of the seeded messages, two in each: one word is in about an eighth of them.
const WORDS: [&str; 8] = [
    "apple", "banana", "copper", "harbor", "juniper", "lantern", "meadow", "orchid",
];
/// What `messages.search` is asked, in turn: words, a phrase, and a word no message has.
const QUERIES: [&str; 4] = ["banana", "copper harbor", "\"apple banana\"", "quixotic"];
/// Other users who send the messages.
const SENDERS: u64 = 5;

/// The text of the i-th seeded message.
fn seeded_text(i: u64) -> String {
    let word = |n: u64| WORDS[(n % WORDS.len() as u64) as usize];
    format!("{} {} note {i}", word(i), word(i / WORDS.len() as u64))
}

/// A `message.new` from one of the other users.
fn message(ty: &EventType, i: u64, data: serde_json::Value) -> anyhow::Result<Envelope> {
    let mut event = Envelope::new(ty.clone(), RawJson::encode(&data)?);
    event.actor = Some(Actor {
        id: format!("sender-{}", i % SENDERS),
        kind: "user".into(),
    });
    Ok(event)
}

/// A user's socket for `rpc` frames, one at a time and at most 40 a second (the edge
/// allows 50 frames a second per connection by default).
struct Rpc {
    socket: Socket,
    id: u64,
    last: Option<Instant>,
}

impl Rpc {
    /// Calls `method`; its `result` and how long the answer took to arrive.
    async fn call(
        &mut self,
        method: &str,
        params: serde_json::Value,
    ) -> anyhow::Result<(serde_json::Value, Duration)> {
        if let Some(last) = self.last {
            tokio::time::sleep_until((last + Duration::from_millis(25)).into()).await;
        }
        self.id += 1;
        let frame = json!({"op": "rpc", "id": self.id, "method": method, "params": params});
        let started = Instant::now();
        self.last = Some(started);
        self.socket
            .send(Message::Text(frame.to_string().into()))
            .await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), self.socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let took = started.elapsed();
                    let reply: serde_json::Value = serde_json::from_str(&text)?;
                    if reply["id"] != self.id {
                        continue;
                    }
                    if reply["op"] == "ok" {
                        return Ok((reply["result"].clone(), took));
                    }
                    bail!("{method} failed: {text}");
                }
                Ok(Some(Ok(_))) => {}
                Ok(other) => bail!("the socket closed during {method}: {other:?}"),
                Err(_) => bail!("no answer to {method} within 30 s"),
            }
        }
    }
}

/// An `inbox` signal as the device received it: the conversation, its `last.seq`, and
/// when (Unix µs).
type InboxSignal = (String, u64, u64);

/// Reads the device's socket, keeping every `inbox` signal that names a last message.
fn spawn_inbox_reader(
    mut socket: Socket,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<std::sync::Mutex<Vec<InboxSignal>>>,
) {
    let signals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mine = signals.clone();
    let task = tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            let at = unix_micros();
            let Message::Text(text) = message else {
                continue;
            };
            if !text.starts_with("{\"op\":\"sig\"") {
                continue;
            }
            let Ok(frame) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let data = &frame["data"];
            if let (Some(ch), Some(seq)) = (data["ch"].as_str(), data["last"]["seq"].as_u64())
                && frame["type"] == "inbox"
            {
                let mut signals = mine.lock().unwrap_or_else(|e| e.into_inner());
                signals.push((ch.to_string(), seq, at));
            }
        }
    });
    (task, signals)
}

impl Bench {
    /// The inbox scenario: seeds the archive, then measures the user's RPCs and the
    /// `inbox` signals of new messages.
    pub(super) async fn inbox(&self, size: Size) -> anyhow::Result<Report> {
        let run_started = Instant::now();
        let user = format!("inbox-{}", self.run_id);
        let names: Vec<String> = (0..size.conversations)
            .map(|c| format!("conversation:inbox-{}-{c}", self.run_id))
            .collect();
        let conversations = names.len() as u64;

        // Seeding: the user joins every conversation, others write M messages, and the
        // archive's rate is the time until it is through all of them.
        eprintln!("making {user} a participant of {conversations} conversations");
        let started = Instant::now();
        let added = EventType::parse("conversation.participant_added")?;
        let joined = self
            .publish_each(&names, conversations, 1_000_000, None, |_| {
                let data = RawJson::encode(&json!({"user": user}))?;
                Ok(Envelope::new(added.clone(), data))
            })
            .await?;
        eprintln!("publishing {} messages from other users", size.messages);
        let new = EventType::parse("message.new")?;
        let seeded = self
            .publish_each(&names, size.messages, 1_000_000, Some("seeding"), |i| {
                message(&new, i, json!({"text": seeded_text(i)}))
            })
            .await?;
        let last = joined.iter().chain(&seeded).map(|(_, seq)| *seq).max();
        self.archived_through(&names[0], last.unwrap_or(0)).await?;
        let archive_seconds = started.elapsed().as_secs_f64();
        let archived = conversations + size.messages;
        eprintln!(
            "archived {archived} events in {archive_seconds:.1} s ({:.0}/s)",
            archived as f64 / archive_seconds
        );

        // The user's RPCs, sequential, over a socket of their own.
        let mut rpc = Rpc {
            socket: self.open(&user, &[]).await?,
            id: 0,
            last: None,
        };
        self.searchable(&mut rpc).await?;
        eprintln!("{} inbox.list and messages.search each", size.requests);
        let page = conversations.min(20);
        let mut listed = Histogram::<u64>::new(3)?;
        for _ in 0..size.requests {
            let (result, took) = rpc.call("inbox.list", json!({"limit": 20})).await?;
            let got = result["conversations"].as_array().map_or(0, Vec::len) as u64;
            if got != page {
                bail!("inbox.list listed {got} conversations, not {page}: {result}");
            }
            listed.record(took.as_micros() as u64)?;
        }
        let mut searched = Histogram::<u64>::new(3)?;
        let mut by_query = std::collections::BTreeMap::new();
        for q in QUERIES {
            by_query.insert(q, Histogram::<u64>::new(3)?);
        }
        for i in 0..size.requests {
            let q = QUERIES[(i % QUERIES.len() as u64) as usize];
            let (result, took) = rpc.call("messages.search", json!({"q": q})).await?;
            if q == "quixotic" && result["results"].as_array().is_none_or(|r| !r.is_empty()) {
                bail!("messages.search found a word no message has: {result}");
            }
            let micros = took.as_micros() as u64;
            searched.record(micros)?;
            if let Some(histogram) = by_query.get_mut(q) {
                histogram.record(micros)?;
            }
        }

        // Unread updates: the user's device listens on user:<id> while others write.
        let mut device = self.open(&user, &[]).await?;
        Self::subscribe(&mut device, &[format!("user:{user}")]).await?;
        let (reader, signals) = spawn_inbox_reader(device);
        let total = size.rate * size.duration;
        eprintln!(
            "publishing {total} messages over {} s to the user's conversations",
            size.duration
        );
        let sent = std::sync::Mutex::new(Vec::with_capacity(total as usize));
        let before = self.usage();
        let live = self
            .publish_each(&names, total, size.rate, None, |i| {
                let t = unix_micros();
                sent.lock().unwrap_or_else(|e| e.into_inner()).push(t);
                message(&new, i, json!({"text": format!("live {i}"), "t": t}))
            })
            .await?;
        let sent = sent.into_inner().unwrap_or_else(|e| e.into_inner());
        // Waits (at most 30 s) until every conversation's newest message is covered.
        let mut newest = std::collections::HashMap::new();
        for (c, seq) in &live {
            newest.insert(names[*c].as_str(), *seq);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let covered: std::collections::HashMap<String, u64> = {
                let signals = signals.lock().unwrap_or_else(|e| e.into_inner());
                let mut covered = std::collections::HashMap::new();
                for (ch, seq, _) in signals.iter() {
                    let top = covered.entry(ch.clone()).or_insert(0);
                    *top = (*top).max(*seq);
                }
                covered
            };
            if newest
                .iter()
                .all(|(ch, seq)| covered.get(*ch).is_some_and(|top| top >= seq))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = self.usage();
        reader.abort();
        let signals = std::mem::take(&mut *signals.lock().unwrap_or_else(|e| e.into_inner()));
        let (updated, missing) = unread_latency(&names, &live, &sent, &signals)?;

        let mut report = Report {
            scenario: "inbox".into(),
            parameters: json!({"conversations": size.conversations, "messages": size.messages,
                               "requests": size.requests, "rate": size.rate,
                               "duration": size.duration}),
            published: live.len() as u64,
            deliveries: updated.len(),
            deliveries_per_s: updated.len() as f64 / size.duration as f64,
            missing,
            latency_ms: Latency::of(&updated),
            archived: Some(archived),
            archive_events_per_s: Some(archived as f64 / archive_seconds),
            list_latency_ms: Some(Latency::of(&listed)),
            search_latency_ms: Some(Latency::of(&searched)),
            search_by_query_ms: Some(
                by_query
                    .iter()
                    .filter(|(_, h)| !h.is_empty())
                    .map(|(q, h)| (q.to_string(), Latency::of(h)))
                    .collect(),
            ),
            seconds: run_started.elapsed().as_secs_f64(),
            ..Report::default()
        };
        self.fill_usage(&mut report, before, after);
        Ok(report)
    }

    /// Waits until the archive has processed `EVENTS` through `seq`, asking it on
    /// `int.archive.read` about `ch` (its `through`, docs/protocol.md section 10.10), and
    /// tells its progress every 5 s; fails when it stops moving for a minute.
    async fn archived_through(&self, ch: &str, seq: u64) -> anyhow::Result<()> {
        let js = async_nats::jetstream::new(self.client.clone());
        let mut stream = js.get_stream(switchboard_bus::EVENTS_STREAM).await?;
        let epoch = stream.info().await?.created.unix_timestamp_nanos();
        let params = json!({"ch": ch, "epoch": epoch.to_string(), "after": 0, "limit": 1});
        let (mut moved, mut seen, mut told) = (Instant::now(), 0, Instant::now());
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Rt-User", "switchboard-cli");
            headers.insert("Rt-Role", "service");
            let request = self.client.request_with_headers(
                "int.archive.read",
                headers,
                params.to_string().into(),
            );
            let reply = tokio::time::timeout(Duration::from_secs(10), request)
                .await
                .context("int.archive.read timed out")?;
            let reply = match reply {
                // The workers may still be starting: that counts as not moving yet.
                Err(e)
                    if e.kind() == async_nats::RequestErrorKind::NoResponders
                        && moved.elapsed() < Duration::from_secs(60) =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                other => other
                    .context("int.archive.read failed: is the workers' archive job running?")?,
            };
            let reply: serde_json::Value = serde_json::from_slice(&reply.payload)
                .context("unreadable int.archive.read answer")?;
            let Some(through) = reply["result"]["through"].as_u64() else {
                bail!("int.archive.read refused: {reply}");
            };
            if through >= seq {
                return Ok(());
            }
            if through > seen {
                (moved, seen) = (Instant::now(), through);
            } else if moved.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the archive has not moved for 60 s: through seq {through}, waiting for {seq}"
                );
            }
            if told.elapsed() >= Duration::from_secs(5) {
                eprintln!("archive: through seq {through} of {seq}");
                told = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (at most 60 s) until `messages.search` finds the seeded messages: the
    /// membership job makes the user a participant beside the archive.
    async fn searchable(&self, rpc: &mut Rpc) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (result, _) = rpc.call("messages.search", json!({"q": "note"})).await?;
            if result["results"].as_array().is_some_and(|r| !r.is_empty()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "messages.search finds none of the seeded messages after 60 s: is the workers' membership job running?"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// For each live message (its channel index and seq, sent at `sent[i]`), the latency to
/// the first signal of its conversation whose `last.seq` covers it; and how many no
/// signal covered.
fn unread_latency(
    names: &[String],
    live: &[(usize, u64)],
    sent: &[u64],
    signals: &[InboxSignal],
) -> anyhow::Result<(Histogram<u64>, u64)> {
    // Per conversation, in arrival order: the highest seq covered so far, and when.
    let mut covering: std::collections::HashMap<&str, Vec<(u64, u64)>> =
        std::collections::HashMap::new();
    for (ch, seq, at) in signals {
        let list = covering.entry(ch.as_str()).or_default();
        let top = list.last().map_or(0, |(top, _)| *top).max(*seq);
        list.push((top, *at));
    }
    let mut latency = Histogram::<u64>::new(3)?;
    let mut missing = 0;
    for ((c, seq), t) in live.iter().zip(sent) {
        let first = covering.get(names[*c].as_str()).and_then(|list| {
            let k = list.partition_point(|(top, _)| top < seq);
            list.get(k)
        });
        match first {
            Some((_, at)) => latency.record(at.saturating_sub(*t))?,
            None => missing += 1,
        }
    }
    Ok((latency, missing))
}
