//! `switchboard publish`: store events on channels through the publishing API, one from
//! flags or many from JSON lines on stdin.
//!
//! An event keeps the id it is given (a line's `id`, `--id`, or the `id` of an `event`
//! line written by `switchboard replay`), and that id is its `Nats-Msg-Id`, so
//! publishing the same file again inside the stream's duplicate window stores nothing
//! twice: JetStream answers `duplicate` with the original seq. An event without an id
//! gets a fresh one, printed with its seq.

use anyhow::Context as _;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use serde::{Deserialize, Serialize};
use switchboard_bus::{Encoding, Published, Publisher};
use switchboard_schemas::{
    Actor, ChannelName, Envelope, EventId, EventType, Metadata, RawJson, Timestamp,
};
use tokio::io::AsyncBufReadExt;

use crate::output;

/// Publishes awaiting their acknowledgement at once, in `--stdin` mode.
const PUBLISH_WINDOW: usize = 256;

const EXAMPLES: &str = r#"Examples:
  switchboard publish --channel project:p1 --type bid.new --data '{"bidId":"b1","amount":5000}'
  switchboard publish --channel project:p1 --type bid.new --id evt_bid_b1 --actor-id u2 --actor-type contractor
  switchboard publish --stdin < events.jsonl
  switchboard replay --channel project:p1 | switchboard publish --stdin

Each --stdin line is one event:
  {"channel":"project:p1","type":"bid.new","data":{...},"id":"evt_...","source":"...",
   "subject":"...","actor":{"id":"u2","type":"contractor"},"metadata":{...},"timestamp":"RFC3339"}
(only channel and type are required), or a line of `switchboard replay`:
  {"seq":42,"channel":"project:p1","event":{<envelope>}}
Give every line an id to make re-running the file idempotent: within the stream's
duplicate window (10 minutes by default) an id already stored is reported as a
duplicate with its original seq and stored nothing."#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EncodingArg {
    /// Versioned postcard, what Rust services publish.
    Postcard,
    /// The JSON envelope, what other languages publish.
    Json,
}

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Read events as JSON lines from stdin instead of the flags below.
    #[arg(long, conflicts_with_all = ["channel", "ty", "data", "id", "actor_id", "source", "subject"])]
    stdin: bool,
    /// Channel to publish to, e.g. project:p1.
    #[arg(long, short = 'c', value_name = "CHANNEL", required_unless_present = "stdin", value_parser = parse_channel)]
    channel: Option<ChannelName>,
    /// Event type, e.g. bid.new.
    #[arg(long = "type", short = 't', value_name = "TYPE", required_unless_present = "stdin", value_parser = EventType::parse)]
    ty: Option<EventType>,
    /// The event's data, as JSON.
    #[arg(long, short = 'd', value_name = "JSON", default_value = "{}")]
    data: String,
    /// Event id (evt_...); a fresh one when absent. Publishing the same id again stores
    /// nothing twice.
    #[arg(long, value_name = "EVENT_ID", value_parser = EventId::parse)]
    id: Option<EventId>,
    /// Id of who caused the event (with --actor-type).
    #[arg(long, value_name = "ID", requires = "actor_type")]
    actor_id: Option<String>,
    /// Kind of actor: user, contractor, service, ... (with --actor-id).
    #[arg(long, value_name = "TYPE", requires = "actor_id")]
    actor_type: Option<String>,
    /// The service that produced the event.
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// What the event is about (the envelope's `subject`), e.g. project_789.
    #[arg(long, value_name = "TEXT")]
    subject: Option<String>,
    /// How the event is stored.
    #[arg(long, value_enum, default_value = "postcard")]
    encoding: EncodingArg,
}

fn parse_channel(text: &str) -> Result<ChannelName, String> {
    let channel = ChannelName::parse(text).map_err(|e| e.to_string())?;
    publishable(&channel)?;
    Ok(channel)
}

/// An alias is a view of its base channel: events go to the base.
fn publishable(channel: &ChannelName) -> Result<(), String> {
    match channel.alias() {
        None => Ok(()),
        Some(_) => Err(format!(
            "{channel} is an alias, nothing is published to it: publish to {}",
            channel.base()
        )),
    }
}

/// One `--stdin` line: an event in parts, or a whole envelope as `replay` writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    channel: String,
    /// A whole envelope; then only `seq` may be given besides `channel`.
    event: Option<Envelope>,
    /// Ignored: the seq an event had where it was read from.
    #[serde(rename = "seq")]
    _seq: Option<u64>,
    #[serde(rename = "type")]
    ty: Option<EventType>,
    id: Option<EventId>,
    data: Option<RawJson>,
    source: Option<String>,
    subject: Option<String>,
    actor: Option<Actor>,
    metadata: Option<Metadata>,
    timestamp: Option<Timestamp>,
}

impl Line {
    fn parse(text: &str) -> anyhow::Result<(ChannelName, Envelope)> {
        let line: Line = serde_json::from_str(text)?;
        let channel = ChannelName::parse(&line.channel)?;
        publishable(&channel).map_err(anyhow::Error::msg)?;
        if let Some(event) = line.event {
            let parts_too = line.ty.is_some()
                || line.id.is_some()
                || line.data.is_some()
                || line.source.is_some()
                || line.subject.is_some()
                || line.actor.is_some()
                || line.metadata.is_some()
                || line.timestamp.is_some();
            anyhow::ensure!(
                !parts_too,
                "give either `event` (a whole envelope) or `type`, `data`, ... but not both"
            );
            return Ok((channel, event));
        }
        let ty = line
            .ty
            .context("missing `type` (or `event`, a whole envelope)")?;
        let envelope = Envelope {
            id: line.id.unwrap_or_else(EventId::generate),
            ty,
            timestamp: line.timestamp.unwrap_or_else(Timestamp::now),
            source: line.source,
            subject: line.subject,
            actor: line.actor,
            data: line.data.unwrap_or_else(RawJson::null),
            metadata: line.metadata,
        };
        Ok((channel, envelope))
    }
}

/// What was stored for one event.
#[derive(Debug, Serialize)]
struct Outcome {
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    channel: ChannelName,
    seq: u64,
    event_id: EventId,
    duplicate: bool,
}

impl Outcome {
    fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
            return Ok(());
        }
        let what = if self.duplicate {
            "duplicate (stored before, nothing stored)"
        } else {
            "stored"
        };
        let line = self.line.map(|n| format!("line {n}: ")).unwrap_or_default();
        println!(
            "{line}seq {} {} {} {what}",
            self.seq, self.event_id, self.channel
        );
        Ok(())
    }
}

pub async fn run(nats: &crate::Nats, json: bool, args: Args) -> anyhow::Result<()> {
    let encoding = match args.encoding {
        EncodingArg::Postcard => Encoding::Postcard,
        EncodingArg::Json => Encoding::Json,
    };
    let publisher = Publisher::new(nats.connect().await?);
    if args.stdin {
        return publish_lines(&publisher, encoding, json).await;
    }
    let (Some(channel), Some(ty)) = (args.channel, args.ty) else {
        anyhow::bail!("give --channel and --type, or --stdin");
    };
    let data = RawJson::from_string(args.data).context("--data is not valid JSON")?;
    let envelope = Envelope {
        id: args.id.unwrap_or_else(EventId::generate),
        ty,
        timestamp: Timestamp::now(),
        source: args.source,
        subject: args.subject,
        actor: args
            .actor_id
            .zip(args.actor_type)
            .map(|(id, kind)| Actor { id, kind }),
        data,
        metadata: None,
    };
    let published = publish(&publisher, &channel, &envelope, encoding).await?;
    let outcome = Outcome {
        line: None,
        channel,
        seq: published.seq,
        event_id: envelope.id,
        duplicate: published.duplicate,
    };
    if json {
        output::json(&outcome)
    } else {
        outcome.print(false)
    }
}

async fn publish(
    publisher: &Publisher,
    channel: &ChannelName,
    envelope: &Envelope,
    encoding: Encoding,
) -> anyhow::Result<Published> {
    publisher
        .publish_as(channel, envelope, encoding)
        .await
        .with_context(|| {
            format!(
                "event {} was not stored (is NATS up and has `switchboard init` run?)",
                envelope.id
            )
        })
}

/// Publishes each line of stdin in order, up to [`PUBLISH_WINDOW`] at once; stops at the
/// first bad line once the lines before it are stored.
async fn publish_lines(
    publisher: &Publisher,
    encoding: Encoding,
    json: bool,
) -> anyhow::Result<()> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut in_flight = FuturesOrdered::new();
    let mut number = 0;
    let (mut stored, mut duplicates) = (0u64, 0u64);
    let mut stop = None;
    loop {
        while stop.is_none() && in_flight.len() < PUBLISH_WINDOW {
            let Some(text) = lines
                .next_line()
                .await
                .with_context(|| format!("cannot read line {} of stdin", number + 1))?
            else {
                break;
            };
            number += 1;
            if text.trim().is_empty() {
                continue;
            }
            match Line::parse(&text) {
                Ok((channel, envelope)) => {
                    let publisher = publisher.clone();
                    let line = number;
                    in_flight.push_back(async move {
                        let published = publish(&publisher, &channel, &envelope, encoding).await;
                        (line, channel, envelope.id, published)
                    });
                }
                Err(error) => stop = Some(anyhow::anyhow!("line {number}: {error:#}")),
            }
        }
        let Some((line, channel, event_id, published)) = in_flight.next().await else {
            break;
        };
        let published = published.with_context(|| format!("line {line}"))?;
        if published.duplicate {
            duplicates += 1;
        } else {
            stored += 1;
        }
        Outcome {
            line: Some(line),
            channel,
            seq: published.seq,
            event_id,
            duplicate: published.duplicate,
        }
        .print(json)?;
    }
    eprintln!("{stored} events stored, {duplicates} duplicates (already stored)");
    match stop {
        Some(error) => Err(error.context(format!(
            "stopped at a bad line; the {} lines before it are stored (fix it and run the \
             file again: lines with an id are not stored twice)",
            stored + duplicates
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_in_parts_or_whole() {
        let (channel, event) = Line::parse(
            r#"{"channel":"project:p1","type":"bid.new","id":"evt_a1","data":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(channel.as_str(), "project:p1");
        assert_eq!(event.id.as_str(), "evt_a1");
        assert_eq!(event.data.as_str(), r#"{"x":1}"#);

        let (_, generated) = Line::parse(r#"{"channel":"project:p1","type":"bid.new"}"#).unwrap();
        assert!(generated.id.as_str().starts_with("evt_"));

        let whole = r#"{"seq":7,"channel":"project:p1","event":{"id":"evt_w","type":"bid.new","timestamp":"2026-11-22T14:30:00Z","data":null}}"#;
        let (_, event) = Line::parse(whole).unwrap();
        assert_eq!(event.id.as_str(), "evt_w");
    }

    #[test]
    fn bad_lines_say_why() {
        let cases = [
            ("not json", "expected"),
            (r#"{"channel":"project:p1"}"#, "missing `type`"),
            (r#"{"channel":"nope:p1","type":"a"}"#, "namespace"),
            (r#"{"channel":"project:p1","type":"Bad"}"#, "event type"),
            (
                r#"{"channel":"project:p1","type":"a","chanel":"x"}"#,
                "unknown field",
            ),
            (r#"{"channel":"user:u1:messages","type":"a"}"#, "alias"),
            (
                r#"{"channel":"project:p1","type":"a","event":{"id":"evt_w","type":"a","timestamp":"2026-11-22T14:30:00Z"}}"#,
                "not both",
            ),
        ];
        for (line, expected) in cases {
            let error = format!("{:#}", Line::parse(line).unwrap_err());
            assert!(error.contains(expected), "{line}: {error}");
        }
    }
}
