//! What the edge tests share: a real stack (nats-server with the project's definitions,
//! `switchboard-edge` processes), a WebSocket client speaking `switchboard.v1`, tokens.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use switchboard_bus::Publisher;
pub use switchboard_bus::Role;
use switchboard_bus::definitions::Definitions;
use switchboard_schemas::{ChannelName, Envelope, EventType, RawJson};
use switchboard_testkit::{Nats, Postgres, Process, Workers, binary, free_port};
use tokio::net::TcpStream as TokioTcp;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The edges' HS256 secret: made afresh for every test process, so it is no value the
/// repository holds (the edge refuses those; docs/operations.md, "Token keys").
pub static SECRET: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(switchboard_testkit::fresh_secret);
const WAIT: Duration = Duration::from_secs(10);

/// nats-server with streams and buckets, and a NATS client for the test's own use,
/// connected as the `admin` role (tests set up state no other role may).
pub struct Stack {
    pub nats: Nats,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::on(Nats::start().expect("start nats-server")).await
    }

    /// The stack on a given nats-server (e.g. `Nats::start_tls()`).
    pub async fn on(nats: Nats) -> Stack {
        let client = nats.connect(Role::Admin).await.expect("connect to NATS");
        let js = async_nats::jetstream::new(client.clone());
        Definitions::builtin()
            .apply(&js)
            .await
            .expect("apply definitions");
        Stack { nats, client, js }
    }

    /// Starts an edge process with test-friendly settings plus `env`.
    pub fn edge(&self, env: &[(&str, &str)]) -> Edge {
        Edge::start(&self.nats.env(Role::Edge), env)
    }

    /// Publishes an event as a backend would; returns its seq.
    pub async fn publish(&self, channel: &str, ty: &str, data: Value) -> u64 {
        let event = Envelope::new(
            EventType::parse(ty).unwrap(),
            RawJson::encode(&data).unwrap(),
        );
        self.publish_envelope(channel, &event).await
    }

    pub async fn publish_envelope(&self, channel: &str, event: &Envelope) -> u64 {
        Publisher::new(self.client.clone())
            .publish(&ChannelName::parse(channel).unwrap(), event)
            .await
            .expect("publish")
            .seq
    }

    /// Answers NATS requests on `subject` (wildcards allowed) like a worker service:
    /// `answer(subject, Rt-User, params)` gives the reply body, or `None` for silence.
    /// Returns once the service answers, so the edge never races its subscription.
    pub async fn serve(
        &self,
        subject: &str,
        probe: &str,
        answer: impl Fn(&str, Option<String>, Value) -> Option<Value> + Send + 'static,
    ) {
        let mut requests = self.client.subscribe(subject.to_string()).await.unwrap();
        let client = self.client.clone();
        tokio::spawn(async move {
            while let Some(request) = futures_util::StreamExt::next(&mut requests).await {
                let user = request
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Rt-User"))
                    .map(|v| v.as_str().to_string());
                let params = serde_json::from_slice(&request.payload).unwrap_or(Value::Null);
                let (Some(reply), Some(inbox)) = (
                    answer(request.subject.as_str(), user, params),
                    request.reply,
                ) else {
                    continue;
                };
                client
                    .publish(inbox, reply.to_string().into())
                    .await
                    .unwrap();
            }
        });
        self.client
            .request(probe.to_string(), "{}".into())
            .await
            .expect("the test service answers");
    }

    /// Turns `EVENTS` republishing off: events are still stored, but nothing reaches the
    /// edges live (as when a leader dies before republishing). Returns the stream's
    /// settings for [`Stack::republish_again`].
    pub async fn stop_republishing(&self) -> async_nats::jetstream::stream::Config {
        let config = self
            .js
            .get_stream("EVENTS")
            .await
            .unwrap()
            .cached_info()
            .config
            .clone();
        let mut paused = config.clone();
        paused.republish = None;
        self.js.update_stream(&paused).await.unwrap();
        config
    }

    /// Restores the settings [`Stack::stop_republishing`] returned.
    pub async fn republish_again(&self, config: &async_nats::jetstream::stream::Config) {
        self.js.update_stream(config).await.unwrap();
    }

    /// Makes `user` a member of `channel` the way the membership worker does.
    pub async fn add_member(&self, channel: &str, user: &str) {
        switchboard_testkit::add_member(&self.js, channel, user).await;
    }

    pub async fn remove_member(&self, channel: &str, user: &str) {
        switchboard_testkit::remove_member(&self.js, channel, user).await;
    }
}

/// A running `switchboard-edge` process.
pub struct Edge {
    pub addr: String,
    pub process: Process,
}

impl Edge {
    /// `nats` is how the edge reaches NATS (`Nats::env(Role::Edge)`).
    pub fn start(nats: &[(String, String)], env: &[(&str, &str)]) -> Edge {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard-edge"));
        cmd.envs(nats.iter().cloned())
            .env("SWITCHBOARD_EDGE_ADDR", &addr)
            .env("SWITCHBOARD_JWT_SECRET", &*SECRET)
            .env("SWITCHBOARD_LOG", "warn")
            .env("SWITCHBOARD_DRAIN_GRACE_MS", "2000")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let process = Process::spawn(cmd).expect("spawn switchboard-edge");
        let edge = Edge { addr, process };
        edge.wait_ready();
        edge
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some((200, _)) = http_get(&self.addr, "/readyz") {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("edge at {} not ready within {WAIT:?}", self.addr);
    }

    /// The value of a counter or gauge on `/metrics` (the sum over its labels), if the edge
    /// answers and exports it.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (200, body) = http_get(&self.addr, "/metrics")? else {
            return None;
        };
        let values: Vec<f64> = body
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Connects and authenticates with a bearer token on the upgrade.
    pub async fn connect(&self, user: &str) -> Client {
        self.connect_with(&token(user, 3600, &[])).await
    }

    pub async fn connect_with(&self, token: &str) -> Client {
        let mut client = Client::open(&self.ws_url(), Some(token))
            .await
            .expect("upgrade accepted");
        let welcome = client.recv().await;
        assert_eq!(welcome["op"], "welcome", "{welcome}");
        client
    }
}

/// A minimal GET over a plain socket: (status, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Mints an HS256 token for `sub` valid for `ttl` seconds.
pub fn token(sub: &str, ttl: i64, channels: &[&str]) -> String {
    token_with(json!({ "sub": sub, "exp": now() + ttl, "channels": channels }))
}

pub fn token_with(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

type Socket = WebSocketStream<MaybeTlsStream<TokioTcp>>;

/// A `switchboard.v1` client over a real socket.
pub struct Client {
    pub socket: Socket,
    next_id: u64,
    /// Frames read while waiting for a reply, handed out by later `recv`s.
    held: std::collections::VecDeque<Value>,
}

impl Client {
    /// Opens the socket; `Err` carries the HTTP status and body of a refused upgrade
    /// (status 0 when the connection itself failed).
    pub async fn open(url: &str, bearer: Option<&str>) -> Result<Client, (u16, String)> {
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "switchboard.v1".parse().unwrap());
        if let Some(token) = bearer {
            request
                .headers_mut()
                .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(Client {
                socket,
                next_id: 1,
                held: Default::default(),
            }),
            Err(tungstenite::Error::Http(response)) => {
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err((response.status().as_u16(), body))
            }
            Err(e) => Err((0, e.to_string())),
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        // A frame the server refuses may close the socket before the write completes.
        let _ = self.socket.send(Message::Text(text.into())).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.socket
            .send(Message::Binary(bytes.into()))
            .await
            .expect("send frame");
    }

    /// Sends `frame` with a fresh id and returns the reply with that id; other frames
    /// that arrive meanwhile are kept for later `recv`s.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        self.send(frame).await;
        let mut other = Vec::new();
        let reply = loop {
            let next = self
                .read(WAIT)
                .await
                .unwrap_or_else(|| panic!("no reply within {WAIT:?}"));
            if next["id"] == json!(id) && next["op"] != "evt" {
                break next;
            }
            other.push(next);
        };
        self.held.extend(other);
        reply
    }

    /// The next text frame as JSON; panics after the wait limit or on close.
    pub async fn recv(&mut self) -> Value {
        self.try_recv(WAIT)
            .await
            .unwrap_or_else(|| panic!("no frame within {WAIT:?}"))
    }

    /// The next text frame within `wait`, or `None`.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        if let Some(frame) = self.held.pop_front() {
            return Some(frame);
        }
        self.read(wait).await
    }

    /// The first frame within 300 ms that is not a `join`/`leave` signal (channel
    /// presence announces every subscriber), or `None`: "nothing more arrives".
    pub async fn no_more_events(&mut self) -> Option<Value> {
        while let Some(frame) = self.try_recv(Duration::from_millis(300)).await {
            let presence =
                frame["op"] == "sig" && (frame["type"] == "join" || frame["type"] == "leave");
            if !presence {
                return Some(frame);
            }
        }
        None
    }

    /// The next text frame within `wait`, telling a quiet socket from one that is gone
    /// (closed, reset, or its edge killed).
    pub async fn next_or_closed(&mut self, wait: Duration) -> Next {
        if let Some(frame) = self.held.pop_front() {
            return Next::Frame(frame);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let Ok(message) = tokio::time::timeout_at(deadline, self.socket.next()).await else {
                return Next::Quiet;
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Next::Frame(serde_json::from_str(&text).unwrap());
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Next::Closed,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next text frame from the socket itself.
    async fn read(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()??;
            match message.ok()? {
                Message::Text(text) => return Some(serde_json::from_str(&text).unwrap()),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Skips frames until one matches.
    pub async fn recv_where(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        loop {
            let frame = self.recv().await;
            if wanted(&frame) {
                return frame;
            }
        }
    }

    /// Subscribes and returns the `ok`.
    pub async fn sub(&mut self, frame: Value) -> Value {
        let mut frame = frame;
        frame["op"] = json!("sub");
        self.request(frame).await
    }

    /// Subscribes, retrying while the answer is `forbidden`: a membership just written
    /// reaches the edge through a KV watch, a moment later.
    pub async fn sub_member(&mut self, frame: Value) -> Value {
        self.sub_within(frame, Instant::now(), WAIT).await
    }

    /// Subscribes, retrying while `forbidden` until `limit` after `since`; the last answer.
    pub async fn sub_within(&mut self, frame: Value, since: Instant, limit: Duration) -> Value {
        loop {
            let reply = self.sub(frame.clone()).await;
            if reply["code"] != "forbidden" || since.elapsed() > limit {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Collects `evt` frames until `count` arrived (panics on timeout).
    pub async fn events(&mut self, count: usize) -> Vec<Value> {
        let mut events = Vec::with_capacity(count);
        while events.len() < count {
            let frame = self.recv().await;
            if frame["op"] == "evt" {
                events.push(frame);
            }
        }
        events
    }

    /// Reads until the server closes; returns the frames before and the close code.
    pub async fn until_closed(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut frames: Vec<Value> = self.held.drain(..).collect();
        loop {
            match tokio::time::timeout(WAIT, self.socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    frames.push(serde_json::from_str(&text).unwrap())
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return (frames, frame.map(|f: CloseFrame| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return (frames, None),
                Err(_) => panic!("socket not closed within {WAIT:?}; frames: {frames:?}"),
            }
        }
    }
}

/// What [`Client::next_or_closed`] read.
#[derive(Debug)]
pub enum Next {
    Frame(Value),
    /// Nothing arrived in time; the socket is still open.
    Quiet,
    /// The socket is gone.
    Closed,
}

/// The seqs of `evt` frames.
pub fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

/// [`http`] with one header, `Authorization: <authorization>` (e.g. `Bearer <token>`).
pub async fn http_as(
    addr: &str,
    method: &str,
    path: &str,
    authorization: &str,
    body: &str,
) -> (u16, String) {
    http(
        addr,
        method,
        path,
        &[("Authorization", authorization)],
        body,
    )
    .await
}

/// One HTTP/1.0 request (so the body ends with the connection): (status, body).
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TokioTcp::connect(addr).await.expect("connect to the edge");
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(40), stream.read_to_end(&mut response))
        .await
        .expect("HTTP answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A Server-Sent Events stream read over HTTP/1.0.
pub struct SseStream {
    stream: TokioTcp,
    buffer: String,
}

/// One SSE event: (event name, id, data).
pub type SseEvent = (String, Option<String>, String);

impl SseStream {
    /// Opens `/v1/sse?<query>` with extra headers; panics unless the answer is 200.
    pub async fn open(addr: &str, query: &str, headers: &[(&str, &str)]) -> SseStream {
        SseStream::try_open(addr, query, headers)
            .await
            .unwrap_or_else(|(status, body)| panic!("SSE refused: {status} {body}"))
    }

    /// Opens `/v1/sse?<query>`; a refusal is `Err((status, body))`.
    pub async fn try_open(
        addr: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<SseStream, (u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TokioTcp::connect(addr).await.unwrap();
        let mut request = format!("GET /v1/sse?{query} HTTP/1.0\r\nHost: {addr}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut sse = SseStream {
            stream,
            buffer: String::new(),
        };
        let head = sse.read_until("\r\n\r\n").await;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status != 200 {
            // HTTP/1.0: the body ends with the connection.
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(WAIT, sse.stream.read_to_end(&mut rest)).await;
            let body = sse.buffer + &String::from_utf8_lossy(&rest);
            return Err((status, body));
        }
        assert!(head.contains("text/event-stream"), "{head}");
        Ok(sse)
    }

    async fn read_until(&mut self, delimiter: &str) -> String {
        match self.try_read_until(delimiter).await {
            Some(chunk) => chunk,
            None => panic!("SSE stream ended; unread: {:?}", self.buffer),
        }
    }

    /// Reads up to `delimiter`; `None` when the stream ends first.
    async fn try_read_until(&mut self, delimiter: &str) -> Option<String> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(at) = self.buffer.find(delimiter) {
                let chunk = self.buffer[..at].to_string();
                self.buffer.drain(..at + delimiter.len());
                return Some(chunk);
            }
            let mut buf = [0u8; 8192];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut buf))
                .await
                .expect("SSE data in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buffer.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    /// The next event, skipping keep-alive comments.
    pub async fn next(&mut self) -> SseEvent {
        match self.try_next().await {
            Some(event) => event,
            None => panic!("SSE stream ended; unread: {:?}", self.buffer),
        }
    }

    /// The next event, or `None` when the server ended the stream.
    pub async fn try_next(&mut self) -> Option<SseEvent> {
        loop {
            let block = self.try_read_until("\n\n").await?;
            let (mut name, mut id, mut data) = (String::from("message"), None, Vec::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                }
            }
            if !data.is_empty() {
                return Some((name, id, data.join("\n")));
            }
        }
    }
}

/// The `switchboard` command with `env`.
pub fn cli(env: &[(String, String)], args: &[&str]) -> Output {
    Command::new(binary("switchboard"))
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .expect("run switchboard")
}

/// Every process at work, each connected to NATS with the settings given for it: the CLI
/// (`admin`, as an operator) applies the definitions and makes u1 a member, the
/// membership worker (`workers`) mirrors that into the members bucket, which lets u1 in
/// at the edge (`edge`), and a second CLI publish arrives on u1's socket. `more_on_failure`
/// is added to the message of a CLI run that fails (e.g. the server's log).
pub async fn a_cli_publish_reaches_a_socket(
    admin: &[(String, String)],
    workers: Vec<(String, String)>,
    edge: &[(String, String)],
    more_on_failure: impl Fn() -> String,
) {
    let run = |args: &[&str]| {
        let output = cli(admin, args);
        assert!(
            output.status.success(),
            "switchboard {args:?}: {}{}",
            String::from_utf8_lossy(&output.stderr),
            more_on_failure()
        );
    };
    run(&["init"]);

    let pg = tokio::task::block_in_place(Postgres::start).expect("start PostgreSQL");
    let database_url = pg.database().await.unwrap();
    let _workers = Workers::new(workers, "membership").start(&database_url);
    let edge = Edge::start(edge, &[]);
    let mut client = edge.connect("u1").await;

    run(&[
        "publish",
        "--channel",
        "project:p1",
        "--type",
        "member.added",
        "--data",
        r#"{"user":"u1","role":"member"}"#,
    ]);
    let reply = client
        .sub_within(
            json!({"ch":"project:p1"}),
            Instant::now(),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(reply["op"], "ok", "{reply}");
    run(&[
        "publish",
        "--channel",
        "project:p1",
        "--type",
        "bid.new",
        "--data",
        r#"{"amount":5000}"#,
    ]);
    let events = client.events(1).await;
    assert_eq!(events[0]["event"]["type"], "bid.new", "{events:?}");
}

/// Waits until the edge's gauge `name` reads `want`; panics after `limit`.
pub async fn gauge_becomes(edge: &Edge, name: &str, want: f64, limit: Duration) {
    let started = Instant::now();
    loop {
        let now = edge.metric(name).unwrap_or(0.0);
        if now == want {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{name} is {now}, not {want}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
