//! `switchboard replay`: stored events of a selection, in seq order, written out as JSON
//! lines or re-delivered to a subject.
//!
//! A selection is a set of channels (given, or a user's: `user:<id>` plus every channel
//! the `members` bucket lists them in), a seq window and type filters. Time bounds are
//! turned into seq bounds first (the first event stored at or after the time, on any
//! channel), and the upper bound is capped at the stream's last seq when the replay
//! starts, so a replay of a busy stream ends, and what it covered is a plain seq range:
//! that is what makes "resume with `--from-seq N+1`" exact.
//!
//! Reading goes through [`crate::merge`] (bounded batches per channel); writing through
//! a [`Sink`]. The sink knows which seq is *done* (written, or acknowledged by
//! JetStream), and that is the seq an interruption or a failure reports.
//!
//! Channels of the archived namespaces (`SWITCHBOARD_ARCHIVE_NAMESPACES`, default
//! `conversation`) reach back past the stream: what `EVENTS` no longer holds of them is
//! read from the workers' archive over `int.archive.read` ([`Archived`]), below each
//! channel's oldest event in the stream, and merged in by seq (docs/protocol.md, section
//! 10.10). Archived events carry the event as the archive holds it now (an edited
//! message's current text, a deleted one's empty data) and are kept by their own
//! timestamp when `--since`/`--until` are given.

use std::collections::VecDeque;

use bytes::Bytes;
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use switchboard_bus::store::{Store, StoredEvent};
use switchboard_bus::{MEMBERS_BUCKET, headers};
use switchboard_schemas::{
    ChannelName, Envelope, Membership, Namespace, Timestamp, TypeFilter, TypeFilters, UserId,
};

use crate::merge::{self, Item, Merged, Source};
use crate::{Interrupted, when};

/// Header naming the channel an event was stored on, on re-delivered messages.
pub const RT_CHANNEL: &str = "Rt-Channel";
/// Header with the event's seq in the `EVENTS` stream, on re-delivered messages.
pub const RT_SEQ: &str = "Rt-Seq";
/// Publishes awaiting their acknowledgement at once.
const PUBLISH_WINDOW: usize = 256;
/// How long an interrupted replay waits for acknowledgements already on their way.
const ACK_GRACE: Duration = Duration::from_secs(5);

const EXAMPLES: &str = "Examples:
  switchboard replay --channel project:p1 --since 2h > p1.jsonl
  switchboard replay --user u1 --since 2026-11-22T00:00:00Z --until 2026-11-23T00:00:00Z
  switchboard replay --channel conversation:c1 --type 'message.*' --output c1.jsonl
  switchboard replay --channel project:p1 --from-seq 1200 --to-subject backfill.notifications --dry-run

Each line of output is {\"seq\":N,\"channel\":\"...\",\"event\":{envelope}}, in seq order.
Re-delivered messages keep the event id as Nats-Msg-Id and carry Rt-Type, Rt-Channel
and Rt-Seq headers; the payload is the stored one (Content-Type: application/json when
it is a JSON envelope, postcard otherwise).

Channels of SWITCHBOARD_ARCHIVE_NAMESPACES (default conversation) also read what EVENTS
no longer holds from the workers' archive (int.archive.read), with the same seqs; those
events are JSON envelopes as the archive holds them (edited text, deleted messages
blanked), kept by their own timestamp for --since/--until.";

#[derive(Debug, clap::Args)]
#[command(
    after_help = EXAMPLES,
    group(clap::ArgGroup::new("selection").required(true).multiple(true).args(["channels", "users"]))
)]
pub struct Args {
    /// A channel to replay (repeatable): project:p1, user:u1, user:u1:messages, ...
    #[arg(long = "channel", short = 'c', value_name = "CHANNEL", value_parser = parse_channel)]
    channels: Vec<ChannelName>,
    /// A user to replay for (repeatable): their user:<id> channel plus every channel the
    /// members bucket lists them in.
    #[arg(long = "user", short = 'u', value_name = "USER", value_parser = parse_user)]
    users: Vec<UserId>,
    /// Only events stored at or after this time: RFC 3339, or a duration ago (90s, 15m,
    /// 2h, 3d).
    #[arg(long, value_name = "TIME", value_parser = when::parse_instant)]
    since: Option<Timestamp>,
    /// Only events stored before this time (RFC 3339 or a duration ago).
    #[arg(long, value_name = "TIME", value_parser = when::parse_instant)]
    until: Option<Timestamp>,
    /// Only events with at least this seq.
    #[arg(long, value_name = "SEQ")]
    from_seq: Option<u64>,
    /// Only events with at most this seq.
    #[arg(long, value_name = "SEQ")]
    to_seq: Option<u64>,
    /// Only events of this type (repeatable): an exact type (bid.new) or a prefix
    /// (bid.*), as in a subscription's `types`.
    #[arg(long = "type", short = 't', value_name = "FILTER", value_parser = TypeFilter::parse)]
    types: Vec<TypeFilter>,
    /// Write the JSON lines to this file instead of stdout (replaced, unless --append).
    #[arg(long, short = 'o', value_name = "FILE", conflicts_with = "to_subject")]
    output: Option<PathBuf>,
    /// Append to --output instead of replacing it (what a resumed replay needs).
    #[arg(long, requires = "output")]
    append: bool,
    /// Re-deliver the events by publishing them through JetStream to this subject,
    /// keeping each event id as Nats-Msg-Id so a stream's duplicate window or an
    /// idempotent consumer stores or handles each event once.
    #[arg(long, value_name = "SUBJECT", value_parser = parse_subject)]
    to_subject: Option<String>,
    /// With --to-subject: list what would be sent, send nothing.
    #[arg(long, requires = "to_subject")]
    dry_run: bool,
    /// At the end, print figures as one JSON object on stderr: events, rate, peak RSS.
    #[arg(long)]
    stats: bool,
    /// Namespaces the workers' archive job keeps (comma separated, as the workers are
    /// told): what EVENTS no longer holds of their channels is read from the archive.
    #[arg(
        long,
        env = "SWITCHBOARD_ARCHIVE_NAMESPACES",
        value_name = "NS",
        value_delimiter = ',',
        default_value = "conversation",
        value_parser = parse_namespace
    )]
    archive_namespaces: Vec<Namespace>,
}

fn parse_channel(text: &str) -> Result<ChannelName, String> {
    ChannelName::parse(text).map_err(|e| e.to_string())
}

fn parse_namespace(text: &str) -> Result<Namespace, String> {
    text.trim().parse().map_err(|e| format!("{e}"))
}

fn parse_user(text: &str) -> Result<UserId, String> {
    UserId::parse(text).map_err(|e| e.to_string())
}

/// A subject to publish to: tokens of printable ASCII without wildcards.
pub fn parse_subject(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.split('.').all(|token| {
            !token.is_empty()
                && token != "*"
                && token != ">"
                && token.bytes().all(|b| b.is_ascii_graphic())
        });
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "invalid subject `{text}`: expected dot-separated tokens without spaces or wildcards"
        ))
    }
}

pub async fn run(nats: &crate::Nats, json: bool, args: Args) -> anyhow::Result<()> {
    if let (Some(from), Some(to)) = (args.from_seq, args.to_seq) {
        anyhow::ensure!(from <= to, "--from-seq {from} is after --to-seq {to}");
    }
    let client = nats.connect().await?;
    let js = jetstream::new(client.clone());
    let store = Store::new(client.clone());
    let position = store
        .position()
        .await
        .context("cannot read the EVENTS stream (has `switchboard init` run?)")?;

    let mut channels = args.channels.clone();
    for user in &args.users {
        channels.extend(user_channels(&js, user).await?);
    }
    let sources = merge::group(channels);
    let filters: TypeFilters = args.types.iter().cloned().collect();
    let namespaces = &args.archive_namespaces;
    let archived_sources = sources
        .iter()
        .any(|s| namespaces.contains(&s.base().namespace()));
    let (first, last) = window(
        &store,
        &args,
        position.first_seq,
        position.last_seq,
        archived_sources,
    )
    .await?;

    let interrupt = crate::on_interrupt()?;
    // Output is written synchronously, so the replay's own task may sit in a write to a
    // full pipe when Ctrl-C comes: another task takes the signal and raises a flag that
    // the copy loop checks before every event.
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::new(tokio::sync::Notify::new());
    {
        let (stop, stopped) = (stop.clone(), stopped.clone());
        tokio::spawn(async move {
            interrupt.await;
            stop.store(true, Ordering::SeqCst);
            stopped.notify_one();
        });
    }
    let mut sink = Sink::open(&args, json, js)?;
    let mut tally = Tally::default();
    let started = Instant::now();
    let bar = progress_bar(first, last);
    let outcome = if first <= last {
        let archived = if archived_sources {
            let reach = Reach {
                epoch: &position.epoch,
                first,
                last,
                since: args.since,
                until: args.until,
            };
            Archived::open(&client, &store, &sources, namespaces, reach).await?
        } else {
            Archived::default()
        };
        let mut merged = Combined {
            archived,
            stream: Merged::start(&store, &sources, first, last),
            next_archived: None,
            next_stored: None,
            stream_done: false,
        };
        let selection = Selection {
            sources: &sources,
            filters: &filters,
            first,
        };
        let copy = copy(&mut merged, selection, &mut sink, &mut tally, &bar, &stop);
        tokio::select! {
            result = copy => Some(result),
            () = stopped.notified() => None,
        }
    } else {
        Some(Ok(()))
    };
    bar.finish_and_clear();
    let finished = tokio::time::timeout(ACK_GRACE, sink.finish(&mut tally))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("acknowledgements did not arrive in time")));
    let resume = |tally: &Tally| {
        let from = tally.done_seq.map_or(first, |done| done + 1);
        format!(
            "{}; resume with: {}",
            tally.done_text(),
            resume_command(&args, &sources, from, last)
        )
    };
    let failure = match outcome {
        None => return Err(Interrupted(format!("interrupted, {}", resume(&tally))).into()),
        Some(result) => result.and(finished).err(),
    };
    if let Some(error) = failure {
        anyhow::bail!("replay stopped: {error:#}; {}", resume(&tally));
    }

    let seconds = started.elapsed().as_secs_f64();
    let rate = tally.events as f64 / seconds.max(1e-9);
    let verb = if args.dry_run {
        "would send"
    } else {
        "replayed"
    };
    let range = if first <= last {
        format!("seq {first}..{last}")
    } else {
        "nothing stored in the selection".to_string()
    };
    let mut summary = format!(
        "{verb} {} events from {} channel(s) to {} ({range}) in {seconds:.2} s ({rate:.0} events/s)",
        tally.events,
        sources.len(),
        sink.destination(&args),
    );
    if tally.duplicates > 0 {
        let _ = write!(summary, "; {} were already stored", tally.duplicates);
    }
    if tally.skipped > 0 {
        let _ = write!(summary, "; {} undecodable events skipped", tally.skipped);
    }
    eprintln!("{summary}");
    if args.stats {
        let stats = Stats {
            events: tally.events,
            read: tally.read,
            skipped: tally.skipped,
            duplicates: tally.duplicates,
            first_seq: first,
            last_seq: last,
            seconds,
            events_per_sec: rate,
            peak_rss_kib: peak_rss_kib(),
        };
        eprintln!("{}", serde_json::to_string(&stats)?);
    }
    Ok(())
}

/// `user:<id>` and every channel whose membership key for `user` is present.
async fn user_channels(js: &jetstream::Context, user: &UserId) -> anyhow::Result<Vec<ChannelName>> {
    let bucket = js.get_key_value(MEMBERS_BUCKET).await.with_context(|| {
        format!("cannot open KV bucket {MEMBERS_BUCKET} (has `switchboard init` run?)")
    })?;
    let mut channels = Vec::new();
    for key in crate::members::written_keys(js, &format!("*.*.{user}")).await? {
        let Some(membership) = Membership::from_key(&key) else {
            continue;
        };
        // A deleted key keeps its subject until compaction: only present keys count.
        let present = bucket
            .get(&key)
            .await
            .with_context(|| format!("cannot read key {key} of bucket {MEMBERS_BUCKET}"))?
            .is_some();
        if present {
            channels.push(membership.channel);
        }
    }
    channels.sort();
    let own =
        ChannelName::new(Namespace::User, user.as_str()).expect("a user id is a valid channel id");
    channels.insert(0, own);
    Ok(channels)
}

/// The inclusive seq window of the selection: the seq flags, the time bounds turned into
/// seqs, and the stream's range now. With `archived` channels in the selection the
/// window reaches back past the stream's first seq, and a `--since` older than the
/// stream's first event is left to the archived events' own timestamps.
async fn window(
    store: &Store,
    args: &Args,
    stream_first: u64,
    stream_last: u64,
    archived: bool,
) -> anyhow::Result<(u64, u64)> {
    let floor = if archived { 1 } else { stream_first };
    let mut first = args.from_seq.unwrap_or(1).max(floor).max(1);
    let mut last = args.to_seq.unwrap_or(u64::MAX).min(stream_last);
    if let Some(since) = &args.since {
        match merge::first_seq_at_or_after(store, since)
            .await
            .context("cannot find the first event of --since")?
        {
            // The stream's first event: --since may be older than the stream.
            Some(seq) if archived && seq <= stream_first => {}
            Some(seq) => first = first.max(seq),
            None => last = 0,
        }
    }
    if let Some(until) = &args.until
        && let Some(seq) = merge::first_seq_at_or_after(store, until)
            .await
            .context("cannot find the first event of --until")?
    {
        last = last.min(seq.saturating_sub(1));
    }
    Ok((first, last))
}

/// What [`copy`] keeps of what it reads.
struct Selection<'a> {
    sources: &'a [Source],
    filters: &'a TypeFilters,
    /// The first seq of the window, where the progress bar starts.
    first: u64,
}

/// Reads the selection to its end, handing each selected event to the sink.
async fn copy(
    merged: &mut Combined,
    Selection {
        sources,
        filters,
        first,
    }: Selection<'_>,
    sink: &mut Sink,
    tally: &mut Tally,
    bar: &ProgressBar,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while let Some(item) = merged
        .next()
        .await
        .context("reading stored events failed")?
    {
        if stop.load(Ordering::SeqCst) {
            // Interrupted: wait here for the caller to take the interruption branch.
            std::future::pending::<()>().await;
        }
        let seq = item.event.seq;
        tally.read += 1;
        bar.set_position(seq - first + 1);
        if tally.read.is_multiple_of(1024) {
            let rate = tally.events as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{} events, {rate:.0}/s", tally.events));
        }
        let source = &sources[item.source];
        // The Rt-Type header lets most unselected events go without being decoded.
        if let Some(ty) = &item.event.ty
            && !(filters.matches_any(ty) && source.spelling_for(ty).is_some())
        {
            sink.pass(seq, tally);
            continue;
        }
        let envelope = match item.event.envelope() {
            Ok(envelope) => envelope,
            Err(error) => {
                bar.suspend(|| {
                    eprintln!(
                        "switchboard: seq {seq} on {} is not an event ({error}): skipped",
                        item.event.subject
                    )
                });
                tally.skipped += 1;
                sink.pass(seq, tally);
                continue;
            }
        };
        let ty = envelope.ty.as_str();
        match source.spelling_for(ty) {
            Some(channel) if filters.matches_any(ty) => {
                sink.send(&item.event, channel, &envelope, tally).await?;
                tally.events += 1;
            }
            _ => sink.pass(seq, tally),
        }
    }
    Ok(())
}

/// What a replay did, and how far it got.
#[derive(Debug, Default)]
struct Tally {
    /// Events read from the store (selected or not).
    read: u64,
    /// Events written, sent, or (dry run) listed.
    events: u64,
    /// Events that were not valid envelopes.
    skipped: u64,
    /// Re-delivered events JetStream had already stored.
    duplicates: u64,
    /// Every selected event with a seq up to this one is done.
    done_seq: Option<u64>,
}

impl Tally {
    fn done_text(&self) -> String {
        match self.done_seq {
            Some(seq) => format!("done through seq {seq} ({} events)", self.events),
            None => "nothing was done yet".to_string(),
        }
    }
}

#[derive(Debug, Serialize)]
struct Stats {
    events: u64,
    read: u64,
    skipped: u64,
    duplicates: u64,
    first_seq: u64,
    last_seq: u64,
    seconds: f64,
    events_per_sec: f64,
    /// VmHWM of this process: the most resident memory it ever had.
    peak_rss_kib: Option<u64>,
}

/// The peak resident set size of this process, from `/proc/self/status` (Linux).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Where selected events go.
// One sink exists per replay: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Sink {
    /// JSON lines to stdout or a file.
    Lines {
        out: Box<dyn Write + Send>,
        line: Vec<u8>,
    },
    /// Re-delivery through JetStream, acknowledgements awaited in order.
    Publish {
        js: jetstream::Context,
        subject: String,
        in_flight: VecDeque<(u64, PublishAckFuture)>,
        /// The newest seq read; done once nothing is in flight.
        read_seq: Option<u64>,
    },
    /// What re-delivery would send, one line per event on stdout.
    DryRun {
        out: Box<dyn Write + Send>,
        subject: String,
        json: bool,
    },
}

impl Sink {
    fn open(args: &Args, json: bool, js: jetstream::Context) -> anyhow::Result<Sink> {
        let stdout = || {
            Box::new(std::io::BufWriter::with_capacity(
                1 << 16,
                std::io::stdout(),
            ))
        };
        Ok(match (&args.to_subject, &args.output) {
            (Some(subject), _) if args.dry_run => Sink::DryRun {
                out: stdout(),
                subject: subject.clone(),
                json,
            },
            (Some(subject), _) => Sink::Publish {
                js,
                subject: subject.clone(),
                in_flight: VecDeque::with_capacity(PUBLISH_WINDOW),
                read_seq: None,
            },
            (None, Some(path)) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(args.append)
                    .truncate(!args.append)
                    .open(path)
                    .with_context(|| format!("cannot open {} for writing", path.display()))?;
                Sink::Lines {
                    out: Box::new(std::io::BufWriter::with_capacity(1 << 16, file)),
                    line: Vec::with_capacity(1024),
                }
            }
            (None, None) => Sink::Lines {
                out: stdout(),
                line: Vec::with_capacity(1024),
            },
        })
    }

    fn destination(&self, args: &Args) -> String {
        match (&args.to_subject, &args.output) {
            (Some(subject), _) => format!("subject {subject}"),
            (None, Some(path)) => path.display().to_string(),
            (None, None) => "stdout".to_string(),
        }
    }

    /// An event read but not selected.
    fn pass(&mut self, seq: u64, tally: &mut Tally) {
        match self {
            Sink::Publish {
                in_flight,
                read_seq,
                ..
            } => {
                *read_seq = Some(seq);
                if in_flight.is_empty() {
                    tally.done_seq = Some(seq);
                }
            }
            Sink::Lines { .. } | Sink::DryRun { .. } => tally.done_seq = Some(seq),
        }
    }

    async fn send(
        &mut self,
        event: &StoredEvent,
        channel: &ChannelName,
        envelope: &Envelope,
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        let seq = event.seq;
        match self {
            Sink::Lines { out, line } => {
                json_line(line, seq, channel, envelope);
                out.write_all(line).context("cannot write the output")?;
                tally.done_seq = Some(seq);
            }
            Sink::DryRun { out, subject, json } => {
                if *json {
                    let listed = serde_json::json!({
                        "seq": seq, "channel": channel, "type": envelope.ty,
                        "id": envelope.id, "subject": subject,
                    });
                    writeln!(out, "{listed}")
                } else {
                    writeln!(
                        out,
                        "would send seq {seq} {channel} {} {} to {subject}",
                        envelope.ty, envelope.id
                    )
                }
                .context("cannot write the output")?;
                tally.done_seq = Some(seq);
            }
            Sink::Publish {
                js,
                subject,
                in_flight,
                read_seq,
            } => {
                if in_flight.len() >= PUBLISH_WINDOW
                    && let Some((acked_seq, ack)) = in_flight.pop_front()
                {
                    await_ack(subject, acked_seq, ack, tally).await?;
                }
                let mut headers = HeaderMap::new();
                headers.insert(headers::MSG_ID, envelope.id.as_str());
                headers.insert(headers::RT_TYPE, envelope.ty.as_str());
                headers.insert(RT_CHANNEL, channel.as_str());
                headers.insert(RT_SEQ, seq.to_string().as_str());
                if event.json {
                    headers.insert(headers::CONTENT_TYPE, headers::JSON);
                }
                let message = PublishMessage::build()
                    .payload(event.payload.clone())
                    .headers(headers);
                let ack = js
                    .send_publish(subject.clone(), message)
                    .await
                    .with_context(|| format!("publishing seq {seq} to {subject} failed"))?;
                in_flight.push_back((seq, ack));
                *read_seq = Some(seq);
            }
        }
        Ok(())
    }

    /// Flushes the output, or waits for every acknowledgement still due.
    async fn finish(&mut self, tally: &mut Tally) -> anyhow::Result<()> {
        match self {
            Sink::Lines { out, .. } | Sink::DryRun { out, .. } => {
                out.flush().context("cannot write the output")
            }
            Sink::Publish {
                subject,
                in_flight,
                read_seq,
                ..
            } => {
                while let Some((seq, ack)) = in_flight.pop_front() {
                    await_ack(subject, seq, ack, tally).await?;
                }
                if read_seq.is_some() {
                    tally.done_seq = *read_seq;
                }
                Ok(())
            }
        }
    }
}

async fn await_ack(
    subject: &str,
    seq: u64,
    ack: PublishAckFuture,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let ack = ack.await.with_context(|| {
        format!(
            "publishing seq {seq} to {subject} was not acknowledged (does a stream capture \
             {subject}? `nats stream add` one)"
        )
    })?;
    if ack.duplicate {
        tally.duplicates += 1;
    }
    tally.done_seq = Some(seq);
    Ok(())
}

/// `{"seq":N,"channel":"...","event":{envelope}}` and a newline, into `line`.
pub fn json_line(line: &mut Vec<u8>, seq: u64, channel: &ChannelName, envelope: &Envelope) {
    line.clear();
    line.extend_from_slice(b"{\"seq\":");
    line.extend_from_slice(seq.to_string().as_bytes());
    line.extend_from_slice(b",\"channel\":");
    serde_json::to_writer(&mut *line, channel.as_str())
        .expect("a string always serializes into a Vec");
    line.extend_from_slice(b",\"event\":");
    envelope.write_json(line);
    line.extend_from_slice(b"}\n");
}

fn progress_bar(first: u64, last: u64) -> ProgressBar {
    let bar = ProgressBar::new(last.saturating_sub(first) + 1);
    // No colors in the template: nothing to turn off for NO_COLOR.
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {percent}% of the seq range, {msg}, ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("0 events");
    bar
}

/// The command that replays what is left: the same channels (a user's resolved to
/// theirs), types and destination, from `from` to `last`.
fn resume_command(args: &Args, sources: &[Source], from: u64, last: u64) -> String {
    let mut words = vec!["switchboard".to_string(), "replay".to_string()];
    let mut add = |flag: &str, value: &str| {
        words.push(flag.to_string());
        words.push(shell_quote(value));
    };
    for channel in sources.iter().flat_map(Source::spellings) {
        add("--channel", channel.as_str());
    }
    for filter in &args.types {
        add("--type", &filter.to_string());
    }
    add("--from-seq", &from.to_string());
    add("--to-seq", &last.to_string());
    if let Some(path) = &args.output {
        add("--output", &path.display().to_string());
        words.push("--append".to_string());
    }
    if let Some(subject) = &args.to_subject {
        words.push("--to-subject".to_string());
        words.push(shell_quote(subject));
    }
    if args.dry_run {
        words.push("--dry-run".to_string());
    }
    if args.stats {
        words.push("--stats".to_string());
    }
    if args.archive_namespaces != [Namespace::Conversation] {
        let list: Vec<&str> = args.archive_namespaces.iter().map(|n| n.as_str()).collect();
        words.push("--archive-namespaces".to_string());
        words.push(shell_quote(&list.join(",")));
    }
    words.join(" ")
}

fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/=@%+,".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// How long the replay waits for an archive that has not yet processed what it needs.
const ARCHIVE_LAG_WAIT: Duration = Duration::from_secs(2);
/// Archived events read per request (the workers' cap).
const ARCHIVE_PAGE: usize = 1000;

/// What the archive part of a replay covers.
struct Reach<'a> {
    epoch: &'a str,
    first: u64,
    last: u64,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
}

/// The archived channels' events that `EVENTS` no longer holds, one pager per channel,
/// merged by seq.
#[derive(Default)]
struct Archived {
    pagers: Vec<Pager>,
    client: Option<async_nats::Client>,
    epoch: String,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
}

/// One archived channel: its events with `after < seq < before`, a page at a time.
struct Pager {
    source: usize,
    channel: String,
    subject: String,
    after: u64,
    before: u64,
    page: VecDeque<StoredEvent>,
    done: bool,
}

/// An answer of `int.archive.read`.
#[derive(serde::Deserialize)]
struct ArchivePage {
    events: Vec<ArchiveItem>,
    through: u64,
    /// The page stopped early to fit one NATS message: more may follow.
    #[serde(default)]
    truncated: bool,
}

#[derive(serde::Deserialize)]
struct ArchiveItem {
    seq: u64,
    event: Box<serde_json::value::RawValue>,
}

impl Archived {
    /// Finds, per archived channel, where the stream's part starts, and checks that the
    /// archive has processed the stream up to there. A channel whose archive does not
    /// answer or lags is replayed from the stream alone, with a warning.
    async fn open(
        client: &async_nats::Client,
        store: &Store,
        sources: &[Source],
        namespaces: &[Namespace],
        reach: Reach<'_>,
    ) -> anyhow::Result<Archived> {
        let mut archived = Archived {
            pagers: Vec::new(),
            client: Some(client.clone()),
            epoch: reach.epoch.to_string(),
            since: reach.since,
            until: reach.until,
        };
        for (index, source) in sources.iter().enumerate() {
            let channel = source.base();
            if !namespaces.contains(&channel.namespace()) {
                continue;
            }
            let kept = store
                .forward(&source.subject, reach.first, 1)
                .await
                .with_context(|| format!("cannot read {channel} from the stream"))?
                .first()
                .map(|event| event.seq);
            let before = kept.unwrap_or(u64::MAX).min(reach.last.saturating_add(1));
            if before <= reach.first {
                continue;
            }
            let mut pager = Pager {
                source: index,
                channel: channel.to_string(),
                subject: source.subject.clone(),
                after: reach.first - 1,
                before,
                page: VecDeque::new(),
                done: false,
            };
            let needed = before - 1;
            let deadline = Instant::now() + ARCHIVE_LAG_WAIT;
            loop {
                match archived.read(&mut pager).await {
                    Ok(through) if through >= needed => {
                        archived.pagers.push(pager);
                        break;
                    }
                    Ok(_) if Instant::now() < deadline => {
                        pager.page.clear();
                        pager.done = false;
                        pager.after = reach.first - 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(through) => {
                        eprintln!(
                            "switchboard: the archive has processed EVENTS through seq {through} only \
                             (seq {needed} needed for {channel}): replaying what EVENTS holds of it"
                        );
                        break;
                    }
                    Err(error) => {
                        eprintln!(
                            "switchboard: the archive did not answer for {channel} ({error:#}; are \
                             the workers' archive job running?): replaying what EVENTS holds of it"
                        );
                        break;
                    }
                }
            }
        }
        Ok(archived)
    }

    /// Reads the pager's next page; the archive's `through`.
    async fn read(&self, pager: &mut Pager) -> anyhow::Result<u64> {
        let client = self.client.as_ref().context("no NATS connection")?;
        let params = serde_json::json!({
            "ch": pager.channel,
            "epoch": self.epoch,
            "after": pager.after,
            "before": pager.before,
            "limit": ARCHIVE_PAGE,
            "order": "asc",
        });
        let mut headers = HeaderMap::new();
        headers.insert("Rt-User", "switchboard-cli");
        headers.insert("Rt-Role", "service");
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            client.request_with_headers("int.archive.read", headers, params.to_string().into()),
        )
        .await
        .context("int.archive.read timed out")??;
        #[derive(serde::Deserialize)]
        struct Reply {
            result: Option<ArchivePage>,
            error: Option<serde_json::Value>,
        }
        let reply: Reply =
            serde_json::from_slice(&reply.payload).context("unreadable int.archive.read answer")?;
        let page = match (reply.result, reply.error) {
            (Some(page), _) => page,
            (None, error) => anyhow::bail!("int.archive.read refused: {error:?}"),
        };
        let previous = pager.after;
        let full = page.truncated || page.events.len() >= ARCHIVE_PAGE;
        for item in page.events {
            // In order and inside the window only: anything else is the archive's
            // mistake, and would repeat or skip events.
            if item.seq <= pager.after || item.seq >= pager.before {
                continue;
            }
            pager.after = item.seq;
            let Some(stored) = self.stored(pager, item) else {
                continue;
            };
            pager.page.push_back(stored);
        }
        // A page that moved nothing forward would be asked for again and again.
        pager.done = !full || pager.after == previous;
        Ok(page.through)
    }

    /// An archived event as a stored one (a JSON envelope), or `None` when it falls
    /// outside the time bounds or is not an envelope.
    fn stored(&self, pager: &Pager, item: ArchiveItem) -> Option<StoredEvent> {
        let payload = Bytes::copy_from_slice(item.event.get().as_bytes());
        let envelope = Envelope::from_json(&payload).ok()?;
        let within = self.since.is_none_or(|since| envelope.timestamp >= since)
            && self.until.is_none_or(|until| envelope.timestamp < until);
        within.then(|| StoredEvent {
            seq: item.seq,
            subject: pager.subject.clone(),
            ty: Some(envelope.ty.as_str().to_string()),
            time: envelope.timestamp.to_string(),
            payload,
            json: true,
        })
    }

    /// The next archived event by seq across the channels.
    async fn next(&mut self) -> anyhow::Result<Option<Item>> {
        let mut index = 0;
        while index < self.pagers.len() {
            let mut pager = std::mem::replace(&mut self.pagers[index], Pager::empty());
            while pager.page.is_empty() && !pager.done {
                self.read(&mut pager).await?;
            }
            self.pagers[index] = pager;
            index += 1;
        }
        let Some(at) = (0..self.pagers.len())
            .filter(|&i| !self.pagers[i].page.is_empty())
            .min_by_key(|&i| self.pagers[i].page[0].seq)
        else {
            return Ok(None);
        };
        let pager = &mut self.pagers[at];
        let event = pager.page.pop_front().expect("chosen for having an event");
        Ok(Some(Item {
            source: pager.source,
            event,
        }))
    }
}

impl Pager {
    fn empty() -> Pager {
        Pager {
            source: 0,
            channel: String::new(),
            subject: String::new(),
            after: 0,
            before: 0,
            page: VecDeque::new(),
            done: true,
        }
    }
}

/// The archived part and the stream's, merged by seq.
struct Combined {
    archived: Archived,
    stream: Merged,
    next_archived: Option<Item>,
    next_stored: Option<Item>,
    stream_done: bool,
}

impl Combined {
    async fn next(&mut self) -> anyhow::Result<Option<Item>> {
        if self.next_archived.is_none() {
            self.next_archived = self.archived.next().await?;
        }
        if self.next_stored.is_none() && !self.stream_done {
            self.next_stored = self.stream.next().await?;
            self.stream_done = self.next_stored.is_none();
        }
        let archived_first = match (&self.next_archived, &self.next_stored) {
            (Some(a), Some(s)) => a.event.seq < s.event.seq,
            (Some(_), None) => true,
            (None, _) => false,
        };
        Ok(if archived_first {
            self.next_archived.take()
        } else {
            self.next_stored.take()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_to_publish_to() {
        assert!(parse_subject("backfill.notifications").is_ok());
        assert!(parse_subject("rt.project.p1").is_ok());
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a", "a."] {
            assert!(parse_subject(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_lines_parse_back() {
        let envelope = Envelope::from_json(
            br#"{"id":"evt_1","type":"bid.new","timestamp":"2026-11-22T14:30:00Z","data":{"a":"\n"}}"#,
        )
        .unwrap();
        let mut line = Vec::new();
        json_line(
            &mut line,
            42,
            &ChannelName::parse("project:p1").unwrap(),
            &envelope,
        );
        assert_eq!(line.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["seq"], 42);
        assert_eq!(value["channel"], "project:p1");
        let back = Envelope::from_json(value["event"].to_string().as_bytes()).unwrap();
        assert_eq!(back, envelope);
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_quote("project:p1"), "project:p1");
        assert_eq!(shell_quote("bid.*"), "'bid.*'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
