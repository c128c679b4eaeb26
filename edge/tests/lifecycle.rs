//! One subscription lifecycle for every transport (docs/protocol.md, sections 6, 9.4 and
//! 11): the socket, SSE and long polling pass the same tests, each scenario written once
//! against a [`Watcher`] and run on all three:
//!
//! - `membership`: a removed membership revokes the subscription within a second or two
//!   (a waiting poll answers at once, the next poll is refused), nothing more arrives,
//!   nothing is left on the edge, and a new subscription is refused;
//! - `privacy`: a watched user's privacy change (`int.privacy.<user>`) revokes a presence
//!   watch the presence service no longer allows; `privacy_during_set_up`: also when the
//!   change is told while the watch is being set up, after the presence service said yes;
//! - `refresh`: a new token re-authorizes (`refresh` on the socket; SSE and polls present
//!   it when they resume): a grant it drops revokes, a presence grant it drops asks the
//!   presence service again, and a subscription it keeps goes on without a gap;
//! - `teardown`: a client that goes away leaves no subscription, connection or channel;
//! - `handover`: a resume replays from the stream while new events arrive live, and every
//!   event after the resume point arrives once, in order.
//!
//! The presence service is played by the test, answering `int.presence.authorize` from a
//! switch it flips.

mod support;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;
use tokio::sync::mpsc;

/// The three ways a client holds subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    WebSocket,
    Sse,
    Poll,
}

/// What a client sees of its subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// An `evt` of the watched channel, by seq.
    Evt(u64),
    /// The subscription ended: `unsubbed` `revoked` on the socket and over SSE; for a
    /// poll, the next poll naming the channel is refused with 403 `forbidden`.
    Revoked,
    /// Anything else, as the client got it.
    Unexpected(String),
}

/// Where a client resumes from.
#[derive(Debug, Clone)]
enum Position {
    /// The socket's `since`.
    Since { seq: u64, epoch: Value },
    /// The opaque cursor of SSE (`Last-Event-ID`) and polls.
    Cursor(String),
}

/// How long a poll waits for events: long enough that an early answer shows.
const POLL_WAIT: u32 = 20;
const WAIT: Duration = Duration::from_secs(10);

/// One client subscribed to one channel over one transport.
struct Watcher {
    addr: String,
    channel: String,
    link: Link,
}

enum Link {
    Socket {
        client: Box<Client>,
        epoch: Value,
        last: u64,
    },
    Sse {
        stream: Option<SseStream>,
        last_id: String,
        /// What a resume decided before any event was read (a refused resume).
        pending: VecDeque<Seen>,
    },
    Poll {
        seen: mpsc::UnboundedReceiver<Seen>,
        cursor: Arc<Mutex<String>>,
        task: tokio::task::JoinHandle<()>,
    },
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The `code` of a refusal body, or the body itself.
fn code_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

impl Watcher {
    /// Subscribes to `channel` as `token`, from `from` when given. `Err` is the refusal's
    /// code; `Ok` carries whether the subscription says `recovered`.
    async fn open(
        edge: &Edge,
        transport: Transport,
        token: &str,
        channel: &str,
        from: Option<Position>,
    ) -> Result<(Watcher, bool), String> {
        let addr = edge.addr.clone();
        let (link, recovered) = match transport {
            Transport::WebSocket => {
                let mut client = edge.connect_with(token).await;
                let mut sub = json!({"ch": channel});
                if let Some(Position::Since { seq, epoch }) = &from {
                    sub["since"] = json!({"seq": seq, "epoch": epoch});
                }
                let ok = client.sub(sub).await;
                if ok["op"] != "ok" {
                    return Err(ok["code"].as_str().unwrap_or_default().to_string());
                }
                let last = match &from {
                    Some(Position::Since { seq, .. }) => *seq,
                    _ => ok["seq"].as_u64().unwrap(),
                };
                let link = Link::Socket {
                    client: Box::new(client),
                    epoch: ok["epoch"].clone(),
                    last,
                };
                (link, ok["recovered"] == true)
            }
            Transport::Sse => {
                let cursor = match &from {
                    Some(Position::Cursor(cursor)) => Some(cursor.clone()),
                    _ => None,
                };
                let mut stream = sse(&addr, token, channel, cursor.as_deref()).await?;
                let (name, id, data) = stream.next().await;
                assert_eq!(name, "ok", "{data}");
                let ok: Value = serde_json::from_str(&data).unwrap();
                let link = Link::Sse {
                    stream: Some(stream),
                    last_id: id.expect("an ok carries a cursor"),
                    pending: VecDeque::new(),
                };
                (link, ok["recovered"] == true)
            }
            Transport::Poll => {
                let (tx, seen) = mpsc::unbounded_channel();
                let (cursor, wait) = match from {
                    Some(Position::Cursor(cursor)) => (Some(cursor), POLL_WAIT),
                    _ => (None, 0),
                };
                let path = poll_path(channel, cursor.as_deref(), wait);
                let (status, body) = http_as(&addr, "GET", &path, &bearer(token), "").await;
                if status != 200 {
                    return Err(code_of(&body));
                }
                let recovered = serde_json::from_str::<Value>(&body).unwrap()["recovered"] == true;
                let cursor = Arc::new(Mutex::new(String::new()));
                assert!(deliver(status, &body, &cursor, &tx), "{body}");
                let task = tokio::spawn(poll_loop(
                    addr.clone(),
                    channel.to_string(),
                    token.to_string(),
                    cursor.clone(),
                    tx,
                ));
                (Link::Poll { seen, cursor, task }, recovered)
            }
        };
        let watcher = Watcher {
            addr,
            channel: channel.to_string(),
            link,
        };
        Ok((watcher, recovered))
    }

    /// The next thing seen within `wait`; `None` when nothing came.
    async fn next(&mut self, wait: Duration) -> Option<Seen> {
        let channel = self.channel.clone();
        match &mut self.link {
            Link::Socket { client, last, .. } => loop {
                let frame = client.try_recv(wait).await?;
                match frame["op"].as_str() {
                    Some("evt") if frame["ch"] == channel => {
                        *last = frame["seq"].as_u64().unwrap();
                        return Some(Seen::Evt(*last));
                    }
                    // `system:broadcast` and channel presence are not what is watched.
                    Some("evt") => continue,
                    Some("sig") if frame["type"] == "join" || frame["type"] == "leave" => {
                        continue;
                    }
                    Some("unsubbed")
                        if frame == json!({"op":"unsubbed","ch": channel,"code":"revoked"}) =>
                    {
                        return Some(Seen::Revoked);
                    }
                    _ => return Some(Seen::Unexpected(frame.to_string())),
                }
            },
            Link::Sse {
                stream,
                last_id,
                pending,
            } => {
                if let Some(seen) = pending.pop_front() {
                    return Some(seen);
                }
                let open = stream.as_mut()?;
                let Some((name, id, data)) =
                    tokio::time::timeout(wait, open.try_next()).await.ok()?
                else {
                    // The edge ended the stream (its last channel was revoked).
                    stream.take();
                    return None;
                };
                let frame: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                Some(match name.as_str() {
                    "evt" if frame["ch"] == channel => {
                        *last_id = id.expect("an evt carries a cursor");
                        Seen::Evt(frame["seq"].as_u64().unwrap())
                    }
                    "unsubbed"
                        if frame == json!({"op":"unsubbed","ch": channel,"code":"revoked"}) =>
                    {
                        Seen::Revoked
                    }
                    _ => Seen::Unexpected(format!("{name}: {data}")),
                })
            }
            Link::Poll { seen, .. } => tokio::time::timeout(wait, seen.recv()).await.ok()?,
        }
    }

    /// The seqs of the next `count` events; anything else, or nothing in time, fails.
    async fn events(&mut self, count: usize) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(count);
        while seqs.len() < count {
            match self.next(WAIT).await {
                Some(Seen::Evt(seq)) => seqs.push(seq),
                other => panic!("after {seqs:?}, expected an event, got {other:?}"),
            }
        }
        seqs
    }

    /// Where this client would resume: after the last event it saw.
    fn position(&self) -> Position {
        match &self.link {
            Link::Socket { epoch, last, .. } => Position::Since {
                seq: *last,
                epoch: epoch.clone(),
            },
            Link::Sse { last_id, .. } => Position::Cursor(last_id.clone()),
            Link::Poll { cursor, .. } => Position::Cursor(cursor.lock().unwrap().clone()),
        }
    }

    /// Carries on with a new token: a `refresh` frame on the socket; SSE resumes a new
    /// stream from the last event seen, and polls go on from their cursor, with it.
    async fn refresh(&mut self, token: &str) {
        let channel = self.channel.clone();
        let addr = self.addr.clone();
        match &mut self.link {
            Link::Socket { client, .. } => {
                let ok = client.request(json!({"op":"refresh","token": token})).await;
                assert_eq!(ok["op"], "ok", "{ok}");
            }
            Link::Sse {
                stream,
                last_id,
                pending,
            } => {
                stream.take();
                match sse(&addr, token, &channel, Some(last_id)).await {
                    Ok(mut resumed) => {
                        let (name, id, data) = resumed.next().await;
                        assert_eq!(name, "ok", "{data}");
                        *last_id = id.expect("an ok carries a cursor");
                        *stream = Some(resumed);
                    }
                    Err(code) if code == "forbidden" => pending.push_back(Seen::Revoked),
                    Err(code) => pending.push_back(Seen::Unexpected(code)),
                }
            }
            Link::Poll { seen, cursor, task } => {
                task.abort();
                let (tx, rx) = mpsc::unbounded_channel();
                *seen = rx;
                *task = tokio::spawn(poll_loop(
                    addr,
                    channel,
                    token.to_string(),
                    cursor.clone(),
                    tx,
                ));
            }
        }
    }

    /// Asks for `channel` and goes away at once, before the subscription is set up.
    async fn abandon(edge: &Edge, transport: Transport, token: &str, channel: &str) {
        match transport {
            Transport::WebSocket => {
                let mut client = edge.connect_with(token).await;
                client.send(json!({"op":"sub","id":1,"ch": channel})).await;
            }
            Transport::Sse => {
                use tokio::io::AsyncWriteExt;
                let mut stream = tokio::net::TcpStream::connect(&edge.addr).await.unwrap();
                let request = format!(
                    "GET /v1/sse?ch={channel} HTTP/1.0\r\nAuthorization: {}\r\n\r\n",
                    bearer(token)
                );
                stream.write_all(request.as_bytes()).await.unwrap();
            }
            Transport::Poll => {
                let (addr, auth) = (edge.addr.clone(), bearer(token));
                let path = poll_path(channel, None, 0);
                let request =
                    tokio::spawn(async move { http_as(&addr, "GET", &path, &auth, "").await });
                tokio::time::sleep(Duration::from_millis(1)).await;
                request.abort();
            }
        }
    }

    /// Goes away without a word: the socket or stream is dropped, polling stops.
    fn close(self) {
        if let Link::Poll { task, .. } = &self.link {
            task.abort();
        }
    }
}

/// Opens an SSE stream; `Err` is the refusal's code.
async fn sse(
    addr: &str,
    token: &str,
    channel: &str,
    last_event_id: Option<&str>,
) -> Result<SseStream, String> {
    let authorization = bearer(token);
    let mut headers = vec![("Authorization", authorization.as_str())];
    if let Some(id) = last_event_id {
        headers.push(("Last-Event-ID", id));
    }
    SseStream::try_open(addr, &format!("ch={channel}"), &headers)
        .await
        .map_err(|(_, body)| code_of(&body))
}

fn poll_path(channel: &str, cursor: Option<&str>, wait: u32) -> String {
    match cursor {
        Some(cursor) => format!("/v1/poll?ch={channel}&cursor={cursor}&wait={wait}"),
        None => format!("/v1/poll?ch={channel}"),
    }
}

/// Polls from `cursor` until a poll is refused; each event goes to `seen` as it would
/// reach an application, and the cursor moves with it, in one step.
async fn poll_loop(
    addr: String,
    channel: String,
    token: String,
    cursor: Arc<Mutex<String>>,
    seen: mpsc::UnboundedSender<Seen>,
) {
    loop {
        let from = cursor.lock().unwrap().clone();
        let path = poll_path(&channel, Some(&from), POLL_WAIT);
        let (status, body) = http_as(&addr, "GET", &path, &bearer(&token), "").await;
        if !deliver(status, &body, &cursor, &seen) {
            return;
        }
    }
}

/// Hands a poll's answer to the client: its events and its cursor, or the refusal.
/// Whether polling goes on.
fn deliver(
    status: u16,
    body: &str,
    cursor: &Mutex<String>,
    seen: &mpsc::UnboundedSender<Seen>,
) -> bool {
    match status {
        200 => {
            let answer: Value = serde_json::from_str(body).unwrap();
            // The cursor moves before the events are handed on: a test that has seen them
            // may refresh at once, and the next poll must start past them (this thread can
            // be descheduled between the two).
            *cursor.lock().unwrap() = answer["cursor"].as_str().unwrap().to_string();
            for event in answer["events"].as_array().unwrap() {
                let _ = seen.send(Seen::Evt(event["seq"].as_u64().unwrap()));
            }
            true
        }
        403 if code_of(body) == "forbidden" => {
            let _ = seen.send(Seen::Revoked);
            false
        }
        _ => {
            let _ = seen.send(Seen::Unexpected(format!("{status} {body}")));
            false
        }
    }
}

/// Runs a scenario on each transport, one test per transport.
macro_rules! on_every_transport {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn websocket() {
                super::$scenario(Transport::WebSocket).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sse() {
                super::$scenario(Transport::Sse).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn poll() {
                super::$scenario(Transport::Poll).await;
            }
        }
    )*};
}

on_every_transport!(
    membership,
    privacy,
    privacy_during_set_up,
    refresh,
    teardown,
    handover,
);

/// Subscriptions a connection holds without asking: the socket's `system:broadcast`.
fn implicit(transport: Transport) -> f64 {
    if transport == Transport::WebSocket {
        1.0
    } else {
        0.0
    }
}

async fn membership(transport: Transport) {
    let stack = Stack::start().await;
    stack.add_member("project:p1", "u1").await;
    let edge = stack.edge(&[]);
    let token = token("u1", 600, &[]);
    let (mut watcher, _) = Watcher::open(&edge, transport, &token, "project:p1", None)
        .await
        .expect("a member subscribes");
    let first = stack.publish("project:p1", "bid.new", json!({})).await;
    assert_eq!(watcher.events(1).await, [first]);

    stack.remove_member("project:p1", "u1").await;
    let removed = Instant::now();
    assert_eq!(watcher.next(WAIT).await, Some(Seen::Revoked));
    // A waiting poll (20 s) answers at once.
    assert!(
        removed.elapsed() < Duration::from_secs(5),
        "revoked after {:?}",
        removed.elapsed()
    );
    stack.publish("project:p1", "bid.new", json!({})).await;
    assert_eq!(watcher.next(Duration::from_millis(500)).await, None);
    if let Link::Sse { stream, .. } = &mut watcher.link
        && let Some(open) = stream.as_mut()
    {
        // docs/protocol.md, section 11: a stream left with no channel ends.
        let ended = tokio::time::timeout(WAIT, open.try_next()).await;
        assert!(matches!(ended, Ok(None)), "{ended:?}");
    }
    // The edge holds nothing for it any more, and a new subscription is refused.
    gauge_becomes(
        &edge,
        "switchboard_edge_subscriptions",
        implicit(transport),
        WAIT,
    )
    .await;
    let again = Watcher::open(&edge, transport, &token, "project:p1", None).await;
    assert_eq!(again.err().as_deref(), Some("forbidden"));
}

/// Serves `int.presence.authorize`: `allowed` decides every watch of `presence:u2`.
async fn privacy_service(stack: &Stack) -> Arc<AtomicBool> {
    let allowed = Arc::new(AtomicBool::new(true));
    let switch = allowed.clone();
    stack
        .serve(
            "int.presence.authorize",
            "int.presence.authorize",
            move |_, _, _| Some(json!({"result": {"allowed": switch.load(Ordering::SeqCst)}})),
        )
        .await;
    allowed
}

/// Tells the edges that u2's privacy changed, as the presence worker does.
async fn privacy_changed(stack: &Stack) {
    stack
        .client
        .publish(
            "int.privacy.u2",
            r#"{"user":"u2","visibility":"nobody"}"#.into(),
        )
        .await
        .unwrap();
    stack.client.flush().await.unwrap();
}

async fn privacy(transport: Transport) {
    let stack = Stack::start().await;
    let allowed = privacy_service(&stack).await;
    let edge = stack.edge(&[]);
    let token = token("u1", 600, &[]);
    let (mut watcher, _) = Watcher::open(&edge, transport, &token, "presence:u2", None)
        .await
        .expect("the presence service allows the watch");
    let update = stack
        .publish("presence:u2", "user.presence", json!({"status":"online"}))
        .await;
    assert_eq!(watcher.events(1).await, [update]);

    allowed.store(false, Ordering::SeqCst);
    let changed = Instant::now();
    privacy_changed(&stack).await;
    assert_eq!(watcher.next(WAIT).await, Some(Seen::Revoked));
    // docs/protocol.md, section 9.4: within 1 s; loosened for CI under load.
    assert!(
        changed.elapsed() < Duration::from_secs(2),
        "revoked after {:?}",
        changed.elapsed()
    );
    gauge_becomes(
        &edge,
        "switchboard_edge_subscriptions",
        implicit(transport),
        WAIT,
    )
    .await;
    let again = Watcher::open(&edge, transport, &token, "presence:u2", None).await;
    assert_eq!(again.err().as_deref(), Some("forbidden"));
}

/// Serves `int.presence.authorize` for a watch whose answer is overtaken: u2 turns private
/// while the presence service answers, so the edge hears of the change (`int.privacy.u2`)
/// before the yes it answers to the question asked before it, while the watch is still
/// being set up. Every later question is answered no.
async fn overtaken_privacy_service(stack: &Stack) {
    let mut requests = stack
        .client
        .subscribe("int.presence.authorize")
        .await
        .unwrap();
    switchboard_testkit::synced(&stack.client).await.unwrap();
    let client = stack.client.clone();
    tokio::spawn(async move {
        let mut first = true;
        while let Some(request) = futures_util::StreamExt::next(&mut requests).await {
            let Some(inbox) = request.reply else { continue };
            let allowed = first;
            if first {
                first = false;
                // On the same connection as the answer: the edge gets the notice first.
                client
                    .publish(
                        "int.privacy.u2",
                        r#"{"user":"u2","visibility":"nobody"}"#.into(),
                    )
                    .await
                    .unwrap();
            }
            let answer = json!({"result": {"allowed": allowed}});
            client
                .publish(inbox, answer.to_string().into())
                .await
                .unwrap();
        }
    });
}

async fn privacy_during_set_up(transport: Transport) {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    overtaken_privacy_service(&stack).await;
    let token = token("u1", 600, &[]);
    let (mut watcher, _) = Watcher::open(&edge, transport, &token, "presence:u2", None)
        .await
        .expect("the presence service said yes");
    // Without a re-check once on the channel, the watch would stay: the change was told
    // to the watchers on the channel, and this one was not there yet.
    assert_eq!(watcher.next(WAIT).await, Some(Seen::Revoked));
    gauge_becomes(
        &edge,
        "switchboard_edge_subscriptions",
        implicit(transport),
        WAIT,
    )
    .await;
}

async fn refresh(transport: Transport) {
    let stack = Stack::start().await;
    let allowed = privacy_service(&stack).await;
    let edge = stack.edge(&[]);

    // A grant the new token drops: the rules refuse a non-member.
    let granted = token("u1", 600, &["project:p1"]);
    let (mut watcher, _) = Watcher::open(&edge, transport, &granted, "project:p1", None)
        .await
        .expect("the token grants project:p1");
    let seq = stack.publish("project:p1", "bid.new", json!({})).await;
    assert_eq!(watcher.events(1).await, [seq]);
    watcher.refresh(&token("u1", 600, &[])).await;
    assert_eq!(watcher.next(WAIT).await, Some(Seen::Revoked));

    // A grant the new token keeps: nothing is lost or repeated across the change.
    let wide = token("u1", 600, &["project:*"]);
    let (mut kept, _) = Watcher::open(&edge, transport, &wide, "project:p2", None)
        .await
        .expect("the token grants project:*");
    let mut published = vec![stack.publish("project:p2", "bid.new", json!({})).await];
    assert_eq!(kept.events(1).await, published);
    published.push(stack.publish("project:p2", "bid.new", json!({})).await);
    kept.refresh(&token("u1", 600, &["project:p2"])).await;
    published.push(stack.publish("project:p2", "bid.new", json!({})).await);
    assert_eq!(kept.events(2).await, published[1..]);
    assert_eq!(kept.next(Duration::from_millis(500)).await, None);

    // A presence grant the new token drops: the watched user's privacy decides.
    allowed.store(false, Ordering::SeqCst);
    let watching = token("u1", 600, &["presence:u2"]);
    let (mut denied, _) = Watcher::open(&edge, transport, &watching, "presence:u2", None)
        .await
        .expect("the token grants presence:u2");
    denied.refresh(&token("u1", 600, &[])).await;
    assert_eq!(denied.next(WAIT).await, Some(Seen::Revoked));

    allowed.store(true, Ordering::SeqCst);
    let (mut allowed_watch, _) = Watcher::open(&edge, transport, &watching, "presence:u2", None)
        .await
        .expect("the token grants presence:u2");
    allowed_watch.refresh(&token("u1", 600, &[])).await;
    let update = stack
        .publish("presence:u2", "user.presence", json!({"status":"away"}))
        .await;
    assert_eq!(allowed_watch.events(1).await, [update], "the watch stays");
}

async fn teardown(transport: Transport) {
    let stack = Stack::start().await;
    // A gone SSE client is noticed when the next keep-alive fails to be written.
    let edge = stack.edge(&[("SWITCHBOARD_HEARTBEAT_MS", "500")]);
    let token = token("u1", 600, &[]);
    let mut watchers = Vec::new();
    for channel in ["domain:t1", "domain:t2"] {
        let (mut watcher, _) = Watcher::open(&edge, transport, &token, channel, None)
            .await
            .expect("subscribed");
        let seq = stack.publish(channel, "project.update", json!({})).await;
        assert_eq!(watcher.events(1).await, [seq]);
        watchers.push(watcher);
    }
    // A poll holds its channels only while it waits.
    if transport != Transport::Poll {
        assert_eq!(
            edge.metric("switchboard_edge_channels"),
            Some(2.0 + implicit(transport))
        );
    }
    for watcher in watchers {
        watcher.close();
    }
    // Clients that leave while their subscription is still being set up leave nothing
    // behind either.
    for i in 0..20 {
        Watcher::abandon(&edge, transport, &token, &format!("domain:gone{i}")).await;
    }
    // A waiting poll ends at the latest when its wait does.
    let limit = Duration::from_secs(u64::from(POLL_WAIT) + 10);
    for gauge in [
        "switchboard_edge_subscriptions",
        "switchboard_edge_connections",
        "switchboard_edge_channels",
    ] {
        gauge_becomes(&edge, gauge, 0.0, limit).await;
    }
    // And the channels serve whoever comes next.
    let (mut next, _) = Watcher::open(&edge, transport, &token, "domain:t1", None)
        .await
        .expect("subscribed again");
    let seq = stack
        .publish("domain:t1", "project.update", json!({}))
        .await;
    assert_eq!(next.events(1).await, [seq]);
}

async fn handover(transport: Transport) {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let token = token("u1", 600, &[]);
    let channel = "domain:handover";
    let (watcher, _) = Watcher::open(&edge, transport, &token, channel, None)
        .await
        .expect("subscribed");
    let from = watcher.position();
    watcher.close();

    // More than one replay batch is stored while the client is away...
    let mut published = Vec::new();
    for i in 0..300 {
        published.push(
            stack
                .publish(channel, "project.update", json!({"i": i}))
                .await,
        );
    }
    // ... and more keeps coming while it resumes, so live events arrive mid-replay.
    let publisher = stack.client.clone();
    let live = tokio::spawn(async move {
        let publisher = switchboard_bus::Publisher::new(publisher);
        let channel = switchboard_schemas::ChannelName::parse(channel).unwrap();
        let mut seqs = Vec::new();
        for i in 300..500 {
            let event = switchboard_schemas::Envelope::new(
                switchboard_schemas::EventType::parse("project.update").unwrap(),
                switchboard_schemas::RawJson::encode(&json!({"i": i})).unwrap(),
            );
            seqs.push(publisher.publish(&channel, &event).await.unwrap().seq);
        }
        seqs
    });
    let (mut resumed, recovered) = Watcher::open(&edge, transport, &token, channel, Some(from))
        .await
        .expect("resumed");
    assert!(recovered, "the stream holds everything after the position");
    let got = resumed.events(500).await;
    published.extend(live.await.unwrap());
    assert_eq!(got, published, "every event once, in order");
    assert_eq!(resumed.next(Duration::from_millis(500)).await, None);
}
