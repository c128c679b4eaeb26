//! Abuse: floods of connections, frames and subscriptions, slow-loris clients, oversized
//! and malformed frames, injected channel names. In every case the edge keeps serving
//! everyone else — a bystander connected throughout receives exactly the events published
//! meanwhile, promptly — and its resident memory stays under a bound derived from the
//! limits, not from the amount of abuse.
//!
//! Token forgery lives in tests/tokens.rs, single-connection limits in tests/session.rs
//! and tests/http.rs, slow consumers in tests/pressure.rs.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::*;
use switchboard_bus::Publisher;
use switchboard_schemas::{ChannelName, Envelope, EventType, RawJson};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const KIB: u64 = 1;
const MIB: u64 = 1024 * KIB;

/// The longest a bystander's event may take from publish to its socket while the edge is
/// under attack. Generous: four tests share two cores, in a debug build.
const PROMPT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// Memory of the edge process.

/// A line of `/proc/<pid>/status` in KiB (`VmRSS`: now; `VmHWM`: the peak so far).
fn proc_kib(edge: &Edge, field: &str) -> u64 {
    let pid = edge.process.pid().expect("the edge is running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The edge's memory: the resident size before the abuse, and the peak since.
struct Memory {
    base: u64,
}

impl Memory {
    fn before(edge: &Edge) -> Memory {
        Memory {
            base: proc_kib(edge, "VmRSS"),
        }
    }

    /// Asserts the peak stayed within `base + budget` and returns a summary.
    fn check(&self, edge: &Edge, budget: u64, what: &str) -> String {
        let peak = proc_kib(edge, "VmHWM");
        let now = proc_kib(edge, "VmRSS");
        assert!(
            peak <= self.base + budget,
            "{what}: edge RSS peaked at {:.1} MiB, base {:.1} MiB + budget {:.1} MiB",
            mib(peak),
            mib(self.base),
            mib(budget)
        );
        format!(
            "edge RSS {:.1} -> peak {:.1} MiB (bound {:.1}), now {:.1}",
            mib(self.base),
            mib(peak),
            mib(self.base + budget),
            mib(now)
        )
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A metric from the edge's `/metrics` (0 when absent).
async fn metric(edge: &Edge, name: &str) -> f64 {
    let (status, text) = http(&edge.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200, "/metrics: {text}");
    text.lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `metric` satisfies `wanted`; panics with its last value after `limit`.
async fn metric_until(edge: &Edge, name: &str, limit: Duration, wanted: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let value = metric(edge, name).await;
        if wanted(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is still {value} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The bystander: one well-behaved client, subscribed throughout.

const BYSTANDER_CH: &str = "domain:bystander";
/// Events the bystander is sent at least, one every 50 ms.
const BYSTANDER_MIN_EVENTS: usize = 10;

/// A subscribed client and a backend publishing to it every 50 ms until [`finish`].
struct Bystander {
    stop: CancellationToken,
    publisher: JoinHandle<Vec<(u64, Instant)>>,
    reader: JoinHandle<(Vec<(u64, Instant)>, bool)>,
    expected: oneshot::Sender<usize>,
}

impl Bystander {
    async fn start(stack: &Stack, edge: &Edge) -> Bystander {
        let mut client = edge.connect("bystander").await;
        let ok = client.sub(json!({"ch": BYSTANDER_CH})).await;
        assert_eq!(ok["op"], "ok", "{ok}");
        let (expected, expected_rx) = oneshot::channel();
        let reader = tokio::spawn(read_events(client, expected_rx));
        let stop = CancellationToken::new();
        let publisher = tokio::spawn(publish_until(stack.client.clone(), stop.clone()));
        Bystander {
            stop,
            publisher,
            reader,
            expected,
        }
    }

    /// Stops publishing; asserts every event arrived once, in order, within [`PROMPT`].
    async fn finish(self) -> String {
        self.stop.cancel();
        let sent = self.publisher.await.unwrap();
        let _ = self.expected.send(sent.len());
        let (received, closed) = self.reader.await.unwrap();
        assert!(!closed, "the bystander's socket was closed");
        let sent_seqs: Vec<u64> = sent.iter().map(|(seq, _)| *seq).collect();
        let received_seqs: Vec<u64> = received.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(
            received_seqs, sent_seqs,
            "the bystander gets exactly the events published, in order"
        );
        let worst = sent
            .iter()
            .zip(&received)
            .map(|((_, at), (_, got))| got.saturating_duration_since(*at))
            .max()
            .unwrap_or_default();
        assert!(
            worst <= PROMPT,
            "a bystander event took {worst:?} (limit {PROMPT:?})"
        );

        format!(
            "bystander got {}/{} events, slowest {} ms",
            received.len(),
            sent.len(),
            worst.as_millis()
        )
    }
}

async fn publish_until(nats: async_nats::Client, stop: CancellationToken) -> Vec<(u64, Instant)> {
    let publisher = Publisher::new(nats);
    let channel = ChannelName::parse(BYSTANDER_CH).unwrap();
    let mut sent = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        // However quickly the abuse is dealt with, the bystander sees enough events to
        // tell whether it was served throughout.
        tokio::select! {
            _ = stop.cancelled(), if sent.len() >= BYSTANDER_MIN_EVENTS => return sent,
            _ = tick.tick() => {}
        }
        let event = Envelope::new(
            EventType::parse("project.update").unwrap(),
            RawJson::encode(&json!({"n": sent.len()})).unwrap(),
        );
        let at = Instant::now();
        let seq = publisher.publish(&channel, &event).await.unwrap().seq;
        sent.push((seq, at));
    }
}

/// Reads the bystander's events until `expected` of them arrived (10 s at most once the
/// count is known); also says whether the socket closed.
async fn read_events(
    mut client: Client,
    mut expected: oneshot::Receiver<usize>,
) -> (Vec<(u64, Instant)>, bool) {
    let mut received = Vec::new();
    let mut wanted = None;
    let mut deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    loop {
        if wanted.is_some_and(|n| received.len() >= n) {
            return (received, false);
        }
        let next = tokio::select! {
            n = &mut expected, if wanted.is_none() => {
                wanted = Some(n.unwrap_or(0));
                deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                continue;
            }
            _ = tokio::time::sleep_until(deadline) => return (received, false),
            next = client.socket.next() => next,
        };
        match next {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["op"] == "evt" && frame["ch"] == BYSTANDER_CH {
                    received.push((frame["seq"].as_u64().unwrap(), Instant::now()));
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (received, true),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Raw sockets: cheaper than a WebSocket client (no 128 KiB buffers), and free to misbehave.

/// Opens a TCP connection and sends a WebSocket upgrade for `/v1/ws`; returns the HTTP
/// status, the socket, and whatever arrived after the response head. Status 0: the
/// connection failed or was closed before a response.
async fn upgrade(addr: &str, token: Option<&str>) -> (u16, Option<TcpStream>, Vec<u8>) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    upgrade_from(addr, "127.0.0.1", &auth).await
}

/// An upgrade from the local address `from` (any of 127.0.0.0/8), with `headers` (whole
/// lines) added.
async fn upgrade_from(addr: &str, from: &str, headers: &str) -> (u16, Option<TcpStream>, Vec<u8>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let Ok(mut stream) = socket.connect(addr.parse().unwrap()).await else {
        return (0, None, Vec::new());
    };
    let auth = headers;
    let request = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: switchboard.v1\r\n{auth}\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, None, Vec::new());
    }
    match read_head(&mut stream, Duration::from_secs(10)).await {
        Some((status, rest)) => (status, Some(stream), rest),
        None => (0, None, Vec::new()),
    }
}

/// Reads an HTTP response head: its status and the bytes after it.
async fn read_head(stream: &mut TcpStream, limit: Duration) -> Option<(u16, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]);
            let status = head.split(' ').nth(1)?.parse().ok()?;
            return Some((status, buffer[end + 4..].to_vec()));
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// How a socket ended, as seen by a client that reads what the edge sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// A WebSocket close frame with this code arrived.
    Close(u16),
    /// The connection ended (EOF or reset) without a close frame.
    Dropped,
}

/// Reads server frames (unmasked) until a close frame or the end of the connection;
/// `None` if neither came within `limit`.
async fn read_until_end(
    stream: &mut TcpStream,
    mut buffer: Vec<u8>,
    limit: Duration,
) -> Option<Ended> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // Consume whole frames from the buffer.
        while let Some((opcode, payload, used)) = parse_server_frame(&buffer) {
            if opcode == 0x8 {
                let code = payload
                    .get(..2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .unwrap_or(1005);
                return Some(Ended::Close(code));
            }
            buffer.drain(..used);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Ended::Dropped),
            Ok(Ok(n)) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One unmasked frame at the start of `bytes`: (opcode, payload, bytes used).
fn parse_server_frame(bytes: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (&b0, &b1) = (bytes.first()?, bytes.get(1)?);
    let (len, header) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]) as usize,
            4,
        ),
        127 => {
            let raw: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(raw) as usize, 10)
        }
        n => (n as usize, 2),
    };
    let payload = bytes.get(header..header + len)?;
    Some((b0 & 0x0f, payload.to_vec(), header + len))
}

/// A client frame: masked unless `masked` is false.
fn client_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut frame = vec![(u8::from(fin) << 7) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => frame.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

/// Runs `f` over `items` with at most `limit` at a time; results in completion order.
async fn at_most<T, F, R>(limit: usize, items: Vec<T>, f: impl Fn(T) -> F) -> Vec<R>
where
    F: std::future::Future<Output = R>,
{
    futures_util::stream::iter(items.into_iter().map(f))
        .buffer_unordered(limit)
        .collect()
        .await
}

// ---------------------------------------------------------------------------------------
// Floods of connections.

#[tokio::test]
async fn a_connection_flood_is_capped_per_user_and_unauthenticated_and_others_are_served() {
    const USERS: usize = 100;
    const PER_USER: usize = 10;
    const ATTEMPTS_PER_USER: usize = 12;
    const PENDING: usize = 200;
    const PENDING_ATTEMPTS: usize = 400;
    const HELLO_TIMEOUT: Duration = Duration::from_secs(4);
    let stack = Stack::start().await;
    let edge = stack.edge(&[
        ("SWITCHBOARD_MAX_CONNS_PER_USER", &PER_USER.to_string()),
        ("SWITCHBOARD_MAX_UNAUTHENTICATED", &PENDING.to_string()),
        // Every socket here comes from 127.0.0.1: the edge-wide cap is under test.
        ("SWITCHBOARD_MAX_PENDING_PER_IP", "100000"),
        (
            "SWITCHBOARD_HELLO_TIMEOUT_MS",
            &HELLO_TIMEOUT.as_millis().to_string(),
        ),
    ]);
    let bystander = Bystander::start(&stack, &edge).await;
    let memory = Memory::before(&edge);
    let addr = edge.addr.clone();

    // Authenticated: every user tries more sockets than the cap allows.
    let tokens: Vec<String> = (0..USERS)
        .flat_map(|u| std::iter::repeat_n(token(&format!("flood{u}"), 600, &[]), ATTEMPTS_PER_USER))
        .collect();
    let opened = at_most(64, tokens, |t| {
        let addr = addr.clone();
        async move { upgrade(&addr, Some(&t)).await }
    })
    .await;
    let mut held = Vec::new();
    let (mut authenticated, mut over_cap) = (0, 0);
    for (status, stream, _) in opened {
        match status {
            101 => {
                authenticated += 1;
                held.push(stream.unwrap());
            }
            429 => over_cap += 1,
            other => panic!("an authenticated upgrade got {other}"),
        }
    }
    assert_eq!(
        authenticated,
        USERS * PER_USER,
        "the per-user cap holds exactly"
    );
    assert_eq!(over_cap, USERS * (ATTEMPTS_PER_USER - PER_USER));

    // Unauthenticated: twice as many as may wait for hello, and none of them says it.
    let started = Instant::now();
    let opened = at_most(100, vec![(); PENDING_ATTEMPTS], |()| {
        let addr = addr.clone();
        async move { upgrade(&addr, None).await }
    })
    .await;
    let opening = started.elapsed();
    assert!(
        opening < HELLO_TIMEOUT,
        "opening took {opening:?}: the first sockets may have timed out already"
    );
    let mut pending = Vec::new();
    let mut pending_refused = 0;
    for (status, stream, rest) in opened {
        match status {
            101 => pending.push((stream.unwrap(), rest)),
            429 => pending_refused += 1,
            other => panic!("an unauthenticated upgrade got {other}"),
        }
    }
    assert_eq!(
        pending.len(),
        PENDING,
        "the unauthenticated cap holds exactly"
    );
    assert_eq!(pending_refused, PENDING_ATTEMPTS - PENDING);

    // While the flood is held, a newcomer connects, subscribes and is answered.
    let mut newcomer = edge.connect("newcomer").await;
    assert_eq!(
        newcomer.sub(json!({"ch":"domain:newcomer"})).await["op"],
        "ok"
    );
    assert_eq!(newcomer.request(json!({"op":"ping"})).await["op"], "pong");
    metric_until(
        &edge,
        "switchboard_edge_connections",
        Duration::from_secs(10),
        |v| v >= (USERS * PER_USER + 2) as f64,
    )
    .await;

    // Sockets that never say hello are closed by the edge: bye, close 4401, and the end of
    // the connection once the closing handshake times out.
    let limit = HELLO_TIMEOUT + Duration::from_secs(8);
    let ends = at_most(PENDING, pending, |(mut stream, rest)| async move {
        read_until_end(&mut stream, rest, limit).await
    })
    .await;
    let closed_4401 = ends
        .iter()
        .filter(|e| **e == Some(Ended::Close(4401)))
        .count();
    assert_eq!(
        closed_4401, PENDING,
        "every silent socket gets close 4401: {ends:?}"
    );
    // Their places are free again.
    let (status, _, _) = upgrade(&addr, None).await;
    assert_eq!(
        status, 101,
        "an unauthenticated socket is admitted after the purge"
    );

    // Budget: 64 KiB per socket held (measured: about 18 in a debug build, presence entry
    // and implicit subscription included) on top of 24 MiB for the allocator's slack.
    let sockets = (USERS * PER_USER + PENDING + 2) as u64;
    let memory = memory.check(&edge, 24 * MIB + sockets * 64 * KIB, "connection flood");
    let bystander = bystander.finish().await;
    println!(
        "connection flood: {} authenticated upgrades ({authenticated} open, {over_cap} refused 429 \
         by the per-user cap of {PER_USER}), {PENDING_ATTEMPTS} unauthenticated ({PENDING} open, \
         {pending_refused} refused 429), all {closed_4401} silent sockets closed 4401; newcomer \
         served; the unauthenticated flood opened in {} ms; {memory}; {bystander}",
        USERS * ATTEMPTS_PER_USER,
        opening.as_millis()
    );
    drop(held);
}

// ---------------------------------------------------------------------------------------
// Slow loris.

/// Holds a connection open sending nothing; returns how long after `opened` the edge
/// closed it.
async fn silent(mut stream: TcpStream, opened: Instant, limit: Duration) -> Option<Duration> {
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((opened + limit).into(), stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(opened.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// Sends a request head one byte every `pause`, never finishing in time; returns how long
/// after `opened` the edge closed the connection.
async fn dribble(
    mut stream: TcpStream,
    opened: Instant,
    pause: Duration,
    limit: Duration,
) -> Option<Duration> {
    let head =
        b"GET /v1/ws HTTP/1.1\r\nHost: edge\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let mut buffer = [0u8; 1024];
    let mut next = 0;
    loop {
        if opened.elapsed() > limit {
            return None;
        }
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return Some(opened.elapsed()),
                Ok(_) => continue,
            },
            _ = tokio::time::sleep(pause) => {
                if next < head.len() {
                    if stream.write_all(&head[next..=next]).await.is_err() {
                        return Some(opened.elapsed());
                    }
                    next += 1;
                }
            }
        }
    }
}

/// Sends a request head that never ends, `bytes` long; returns the status answered (if
/// the answer could be read before the connection was reset).
async fn endless_head(addr: String, bytes: usize) -> Option<u16> {
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /v1/ws HTTP/1.1\r\nHost: edge\r\n")
        .await
        .unwrap();
    let line = format!("X-Pad: {}\r\n", "a".repeat(1000));
    let mut sent = 0;
    while sent < bytes {
        if stream.write_all(line.as_bytes()).await.is_err() {
            break;
        }
        sent += line.len();
    }
    read_head(&mut stream, Duration::from_secs(10))
        .await
        .map(|(status, _)| status)
}

#[tokio::test]
async fn slow_loris_sockets_are_capped_and_timed_out_while_others_are_served() {
    const HEADER_TIMEOUT: Duration = Duration::from_secs(4);
    const MAX_HTTP: usize = 300;
    const SILENT: usize = 200;
    const DRIBBLERS: usize = 50;
    const PROBES: usize = 50;
    const ENDLESS: usize = 20;
    const ENDLESS_BYTES: usize = 2 * 1024 * 1024;
    let stack = Stack::start().await;
    let edge = stack.edge(&[
        (
            "SWITCHBOARD_HEADER_TIMEOUT_MS",
            &HEADER_TIMEOUT.as_millis().to_string(),
        ),
        ("SWITCHBOARD_MAX_HTTP_CONNECTIONS", &MAX_HTTP.to_string()),
    ]);
    let bystander = Bystander::start(&stack, &edge).await;
    let memory = Memory::before(&edge);
    let addr = edge.addr.clone();
    let limit = HEADER_TIMEOUT + Duration::from_secs(6);

    // Heads that never end are cut off at the head limit (16 KiB) with 431: the edge
    // buffers no more of them, however much is sent. First, while the edge's memory is
    // at its base, so that nothing freed earlier can hide a growth.
    let endless = at_most(ENDLESS, vec![(); ENDLESS], |()| {
        endless_head(addr.clone(), ENDLESS_BYTES)
    })
    .await;
    let cut_off = endless.iter().filter(|s| **s == Some(431)).count();
    let reset = endless.iter().filter(|s| s.is_none()).count();
    assert_eq!(cut_off + reset, ENDLESS, "{endless:?}");
    assert!(cut_off > 0, "an endless head is answered 431: {endless:?}");
    // Budget: 64 KiB per endless head on top of 4 MiB of slack; buffering what they sent
    // would take ENDLESS x 2 MiB.
    let endless_memory = memory.check(&edge, 4 * MIB + ENDLESS as u64 * 64 * KIB, "endless heads");

    // A head sent slowly but completely within the timeout is served: the timeout is on
    // the whole head, not on the gaps between bytes.
    let mut patient = TcpStream::connect(&addr).await.unwrap();
    for byte in b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n" {
        patient.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _) = read_head(&mut patient, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status, 200, "a slow but complete head is answered");
    drop(patient);

    // The limit is on the head only: a large body is read as ever.
    let service = token_with(json!({"sub":"svc","exp": now() + 600,"role":"service"}));
    let body = json!({"channel":"domain:big","type":"project.update",
                      "data":{"pad":"x".repeat(100 * 1024)}});
    let (status, answer) = http(
        &addr,
        "POST",
        "/v1/publish",
        &[("Authorization", &format!("Bearer {service}"))],
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 200, "a 100 KiB body is published: {answer}");

    // Silent connections and dribblers, fewer than the cap.
    let first_opened = Instant::now();
    let mut lorises = tokio::task::JoinSet::new();
    for _ in 0..SILENT {
        let opened = Instant::now();
        let stream = TcpStream::connect(&addr).await.unwrap();
        lorises.spawn(silent(stream, opened, limit));
    }
    for _ in 0..DRIBBLERS {
        let opened = Instant::now();
        let stream = TcpStream::connect(&addr).await.unwrap();
        lorises.spawn(dribble(stream, opened, Duration::from_millis(100), limit));
    }
    metric_until(
        &edge,
        "switchboard_edge_http_connections",
        Duration::from_secs(3),
        |v| v >= (SILENT + DRIBBLERS) as f64,
    )
    .await;
    // Below the cap, a new client still connects and is served.
    let mut newcomer = edge.connect("newcomer").await;
    assert_eq!(newcomer.request(json!({"op":"ping"})).await["op"], "pong");
    drop(newcomer);

    // Fill the cap: the connections beyond it are answered 503 and closed at once.
    for _ in SILENT + DRIBBLERS..MAX_HTTP {
        let opened = Instant::now();
        let stream = TcpStream::connect(&addr).await.unwrap();
        lorises.spawn(silent(stream, opened, limit));
    }
    let mut refused_503 = 0;
    let mut refused_reset = 0;
    for _ in 0..PROBES {
        let started = Instant::now();
        let (status, _, _) = upgrade(&addr, Some(&token("probe", 60, &[]))).await;
        match status {
            503 => refused_503 += 1,
            0 => refused_reset += 1,
            other => panic!("a connection beyond the cap got {other}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "refused at once"
        );
    }
    assert!(
        first_opened.elapsed() < HEADER_TIMEOUT,
        "the cap was filled too slowly to test it"
    );
    assert!(
        refused_503 > 0,
        "the refusal is a 503 (all {PROBES} were resets)"
    );

    // Every slow loris is closed once the header timeout passes, none much later.
    let mut closed_after = Vec::new();
    while let Some(ended) = lorises.join_next().await {
        let after = ended
            .unwrap()
            .unwrap_or_else(|| panic!("a slow-loris socket was still open after {limit:?}"));
        closed_after.push(after);
    }
    let earliest = closed_after.iter().min().unwrap();
    let latest = closed_after.iter().max().unwrap();
    assert!(
        *earliest >= HEADER_TIMEOUT,
        "closed before the header timeout: {earliest:?}"
    );
    // Once they are gone, new clients connect again.
    let mut late = edge.connect("late").await;
    assert_eq!(late.request(json!({"op":"ping"})).await["op"], "pong");
    let timeouts = metric(&edge, "switchboard_edge_header_timeouts_total").await;
    assert!(
        timeouts >= MAX_HTTP as f64,
        "{timeouts} header timeouts counted"
    );
    assert_eq!(
        metric(&edge, "switchboard_edge_http_refused_total").await,
        PROBES as f64
    );

    // Budget: 64 KiB per slow socket (a 16 KiB head buffer at most, plus hyper's and
    // tokio's state) on top of 16 MiB of slack.
    let memory = memory.check(&edge, 16 * MIB + MAX_HTTP as u64 * 64 * KIB, "slow loris");
    let bystander = bystander.finish().await;
    println!(
        "slow loris: {ENDLESS} endless heads of {} MiB: {cut_off} cut off with 431, {reset} \
         reset, {endless_memory}; {SILENT} silent + {DRIBBLERS} byte-a-time + {} more sockets \
         held the cap of {MAX_HTTP}; {PROBES} more refused at once ({refused_503} with 503, \
         {refused_reset} reset); all {} closed by the {HEADER_TIMEOUT:?} header timeout after \
         {:.1}-{:.1} s; a slow but complete head and a 100 KiB body served; newcomers served before and after; \
         {memory}; {bystander}",
        ENDLESS_BYTES / (1024 * 1024),
        MAX_HTTP - SILENT - DRIBBLERS,
        closed_after.len(),
        earliest.as_secs_f64(),
        latest.as_secs_f64(),
    );
}

// ---------------------------------------------------------------------------------------
// Floods of frames.

#[tokio::test]
async fn frame_floods_end_the_flooders_and_nobody_else() {
    const PINGERS: usize = 20;
    const GARBAGE: usize = 10;
    const PRE_HELLO: usize = 10;
    let stack = Stack::start().await;
    // A hello timeout would close with 4401: the pre-hello flooders must be ended by
    // their own frames (4400) well before it.
    let edge = stack.edge(&[("SWITCHBOARD_HELLO_TIMEOUT_MS", "5000")]);
    let bystander = Bystander::start(&stack, &edge).await;
    let memory = Memory::before(&edge);
    let addr = edge.addr.clone();

    // Authenticated floods: pings far beyond the burst; garbage far beyond the bad-frame
    // limit. Each flooder writes everything before reading anything.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Flooder {
        Pinger,
        Garbage,
        PreHello,
    }
    let started = std::time::Instant::now();
    let mut floods = tokio::task::JoinSet::new();
    for i in 0..PINGERS + GARBAGE {
        let addr = addr.clone();
        floods.spawn(async move {
            let kind = if i < PINGERS {
                Flooder::Pinger
            } else {
                Flooder::Garbage
            };
            let (status, stream, rest) =
                upgrade(&addr, Some(&token(&format!("f{i}"), 600, &[]))).await;
            assert_eq!(status, 101);
            let mut stream = stream.unwrap();
            let mut burst = Vec::new();
            for n in 0..500 {
                let text = if kind == Flooder::Pinger {
                    json!({"op":"ping","id": n}).to_string()
                } else {
                    format!("{{not json {n}")
                };
                burst.extend(client_frame(true, 0x1, text.as_bytes(), true));
            }
            // The edge may close before it has read everything.
            let _ = stream.write_all(&burst).await;
            let ended = read_until_end(&mut stream, rest, Duration::from_secs(15)).await;
            (kind, ended, started.elapsed())
        });
    }
    // Before hello, pings are answered within the frame rate only: frames beyond it count
    // as bad, so a socket flooding them is ended long before the hello timeout.
    for _ in 0..PRE_HELLO {
        let addr = addr.clone();
        floods.spawn(async move {
            let (status, stream, rest) = upgrade(&addr, None).await;
            assert_eq!(status, 101);
            let mut stream = stream.unwrap();
            let mut burst = Vec::new();
            for n in 0..500 {
                let text = json!({"op":"ping","id": n}).to_string();
                burst.extend(client_frame(true, 0x1, text.as_bytes(), true));
            }
            let _ = stream.write_all(&burst).await;
            let ended = read_until_end(&mut stream, rest, Duration::from_secs(15)).await;
            (Flooder::PreHello, ended, started.elapsed())
        });
    }
    let (mut rate_limited, mut protocol_error, mut pre_hello) = (0, 0, 0);
    let mut pre_hello_slowest = Duration::ZERO;
    while let Some(flood) = floods.join_next().await {
        match flood.unwrap() {
            (Flooder::Pinger, Some(Ended::Close(4408)), _) => rate_limited += 1,
            (Flooder::Garbage, Some(Ended::Close(4400)), _) => protocol_error += 1,
            (Flooder::PreHello, Some(Ended::Close(4400)), took) => {
                pre_hello += 1;
                pre_hello_slowest = pre_hello_slowest.max(took);
            }
            other => panic!("a flooder ended as {other:?}"),
        }
    }
    assert_eq!(
        rate_limited, PINGERS,
        "ping flooders: bye rate_limited, 4408"
    );
    assert_eq!(
        protocol_error, GARBAGE,
        "garbage flooders: bye protocol_error, 4400"
    );
    assert_eq!(
        pre_hello, PRE_HELLO,
        "pre-hello flooders: bye protocol_error, 4400"
    );

    let mut after = edge.connect("after").await;
    assert_eq!(after.request(json!({"op":"ping"})).await["op"], "pong");
    // Budget: 256 KiB per flooder (a burst of frames in its read buffer, replies queued)
    // on top of 16 MiB of slack.
    let flooders = (PINGERS + GARBAGE + PRE_HELLO) as u64;
    let memory = memory.check(&edge, 16 * MIB + flooders * 256 * KIB, "frame flood");
    let bystander = bystander.finish().await;
    let frames = (PINGERS + GARBAGE + PRE_HELLO) * 500;
    println!(
        "frame flood: {frames} frames from {flooders} sockets; {rate_limited} ping flooders closed \
         4408 rate_limited, {protocol_error} garbage flooders closed 4400 protocol_error, \
         {pre_hello} pre-hello ping flooders closed 4400 protocol_error within {:.1} s (hello \
         timeout 5 s); {memory}; {bystander}",
        pre_hello_slowest.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// Floods of subscriptions.

#[tokio::test]
async fn subscription_floods_stop_at_the_cap_and_leave_nothing_behind() {
    const USERS: usize = 4;
    const CONNS_PER_USER: usize = 5;
    const MAX_SUBS: usize = 100;
    const ATTEMPTS: usize = 110;
    const CHURN: usize = 2000;
    let stack = Stack::start().await;
    // Rates high enough that only the subscription cap is in play (rates: tests/http.rs).
    let edge = stack.edge(&[
        ("SWITCHBOARD_SUB_PER_S", "10000"),
        ("SWITCHBOARD_FRAMES_PER_S", "10000"),
        ("SWITCHBOARD_FRAME_BURST", "10000"),
    ]);
    let bystander = Bystander::start(&stack, &edge).await;
    let channels_before = metric(&edge, "switchboard_edge_channels").await;
    let memory = Memory::before(&edge);

    // Churn first, while the edge is at its base: one connection subscribes to a new
    // channel and leaves it, over and over. Nothing may accumulate per channel ever used.
    let mut churner = edge.connect("churner").await;
    let churn_base = proc_kib(&edge, "VmRSS");
    for i in 0..CHURN {
        let ch = format!("domain:churn-{i}");
        let ok = churner.sub(json!({"ch": &ch})).await;
        assert_eq!(ok["op"], "ok", "{ok}");
        let ok = churner.request(json!({"op":"unsub","ch": &ch})).await;
        assert_eq!(ok["op"], "ok", "{ok}");
    }
    drop(churner);
    metric_until(
        &edge,
        "switchboard_edge_channels",
        Duration::from_secs(10),
        |v| v <= channels_before,
    )
    .await;
    let grown = proc_kib(&edge, "VmRSS").saturating_sub(churn_base);
    assert!(
        grown <= 8 * MIB,
        "{CHURN} subscribe/unsubscribe rounds grew the edge by {:.1} MiB",
        mib(grown)
    );

    let mut floods = tokio::task::JoinSet::new();
    for u in 0..USERS {
        for c in 0..CONNS_PER_USER {
            let mut client = edge.connect(&format!("s{u}")).await;
            floods.spawn(async move {
                let (mut ok, mut capped) = (0, 0);
                for i in 0..ATTEMPTS {
                    let reply = client
                        .sub(json!({"ch": format!("domain:s{u}-{c}-{i}")}))
                        .await;
                    match (reply["op"].as_str(), reply["code"].as_str()) {
                        (Some("ok"), _) => ok += 1,
                        (Some("err"), Some("rate_limited")) => capped += 1,
                        _ => panic!("unexpected reply {reply}"),
                    }
                }
                (client, ok, capped)
            });
        }
    }
    let mut flooders = Vec::new();
    while let Some(flood) = floods.join_next().await {
        let (client, ok, capped) = flood.unwrap();
        assert_eq!((ok, capped), (MAX_SUBS, ATTEMPTS - MAX_SUBS));
        flooders.push(client);
    }
    let subscribed = flooders.len() * MAX_SUBS;
    let channels_held = metric(&edge, "switchboard_edge_channels").await;
    assert!(
        channels_held >= channels_before + subscribed as f64,
        "{channels_held} channels held"
    );
    // Budget: 16 KiB per subscription (a channel of its own here: a bridge task and two
    // NATS subscriptions; measured: about 15 in a debug build) and 64 KiB per connection,
    // on top of 16 MiB of slack.
    let budget = 16 * MIB + subscribed as u64 * 16 * KIB + flooders.len() as u64 * 64 * KIB;
    let flood_memory = memory.check(&edge, budget, "subscription flood");

    // When the flooders leave, so do their channels.
    drop(flooders);
    metric_until(
        &edge,
        "switchboard_edge_channels",
        Duration::from_secs(10),
        |v| v <= channels_before,
    )
    .await;

    let bystander = bystander.finish().await;
    println!(
        "subscription flood: {} connections x {ATTEMPTS} subs: {subscribed} accepted ({MAX_SUBS} \
         each), {} refused rate_limited; {channels_held} channels held, back to \
         {channels_before} after they left; {flood_memory}; {CHURN} sub/unsub rounds on fresh \
         channels grew RSS by {:.1} MiB; {bystander}",
        USERS * CONNS_PER_USER,
        USERS * CONNS_PER_USER * (ATTEMPTS - MAX_SUBS),
        mib(grown)
    );
}

// ---------------------------------------------------------------------------------------
// Oversized and malformed frames.

#[tokio::test]
async fn oversized_and_malformed_frames_end_only_their_socket_and_memory_stays_bounded() {
    const BIG: usize = 8;
    const ROUNDS: usize = 3;
    const FRAME: usize = 1_000_000;
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let bystander = Bystander::start(&stack, &edge).await;
    let memory = Memory::before(&edge);
    let addr = edge.addr.clone();

    // Frames just under the hard cap: each is too_large (the connection is kept) and a bad
    // frame; the tenth ends the session. Repeated on fresh connections, so the edge takes
    // in far more than it may hold at once.
    let mut too_large = 0;
    for round in 0..ROUNDS {
        let big = at_most(BIG, (0..BIG).collect(), |i| {
            let addr = addr.clone();
            async move {
                let user = format!("big{round}-{i}");
                let mut client =
                    Client::open(&format!("ws://{addr}/v1/ws"), Some(&token(&user, 600, &[])))
                        .await
                        .unwrap();
                assert_eq!(client.recv().await["op"], "welcome");
                let pad = format!(r#"{{"op":"ping","pad":"{}"}}"#, "x".repeat(FRAME - 30));
                for _ in 0..10 {
                    if client
                        .socket
                        .send(Message::Text(pad.clone().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                client.until_closed().await
            }
        })
        .await;
        for (frames, code) in big {
            too_large += frames.iter().filter(|f| f["code"] == "too_large").count();
            assert_eq!(
                frames.last(),
                Some(&json!({"op":"bye","code":"protocol_error","reconnect":true}))
            );
            assert_eq!(code, Some(4400));
        }
    }
    assert_eq!(
        too_large,
        ROUNDS * BIG * 10,
        "ten too_large, the last with the bye"
    );

    // Frames no well-behaved client sends; each ends its own socket only.
    let huge_len = {
        // A header claiming 2^62 bytes, followed by a little data: refused on the header.
        let mut frame = vec![0x81, 0x80 | 127];
        frame.extend_from_slice(&(1u64 << 62).to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        frame.extend_from_slice(b"{\"op\":\"ping\"}");
        frame
    };
    let over_cap_frame = client_frame(true, 0x1, &vec![b' '; 2 * 1024 * 1024], true);
    let over_cap_fragments = {
        // A message in 256 KiB fragments that together pass the hard cap.
        let piece = vec![b' '; 256 * 1024];
        let mut bytes = client_frame(false, 0x1, &piece, true);
        for _ in 0..4 {
            bytes.extend(client_frame(false, 0x0, &piece, true));
        }
        bytes
    };
    let cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        ("a header claiming a 4 EiB payload", huge_len, Some(1009)),
        ("a 2 MiB frame", over_cap_frame, Some(1009)),
        (
            "fragments adding up past 1 MiB",
            over_cap_fragments,
            Some(1009),
        ),
        (
            "an unmasked client frame",
            client_frame(true, 0x1, br#"{"op":"ping"}"#, false),
            None,
        ),
        (
            "invalid UTF-8 in a text frame",
            client_frame(true, 0x1, b"{\"op\":\"ping\",\"x\":\"\xff\xfe\"}", true),
            None,
        ),
        (
            "a reserved opcode",
            client_frame(true, 0x3, b"x", true),
            None,
        ),
        (
            "a continuation with nothing to continue",
            client_frame(true, 0x0, b"x", true),
            None,
        ),
        (
            "a fragmented ping",
            client_frame(false, 0x9, b"x", true),
            None,
        ),
        (
            "reserved bits set",
            {
                let mut frame = client_frame(true, 0x1, br#"{"op":"ping"}"#, true);
                frame[0] |= 0x70;
                frame
            },
            None,
        ),
    ];
    let mut malformed = Vec::new();
    for (what, bytes, expected) in cases {
        let (status, stream, rest) = upgrade(&addr, Some(&token("raw", 600, &[]))).await;
        assert_eq!(status, 101);
        let mut stream = stream.unwrap();
        let _ = stream.write_all(&bytes).await;
        let ended = read_until_end(&mut stream, rest, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{what}: the socket stayed open"));
        if let Some(code) = expected {
            assert_eq!(ended, Ended::Close(code), "{what}");
        } else {
            assert!(
                matches!(ended, Ended::Dropped | Ended::Close(1002 | 1007 | 4400)),
                "{what}: {ended:?}"
            );
        }
        malformed.push(format!("{what}: {ended:?}"));
    }

    let mut after = edge.connect("after").await;
    assert_eq!(after.request(json!({"op":"ping"})).await["op"], "pong");
    // Budget: 4 MiB per socket with a big frame in flight (the message being assembled
    // and its copy), for the BIG at once, on top of 24 MiB of slack. Over the rounds the
    // edge took in ROUNDS x BIG x 10 MB.
    let memory = memory.check(&edge, 24 * MIB + BIG as u64 * 4 * MIB, "oversized frames");
    let bystander = bystander.finish().await;
    println!(
        "oversized frames: {} frames of {FRAME} bytes ({} MB) from {BIG} sockets at a time: \
         {too_large} answered too_large, every socket closed 4400 protocol_error at its tenth; malformed: {}; {memory}; \
         {bystander}",
        ROUNDS * BIG * 10,
        ROUNDS * BIG * 10 * FRAME / 1_000_000,
        malformed.join(", ")
    );
}

// ---------------------------------------------------------------------------------------
// Channel and subject injection.

#[tokio::test]
async fn injected_channel_names_are_bad_requests_and_never_reach_a_subject() {
    let stack = Stack::start().await;
    let mut spy = stack.client.subscribe(">").await.unwrap();
    switchboard_testkit::synced(&stack.client).await.unwrap();
    let edge = stack.edge(&[
        ("SWITCHBOARD_MAX_BAD_FRAMES", "1000"),
        ("SWITCHBOARD_FRAME_BURST", "1000"),
    ]);
    let mut client = edge.connect("u1").await;
    // tests/channels.rs covers `.`, `*`, `>`, spaces, newlines, empty parts and 129
    // characters; these are the rest.
    let long = format!("domain:{}", "a".repeat(60 * 1024));
    let attempts = [
        "domain:a\u{0}b",
        "domain:\u{0}",
        "user:u1\u{0}:messages",
        "domain:..",
        "domain:a..b",
        "domain:.",
        "..:a",
        "domain:a/b",
        "domain:a\\b",
        "domain:%2A",
        "domain:a\tb",
        "domain:a\rb",
        "domain:\u{ff0a}",
        "domain:a\u{200b}",
        "domain:p1 >",
        "DOMAIN:a",
        "domain::a",
        "domain:a:",
        long.as_str(),
    ];
    for ch in attempts {
        for op in ["sub", "history", "sig", "pub", "who"] {
            let frame = json!({"op": op, "ch": ch, "type": "message.new", "data": {}});
            let reply = client.request(frame).await;
            assert_eq!(
                reply["code"],
                "bad_request",
                "{op} {:?}: {reply}",
                &ch[..ch.len().min(40)]
            );
            assert!(
                reply.to_string().len() < 1024,
                "the refusal does not echo a long name back: {} bytes",
                reply.to_string().len()
            );
        }
    }
    // The same through the HTTP fallbacks.
    let auth = format!("Bearer {}", token("u1", 600, &[]));
    for ch in [
        "domain:a%00b",
        "domain:..",
        "domain:a%2E%2Eb",
        "domain:%2A",
        "domain:a%20b",
    ] {
        for path in ["/v1/poll", "/v1/sse"] {
            let (status, body) =
                http_as(&edge.addr, "GET", &format!("{path}?ch={ch}"), &auth, "").await;
            assert_eq!(status, 400, "{path}?ch={ch}: {body}");
        }
    }
    // The edge still works, and whatever it put on NATS used well-formed subjects only.
    assert_eq!(client.sub(json!({"ch":"domain:fine"})).await["op"], "ok");
    let mut subjects = 0;
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(300), spy.next()).await
    {
        subjects += 1;
        let subject = message.subject.to_string();
        assert!(
            subject.split('.').all(|token| !token.is_empty()
                && !token.contains(['*', '>', ' ', '\0', '\t', '\r', '/', '\\'])),
            "{subject:?}"
        );
        assert!(subject.is_ascii() && subject.len() < 512, "{subject:?}");
    }
    println!(
        "channel injection: {} names (NUL, `..`, `.`, `/`, `\\`, `%2A`, tab, CR, fullwidth `*`, \
         zero-width space, upper case, empty parts, 60 KiB) x 5 ops refused bad_request, 5 more \
         through /v1/poll and /v1/sse refused 400; {subjects} NATS messages seen meanwhile, all \
         on well-formed subjects",
        attempts.len()
    );
}

/// A flood of sockets waiting for `hello` is capped per client address
/// (`SWITCHBOARD_MAX_PENDING_PER_IP`): one address gets HTTP 429, others are served as
/// before. Behind a trusted proxy the address is `X-Forwarded-For`'s, and from any other
/// peer that header changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_sockets_are_capped_per_address_and_other_addresses_are_served() {
    const CAP: usize = 8;
    let stack = Stack::start().await;
    let edge = stack.edge(&[
        ("SWITCHBOARD_MAX_PENDING_PER_IP", &CAP.to_string()),
        ("SWITCHBOARD_TRUSTED_PROXIES", "127.0.0.3"),
    ]);
    let addr = edge.addr.clone();
    let mut held = Vec::new();
    for _ in 0..CAP {
        let (status, stream, _) = upgrade_from(&addr, "127.0.0.2", "").await;
        assert_eq!(status, 101);
        held.push(stream);
    }
    let (status, mut refused, rest) = upgrade_from(&addr, "127.0.0.2", "").await;
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&rest));
    // The refusal names its reason.
    let mut body = rest;
    if let Some(stream) = refused.as_mut() {
        let _ = tokio::time::timeout(PROMPT, stream.read_to_end(&mut body)).await;
    }
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("\"code\":\"rate_limited\""), "{body}");
    // A forged X-Forwarded-For from an untrusted peer changes nothing.
    let (status, _, _) = upgrade_from(&addr, "127.0.0.2", "X-Forwarded-For: 192.0.2.1\r\n").await;
    assert_eq!(status, 429);

    // Another address is not affected: it upgrades and authenticates.
    let (status, _, _) = upgrade_from(&addr, "127.0.0.1", "").await;
    assert_eq!(status, 101);
    let mut client = Client::open(&edge.ws_url(), None).await.unwrap();
    client
        .send(json!({"op":"hello","token": token("u1", 600, &[])}))
        .await;
    assert_eq!(client.recv().await["op"], "welcome");

    // Behind the trusted proxy 127.0.0.3, each forwarded client has its own cap.
    for _ in 0..CAP {
        let (status, stream, _) =
            upgrade_from(&addr, "127.0.0.3", "X-Forwarded-For: 198.51.100.1\r\n").await;
        assert_eq!(status, 101);
        held.push(stream);
    }
    let (status, _, _) =
        upgrade_from(&addr, "127.0.0.3", "X-Forwarded-For: 198.51.100.1\r\n").await;
    assert_eq!(status, 429, "the forwarded client is capped");
    let (status, _, _) =
        upgrade_from(&addr, "127.0.0.3", "X-Forwarded-For: 198.51.100.2\r\n").await;
    assert_eq!(status, 101, "another client behind the same proxy is not");

    // A pending socket that closes gives its address its place back.
    drop(held.drain(..1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, _) = upgrade_from(&addr, "127.0.0.2", "").await;
    assert_eq!(status, 101, "a closed pending socket gives its place back");
    println!(
        "pending per address: {CAP} from 127.0.0.2, then 429; 127.0.0.1 and forwarded clients served"
    );
}

/// Most sockets waiting for `hello` from one unlisted address (usually a proxy nobody put
/// in `SWITCHBOARD_TRUSTED_PROXIES`) make the edge say so in its log, once a minute at
/// most (docs/operations.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holding_most_pending_sockets_is_logged_once() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.log");
    let log = std::fs::File::create(&path).unwrap();
    let addr = format!("127.0.0.1:{}", switchboard_testkit::free_port());
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-edge"));
    command
        .envs(stack.nats.env(Role::Edge))
        .env("SWITCHBOARD_EDGE_ADDR", &addr)
        .env("SWITCHBOARD_JWT_SECRET", &*SECRET)
        .env("SWITCHBOARD_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let _edge = switchboard_testkit::Process::spawn(command).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(&addr, "/readyz").is_none_or(|(status, _)| status != 200) {
        assert!(Instant::now() < deadline, "the edge did not get ready");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut held = Vec::new();
    for _ in 0..10 {
        let (status, stream, _) = upgrade_from(&addr, "127.0.0.1", "").await;
        assert_eq!(status, 101);
        held.push(stream);
    }
    for _ in 0..50 {
        let (status, stream, _) = upgrade_from(&addr, "127.0.0.2", "").await;
        assert_eq!(status, 101);
        held.push(stream);
    }
    let warning = "most sockets waiting for hello come from one address";
    let deadline = Instant::now() + Duration::from_secs(10);
    let written = loop {
        let written = std::fs::read_to_string(&path).unwrap();
        if written.contains(warning) || Instant::now() > deadline {
            break written;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lines: Vec<&str> = written.lines().filter(|l| l.contains(warning)).collect();
    assert_eq!(lines.len(), 1, "{written}");
    assert!(lines[0].contains("127.0.0.2"), "{}", lines[0]);
}

/// A burst of connections that arrives while the edge takes none (here: stopped, as a busy
/// accept loop would be for a moment) waits in the kernel's queue, hundreds of them,
/// instead of having SYNs dropped; once the edge runs again, each one is served.
#[tokio::test]
async fn a_connection_burst_waits_in_the_listen_queue_and_is_served() {
    const BURST: usize = 600;
    // The kernel caps every listen queue at net.core.somaxconn (4,096 on current Linux).
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(BURST);
    let queued = BURST.min(somaxconn);
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    edge.process.signal(libc::SIGSTOP);
    let connects = (0..BURST).map(|_| {
        // Generous: a dropped SYN is sent again after 1 s and 3 s, into a queue that
        // stays full while the edge is stopped.
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&edge.addr))
    });
    let results = futures_util::future::join_all(connects).await;
    edge.process.signal(libc::SIGCONT);
    let mut sockets: Vec<TcpStream> = results
        .into_iter()
        .filter_map(|result| result.ok()?.ok())
        .collect();
    assert!(
        sockets.len() >= queued,
        "{} of {BURST} connections completed while the edge was stopped (queue room for {queued})",
        sockets.len()
    );
    let mut served = 0;
    for socket in &mut sockets {
        socket
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(PROMPT * 5, socket.read_to_end(&mut answer))
            .await
            .expect("an answer")
            .unwrap();
        if answer.starts_with(b"HTTP/1.1 200") {
            served += 1;
        }
    }
    assert_eq!(served, sockets.len());
    println!(
        "connection burst: {BURST} connects while the edge was stopped, {} queued, all served",
        sockets.len()
    );
}
