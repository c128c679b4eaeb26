//! `switchboard bench`: a load generator that speaks `switchboard.v1` over real sockets
//! and publishes through NATS like a backend, to measure an edge the way users load it.
//!
//! Every scenario is bounded in connections, events and time (the `MAX_*` constants
//! below; sizes outside them are refused before anything connects), targets only
//! loopback addresses (others are refused), and reports deliveries per second, missing
//! and duplicated events (both must be zero), latency percentiles from the publisher's timestamp, and the edge
//! process's own CPU time and RSS read from `/proc/<edge pid>`.
//!
//! The generator keeps its per-delivery work small (no JSON parsing of event frames: it
//! scans for the two numbers it needs) because on two cores it shares the machine with
//! the edge it measures.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;
use switchboard_bus::Publisher;
use switchboard_schemas::{Actor, ChannelName, Envelope, EventType, RawJson};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::output;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    scenario: Scenario,
    /// The edge's WebSocket URL.
    #[arg(
        long,
        env = "SWITCHBOARD_EDGE_URL",
        default_value = "ws://127.0.0.1:8080/v1/ws"
    )]
    edge_url: String,
    /// HS256 secret to mint the clients' tokens with.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// The edge's process id, for its CPU time and RSS (`pgrep switchboard-edge`).
    #[arg(long, env = "SWITCHBOARD_EDGE_PID")]
    edge_pid: Option<u32>,
}

#[derive(Debug, clap::Subcommand)]
enum Scenario {
    /// C subscribers on one channel; a publisher at R events/s of S bytes for D seconds.
    ///
    /// Example: switchboard bench fanout --subscribers 5000 --rate 10 --size 256 --duration 10
    Fanout {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 256)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Many channels with few subscribers each (the chat-shaped load).
    ///
    /// Example: switchboard bench channels --channels 500 --per-channel 4 --rate 2000
    Channels {
        #[arg(long, default_value_t = 500)]
        channels: usize,
        #[arg(long, default_value_t = 4)]
        per_channel: usize,
        /// Events per second across all channels.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        #[arg(long, default_value_t = 256)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Pairs in conversations sending `pub` to each other at a total rate; measures
    /// send -> recipient and send -> `ok`.
    ///
    /// Example: switchboard bench chat --pairs 100 --rate 1000 --duration 10
    Chat {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Messages per second across all pairs.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Opens C authenticated connections as fast as it can, each with `subs`
    /// subscriptions, then holds them idle and reads the edge's RSS per connection.
    ///
    /// Like real clients, each connection's first subscription is its own `user:<id>`
    /// (a channel nobody else has); the others are among 100 shared ones.
    ///
    /// Example: switchboard bench connect --connections 2000 --subs 2
    Connect {
        #[arg(long, default_value_t = 2000)]
        connections: usize,
        #[arg(long, default_value_t = 2)]
        subs: usize,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// A client misses N events, then resumes; how long until it has them all.
    ///
    /// Example: switchboard bench resume --missed 10000
    Resume {
        #[arg(long, default_value_t = 10_000)]
        missed: u64,
        #[arg(long, default_value_t = 256)]
        size: usize,
    },
    /// A user in C conversations over M archived messages: the archive's write rate,
    /// `inbox.list` and `messages.search` latency over the user's socket, and how soon
    /// the user's device hears of new messages (`inbox` signals) at R messages/s.
    ///
    /// Needs the workers' `archive` and `membership` jobs on PostgreSQL beside the edge.
    ///
    /// Example: switchboard bench inbox --conversations 1000 --messages 1000000 --rate 1000
    Inbox {
        /// Conversations the user is a participant of.
        #[arg(long, default_value_t = 1000)]
        conversations: usize,
        /// Messages from other users archived before measuring, spread over them.
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        /// `inbox.list` and `messages.search` requests each (sequential, at most 40/s:
        /// the edge's per-connection frame rate).
        #[arg(long, default_value_t = 300)]
        requests: u64,
        /// New messages per second while the user's device listens.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
}

/// What every scenario reports.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub parameters: serde_json::Value,
    pub published: u64,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    pub missing: u64,
    pub duplicated: u64,
    pub latency_ms: Latency,
    /// Secondary latency (chat: send -> `ok`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_latency_ms: Option<Latency>,
    pub edge_cpu_s: Option<f64>,
    pub edge_cpu_us_per_delivery: Option<f64>,
    pub edge_rss_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_kib_per_connection: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up_ms: Option<f64>,
    /// inbox: events archived before measuring (joins and messages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived: Option<u64>,
    /// inbox: events archived per second, from the first publish to the archive being
    /// through the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_events_per_s: Option<f64>,
    /// inbox: `inbox.list` latency over the user's socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_latency_ms: Option<Latency>,
    /// inbox: `messages.search` latency over the user's socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_latency_ms: Option<Latency>,
    /// inbox: `messages.search` latency for each query asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_by_query_ms: Option<std::collections::BTreeMap<String, Latency>>,
    pub seconds: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(histogram.value_at_quantile(0.5)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

pub async fn run(nats: &crate::Nats, json: bool, args: Args) -> anyhow::Result<()> {
    loopback_targets(&args.edge_url, &nats.options.url)?;
    args.scenario.check()?;
    raise_fd_limit();
    let bench = Bench::new(nats, &args).await?;
    let report = match args.scenario {
        Scenario::Fanout {
            subscribers,
            rate,
            size,
            duration,
        } => {
            let params = json!({"subscribers": subscribers, "rate": rate, "size": size, "duration": duration});
            bench
                .fanout("fanout", params, 1, subscribers, rate, size, duration)
                .await?
        }
        Scenario::Channels {
            channels,
            per_channel,
            rate,
            size,
            duration,
        } => {
            let params = json!({"channels": channels, "per_channel": per_channel, "rate": rate, "size": size, "duration": duration});
            bench
                .fanout(
                    "channels",
                    params,
                    channels,
                    per_channel,
                    rate,
                    size,
                    duration,
                )
                .await?
        }
        Scenario::Chat {
            pairs,
            rate,
            duration,
        } => bench.chat(pairs, rate, duration).await?,
        Scenario::Connect {
            connections,
            subs,
            concurrency,
        } => bench.connect(connections, subs, concurrency).await?,
        Scenario::Resume { missed, size } => bench.resume(missed, size).await?,
        Scenario::Inbox {
            conversations,
            messages,
            requests,
            rate,
            duration,
        } => {
            let size = Size {
                conversations,
                messages,
                requests,
                rate,
                duration,
            };
            bench.inbox(size).await?
        }
    };
    if json {
        return output::json(&report);
    }
    print_report(&report);
    Ok(())
}

fn print_report(r: &Report) {
    println!("scenario            {} {}", r.scenario, r.parameters);
    println!("published           {}", r.published);
    println!(
        "deliveries          {} ({:.0}/s)",
        r.deliveries, r.deliveries_per_s
    );
    println!("missing/duplicated  {}/{}", r.missing, r.duplicated);
    let l = &r.latency_ms;
    println!(
        "latency ms          p50 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}",
        l.p50, l.p99, l.p999, l.max
    );
    if let Some(a) = &r.ack_latency_ms {
        println!(
            "ok latency ms       p50 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}",
            a.p50, a.p99, a.p999, a.max
        );
    }
    if let (Some(cpu), Some(per)) = (r.edge_cpu_s, r.edge_cpu_us_per_delivery) {
        println!("edge cpu            {cpu:.2} s ({per:.2} µs per delivery)");
    }
    if let Some(rss) = r.edge_rss_kib {
        println!("edge rss            {rss} KiB");
    }
    if let Some(c) = r.connections_per_s {
        println!("connections/s       {c:.0}");
    }
    if let Some(k) = r.rss_kib_per_connection {
        println!("rss per connection  {k:.2} KiB");
    }
    if let Some(ms) = r.catch_up_ms {
        println!("catch-up            {ms:.1} ms");
    }
    if let (Some(n), Some(rate)) = (r.archived, r.archive_events_per_s) {
        println!("archived            {n} ({rate:.0}/s)");
    }
    for (name, latency) in [
        ("inbox.list ms      ", &r.list_latency_ms),
        ("search ms          ", &r.search_latency_ms),
    ] {
        if let Some(l) = latency {
            println!(
                "{name} p50 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}",
                l.p50, l.p99, l.p999, l.max
            );
        }
    }
    for (q, l) in r.search_by_query_ms.iter().flatten() {
        println!(
            "  q={q:<18} p50 {:.2}  p99 {:.2}  max {:.2}",
            l.p50, l.p99, l.max
        );
    }
}

/// Everything a scenario needs: where the edge is, how to mint tokens, a publisher.
struct Bench {
    client: async_nats::Client,
    dialer: Arc<Dialer>,
    edge_pid: Option<u32>,
    publisher: Publisher,
    run_id: String,
}

/// CPU seconds (user + system) and RSS of a process, from /proc.
fn process_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((ticks as f64 / per_second, rss))
}

/// Sockets one run may open in all: each costs a descriptor here and one in the edge.
const MAX_SOCKETS: u64 = 50_000;
/// Events one run may publish in all (the generator remembers each one's seq).
const MAX_EVENTS: u64 = 10_000_000;
/// Longest run, in seconds.
const MAX_DURATION: u64 = 600;
/// Largest event: its frame must stay under the edge's 64 KiB frame limit.
const MAX_SIZE: u64 = 60 * 1024;

impl Scenario {
    /// Refuses sizes the generator cannot honour or that no edge measurement needs, before
    /// anything connects.
    fn check(&self) -> anyhow::Result<()> {
        match *self {
            Scenario::Fanout {
                subscribers,
                rate,
                size,
                duration,
            } => {
                within("--subscribers", subscribers as u64, 1..=MAX_SOCKETS)?;
                paced(rate, duration, size)
            }
            Scenario::Channels {
                channels,
                per_channel,
                rate,
                size,
                duration,
            } => {
                within("--channels", channels as u64, 1..=MAX_SOCKETS)?;
                within("--per-channel", per_channel as u64, 1..=MAX_SOCKETS)?;
                within(
                    "--channels x --per-channel",
                    (channels as u64).saturating_mul(per_channel as u64),
                    1..=MAX_SOCKETS,
                )?;
                paced(rate, duration, size)
            }
            Scenario::Chat {
                pairs,
                rate,
                duration,
            } => {
                within("--pairs", pairs as u64, 1..=MAX_SOCKETS / 2)?;
                paced(rate, duration, 1)
            }
            Scenario::Connect {
                connections,
                subs,
                concurrency,
            } => {
                within("--connections", connections as u64, 1..=MAX_SOCKETS)?;
                // The edge's own cap on subscriptions per connection.
                within("--subs", subs as u64, 0..=100)?;
                within("--concurrency", concurrency as u64, 1..=1024)
            }
            Scenario::Resume { missed, size } => {
                within("--missed", missed, 1..=1_000_000)?;
                within("--size", size as u64, 1..=MAX_SIZE)
            }
            Scenario::Inbox {
                conversations,
                messages,
                requests,
                rate,
                duration,
            } => {
                within("--conversations", conversations as u64, 1..=10_000)?;
                within("--messages", messages, 1..=5_000_000)?;
                within("--requests", requests, 1..=10_000)?;
                paced(rate, duration, 1)
            }
        }
    }
}

/// The bounds of a publisher paced at `rate` events of `size` bytes for `duration` s.
fn paced(rate: u64, duration: u64, size: usize) -> anyhow::Result<()> {
    within("--rate", rate, 1..=1_000_000)?;
    within("--duration", duration, 1..=MAX_DURATION)?;
    within(
        "--rate x --duration",
        rate.saturating_mul(duration),
        1..=MAX_EVENTS,
    )?;
    within("--size", size as u64, 1..=MAX_SIZE)
}

fn within(name: &str, value: u64, range: RangeInclusive<u64>) -> anyhow::Result<()> {
    if !range.contains(&value) {
        bail!(
            "{name} must be between {} and {}, not {value}",
            range.start(),
            range.end()
        );
    }
    Ok(())
}

/// Refuses targets off this machine: the generator measures an edge on loopback; it is
/// not a tool for loading other hosts. The NATS setting may list several servers.
fn loopback_targets(edge_url: &str, nats_url: &str) -> anyhow::Result<()> {
    loopback_only("the edge URL", edge_url)?;
    switchboard_bus::nats_servers(nats_url)
        .into_iter()
        .try_for_each(|url| loopback_only("the NATS URL", url))
}

fn loopback_only(what: &str, url: &str) -> anyhow::Result<()> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("{what} {url:?} is not a URL"))?;
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !local {
        bail!(
            "{what} {url} is not a loopback address: switchboard bench only loads an edge on \
             this machine"
        );
    }
    Ok(())
}

/// Thousands of sockets need more descriptors than the default soft limit.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The number after `"<key>":` in a frame, without parsing the frame.
fn scan_number(frame: &str, key: &str) -> Option<u64> {
    let at = frame.find(key)? + key.len();
    let digits: &str = &frame[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// One subscriber's tally.
#[derive(Default)]
struct Tally {
    received: u64,
    duplicated: u64,
    last_seq: u64,
}

/// What opening a client socket needs; shared by the tasks that open them at once.
struct Dialer {
    url: String,
    secret: String,
}

impl Dialer {
    fn token(&self, user: &str, channels: &[&str]) -> anyhow::Result<String> {
        let claims =
            json!({"sub": user, "exp": unix_micros() / 1_000_000 + 3600, "channels": channels});
        Ok(jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.secret.as_bytes()),
        )?)
    }

    /// Opens an authenticated socket (bearer on the upgrade) and reads its `welcome`.
    async fn open(&self, user: &str, channels: &[&str]) -> anyhow::Result<Socket> {
        let mut request = self.url.as_str().into_client_request()?;
        let token = self.token(user, channels)?;
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse()?);
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "switchboard.v1".parse()?);
        // No Nagle: a client's small `pub` frames must not wait for the edge's ACKs.
        let (mut socket, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
            .await
            .with_context(|| format!("cannot connect to the edge at {}", self.url))?;
        match socket.next().await {
            Some(Ok(Message::Text(text))) if text.contains("\"welcome\"") => Ok(socket),
            other => bail!("expected welcome, got {other:?}"),
        }
    }
}

impl Bench {
    async fn new(nats: &crate::Nats, args: &Args) -> anyhow::Result<Bench> {
        if args.secret.len() < 32 {
            bail!("the JWT secret must be at least 32 bytes (SWITCHBOARD_JWT_SECRET)");
        }
        let client = nats.connect().await?;
        Ok(Bench {
            client: client.clone(),
            dialer: Arc::new(Dialer {
                url: args.edge_url.clone(),
                secret: args.secret.clone(),
            }),
            edge_pid: args.edge_pid,
            publisher: Publisher::new(client),
            run_id: format!("{:x}", unix_micros()),
        })
    }

    async fn open(&self, user: &str, channels: &[&str]) -> anyhow::Result<Socket> {
        self.dialer.open(user, channels).await
    }

    /// Sends `sub` for each channel and waits for every `ok`.
    async fn subscribe(socket: &mut Socket, channels: &[String]) -> anyhow::Result<()> {
        for (i, ch) in channels.iter().enumerate() {
            let frame = json!({"op":"sub","id": i + 1,"ch": ch}).to_string();
            socket.send(Message::Text(frame.into())).await?;
        }
        let mut oks = 0;
        while oks < channels.len() {
            match socket.next().await {
                Some(Ok(Message::Text(text))) if text.contains("\"op\":\"ok\"") => oks += 1,
                Some(Ok(Message::Text(text))) if text.contains("\"op\":\"err\"") => {
                    bail!("subscription refused: {text}")
                }
                Some(Ok(_)) => {}
                other => bail!("socket closed while subscribing: {other:?}"),
            }
        }
        Ok(())
    }

    fn usage(&self) -> Option<(f64, u64)> {
        self.edge_pid.and_then(process_usage)
    }

    /// `channels` channels with `per_channel` subscribers each; `rate` events/s in all.
    #[allow(clippy::too_many_arguments)]
    async fn fanout(
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

    fn fill_usage(
        &self,
        report: &mut Report,
        before: Option<(f64, u64)>,
        after: Option<(f64, u64)>,
    ) {
        if let (Some((cpu0, _)), Some((cpu1, rss))) = (before, after) {
            report.edge_cpu_s = Some(cpu1 - cpu0);
            report.edge_rss_kib = Some(rss);
            if report.deliveries > 0 {
                report.edge_cpu_us_per_delivery =
                    Some((cpu1 - cpu0) * 1e6 / report.deliveries as f64);
            }
        }
    }

    /// Publishes `total` events round-robin over `channels` at `rate` per second, with
    /// the send time in `data.t`; returns (channel index, seq) of each.
    async fn publish_paced(
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
    async fn publish_each(
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

    async fn chat(&self, pairs: usize, rate: u64, duration: u64) -> anyhow::Result<Report> {
        // A token grant instead of membership: the bench needs no workers.
        let pattern = "conversation:*";
        let mut senders = Vec::new();
        let acked = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
        let mut readers = Vec::new();
        for p in 0..pairs {
            let channel = format!("conversation:bench-{}-{p}", self.run_id);
            // Senders do not subscribe: their socket carries only their own `ok`s.
            let a = self.open(&format!("a{p}"), &[pattern]).await?;
            let mut b = self.open(&format!("b{p}"), &[pattern]).await?;
            Self::subscribe(&mut b, std::slice::from_ref(&channel)).await?;
            readers.push(spawn_reader(b));
            senders.push((channel, a));
        }
        let total = rate * duration;
        let before = self.usage();
        let started = Instant::now();
        let sent = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        let per_pair_rate = (rate as f64 / pairs as f64).max(0.001);
        let per_pair = total / pairs as u64;
        for (channel, socket) in senders {
            let acked = acked.clone();
            let sent = sent.clone();
            tasks.push(tokio::spawn(async move {
                let (mut write, mut read) = socket.split();
                let acks = tokio::spawn(async move {
                    while let Some(Ok(Message::Text(text))) = read.next().await {
                        if let Some(t) = scan_number(&text, "\"id\":") {
                            let _ = acked.lock().await.record(unix_micros().saturating_sub(t));
                        }
                    }
                });
                let start = Instant::now();
                for i in 0..per_pair {
                    let due = start + Duration::from_secs_f64(i as f64 / per_pair_rate);
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

    async fn connect(
        &self,
        connections: usize,
        subs: usize,
        concurrency: usize,
    ) -> anyhow::Result<Report> {
        let Some((_, rss_before)) = self.usage() else {
            bail!("connect needs --edge-pid to read the edge's memory");
        };
        let user = |i: usize| format!("c{}-{i}", self.run_id);
        let channels: Vec<Vec<String>> = (0..connections)
            .map(|i| {
                let own = std::iter::once(format!("user:{}", user(i)));
                let shared = (1..subs)
                    .map(|s| format!("domain:shared-{}-{}", self.run_id, (i * subs + s) % 100));
                own.chain(shared).take(subs).collect()
            })
            .collect();
        let started = Instant::now();
        let mut sockets = Vec::with_capacity(connections);
        // Each socket is opened by a task of its own, so the generator's handshakes and
        // token minting spread over every core instead of one.
        let mut opening = tokio::task::JoinSet::new();
        let mut next = 0;
        while sockets.len() < connections {
            while next < connections && opening.len() < concurrency {
                let user = user(next);
                let subs = channels[next].clone();
                let dialer = self.dialer.clone();
                opening.spawn(async move {
                    let mut socket = dialer.open(&user, &[]).await?;
                    Self::subscribe(&mut socket, &subs).await?;
                    Ok::<_, anyhow::Error>(socket)
                });
                next += 1;
            }
            if let Some(opened) = opening.join_next().await {
                sockets.push(opened??);
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        // Idle for a moment so the edge's allocations settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (cpu, rss_after) = self.usage().unwrap_or_default();
        let report = Report {
            scenario: "connect".into(),
            parameters: json!({"connections": connections, "subs": subs, "concurrency": concurrency}),
            connections_per_s: Some(connections as f64 / elapsed),
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

    async fn resume(&self, missed: u64, size: usize) -> anyhow::Result<Report> {
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

/// The sizes of the inbox scenario (its flags).
struct Size {
    conversations: usize,
    messages: u64,
    requests: u64,
    rate: u64,
    duration: u64,
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
    async fn inbox(&self, size: Size) -> anyhow::Result<Report> {
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
                .context("int.archive.read timed out")?
                .context("int.archive.read failed: is the workers' archive job running?")?;
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

impl Tally {
    fn count(&mut self, seq: u64) {
        self.received += 1;
        if seq <= self.last_seq {
            self.duplicated += 1;
        } else {
            self.last_seq = seq;
        }
    }
}

/// A task reading one subscriber's socket; its tally and latencies, merged at the end.
struct Reader {
    task: tokio::task::JoinHandle<()>,
    state: Arc<std::sync::Mutex<(Tally, Histogram<u64>)>>,
}

impl Reader {
    /// Stops reading and returns what was seen.
    fn finish(self) -> (Tally, Histogram<u64>) {
        self.task.abort();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let empty = Histogram::<u64>::new(3).expect("a 3-digit histogram");
        std::mem::replace(&mut *state, (Tally::default(), empty))
    }
}

fn spawn_reader(mut socket: Socket) -> Reader {
    let state = Arc::new(std::sync::Mutex::new((
        Tally::default(),
        Histogram::<u64>::new(3).expect("a 3-digit histogram"),
    )));
    let mine = state.clone();
    let task = tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            if !text.starts_with("{\"op\":\"evt\"") {
                continue;
            }
            let (Some(seq), Some(t)) =
                (scan_number(&text, "\"seq\":"), scan_number(&text, "\"t\":"))
            else {
                continue;
            };
            // Uncontended until the end: only this task takes the lock while it runs.
            let mut state = mine.lock().unwrap_or_else(|e| e.into_inner());
            state.0.count(seq);
            let _ = state.1.record(unix_micros().saturating_sub(t));
        }
    });
    Reader { task, state }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        let edge = "ws://127.0.0.1:8080/v1/ws";
        let nats = "nats://127.0.0.1:4222";
        for (edge_url, nats_url) in [
            (edge, nats),
            ("ws://localhost:8080/v1/ws", nats),
            ("ws://[::1]:8080/v1/ws", nats),
            (edge, "nats://127.0.0.2:4222"),
            (edge, "nats://127.0.0.1:4222, nats://127.0.0.1:4223"),
            (edge, "127.0.0.1:4222"),
        ] {
            assert!(
                loopback_targets(edge_url, nats_url).is_ok(),
                "{edge_url} {nats_url}"
            );
        }
        for (edge_url, nats_url) in [
            ("ws://10.0.0.5:8080/v1/ws", nats),
            ("wss://edge.example.com/v1/ws", nats),
            ("ws://127.0.0.1.example.com/v1/ws", nats),
            (edge, "nats://127.0.0.1:4222,nats://192.168.1.9:4222"),
            ("ws://:8080/", nats),
        ] {
            let error = loopback_targets(edge_url, nats_url)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("not a loopback address") || error.contains("not a URL"),
                "{edge_url} {nats_url}: {error}"
            );
        }
    }

    #[test]
    fn sizes_outside_the_bounds_are_refused_with_the_flag_named() {
        let fanout = |subscribers, rate, size, duration| Scenario::Fanout {
            subscribers,
            rate,
            size,
            duration,
        };
        let inbox = |conversations, messages, rate| Scenario::Inbox {
            conversations,
            messages,
            requests: 300,
            rate,
            duration: 10,
        };
        assert!(fanout(5000, 30, 256, 10).check().is_ok());
        assert!(inbox(1000, 1_000_000, 1000).check().is_ok());
        for (scenario, flag) in [
            (fanout(0, 10, 256, 10), "--subscribers"),
            (fanout(50_001, 10, 256, 10), "--subscribers"),
            (fanout(10, 0, 256, 10), "--rate"),
            (fanout(10, 10, 256, 601), "--duration"),
            (fanout(10, 1_000_000, 256, 11), "--rate x --duration"),
            (fanout(10, 10, 70_000, 10), "--size"),
            (
                Scenario::Channels {
                    channels: 1000,
                    per_channel: 100,
                    rate: 10,
                    size: 256,
                    duration: 10,
                },
                "--channels x --per-channel",
            ),
            (
                Scenario::Connect {
                    connections: 10,
                    subs: 101,
                    concurrency: 8,
                },
                "--subs",
            ),
            (
                Scenario::Resume {
                    missed: 0,
                    size: 256,
                },
                "--missed",
            ),
            (inbox(0, 1000, 1000), "--conversations"),
            (inbox(10_001, 1000, 1000), "--conversations"),
            (inbox(1000, 0, 1000), "--messages"),
            (inbox(1000, 5_000_001, 1000), "--messages"),
            (inbox(1000, 1000, 0), "--rate"),
        ] {
            let error = scenario.check().unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("{flag} must be between")),
                "{error}"
            );
        }
    }
}
