//! `switchboard bench`: a load generator that speaks `switchboard.v1` over real sockets
//! and publishes through NATS like a backend, to measure an edge the way users load it.
//!
//! Every scenario is bounded in connections, events and time (see [`limits`]: sizes
//! outside them are refused before anything connects), targets only loopback addresses
//! (others are refused), and reports deliveries per second, missing and duplicated events
//! (both must be zero), latency percentiles from the publisher's timestamp, and the edge
//! process's own CPU time and RSS read from `/proc/<edge pid>`.
//!
//! The generator keeps its per-delivery work small (no JSON parsing of event frames: it
//! scans for the two numbers it needs, [`reader`]) because on two cores it shares the
//! machine with the edge it measures.
//!
//! This module owns the command line, the report, and what every scenario shares: the
//! [`Bench`] (a NATS client, a publisher, a [`Dialer`] for sockets) and process usage
//! from `/proc`. Each scenario family has a file of its own: [`fanout`] (one channel or
//! many), [`chat`], [`connect`], [`resume`], [`inbox`]; [`publish`] paces publishes
//! through JetStream for them. [`peer`] runs `fanout`, `channels` and `connect` against the
//! servers issue 20 compares Switchboard with (Socket.IO, nats-server's WebSocket listener).

mod chat;
mod connect;
mod fanout;
mod inbox;
mod limits;
mod peer;
mod publish;
mod reader;
mod resume;
mod scale;

use std::sync::Arc;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;
use switchboard_bus::Publisher;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use self::inbox::Size;
use self::limits::loopback_targets;
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
    #[command(flatten)]
    peer: peer::PeerArgs,
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
        /// Messages per second across all pairs, spread evenly: each pair sends in its
        /// own slots of one schedule, so no two pairs send at the same instant.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Opens C authenticated connections as fast as it can, each with `subs`
    /// subscriptions, then holds them idle and reads the edge's RSS per connection. Its
    /// latency is each connection's set-up, from dialling to its last `ok`.
    ///
    /// Like real clients, each connection's first subscription is its own `user:<id>`
    /// (a channel nobody else has); the others are among 100 shared ones. On the edge the
    /// upgrade names them (`?ch=`); a peer gets its own protocol's subscribe.
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
    /// N idle connections spread over several edges, opened by several generator
    /// processes (copies of this command, at most 18,000 sockets each): set-up time, the
    /// edges' RSS per connection, the whole stack's idle CPU, then one `system:broadcast`
    /// event that every connection must get exactly once, and its delivery latency.
    ///
    /// Like `connect`, each connection subscribes its own `user:<id>` and one of 100
    /// shared channels, named on its upgrade.
    ///
    /// Example: switchboard bench scale --connections 100000 --edge-urls ws://127.0.0.1:8080/v1/ws,ws://127.0.0.1:8081/v1/ws --edge-pids 4242,4243 --stack-pids 4100,4101
    Scale(scale::Plan),
    /// One generator process of `bench scale`, which starts it: opens its share of the
    /// connections and reports on stdout as JSON lines.
    #[command(hide = true)]
    ScaleGenerator(scale::Share),
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
    /// scale: seconds from starting the generators to every connection subscribed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_s: Option<f64>,
    /// scale: CPU cores the stack (edges and `--stack-pids`) used while every connection
    /// was idle, over the `--idle` window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_cpu_cores: Option<f64>,
    /// scale: the same, per process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_cpu_by_process: Option<Vec<ProcessCpu>>,
    /// scale: CPU cores the generator processes used in the same window (not the stack's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator_idle_cpu_cores: Option<f64>,
    pub seconds: f64,
}

/// One process's share of the stack's idle CPU.
#[derive(Debug, Serialize)]
pub struct ProcessCpu {
    pub pid: u32,
    /// Its program name (the file name of its `argv[0]`).
    pub name: String,
    pub cores: f64,
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
    if let Scenario::ScaleGenerator(share) = &args.scenario {
        // A generator answers its parent on stdout and needs no NATS.
        return scale::generate(share, &args.secret).await;
    }
    if let Some(kind) = args.peer.peer {
        let report = peer::run(kind, nats, &args).await?;
        return show(json, &report);
    }
    let bench = Bench::new(nats, &args).await?;
    if let Some(report) = peer::on_target(&bench, &args.scenario).await? {
        return show(json, &report);
    }
    let report = match args.scenario {
        Scenario::Chat {
            pairs,
            rate,
            duration,
        } => bench.chat(pairs, rate, duration).await?,
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
        Scenario::Scale(plan) => bench.scale(plan, &args.edge_url, args.edge_pid).await?,
        Scenario::ScaleGenerator(_) => unreachable!("a generator returned above"),
        Scenario::Fanout { .. } | Scenario::Channels { .. } | Scenario::Connect { .. } => {
            unreachable!("run by peer::on_target above")
        }
    };
    show(json, &report)
}

fn show(json: bool, report: &Report) -> anyhow::Result<()> {
    if json {
        return output::json(report);
    }
    print_report(report);
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
    if let Some(s) = r.setup_s {
        println!("set-up              {s:.1} s");
    }
    if let Some(cores) = r.idle_cpu_cores {
        println!("idle stack cpu      {cores:.4} cores");
        for p in r.idle_cpu_by_process.iter().flatten() {
            println!("  {:<16} {:>7} {:.4} cores", p.name, p.pid, p.cores);
        }
    }
    if let Some(cores) = r.generator_idle_cpu_cores {
        println!("idle generator cpu  {cores:.4} cores");
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

/// How every socket of the generator reads and writes, whatever it loads.
///
/// tungstenite's default read buffer is 128 KiB, allocated per socket and zeroed up to
/// its capacity before every read: a fresh mapping faulted in for each new socket and a
/// 128 KiB `memset` per read, which made the generator the largest user of CPU while it
/// opened connections. 4 KiB holds a dozen 300-byte events, what a subscriber finds
/// waiting at a read in the fan-out scenarios even when it lags (8 KiB spent 9 % of the
/// generator's CPU zeroing it at 500k deliveries/s; 2 KiB saved that in reads it then
/// had to make twice). A frame sent is written at once; frames fed
/// together (a connection's subscriptions) go out in one write at the flush, as a client
/// sends what it has at hand in one go.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
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

    /// The upgrade request of `user`'s socket: bearer token and subprotocol; `subscribe`
    /// names channels the upgrade subscribes at once (`?ch=`, docs/protocol.md section 2).
    fn request(
        &self,
        user: &str,
        channels: &[&str],
        subscribe: &[String],
    ) -> anyhow::Result<Request> {
        let mut url = self.url.clone();
        if !subscribe.is_empty() {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.extend_pairs(subscribe.iter().map(|ch| ("ch", ch)));
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&query.finish());
        }
        let mut request = url.into_client_request()?;
        let token = self.token(user, channels)?;
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse()?);
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "switchboard.v1".parse()?);
        Ok(request)
    }

    /// Opens an authenticated socket (bearer on the upgrade) and reads its `welcome`.
    async fn open(&self, user: &str, channels: &[&str]) -> anyhow::Result<Socket> {
        Self::welcome(self.upgrade(user, channels, &[]).await?).await
    }

    /// An authenticated socket (bearer on the upgrade) subscribed to `subscribe` by its
    /// upgrade, its `welcome` not read yet.
    async fn upgrade(
        &self,
        user: &str,
        channels: &[&str],
        subscribe: &[String],
    ) -> anyhow::Result<Socket> {
        let request = self.request(user, channels, subscribe)?;
        // No Nagle: a client's small `pub` frames must not wait for the edge's ACKs.
        let (socket, _) =
            tokio_tungstenite::connect_async_with_config(request, Some(socket_config()), true)
                .await
                .with_context(|| format!("cannot connect to the edge at {}", self.url))?;
        Ok(socket)
    }

    /// Reads the first frame of a new socket, which must be `welcome`.
    async fn welcome(mut socket: Socket) -> anyhow::Result<Socket> {
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

    /// Sends `sub` for each channel, all in one write as nats-server's client sends its
    /// `SUB`s (peer.rs), and waits for every `ok`.
    async fn subscribe(socket: &mut Socket, channels: &[String]) -> anyhow::Result<()> {
        for (i, ch) in channels.iter().enumerate() {
            let frame = json!({"op":"sub","id": i + 1,"ch": ch}).to_string();
            socket.feed(Message::Text(frame.into())).await?;
        }
        socket.flush().await?;
        Self::confirmed(socket, channels).await
    }

    /// Reads `welcome`, then the `ok` of every channel the upgrade subscribed (`?ch=`,
    /// docs/protocol.md section 2): a client that knows its channels as it connects has
    /// them confirmed in the same round trip as its token.
    async fn subscribed_on_upgrade(socket: Socket, channels: &[String]) -> anyhow::Result<Socket> {
        let mut socket = Dialer::welcome(socket).await?;
        Self::confirmed(&mut socket, channels).await?;
        Ok(socket)
    }

    /// Waits for the `ok` of every channel asked for.
    async fn confirmed(socket: &mut Socket, channels: &[String]) -> anyhow::Result<()> {
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

    fn fill_usage(
        &self,
        report: &mut Report,
        before: Option<(f64, u64)>,
        after: Option<(f64, u64)>,
    ) {
        fill_usage(report, before, after);
    }
}

/// The edge's CPU time over a run (from its usage `before` and `after`), per delivery,
/// and its RSS after.
fn fill_usage(report: &mut Report, before: Option<(f64, u64)>, after: Option<(f64, u64)>) {
    if let (Some((cpu0, _)), Some((cpu1, rss))) = (before, after) {
        report.edge_cpu_s = Some(cpu1 - cpu0);
        report.edge_rss_kib = Some(rss);
        if report.deliveries > 0 {
            report.edge_cpu_us_per_delivery = Some((cpu1 - cpu0) * 1e6 / report.deliveries as f64);
        }
    }
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

/// How many files this process may open (its soft limit; `u64::MAX` when unlimited).
fn open_files_allowed() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    limit.rlim_cur
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
