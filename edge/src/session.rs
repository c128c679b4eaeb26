//! One WebSocket session: authentication, client frames in, replies and events out.
//!
//! A single task owns the socket. It waits on the socket, on the session's mailbox
//! (replies and events queued by the hub and by request tasks), on the heartbeat, on the
//! token's expiry, and on requests from outside to end or re-check. Work that waits on
//! NATS (publishing, replay, history, rpc) runs in tasks of its own and answers through
//! the mailbox, so a slow request never holds up delivery.
//!
//! Writes are coalesced: every frame already queued is fed to the socket before one
//! flush, which is what keeps busy sockets cheap.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::SinkExt;
use switchboard_bus::OCCUPANCY_BUCKET;
use switchboard_schemas::event::types;
use switchboard_schemas::frame::{Member, OkReply, SignalType};
use switchboard_schemas::shapes::{ReceiptCommand, SignalMessage};
use switchboard_schemas::{
    Actor, ByeCode, ChannelName, ClientFrame, Envelope, ErrorCode, EventId, EventType, EvtFrame,
    PresenceStatus, RawJson, Request, ResumeFrom, ServerFrame, SubjectKind, TypeFilters, UnsubCode,
    VisibleStatus,
};
use tokio::task::JoinSet;

use crate::Edge;
use crate::auth::Identity;
use crate::bridge::RT_ORIGIN;
use crate::hub::Subscription;
use crate::lifecycle::{self, Access, Subscriptions};
use crate::limits::{Limits, Op, PendingSlot, TokenBucket, UserSlot};
use crate::mailbox::{ConnControl, Inbox, Mailbox, Outgoing, text};
use crate::presence::{ConnState, occupancy_filter, occupancy_subject, presence_subject};
use crate::refusal::Refusal;
use crate::rpc;

/// Close codes of docs/protocol.md besides those of `bye`.
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_NORMAL: u16 = 1000;
/// Requests of one session waiting on NATS at once; more are `rate_limited`.
const MAX_IN_FLIGHT: usize = 32;
/// Frames fed to the socket before one flush.
const WRITE_BATCH: usize = 128;
/// Bytes read from the socket at once; a larger client frame takes several reads.
pub const READ_BUFFER: usize = 1024;
/// Bytes of fed frames that tungstenite collects before writing to the socket; the
/// flush at the end of a batch writes the rest. A batch of small frames thus costs one
/// `send` instead of one per frame.
pub const WRITE_BUFFER: usize = 16 * 1024;
const HISTORY_DEFAULT: u32 = 50;
const HISTORY_MAX: u32 = 100;
/// How long the final `bye` and close may take before the socket is simply dropped.
const LAST_WORDS: Duration = Duration::from_secs(3);
/// How long to wait for the client's answer to our close frame.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);
/// Signal types the edge itself sends or throttles.
const TYPING: &str = "typing";
const JOIN: &str = "join";
const LEAVE: &str = "leave";
/// A repeated `typing` with the same state inside this window is dropped.
const TYPING_WINDOW: Duration = Duration::from_millis(500);
/// Longest presence status text.
const MAX_STATUS_TEXT: usize = 256;
/// Receipts are coalesced for at most this long before they go to the workers.
const RECEIPT_WINDOW: Duration = Duration::from_millis(200);

/// Runs a session on an upgraded socket. `identity` is set when the upgrade carried a
/// valid token; otherwise the client has `hello_timeout` to send `hello`.
///
/// A block rather than an `async fn`: an `async fn` keeps a second copy of its arguments
/// (the socket alone is 368 bytes) for the whole life of the session.
#[allow(clippy::manual_async_fn)]
pub fn run(
    edge: Arc<Edge>,
    mut socket: WebSocket,
    admitted: Admitted,
) -> impl Future<Output = ()> + Send {
    async move {
        let (identity, slot, device) = match admitted {
            Admitted::Authenticated(identity, slot, device) => (identity, slot, device),
            Admitted::Pending(pending) => {
                let Some((identity, device)) = await_hello(&edge, &mut socket).await else {
                    return;
                };
                drop(pending);
                let Some(slot) = edge.users.admit(&identity.user) else {
                    send_now(
                        &mut socket,
                        err(
                            None,
                            ErrorCode::RateLimited,
                            "too many connections for this user",
                        ),
                    )
                    .await;
                    say_bye(&mut socket, ByeCode::RateLimited).await;
                    return;
                };
                (identity, slot, device)
            }
        };
        let conn = edge.next_conn();
        let control = Arc::new(ConnControl::new(
            conn,
            identity.user.clone(),
            &edge.draining,
        ));
        let (mailbox, outgoing) = Mailbox::new(
            edge.config.send_queue,
            control.clone(),
            edge.metrics.clone(),
        );
        let mut session = Session {
            edge: edge.clone(),
            identity,
            slot,
            mailbox,
            control,
            subs: Subscriptions::default(),
            tasks: JoinSet::new(),
            done: Arc::default(),
            limits: Limits::new(&edge.config),
            receipts: HashMap::new(),
            receipts_due: None,
            session_id: format!("{}-{conn}", edge.id),
            me: ConnState {
                status: PresenceStatus::Online,
                text: None,
                device,
            },
            typing: HashMap::new(),
        };
        edge.metrics.gauge(&edge.metrics.connections, 1);
        session.run(&mut socket, &outgoing).await;
        edge.metrics.gauge(&edge.metrics.connections, -1);
    }
}

/// How a socket got past the upgrade.
#[derive(Debug)]
pub enum Admitted {
    /// With a valid token on the upgrade, a place among its user's connections, and the
    /// device named in `?device=`, if any.
    Authenticated(Identity, UserSlot, Option<String>),
    /// Without a token: it has `hello_timeout` to send `hello`.
    Pending(PendingSlot),
}

/// Waits for a valid `hello`; answers what else arrives meanwhile. `None` when the
/// session ended (timeout, bad token, too many bad frames, socket closed).
async fn await_hello(edge: &Edge, socket: &mut WebSocket) -> Option<(Identity, Option<String>)> {
    let deadline = tokio::time::Instant::now() + edge.config.hello_timeout();
    let mut bad_frames = 0;
    // Before `hello` only `hello` and `ping` are of use: anything else, and frames beyond
    // the connection's frame rate, count as bad, so a flood ends the socket quickly.
    let mut frames = TokenBucket::new(edge.config.frames_per_s, edge.config.frame_burst);
    loop {
        let incoming = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                edge.metrics.auth_failure("hello_timeout");
                say_bye(socket, ByeCode::Unauthorized).await;
                return None;
            }
            incoming = socket.recv() => incoming?,
        };
        let refusal = match incoming {
            Err(e) if is_too_big(&e) => {
                close(socket, CLOSE_TOO_BIG, "frame too large").await;
                return None;
            }
            Err(_) | Ok(Message::Close(_)) => return None,
            Ok(Message::Text(_) | Message::Binary(_)) if !frames.take() => {
                err(None, ErrorCode::RateLimited, "too many frames before hello")
            }
            Ok(Message::Binary(_)) => err(
                None,
                ErrorCode::BadRequest,
                "binary frames are not supported",
            ),
            Ok(Message::Text(text)) if text.len() > edge.config.max_frame_bytes => {
                err(None, ErrorCode::TooLarge, "frame larger than the limit")
            }
            Ok(Message::Text(text)) => match Request::decode(text.as_bytes()) {
                Ok(Request {
                    frame: ClientFrame::Hello { token, device },
                    id,
                }) => match edge.verifier.verify(&token).await {
                    Ok(identity) => return Some((identity, device.filter(|d| valid_device(d)))),
                    Err(e) => {
                        edge.metrics.auth_failure(e.reason());
                        send_now(socket, err(id, ErrorCode::Unauthorized, e.to_string())).await;
                        say_bye(socket, ByeCode::Unauthorized).await;
                        return None;
                    }
                },
                Ok(Request {
                    frame: ClientFrame::Ping,
                    id,
                }) => {
                    send_now(socket, ServerFrame::Pong { id }.encode()).await;
                    continue;
                }
                Ok(request) => err(
                    request.id,
                    ErrorCode::Unauthorized,
                    "send hello with a token first",
                ),
                Err(e) => ServerFrame::from(&e).encode(),
            },
            Ok(_) => continue,
        };
        send_now(socket, refusal).await;
        bad_frames += 1;
        if bad_frames >= edge.config.max_bad_frames {
            say_bye(socket, ByeCode::ProtocolError).await;
            return None;
        }
    }
}

/// A device name from `hello` or `?device=`: short and printable, or ignored.
pub fn valid_device(device: &str) -> bool {
    (1..=64).contains(&device.len())
        && device
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

async fn send_now(socket: &mut WebSocket, frame: Bytes) {
    let _ = socket.send(Message::Text(text(frame))).await;
}

async fn say_bye(socket: &mut WebSocket, code: ByeCode) {
    send_now(socket, ServerFrame::bye(code).encode()).await;
    close(socket, code.close_code(), code.as_str()).await;
}

/// Sends a close frame and completes the closing handshake: reads (and discards) what the
/// client still sends until its own close arrives. Dropping a socket with unread input
/// makes the kernel answer with a reset, which can destroy frames the client has not read
/// yet, the `bye` among them.
async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let sent = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })))
        .await;
    if sent.is_err() {
        return;
    }
    let handshake = async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, handshake).await;
}

fn err(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Bytes {
    ServerFrame::error(id, code, message).encode()
}

/// Something a request task tells the session.
#[derive(Debug)]
enum Done {
    /// The subscription could not be set up; forget it.
    SubFailed(ChannelName),
    /// A subscription the presence service allowed: go on with it.
    Allowed {
        id: Option<u64>,
        ch: ChannelName,
        types: TypeFilters,
        since: Option<ResumeFrom>,
    },
    /// A presence watch the presence service no longer allows: end it.
    Revoke(ChannelName),
}

struct Session {
    edge: Arc<Edge>,
    identity: Identity,
    /// This connection's place among its user's connections on this edge.
    slot: UserSlot,
    mailbox: Mailbox,
    control: Arc<ConnControl>,
    /// By the channel as the client spelled it; `system:broadcast` is kept here too.
    subs: Subscriptions,
    tasks: JoinSet<()>,
    /// What the session's own tasks report back.
    done: Arc<Inbox<Done>>,
    limits: Limits,
    /// Pending receipt cursors per conversation: (delivered, read).
    receipts: HashMap<ChannelName, (u64, u64)>,
    receipts_due: Option<tokio::time::Instant>,
    session_id: String,
    /// This connection's presence (status, text, device).
    me: ConnState,
    /// Per channel, when this connection last sent `typing` and whether it was typing.
    typing: HashMap<ChannelName, (Instant, bool)>,
}

enum Flow {
    Continue,
    End,
}

impl Session {
    async fn run(&mut self, socket: &mut WebSocket, outgoing: &Outgoing) {
        let heartbeat = self.edge.config.heartbeat();
        self.welcome();
        // Rare work is boxed: the states of an inline `.await` are part of the session's
        // future, which every idle connection holds for its whole life.
        Box::pin(self.put_presence()).await;
        Box::pin(self.subscribe_implicit()).await;
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let mut last_heard = Instant::now();
        let leeway = Duration::from_secs(self.edge.config.jwt_leeway_s);
        let expiry = tokio::time::sleep_until(expiry_instant(self.identity.exp, leeway));
        tokio::pin!(expiry);
        let mut expired = false;
        // The receipts timer is armed only while cursors wait; `armed` is its deadline.
        let receipts_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(receipts_timer);
        let mut armed: Option<tokio::time::Instant> = None;
        // Futures that live across turns of the loop are made once: re-creating them on
        // every frame written is measurable at hundreds of thousands of deliveries/s.
        let control = self.control.clone();
        let ended = control.ended();
        tokio::pin!(ended);
        let rechecks = control.rechecks();
        tokio::pin!(rechecks);
        let inbox = self.done.clone();
        let done = inbox.take();
        tokio::pin!(done);
        // Frames taken from the queue and not yet written.
        let mut batch = VecDeque::new();
        loop {
            if self.receipts_due != armed {
                armed = self.receipts_due;
                if let Some(due) = armed {
                    receipts_timer.as_mut().reset(due);
                }
            }
            tokio::select! {
                biased;
                _ = &mut ended => {
                    let code = self.control.reason().unwrap_or(ByeCode::ProtocolError);
                    let last_words = async {
                        // Whatever was queued before the end still goes out first, except
                        // for a slow consumer, whose queue is the problem.
                        if code != ByeCode::SlowConsumer {
                            outgoing.take_now(&mut batch);
                            let _ = write_batch(socket, &mut batch).await;
                        }
                        say_bye(socket, code).await;
                    };
                    // A peer that reads nothing must not hold the session open.
                    let _ = Box::pin(tokio::time::timeout(LAST_WORDS, last_words)).await;
                    break;
                }
                true = outgoing.take(&mut batch, WRITE_BATCH) => {
                    // A socket that stops reading blocks this write; meanwhile the hub
                    // may end the session as a slow consumer, which must win.
                    tokio::select! {
                        written = write_batch(socket, &mut batch) => match written {
                            Ok(frames) => self.edge.metrics.count(&self.edge.metrics.frames_out, frames),
                            Err(_) => break,
                        },
                        // A cancellation future stays ready once cancelled: the outer
                        // select sees it again on the next turn.
                        _ = &mut ended => {}
                    }
                }
                reports = &mut done => {
                    done.set(inbox.take());
                    for report in reports {
                        match report {
                            Done::SubFailed(label) => {
                                Box::pin(self.unsubscribe(&label)).await;
                            }
                            Done::Allowed { id, ch, types, since } => {
                                Box::pin(self.admit_subscription(id, ch, types, since)).await;
                            }
                            Done::Revoke(label) => Box::pin(self.revoke(label)).await,
                        }
                    }
                }
                labels = &mut rechecks => {
                    rechecks.set(control.rechecks());
                    Box::pin(self.recheck(labels)).await;
                }
                incoming = socket.recv() => {
                    let message = match incoming {
                        Some(Ok(message)) => message,
                        Some(Err(e)) if is_too_big(&e) => {
                            Box::pin(close(socket, CLOSE_TOO_BIG, "frame too large")).await;
                            break;
                        }
                        _ => break,
                    };
                    last_heard = Instant::now();
                    match Box::pin(self.on_message(message)).await {
                        Flow::Continue => {}
                        Flow::End => {
                            Box::pin(close(socket, CLOSE_TOO_BIG, "frame too large")).await;
                            break;
                        }
                    }
                    if let Some(new_exp) = self.limits.refreshed_exp.take() {
                        expiry.as_mut().reset(expiry_instant(new_exp, leeway));
                        expired = false;
                    }
                }
                _ = ticker.tick() => {
                    if last_heard.elapsed() > heartbeat * 2 {
                        let closing = close(socket, CLOSE_NORMAL, "heartbeat timeout");
                        let _ = Box::pin(tokio::time::timeout(LAST_WORDS, closing)).await;
                        break;
                    }
                    let ping = tokio::time::timeout(heartbeat, socket.send(Message::Ping(Bytes::new())));
                    if !matches!(Box::pin(ping).await, Ok(Ok(()))) {
                        break;
                    }
                }
                _ = &mut expiry, if !expired => {
                    expired = true;
                    self.control.end(ByeCode::TokenExpired);
                }
                _ = &mut receipts_timer, if armed.is_some() => self.flush_receipts(),
                Some(_) = self.tasks.join_next() => {}
            }
        }
        Box::pin(self.leave()).await;
    }

    /// Whatever the session holds outside itself, given back as it ends.
    async fn leave(&mut self) {
        self.flush_receipts();
        let labels: Vec<ChannelName> = self.subs.labels().cloned().collect();
        for label in labels {
            self.unsubscribe(&label).await;
        }
        self.stop_typing().await;
        self.edge
            .presence
            .delete(presence_subject(&self.identity.user, &self.session_id))
            .await;
        self.tasks.abort_all();
    }

    /// Every connection receives `system:broadcast` without asking.
    async fn subscribe_implicit(&mut self) {
        let label = ChannelName::system_broadcast();
        self.start_subscription(None, label, TypeFilters::all(), None, false)
            .await;
    }

    async fn on_message(&mut self, message: Message) -> Flow {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                self.bad_frame(
                    None,
                    ErrorCode::BadRequest,
                    "binary frames are not supported",
                );
                return Flow::Continue;
            }
            _ => return Flow::Continue,
        };
        if text.len() > self.edge.config.hard_frame_bytes {
            return Flow::End;
        }
        if text.len() > self.edge.config.max_frame_bytes {
            self.bad_frame(None, ErrorCode::TooLarge, "frame larger than the limit");
            return Flow::Continue;
        }
        let request = match Request::decode(text.as_bytes()) {
            Ok(request) => request,
            Err(e) => {
                self.edge.metrics.frame_in("invalid");
                self.bad_frame(e.id, e.code(), e.to_string());
                return Flow::Continue;
            }
        };
        self.edge.metrics.frame_in(request.frame.op());
        if !self.limits.frames.take() {
            self.rate_limited(request.id, "too many frames");
            return Flow::Continue;
        }
        self.on_request(request).await;
        Flow::Continue
    }

    /// Answers a refused frame and counts it toward the protocol-error limit.
    fn bad_frame(&mut self, id: Option<u64>, code: ErrorCode, message: impl Into<String>) {
        let id = if code == ErrorCode::TooLarge {
            None
        } else {
            id
        };
        self.reply(err(id, code, message));
        if self.limits.bad_frames.hit() {
            self.control.end(ByeCode::ProtocolError);
        }
    }

    fn rate_limited(&mut self, id: Option<u64>, message: &str) {
        self.edge.metrics.count(&self.edge.metrics.rate_limited, 1);
        self.reply(err(id, ErrorCode::RateLimited, message));
        if self.limits.rate_limited.hit() {
            self.control.end(ByeCode::RateLimited);
        }
    }

    fn reply(&self, frame: Bytes) {
        self.mailbox.push_event(text(frame));
    }

    fn forbidden(&self, id: Option<u64>, why: impl std::fmt::Display) {
        self.reply(err(id, ErrorCode::Forbidden, why.to_string()));
    }

    async fn on_request(&mut self, request: Request) {
        let id = request.id;
        match request.frame {
            ClientFrame::Hello { .. } => {
                self.bad_frame(id, ErrorCode::BadRequest, "already authenticated")
            }
            ClientFrame::Ping => self.reply(ServerFrame::Pong { id }.encode()),
            ClientFrame::Sub { ch, types, since } => self.on_sub(id, ch, types, since).await,
            ClientFrame::Unsub { ch } => {
                self.unsubscribe(&ch).await;
                self.reply(ServerFrame::ok(id).encode());
            }
            ClientFrame::Pub { ch, ty, data, key } => self.on_pub(id, ch, ty, data, key),
            ClientFrame::Sig { ch, ty, data } => {
                if !self.limits.take(Op::Sig, &self.slot) {
                    return self.rate_limited(id, "too many signals");
                }
                if let Err(why) =
                    self.edge
                        .policy
                        .may_signal(&self.identity, &ch, &self.edge.members)
                {
                    return self.forbidden(id, why);
                }
                if ty.as_str() == TYPING && !self.typing_allowed(&ch, &data) {
                    return;
                }
                self.send_signal(&ch, ty, data).await;
            }
            ClientFrame::Ack { ch, seq } => self.on_receipt(id, ch, Some(seq), None),
            ClientFrame::Read { ch, seq } => self.on_receipt(id, ch, None, Some(seq)),
            ClientFrame::Presence { status, text } => {
                if text.as_ref().is_some_and(|t| t.len() > MAX_STATUS_TEXT) {
                    return self.bad_frame(id, ErrorCode::BadRequest, "status text is too long");
                }
                let was_visible = self.me.status != PresenceStatus::Invisible;
                let visible = status != PresenceStatus::Invisible;
                self.me.status = status;
                self.me.text = text;
                self.put_presence().await;
                // Turning invisible looks like leaving to the channels, and back like joining.
                if was_visible != visible {
                    let kind = if visible { JOIN } else { LEAVE };
                    let channels: Vec<ChannelName> = self
                        .subs
                        .labels()
                        .filter(|c| self.has_presence(c))
                        .cloned()
                        .collect();
                    for channel in channels {
                        self.send_signal(
                            &channel,
                            SignalType::parse(kind).ok(),
                            RawJson::empty_object(),
                        )
                        .await;
                    }
                }
                let occupied: Vec<ChannelName> = self
                    .subs
                    .labels()
                    .filter(|c| self.has_presence(c))
                    .cloned()
                    .collect();
                for channel in occupied {
                    self.edge
                        .presence
                        .put(self.occupancy_subject(&channel), self.me.occupancy())
                        .await;
                }
                self.reply(ServerFrame::ok(id).encode());
            }
            ClientFrame::Who { ch } => self.on_who(id, ch),
            ClientFrame::History { ch, before, limit } => self.on_history(id, ch, before, limit),
            ClientFrame::Refresh { token } => match self.edge.verifier.verify(&token).await {
                Ok(fresh) if fresh.user == self.identity.user => {
                    self.limits.refreshed_exp = Some(fresh.exp);
                    self.identity = fresh;
                    self.reply(ServerFrame::ok(id).encode());
                    // The new token may grant less: subscriptions are re-authorized.
                    let held = self.subs.labels().map(ChannelName::base).collect();
                    self.recheck(held).await;
                }
                Ok(_) => self.reply(err(
                    id,
                    ErrorCode::Unauthorized,
                    "refresh must keep the same sub",
                )),
                Err(e) => self.reply(err(id, ErrorCode::Unauthorized, e.to_string())),
            },
            ClientFrame::Rpc { method, params } => {
                let edge = self.edge.clone();
                let caller = self.identity.clone();
                self.spawn(id, async move {
                    Some(match rpc::call(&edge, &caller, &method, &params).await {
                        Ok(result) => ServerFrame::Ok {
                            id,
                            reply: OkReply::Rpc { result },
                        }
                        .encode(),
                        Err(refusal) => refusal.frame(id),
                    })
                });
            }
        }
    }

    /// Runs `work` in its own task; what it returns is queued as the reply.
    fn spawn(
        &mut self,
        id: Option<u64>,
        work: impl std::future::Future<Output = Option<Bytes>> + Send + 'static,
    ) {
        if self.tasks.len() >= MAX_IN_FLIGHT {
            return self.rate_limited(id, "too many requests in flight");
        }
        let mailbox = self.mailbox.clone();
        self.tasks.spawn(async move {
            if let Some(frame) = work.await {
                mailbox.send(text(frame)).await;
            }
        });
    }

    async fn on_sub(
        &mut self,
        id: Option<u64>,
        ch: ChannelName,
        types: TypeFilters,
        since: Option<ResumeFrom>,
    ) {
        if !self.limits.take(Op::Sub, &self.slot) {
            return self.rate_limited(id, "too many subscribe requests");
        }
        if self.subs.contains(&ch) {
            return self.bad_frame(
                id,
                ErrorCode::BadRequest,
                "already subscribed to this channel",
            );
        }
        match lifecycle::authorize(&self.edge, &self.identity, &ch) {
            Access::Allowed => self.admit_subscription(id, ch, types, since).await,
            Access::AskPrivacy => self.ask_presence_privacy(id, ch, types, since),
            Access::Refused(refusal) => self.reply(refusal.frame(id)),
        }
    }

    /// The checks after authorization: the per-connection limit, then subscribing.
    async fn admit_subscription(
        &mut self,
        id: Option<u64>,
        ch: ChannelName,
        types: TypeFilters,
        since: Option<ResumeFrom>,
    ) {
        if self.subs.contains(&ch) {
            return self.bad_frame(
                id,
                ErrorCode::BadRequest,
                "already subscribed to this channel",
            );
        }
        if self.subs.counted() >= self.edge.config.max_subscriptions {
            return self.rate_limited(id, "too many subscriptions on this connection");
        }
        self.start_subscription(id, ch, types, since, true).await;
    }

    /// Asks the presence service whether this user may watch `presence:<target>`.
    fn ask_presence_privacy(
        &mut self,
        id: Option<u64>,
        ch: ChannelName,
        types: TypeFilters,
        since: Option<ResumeFrom>,
    ) {
        let edge = self.edge.clone();
        let user = self.identity.user.clone();
        let done = self.done.clone();
        self.spawn(id, async move {
            match lifecycle::may_watch(&edge, &user, ch.id()).await {
                Ok(true) => {
                    done.push(Done::Allowed {
                        id,
                        ch,
                        types,
                        since,
                    });
                    None
                }
                Ok(false) => Some(Refusal::forbidden("this user's presence is private").frame(id)),
                Err(refusal) => Some(refusal.frame(id)),
            }
        });
    }

    /// Attaches to the channel now (so an `unsub` right after finds it) and finishes in a
    /// task: wait for the bridge, reply `ok`, replay, go live.
    async fn start_subscription(
        &mut self,
        id: Option<u64>,
        label: ChannelName,
        types: TypeFilters,
        since: Option<ResumeFrom>,
        reply: bool,
    ) {
        if self.has_presence(&label) {
            self.occupy(&label).await;
        }
        let subscription = Subscription {
            user: self.identity.user.clone(),
            label: label.clone(),
            filters: types,
            mailbox: self.mailbox.clone(),
        };
        let work = self.subs.begin(&self.edge, subscription, id, since, reply);
        let mailbox = self.mailbox.clone();
        let done = self.done.clone();
        self.tasks.spawn(async move {
            if let Err(refusal) = work.await {
                if reply {
                    mailbox.send(text(refusal.frame(id))).await;
                }
                done.push(Done::SubFailed(label));
            }
        });
    }

    /// Ends a subscription: backs out one still being set up, leaves the channel.
    /// Returns whether there was one.
    async fn unsubscribe(&mut self, label: &ChannelName) -> bool {
        if !self.subs.contains(label) {
            return false;
        }
        if self.has_presence(label) {
            self.vacate(label).await;
        }
        self.subs.end(&self.edge, self.control.id, label)
    }

    /// Ends a subscription the client may no longer hold and tells it so.
    async fn revoke(&mut self, label: ChannelName) {
        if self.unsubscribe(&label).await {
            let frame = ServerFrame::Unsubbed {
                ch: label,
                code: UnsubCode::Revoked,
            };
            self.reply(frame.encode());
        }
    }

    /// Re-authorizes the subscriptions to `channels` (changed membership, a refresh, a
    /// watched user's privacy): what the rules refuse ends now, presence watches are
    /// asked of the presence service again.
    async fn recheck(&mut self, channels: Vec<ChannelName>) {
        let outcome = lifecycle::recheck(&self.edge, &self.identity, self.subs.labels(), &channels);
        for label in outcome.revoke {
            self.revoke(label).await;
        }
        for label in outcome.ask_privacy {
            let (edge, user, done) = (
                self.edge.clone(),
                self.identity.user.clone(),
                self.done.clone(),
            );
            self.tasks.spawn(async move {
                match lifecycle::may_watch(&edge, &user, label.id()).await {
                    Ok(true) => {}
                    Ok(false) => done.push(Done::Revoke(label)),
                    // Unanswered, the watch stays: it was allowed, and an outage of the
                    // presence service must not look like a privacy change.
                    Err(refusal) => {
                        tracing::warn!(%refusal, %label, "presence watch not re-checked");
                    }
                }
            });
        }
    }

    /// Whether `channel`'s namespace has channel presence (`who`, join/leave).
    fn has_presence(&self, channel: &ChannelName) -> bool {
        self.edge.policy.rule(channel.namespace()).presence
    }

    fn occupancy_subject(&self, channel: &ChannelName) -> String {
        occupancy_subject(&channel.base(), &self.identity.user, &self.session_id)
    }

    /// Queues `welcome`, the first frame of every session.
    fn welcome(&self) {
        let welcome = ServerFrame::Welcome {
            user: self.identity.user.to_string(),
            session: self.session_id.clone(),
            heartbeat_ms: self.edge.config.heartbeat_ms,
        };
        self.mailbox.push_event(text(welcome.encode()));
    }

    /// Writes this connection's entry in the `presence` bucket.
    async fn put_presence(&self) {
        let value = self
            .me
            .encode(&self.identity.user, &self.session_id, &self.edge.id);
        self.edge
            .presence
            .put(
                presence_subject(&self.identity.user, &self.session_id),
                value,
            )
            .await;
    }

    /// Marks this connection present on `channel` and tells the channel (`join`).
    async fn occupy(&self, channel: &ChannelName) {
        self.edge
            .presence
            .put(self.occupancy_subject(channel), self.me.occupancy())
            .await;
        if self.me.status != PresenceStatus::Invisible {
            self.send_signal(
                channel,
                SignalType::parse(JOIN).ok(),
                RawJson::empty_object(),
            )
            .await;
        }
    }

    /// The reverse of [`occupy`](Self::occupy) (`leave`).
    async fn vacate(&self, channel: &ChannelName) {
        self.edge
            .presence
            .delete(self.occupancy_subject(channel))
            .await;
        if self.me.status != PresenceStatus::Invisible {
            self.send_signal(
                channel,
                SignalType::parse(LEAVE).ok(),
                RawJson::empty_object(),
            )
            .await;
        }
    }

    /// Publishes a signal from this connection; it will not come back to it.
    async fn send_signal(
        &self,
        channel: &ChannelName,
        ty: impl Into<Option<SignalType>>,
        data: RawJson,
    ) {
        let Some(ty) = ty.into() else { return };
        let signal = SignalMessage {
            from: self.identity.user.to_string(),
            ty,
            data,
        };
        let Ok(payload) = serde_json::to_vec(&signal) else {
            return;
        };
        let mut h = async_nats::HeaderMap::new();
        h.insert(RT_ORIGIN, self.edge.bridge.origin(self.control.id).as_str());
        let subject = channel.base().subject(SubjectKind::Signal);
        // Signals are lossy by design; a failed publish is only logged.
        if let Err(e) = self
            .edge
            .nats
            .publish_with_headers(subject, h, payload.into())
            .await
        {
            tracing::debug!(error = %e, "signal publish failed");
        }
    }

    /// Throttles `typing`: a repeat of the same state within the window is dropped.
    fn typing_allowed(&mut self, channel: &ChannelName, data: &RawJson) -> bool {
        #[derive(serde::Deserialize)]
        struct Typing {
            typing: Option<bool>,
        }
        let typing = data
            .decode::<Typing>()
            .ok()
            .and_then(|t| t.typing)
            .unwrap_or(true);
        let now = Instant::now();
        if let Some((at, was)) = self.typing.get(channel)
            && *was == typing
            && now.duration_since(*at) < TYPING_WINDOW
        {
            return false;
        }
        self.typing.insert(channel.clone(), (now, typing));
        true
    }

    /// A connection that ends while typing tells the others it stopped.
    async fn stop_typing(&mut self) {
        let typing: Vec<ChannelName> = self
            .typing
            .drain()
            .filter(|(_, (_, typing))| *typing)
            .map(|(channel, _)| channel)
            .collect();
        for channel in typing {
            let data = RawJson::encode(&serde_json::json!({ "typing": false }))
                .unwrap_or_else(|_| RawJson::null());
            self.send_signal(&channel, SignalType::parse(TYPING).ok(), data)
                .await;
        }
    }

    /// `who`: every user with a connection subscribed to the channel now, on any edge.
    fn on_who(&mut self, id: Option<u64>, ch: ChannelName) {
        if let Err(why) = self
            .edge
            .policy
            .may_subscribe(&self.identity, &ch, &self.edge.members)
        {
            return self.forbidden(id, why);
        }
        if !self.has_presence(&ch) {
            return self.reply(err(
                id,
                ErrorCode::BadRequest,
                "this channel has no presence",
            ));
        }
        let edge = self.edge.clone();
        self.spawn(id, async move {
            let filter = occupancy_filter(&ch.base());
            let entries = match edge.store.scan_bucket(OCCUPANCY_BUCKET, &filter).await {
                Ok(entries) => entries,
                Err(e) => return Some(err(id, ErrorCode::Unavailable, e.to_string())),
            };
            #[derive(serde::Deserialize)]
            struct Occupant {
                status: PresenceStatus,
            }
            let mut by_user: std::collections::BTreeMap<String, Vec<PresenceStatus>> =
                Default::default();
            for (key, value) in entries {
                // <ns>.<id>.<user>.<conn>
                let Some(user) = key.split('.').nth(2) else {
                    continue;
                };
                let Ok(occupant) = serde_json::from_slice::<Occupant>(&value) else {
                    continue;
                };
                by_user
                    .entry(user.to_string())
                    .or_default()
                    .push(occupant.status);
            }
            let members = by_user
                .into_iter()
                .map(|(user, statuses)| Member {
                    user,
                    status: VisibleStatus::aggregate(statuses),
                })
                // Invisible everywhere looks offline, and offline users are not here.
                .filter(|m| m.status != VisibleStatus::Offline)
                .collect();
            Some(
                ServerFrame::Ok {
                    id,
                    reply: OkReply::Members { members },
                }
                .encode(),
            )
        });
    }

    fn on_pub(
        &mut self,
        id: Option<u64>,
        ch: ChannelName,
        ty: EventType,
        data: switchboard_schemas::RawJson,
        key: Option<String>,
    ) {
        if !self.limits.take(Op::Pub, &self.slot) {
            return self.rate_limited(id, "too many publishes");
        }
        if let Err(why) = self
            .edge
            .policy
            .may_publish(&self.identity, &ch, &ty, &self.edge.members)
        {
            return self.forbidden(id, why);
        }
        let edits = ty.as_str() != types::MESSAGE_NEW;
        let target = match message_target(&data, edits) {
            Ok(target) => target,
            Err(why) => return self.bad_frame(id, ErrorCode::BadRequest, why),
        };
        let user = self.identity.user.clone();
        let event_id = match &key {
            Some(key) if key.is_empty() || key.len() > 128 => {
                return self.bad_frame(
                    id,
                    ErrorCode::BadRequest,
                    "key must be 1 to 128 characters",
                );
            }
            Some(key) => EventId::derive(&[&user, ch.as_str(), key]),
            None => EventId::generate(),
        };
        let edge = self.edge.clone();
        self.spawn(id, async move {
            if let Some(seq) = target {
                match original_sender(&edge, &ch, seq).await {
                    Ok(Some(sender)) if sender == *user => {}
                    Ok(Some(_)) => {
                        return Some(err(
                            id,
                            ErrorCode::Forbidden,
                            "only the original sender may edit or delete a message",
                        ));
                    }
                    Ok(None) => {
                        return Some(err(
                            id,
                            ErrorCode::NotFound,
                            format!("no message with seq {seq} on {ch}"),
                        ));
                    }
                    Err(e) => return Some(err(id, ErrorCode::Unavailable, e)),
                }
            }
            let mut event = Envelope::new(ty, data);
            event.id = event_id;
            event.actor = Some(Actor {
                id: user.to_string(),
                kind: "user".into(),
            });
            event.source = Some("switchboard-edge".into());
            match edge.publisher.publish(&ch, &event).await {
                Ok(published) => Some({
                    edge.metrics.count(&edge.metrics.published, 1);
                    ServerFrame::Ok {
                        id,
                        reply: OkReply::Published {
                            seq: published.seq,
                            event_id: event.id,
                        },
                    }
                    .encode()
                }),
                Err(e) => Some(err(id, ErrorCode::Unavailable, e.to_string())),
            }
        });
    }

    fn on_receipt(
        &mut self,
        id: Option<u64>,
        ch: ChannelName,
        delivered: Option<u64>,
        read: Option<u64>,
    ) {
        if let Err(why) = self
            .edge
            .policy
            .may_receipt(&self.identity, &ch, &self.edge.members)
        {
            return self.forbidden(id, why);
        }
        let cursor = self.receipts.entry(ch).or_insert((0, 0));
        // `read` implies `delivered`; both are cumulative.
        let read = read.unwrap_or(0);
        cursor.1 = cursor.1.max(read);
        cursor.0 = cursor.0.max(delivered.unwrap_or(0)).max(read);
        self.receipts_due
            .get_or_insert_with(|| tokio::time::Instant::now() + RECEIPT_WINDOW);
    }

    /// Sends the coalesced cursors to the receipts worker through the `CMDS` stream.
    fn flush_receipts(&mut self) {
        self.receipts_due = None;
        if self.receipts.is_empty() {
            return;
        }
        let user = self.identity.user.to_string();
        let commands: Vec<ReceiptCommand> = self
            .receipts
            .drain()
            .map(|(conversation, (delivered, read))| ReceiptCommand {
                conversation,
                user: user.clone(),
                delivered: (delivered > 0).then_some(delivered),
                read: (read > 0).then_some(read),
            })
            .collect();
        let js = async_nats::jetstream::new(self.edge.nats.clone());
        tokio::spawn(async move {
            for command in commands {
                let Ok(payload) = serde_json::to_vec(&command) else {
                    continue;
                };
                let sent = async {
                    js.publish(command.subject(), payload.into()).await?.await?;
                    Ok::<_, async_nats::Error>(())
                };
                if let Err(e) = sent.await {
                    tracing::warn!(error = %e, "receipt command not stored");
                }
            }
        });
    }

    fn on_history(
        &mut self,
        id: Option<u64>,
        ch: ChannelName,
        before: Option<u64>,
        limit: Option<u32>,
    ) {
        if let Err(why) = self
            .edge
            .policy
            .may_subscribe(&self.identity, &ch, &self.edge.members)
        {
            return self.forbidden(id, why);
        }
        let limit = limit.unwrap_or(HISTORY_DEFAULT).clamp(1, HISTORY_MAX) as usize;
        let edge = self.edge.clone();
        self.spawn(id, async move {
            let subject = ch.base().subject(SubjectKind::Durable);
            let stored = match edge.store.newest(&subject, before, limit).await {
                Ok(stored) => stored,
                Err(e) => return Some(err(id, ErrorCode::Unavailable, e.to_string())),
            };
            let events = stored
                .into_iter()
                .filter_map(|s| {
                    let event = s.envelope().ok()?;
                    ch.alias()
                        .is_none_or(|a| a.admits(event.ty.as_str()))
                        .then(|| EvtFrame {
                            ch: ch.clone(),
                            seq: s.seq,
                            event,
                        })
                })
                .collect();
            Some(
                ServerFrame::Ok {
                    id,
                    reply: OkReply::History { events },
                }
                .encode(),
            )
        });
    }
}

/// Writes the frames of `batch` in one go (one flush, so usually one write); a frame
/// stays in `batch` until it is handed to the socket.
async fn write_batch(
    socket: &mut WebSocket,
    batch: &mut VecDeque<Utf8Bytes>,
) -> Result<u64, axum::Error> {
    let mut frames = 0;
    while !batch.is_empty() {
        std::future::poll_fn(|cx| socket.poll_ready_unpin(cx)).await?;
        if let Some(frame) = batch.pop_front() {
            socket.start_send_unpin(Message::Text(frame))?;
            frames += 1;
        }
    }
    socket.flush().await?;
    Ok(frames)
}

/// True when the socket refused a frame above the hard cap (tungstenite's capacity error).
fn is_too_big(error: &axum::Error) -> bool {
    let text = error.to_string();
    text.contains("Space limit exceeded") || text.contains("too long")
}

fn expiry_instant(exp: i64, leeway: Duration) -> tokio::time::Instant {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let left = Duration::from_secs(exp.saturating_sub(now).max(0) as u64) + leeway;
    tokio::time::Instant::now() + left
}

/// For `message.edited` / `message.deleted`: the seq of the original message in `data`.
fn message_target(
    data: &switchboard_schemas::RawJson,
    edits: bool,
) -> Result<Option<u64>, &'static str> {
    #[derive(serde::Deserialize)]
    struct Target {
        seq: Option<u64>,
    }
    if !data.as_str().trim_start().starts_with('{') {
        return Err("message data must be a JSON object");
    }
    let target: Target = data
        .decode()
        .map_err(|_| "message data.seq must be a sequence number")?;
    if !edits {
        return Ok(None);
    }
    target
        .seq
        .map(Some)
        .ok_or("message.edited and message.deleted need data.seq, the original's seq")
}

/// The sender of the `message.new` stored at `seq` on `ch`; `None` if there is none.
async fn original_sender(
    edge: &Edge,
    ch: &ChannelName,
    seq: u64,
) -> Result<Option<String>, String> {
    let Some(stored) = edge.store.get(seq).await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    if stored.subject != ch.subject(SubjectKind::Durable) {
        return Ok(None);
    }
    let Ok(event) = stored.envelope() else {
        return Ok(None);
    };
    if event.ty.as_str() != types::MESSAGE_NEW {
        return Ok(None);
    }
    Ok(event.actor.map(|a| a.id))
}
