//! `switchboard bench --peer socketio|nats-ws`: the `fanout`, `channels` and `connect`
//! scenarios against the servers issue 20 compares Switchboard with, so that one generator
//! measures them all the same way (scripts/bench-peers starts the peers; BENCHMARKS.md,
//! "Peers: how they are run"):
//!
//! - **socketio**: Socket.IO 4.8 with the Redis adapter (`bench/peers/socketio-server.js`).
//!   A socket presents an HS256 JWT in the handshake's `auth.token`, joins its rooms with
//!   an acknowledged `subscribe` event and gets `evt` events. The publisher is a socket of
//!   its own (its token says `"publish": true`) whose `publish` events the server
//!   broadcasts to the room through the Redis adapter.
//! - **nats-ws**: nats-server's own WebSocket listener (`bench/peers/nats-ws.conf`). A
//!   socket sends CONNECT with the server's shared token (nats-server cannot check an
//!   HS256 JWT), SUBs its subjects, and knows they are in place when its PING is answered.
//!   The publisher is a core NATS client publishing to the subject.
//!
//! Both protocols are written by hand here instead of through a Socket.IO or NATS
//! WebSocket client crate: a subscriber needs only a few frame shapes (Engine.IO v4's `0{..}`
//! open, `40` connect, `42[..]` event, `43` ack, `2`/`3` ping and pong; the NATS text
//! protocol's INFO, CONNECT, SUB, MSG, PING and PONG lines), and writing them over the same
//! tokio-tungstenite sockets the edge's clients use keeps the generator's work per delivery
//! the same for every target: the send time and sequence number are scanned out of the
//! frame and counted by the same [`Seen`](super::reader::Seen) as the edge's, never parsed.
//!
//! Neither peer numbers events, so the generator does: `seq` in the event counts the
//! run's events from 1, and a subscriber that gets a seq no higher than the last one it
//! got counts a duplicate, as with the edge.
//!
//! [`Target`] is what `fanout` and `connect` need of whatever they load; [`Bench`] (the
//! edge) and [`Peer`] both provide it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::connect::connect;
use super::fanout::fanout;
use super::limits::loopback_targets;
use super::reader::{Reader, Shared, spawn_reader};
use super::{Args, Bench, Report, Scenario, Socket, process_usage, socket_config, unix_micros};

/// The servers `--peer` loads instead of Switchboard's edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerKind {
    /// Socket.IO 4.8 with the Redis adapter (bench/peers/socketio-server.js).
    Socketio,
    /// nats-server's own WebSocket listener (bench/peers/nats-ws.conf).
    NatsWs,
}

impl PeerKind {
    fn name(self) -> &'static str {
        match self {
            PeerKind::Socketio => "socketio",
            PeerKind::NatsWs => "nats-ws",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct PeerArgs {
    /// Loads a peer instead of Switchboard's edge (fanout, channels and connect):
    /// `--edge-url` is then the peer's WebSocket URL and `--edge-pid` its process; the
    /// socketio peer checks tokens minted with `--secret` (nats-ws ignores it). A flag
    /// only, never taken from the environment, so that no setting left behind turns a
    /// run of the edge into one of a peer.
    #[arg(long, value_enum)]
    pub peer: Option<PeerKind>,
    /// socketio: the node the publisher's socket connects to (another node on the same
    /// Redis, so that events cross the Redis adapter); `--edge-url` when not given.
    #[arg(long, env = "SWITCHBOARD_BENCH_PEER_PUBLISH_URL")]
    pub peer_publish_url: Option<String>,
    /// nats-ws: the shared token of the peer's nats-server, for its WebSocket clients and
    /// for the publisher, which connects to `--nats-url`.
    #[arg(long, env = "SWITCHBOARD_BENCH_PEER_TOKEN", hide_env_values = true)]
    pub peer_token: Option<String>,
}

/// What the `fanout` and `connect` scenarios need of the server they load: Switchboard's
/// edge ([`Bench`]) or a peer ([`Peer`]).
pub(super) trait Target {
    /// Tells this run's channels and users apart from earlier runs'.
    fn run_id(&self) -> &str;
    /// CPU seconds and RSS (KiB) of the loaded server's process, when its pid is known.
    fn usage(&self) -> Option<(f64, u64)>;
    /// A socket of `user`'s, open and subscribed to `channels`, each subscription
    /// confirmed by the server.
    fn subscribed(
        &self,
        user: String,
        channels: Vec<String>,
    ) -> impl Future<Output = anyhow::Result<Socket>> + Send + 'static;
    /// Reads a subscribed socket's events into a tally and a latency histogram.
    fn read(&self, socket: Socket) -> Reader;
    /// Publishes `total` events of about `size` bytes round-robin over `channels` at
    /// `rate` per second; returns (channel index, seq) of each.
    async fn publish_paced(
        &self,
        channels: &[String],
        total: u64,
        rate: u64,
        size: usize,
    ) -> anyhow::Result<Vec<(usize, u64)>>;
}

impl Target for Bench {
    fn run_id(&self) -> &str {
        &self.run_id
    }

    fn usage(&self) -> Option<(f64, u64)> {
        Bench::usage(self)
    }

    fn subscribed(
        &self,
        user: String,
        channels: Vec<String>,
    ) -> impl Future<Output = anyhow::Result<Socket>> + Send + 'static {
        let dialer = self.dialer.clone();
        async move {
            let socket = dialer.upgrade(&user, &[], &channels).await?;
            Bench::subscribed_on_upgrade(socket, &channels).await
        }
    }

    fn read(&self, socket: Socket) -> Reader {
        spawn_reader(socket)
    }

    async fn publish_paced(
        &self,
        channels: &[String],
        total: u64,
        rate: u64,
        size: usize,
    ) -> anyhow::Result<Vec<(usize, u64)>> {
        Bench::publish_paced(self, channels, total, rate, size).await
    }
}

const ONLY: &str =
    "--peer runs fanout, channels and connect; the other scenarios need Switchboard's edge";

/// Runs a scenario against a peer: `fanout`, `channels` or `connect`.
pub(super) async fn run(kind: PeerKind, nats: &crate::Nats, args: &Args) -> anyhow::Result<Report> {
    let supported = matches!(
        args.scenario,
        Scenario::Fanout { .. } | Scenario::Channels { .. } | Scenario::Connect { .. }
    );
    if !supported {
        bail!(ONLY);
    }
    let peer = Peer::new(kind, args, &nats.options.url).await?;
    let Some(mut report) = on_target(&peer, &args.scenario).await? else {
        bail!(ONLY);
    };
    report.parameters["peer"] = json!(kind.name());
    Ok(report)
}

/// Runs the scenarios any [`Target`] can run (`fanout`, `channels`, `connect`) against
/// `target`, the edge or a peer; `None` for a scenario only Switchboard's edge runs.
pub(super) async fn on_target(
    target: &impl Target,
    scenario: &Scenario,
) -> anyhow::Result<Option<Report>> {
    let report = match *scenario {
        Scenario::Fanout {
            subscribers,
            rate,
            size,
            duration,
        } => {
            let params = json!({"subscribers": subscribers, "rate": rate, "size": size, "duration": duration});
            fanout(
                target,
                "fanout",
                params,
                1,
                subscribers,
                rate,
                size,
                duration,
            )
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
            fanout(
                target,
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
        Scenario::Connect {
            connections,
            subs,
            concurrency,
        } => connect(target, connections, subs, concurrency).await?,
        _ => return Ok(None),
    };
    Ok(Some(report))
}

/// A peer being loaded: how its sockets are opened and read, and its publisher.
pub(super) struct Peer {
    dial: Arc<Dial>,
    publisher: Publisher,
    edge_pid: Option<u32>,
    run_id: String,
}

/// What opening a peer's socket needs; shared by the tasks that open them at once.
struct Dial {
    kind: PeerKind,
    url: String,
    secret: String,
    token: String,
}

enum Publisher {
    /// A Socket.IO socket to this URL, opened when publishing starts.
    SocketIo(String),
    /// A core NATS client of the peer's nats-server.
    Nats(async_nats::Client),
}

impl Peer {
    async fn new(kind: PeerKind, args: &Args, nats_url: &str) -> anyhow::Result<Peer> {
        let url = match kind {
            PeerKind::Socketio => socketio_url(&args.edge_url),
            PeerKind::NatsWs => args.edge_url.clone(),
        };
        let token = args.peer.peer_token.clone().unwrap_or_default();
        let publisher = match kind {
            PeerKind::Socketio => {
                if args.secret.len() < 32 {
                    bail!("the JWT secret must be at least 32 bytes (SWITCHBOARD_JWT_SECRET)");
                }
                let publish = args.peer.peer_publish_url.as_deref();
                let publish = socketio_url(publish.unwrap_or(&args.edge_url));
                loopback_targets(&publish, nats_url)?;
                Publisher::SocketIo(publish)
            }
            PeerKind::NatsWs => {
                if token.is_empty() {
                    bail!(
                        "--peer nats-ws needs the server's token (--peer-token or SWITCHBOARD_BENCH_PEER_TOKEN)"
                    );
                }
                let client = async_nats::ConnectOptions::with_token(token.clone())
                    .connection_timeout(Duration::from_secs(5))
                    .connect(nats_url)
                    .await
                    .with_context(|| {
                        format!("cannot connect to the peer's nats-server at {nats_url}")
                    })?;
                Publisher::Nats(client)
            }
        };
        Ok(Peer {
            dial: Arc::new(Dial {
                kind,
                url,
                secret: args.secret.clone(),
                token,
            }),
            publisher,
            edge_pid: args.edge_pid,
            run_id: format!("{:x}", unix_micros()),
        })
    }
}

/// The Engine.IO v4 WebSocket endpoint of a Socket.IO server given by its base URL.
fn socketio_url(url: &str) -> String {
    if url.contains("/socket.io/") {
        return url.to_string();
    }
    format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        url.trim_end_matches('/')
    )
}

impl Target for Peer {
    fn run_id(&self) -> &str {
        &self.run_id
    }

    fn usage(&self) -> Option<(f64, u64)> {
        self.edge_pid.and_then(process_usage)
    }

    fn subscribed(
        &self,
        user: String,
        channels: Vec<String>,
    ) -> impl Future<Output = anyhow::Result<Socket>> + Send + 'static {
        let dial = self.dial.clone();
        async move {
            match dial.kind {
                PeerKind::Socketio => {
                    let mut socket = dial.socketio(&dial.url, json!({"sub": user})).await?;
                    socketio_subscribe(&mut socket, &channels).await?;
                    Ok(socket)
                }
                PeerKind::NatsWs => dial.nats_ws(&channels).await,
            }
        }
    }

    fn read(&self, socket: Socket) -> Reader {
        match self.dial.kind {
            PeerKind::Socketio => read_socketio(socket),
            PeerKind::NatsWs => read_nats_ws(socket),
        }
    }

    async fn publish_paced(
        &self,
        channels: &[String],
        total: u64,
        rate: u64,
        size: usize,
    ) -> anyhow::Result<Vec<(usize, u64)>> {
        // The event: `{"seq":N,"t":<µs>,"pad":"xx.."}`, about `size` bytes in all.
        let pad = "x".repeat(size.saturating_sub(48));
        let event = |seq: u64| format!(r#"{{"seq":{seq},"t":{},"pad":"{pad}"}}"#, unix_micros());
        let mut published = Vec::with_capacity(total as usize);
        let started = Instant::now();
        // Paced by schedule, not by a sleep per event: bursts catch up after a stall.
        let due = |i: u64| started + Duration::from_secs_f64(i as f64 / rate.max(1) as f64);
        match &self.publisher {
            Publisher::Nats(client) => {
                for i in 0..total {
                    tokio::time::sleep_until(due(i).into()).await;
                    let c = (i as usize) % channels.len();
                    client
                        .publish(channels[c].clone(), event(i + 1).into())
                        .await?;
                    published.push((c, i + 1));
                }
                client.flush().await?;
            }
            Publisher::SocketIo(url) => {
                let claims = json!({"sub": format!("publisher-{}", self.run_id), "publish": true});
                let mut socket = self.dial.socketio(url, claims).await?;
                let rooms: Vec<String> = channels.iter().map(|c| json!(c).to_string()).collect();
                for i in 0..total {
                    answer_pings_until(&mut socket, due(i)).await?;
                    let c = (i as usize) % channels.len();
                    let frame = format!(r#"42["publish",{},{}]"#, rooms[c], event(i + 1));
                    socket.send(Message::Text(frame.into())).await?;
                    published.push((c, i + 1));
                }
                // Socket.IO has no publish acknowledgement to wait for: close politely so
                // the frames written are read before the socket goes.
                socket.close(None).await.ok();
            }
        }
        Ok(published)
    }
}

/// The longest a peer may take to answer one step of opening a socket.
const ANSWER: Duration = Duration::from_secs(30);

impl Dial {
    async fn connect(&self, url: &str) -> anyhow::Result<Socket> {
        // No Nagle, as for the edge's clients.
        let (socket, _) =
            tokio_tungstenite::connect_async_with_config(url, Some(socket_config()), true)
                .await
                .with_context(|| format!("cannot connect to the peer at {url}"))?;
        Ok(socket)
    }

    /// A Socket.IO socket connected to the default namespace with an HS256 token of
    /// `claims` (plus an hour's `exp`) checked by the server.
    async fn socketio(&self, url: &str, mut claims: serde_json::Value) -> anyhow::Result<Socket> {
        let mut socket = self.connect(url).await?;
        // Engine.IO's open packet comes first; then the namespace connect with the token.
        let open = next_text(&mut socket).await?;
        if !open.starts_with('0') {
            bail!("expected Engine.IO's open packet, got {open:?}");
        }
        claims["exp"] = json!(unix_micros() / 1_000_000 + 3600);
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.secret.as_bytes()),
        )?;
        let connect = format!("40{}", json!({ "token": token }));
        socket.send(Message::Text(connect.into())).await?;
        loop {
            let text = next_text(&mut socket).await?;
            if text.starts_with("40") {
                return Ok(socket);
            }
            if text.starts_with("44") {
                bail!("the Socket.IO server refused the connection: {text}");
            }
            if text == "2" {
                socket.send(Message::Text("3".into())).await?;
            }
        }
    }

    /// A NATS connection over WebSocket with a subscription to each of `channels`, all in
    /// place once the server has answered the PING sent after them.
    async fn nats_ws(&self, channels: &[String]) -> anyhow::Result<Socket> {
        let mut socket = self.connect(&self.url).await?;
        let connect = json!({"verbose": false, "pedantic": false, "auth_token": self.token,
                             "lang": "switchboard-bench", "version": env!("CARGO_PKG_VERSION"),
                             "protocol": 1, "echo": false, "headers": false});
        let mut lines = format!("CONNECT {connect}\r\n");
        for (sid, channel) in channels.iter().enumerate() {
            lines.push_str(&format!("SUB {channel} {}\r\n", sid + 1));
        }
        lines.push_str("PING\r\n");
        socket
            .send(Message::Binary(lines.into_bytes().into()))
            .await?;
        let mut stream = NatsStream::default();
        loop {
            let message = tokio::time::timeout(ANSWER, socket.next())
                .await
                .context("nats-server did not answer within 30 s")?;
            let bytes = match message {
                Some(Ok(Message::Binary(bytes))) => bytes,
                Some(Ok(Message::Text(text))) => text.as_bytes().to_vec().into(),
                Some(Ok(_)) => continue,
                other => bail!("nats-server closed the socket: {other:?}"),
            };
            let (mut ponged, mut error) = (false, None);
            stream.drain(&bytes, |op| match op {
                NatsOp::Pong => ponged = true,
                NatsOp::Err(e) => error = Some(e),
                _ => {}
            })?;
            if let Some(error) = error {
                bail!("nats-server refused the connection: {error}");
            }
            if ponged {
                return Ok(socket);
            }
        }
    }
}

/// The next text frame, answering nothing: for the steps of opening a socket.
async fn next_text(socket: &mut Socket) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(ANSWER, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return Ok(text.to_string()),
            Ok(Some(Ok(_))) => {}
            Ok(other) => bail!("the peer closed the socket: {other:?}"),
            Err(_) => bail!("the peer did not answer within 30 s"),
        }
    }
}

/// Joins `rooms` with an acknowledged `subscribe` event (ack id 1).
async fn socketio_subscribe(socket: &mut Socket, rooms: &[String]) -> anyhow::Result<()> {
    if rooms.is_empty() {
        return Ok(());
    }
    let frame = format!("421{}", json!(["subscribe", rooms]));
    socket.send(Message::Text(frame.into())).await?;
    loop {
        let text = next_text(socket).await?;
        if text.starts_with("431[") {
            if text.contains("\"ok\"") {
                return Ok(());
            }
            bail!("subscription refused: {text}");
        }
        if text == "2" {
            socket.send(Message::Text("3".into())).await?;
        }
    }
}

/// Waits until `due`, answering Engine.IO pings meanwhile (the server drops a socket
/// that leaves them unanswered for 45 s).
async fn answer_pings_until(socket: &mut Socket, due: Instant) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => return Ok(()),
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                    socket.send(Message::Text("3".into())).await?;
                }
                Some(Ok(_)) => {}
                other => bail!("the publisher's socket closed: {other:?}"),
            },
        }
    }
}

fn read_socketio(mut socket: Socket) -> Reader {
    let state = Shared::default();
    let mine = state.clone();
    let task = tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            if text.starts_with("42[\"evt\"") {
                mine.lock().unwrap_or_else(|e| e.into_inner()).count(&text);
            } else if text.as_str() == "2" && socket.send(Message::Text("3".into())).await.is_err()
            {
                break;
            }
        }
    });
    Reader { task, state }
}

fn read_nats_ws(mut socket: Socket) -> Reader {
    let state = Shared::default();
    let mine = state.clone();
    let task = tokio::spawn(async move {
        let mut stream = NatsStream::default();
        while let Some(Ok(message)) = socket.next().await {
            let bytes = match &message {
                Message::Binary(bytes) => &bytes[..],
                Message::Text(text) => text.as_bytes(),
                _ => continue,
            };
            let mut pinged = false;
            let drained = stream.drain(bytes, |op| match op {
                NatsOp::Msg(payload) => mine
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .count(&String::from_utf8_lossy(payload)),
                NatsOp::Ping => pinged = true,
                _ => {}
            });
            if drained.is_err() {
                break;
            }
            if pinged
                && socket
                    .send(Message::Binary(b"PONG\r\n".to_vec().into()))
                    .await
                    .is_err()
            {
                break;
            }
        }
    });
    Reader { task, state }
}

/// One operation of the NATS protocol as a client receives it.
#[derive(Debug, PartialEq)]
enum NatsOp<'a> {
    Msg(&'a [u8]),
    Ping,
    Pong,
    Err(String),
    /// INFO, +OK: nothing a subscriber acts on.
    Other,
}

/// The NATS protocol as it arrives over WebSocket frames: a frame may hold several
/// operations, or end in the middle of one.
#[derive(Default)]
struct NatsStream {
    pending: Vec<u8>,
}

impl NatsStream {
    /// Appends `bytes` and hands each complete operation to `each`, keeping the rest for
    /// the next frame.
    fn drain(&mut self, bytes: &[u8], mut each: impl FnMut(NatsOp<'_>)) -> anyhow::Result<()> {
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        while let Some(end) = find_crlf(&self.pending[at..]) {
            let rest = &self.pending[at..];
            let line = &rest[..end];
            if line.starts_with(b"MSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n
                let size: usize = line
                    .rsplit(|b| *b == b' ')
                    .next()
                    .and_then(|n| std::str::from_utf8(n).ok())
                    .and_then(|n| n.parse().ok())
                    .with_context(|| {
                        format!(
                            "a MSG line without a size: {}",
                            String::from_utf8_lossy(line)
                        )
                    })?;
                let body = end + 2;
                if rest.len() < body + size + 2 {
                    break;
                }
                each(NatsOp::Msg(&rest[body..body + size]));
                at += body + size + 2;
            } else {
                each(match line {
                    b"PING" => NatsOp::Ping,
                    b"PONG" => NatsOp::Pong,
                    _ if line.starts_with(b"-ERR") => {
                        NatsOp::Err(String::from_utf8_lossy(line).into_owned())
                    }
                    _ => NatsOp::Other,
                });
                at += end + 2;
            }
        }
        self.pending.drain(..at);
        Ok(())
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(stream: &mut NatsStream, bytes: &[u8]) -> Vec<String> {
        let mut seen = Vec::new();
        stream
            .drain(bytes, |op| {
                seen.push(match op {
                    NatsOp::Msg(payload) => format!("msg {}", String::from_utf8_lossy(payload)),
                    other => format!("{other:?}"),
                })
            })
            .unwrap();
        seen
    }

    #[test]
    fn nats_operations_split_across_frames_are_put_back_together() {
        let mut stream = NatsStream::default();
        assert_eq!(
            ops(&mut stream, b"INFO {\"a\":1}\r\nPONG\r\nMSG s 1 5\r\nhel"),
            ["Other", "Pong"]
        );
        assert_eq!(
            ops(&mut stream, b"lo\r\nMSG s 1 reply 2\r\n\r\n\r\nPI"),
            ["msg hello", "msg \r\n"]
        );
        assert_eq!(
            ops(&mut stream, b"NG\r\n-ERR 'Authorization Violation'\r\n"),
            ["Ping", "Err(\"-ERR 'Authorization Violation'\")"]
        );
        assert!(stream.pending.is_empty());
        assert!(
            NatsStream::default()
                .drain(b"MSG s 1 x\r\n", |_| {})
                .is_err()
        );
    }

    #[test]
    fn a_socketio_base_url_gets_the_engine_io_path() {
        assert_eq!(
            socketio_url("ws://127.0.0.1:3000/"),
            "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
        );
        let full = "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket";
        assert_eq!(socketio_url(full), full);
    }
}
