//! `switchboard tail`: follow channels live, optionally starting from a stored position.
//!
//! The same way an edge resumes a subscription (docs/protocol.md, section 6): subscribe to the live
//! subjects first, then read the stream's last seq; stored events up to that seq come
//! from the store (`--since`, `--last`, `--from-seq`), everything after it from the live
//! subjects, and a live event at or below a channel's cursor is a copy already shown.
//! `Nats-Last-Sequence` on each live event names the previous event of its channel: when
//! it is past the cursor, events were missed (a slow subscriber, a reconnect) and are
//! read from the store before the live one is shown. Signals (`--signals`) are
//! ephemeral and shown as they come.

use std::io::Write as _;

use anyhow::Context as _;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use serde::Deserialize;
use switchboard_bus::headers;
use switchboard_bus::store::{MAX_BATCH, Store, StoredEvent};
use switchboard_schemas::{ChannelName, RawJson, SubjectKind, Timestamp, TypeFilter, TypeFilters};

use crate::merge::{self, Merged, Source};
use crate::when;

const EXAMPLES: &str = "Examples:
  switchboard tail project:p1
  switchboard tail conversation:c1 --signals --last 20
  switchboard tail user:u1 project:p1 --since 15m --type 'bid.*' --json
  switchboard tail project:p1 --from-seq 1200 --count 10

One line per event: #<seq> <time> <channel> <type> <event id> [by <actor>] <data>.
With --json: {\"seq\":N,\"channel\":\"...\",\"event\":{envelope}} per event, and
{\"channel\":\"...\",\"signal\":{\"from\":\"...\",\"type\":\"...\",\"data\":...}} per signal.
Stops on Ctrl-C.";

#[derive(Debug, clap::Args)]
#[command(
    after_help = EXAMPLES,
    group(clap::ArgGroup::new("start").args(["since", "last", "from_seq"]))
)]
pub struct Args {
    /// Channels to follow: project:p1, user:u1:messages, ...
    #[arg(required = true, value_name = "CHANNEL", value_parser = parse_channel)]
    channels: Vec<ChannelName>,
    /// Only events of this type (repeatable): an exact type or prefix.* .
    #[arg(long = "type", short = 't', value_name = "FILTER", value_parser = TypeFilter::parse)]
    types: Vec<TypeFilter>,
    /// Also show signals (typing, cursors, join/leave) sent on the channels.
    #[arg(long)]
    signals: bool,
    /// First show events stored since this time: RFC 3339, or a duration ago (15m, 2h).
    #[arg(long, value_name = "TIME", value_parser = when::parse_instant)]
    since: Option<Timestamp>,
    /// First show the last N stored events of each channel (then apply --type).
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// First show stored events from this seq on.
    #[arg(long, value_name = "SEQ")]
    from_seq: Option<u64>,
    /// Stop after showing N events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

fn parse_channel(text: &str) -> Result<ChannelName, String> {
    ChannelName::parse(text).map_err(|e| e.to_string())
}

enum Incoming {
    Event(usize, async_nats::Message),
    Signal(usize, async_nats::Message),
}

pub async fn run(nats: &crate::Nats, json: bool, args: Args) -> anyhow::Result<()> {
    let interrupt = crate::on_interrupt()?;
    tokio::pin!(interrupt);
    let client = nats.connect().await?;
    let store = Store::new(client.clone());
    let sources = merge::group(args.channels.clone());
    let subscribing = |subject: &str| format!("cannot subscribe to {subject}");
    let mut subscriptions: Vec<BoxStream<'static, Incoming>> = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        let base = source.base();
        let live = base.subject(SubjectKind::Live);
        let events = client
            .subscribe(live.clone())
            .await
            .with_context(|| subscribing(&live))?;
        subscriptions.push(events.map(move |m| Incoming::Event(index, m)).boxed());
        if args.signals {
            let sig = base.subject(SubjectKind::Signal);
            let signals = client
                .subscribe(sig.clone())
                .await
                .with_context(|| subscribing(&sig))?;
            subscriptions.push(signals.map(move |m| Incoming::Signal(index, m)).boxed());
        }
    }
    // Once the server has the subscriptions, every event stored after the position
    // read next reaches them.
    client
        .flush()
        .await
        .context("NATS did not confirm the subscriptions")?;
    let mut incoming = stream::select_all(subscriptions);
    let position = store
        .position()
        .await
        .context("cannot read the EVENTS stream (has `switchboard init` run?)")?;

    let mut printer = Printer {
        json,
        filters: args.types.iter().cloned().collect(),
        remaining: args.count,
        closed: false,
    };
    // Every event of a source's channel up to its cursor has been handled.
    let mut cursors = vec![position.last_seq; sources.len()];

    tokio::select! {
        result = backlog(&store, &sources, &args, position.last_seq, &mut printer) => result?,
        () = &mut interrupt => return Ok(()),
    }
    while !printer.done() {
        let next = tokio::select! {
            next = incoming.next() => next,
            () = &mut interrupt => return Ok(()),
        };
        match next.context("the NATS connection closed")? {
            Incoming::Event(index, message) => {
                let Some(event) = StoredEvent::from_message(&message) else {
                    continue;
                };
                let cursor = &mut cursors[index];
                if event.seq <= *cursor {
                    continue;
                }
                let previous = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(headers::NATS_LAST_SEQUENCE))
                    .and_then(|v| v.as_str().parse::<u64>().ok())
                    .unwrap_or(0);
                let source = &sources[index];
                if previous > *cursor {
                    tokio::select! {
                        result = repair(&store, source, *cursor + 1, event.seq - 1, &mut printer) => result?,
                        () = &mut interrupt => return Ok(()),
                    }
                }
                *cursor = event.seq;
                printer.event(source, &event);
            }
            Incoming::Signal(index, message) => printer.signal(&sources[index], &message.payload),
        }
    }
    Ok(())
}

/// Shows the stored events the start position asks for, up to `last` (the stream's last
/// seq when the live subscriptions were in place).
async fn backlog(
    store: &Store,
    sources: &[Source],
    args: &Args,
    last: u64,
    printer: &mut Printer,
) -> anyhow::Result<()> {
    let reading = "reading stored events failed";
    if let Some(count) = args.last {
        let mut events = Vec::new();
        for (index, source) in sources.iter().enumerate() {
            let newest = store
                .newest(&source.subject, Some(last + 1), count)
                .await
                .context(reading)?;
            events.extend(newest.into_iter().map(|event| (index, event)));
        }
        events.sort_by_key(|(_, event)| event.seq);
        for (index, event) in events {
            printer.event(&sources[index], &event);
        }
        return Ok(());
    }
    let first = match (&args.since, args.from_seq) {
        (Some(since), _) => match merge::first_seq_at_or_after(store, since)
            .await
            .context(reading)?
        {
            Some(seq) => seq,
            None => return Ok(()),
        },
        (None, Some(seq)) => seq,
        (None, None) => return Ok(()),
    };
    let mut merged = Merged::start(store, sources, first, last);
    while let Some(item) = merged.next().await.context(reading)? {
        printer.event(&sources[item.source], &item.event);
        if printer.done() {
            break;
        }
    }
    Ok(())
}

/// Shows the stored events of `source` with `first <= seq <= last` that the live
/// subscription missed.
async fn repair(
    store: &Store,
    source: &Source,
    first: u64,
    last: u64,
    printer: &mut Printer,
) -> anyhow::Result<()> {
    let mut next = first;
    while next <= last {
        let events = store
            .forward(&source.subject, next, MAX_BATCH)
            .await
            .with_context(|| format!("cannot read missed events of {}", source.subject))?;
        let mut advanced = false;
        for event in events.iter().filter(|e| e.seq <= last) {
            printer.event(source, event);
            next = event.seq + 1;
            advanced = true;
        }
        if !advanced {
            break;
        }
    }
    Ok(())
}

/// A signal as it travels on `sig.<ns>.<id>`; read leniently, since backends send them too.
#[derive(Debug, Deserialize)]
struct Signal {
    #[serde(default)]
    from: String,
    #[serde(rename = "type", default)]
    ty: String,
    #[serde(default)]
    data: RawJson,
}

struct Printer {
    json: bool,
    filters: TypeFilters,
    /// Events still to show before stopping (`--count`).
    remaining: Option<u64>,
    /// Set when stdout cannot be written any more (e.g. `| head` exited).
    closed: bool,
}

impl Printer {
    fn done(&self) -> bool {
        self.closed || self.remaining == Some(0)
    }

    fn write(&mut self, line: &[u8]) {
        let mut out = std::io::stdout().lock();
        if let Err(error) = out.write_all(line).and_then(|()| out.flush()) {
            if error.kind() != std::io::ErrorKind::BrokenPipe {
                eprintln!("switchboard: cannot write to stdout: {error}");
            }
            self.closed = true;
        }
    }

    fn event(&mut self, source: &Source, event: &StoredEvent) {
        if self.done() {
            return;
        }
        let envelope = match event.envelope() {
            Ok(envelope) => envelope,
            Err(error) => {
                eprintln!(
                    "switchboard: seq {} on {} is not an event ({error}): skipped",
                    event.seq, event.subject
                );
                return;
            }
        };
        let ty = envelope.ty.as_str();
        let Some(channel) = source.spelling_for(ty) else {
            return;
        };
        if !self.filters.matches_any(ty) {
            return;
        }
        let mut line = Vec::new();
        if self.json {
            crate::replay::json_line(&mut line, event.seq, channel, &envelope);
        } else {
            let actor = envelope
                .actor
                .as_ref()
                .map(|a| format!(" by {} ({})", a.id, a.kind))
                .unwrap_or_default();
            line = format!(
                "#{} {} {channel} {ty} {}{actor} {}\n",
                event.seq, envelope.timestamp, envelope.id, envelope.data
            )
            .into_bytes();
        }
        self.write(&line);
        if let Some(remaining) = &mut self.remaining {
            *remaining -= 1;
        }
    }

    fn signal(&mut self, source: &Source, payload: &[u8]) {
        let channel = source.base();
        let signal: Signal = match serde_json::from_slice(payload) {
            Ok(signal) => signal,
            Err(error) => {
                eprintln!("switchboard: unreadable signal on {channel} ({error}): skipped");
                return;
            }
        };
        let line = if self.json {
            let signal = serde_json::json!({
                "channel": channel,
                "signal": {"from": signal.from, "type": signal.ty, "data": signal.data},
            });
            format!("{signal}\n")
        } else {
            format!(
                "~ {} {channel} {} from {} {}\n",
                Timestamp::now(),
                signal.ty,
                signal.from,
                signal.data
            )
        };
        self.write(line.as_bytes());
    }
}
