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

mod dispatch;
mod handshake;
mod presence;
mod publish;
mod queries;
mod receipts;
mod subscriptions;

pub use handshake::valid_device;
use handshake::{await_hello, close, say_bye, send_now};

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt};
use switchboard_bus::{Encoding, OCCUPANCY_BUCKET};
use switchboard_schemas::event::types;
use switchboard_schemas::frame::{Member, OkReply, RpcMethod, SignalType};
use switchboard_schemas::shapes::{ReceiptCommand, SignalMessage};
use switchboard_schemas::{
    Actor, ByeCode, ChannelName, ClientFrame, Envelope, ErrorCode, EventId, EventType,
    InitialPresence, PresenceStatus, RawJson, Request, ResumeFrom, ServerFrame, SubjectKind,
    TraceParent, TypeFilters, UnsubCode, VisibleStatus,
};
use tokio::task::JoinSet;

use crate::Edge;
use crate::auth::Identity;
use crate::bridge::RT_ORIGIN;
use crate::hub::{Attachment, Subscription};
use crate::lifecycle::{self, Access, PrivacyAsked, Setup, Subscriptions};
use crate::limits::{Limits, Op, PendingSlot, TokenBucket, UserSlot};
use crate::mailbox::{ConnControl, Inbox, Mailbox, Outgoing, text};
use crate::presence::{ConnState, occupancy_filter, occupancy_subject, presence_subject};
use crate::privacy::Visibility;
use crate::refusal::Refusal;
use crate::rpc;

/// Close codes of docs/protocol.md besides those of `bye`.
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_NORMAL: u16 = 1000;
/// Requests of one session waiting on NATS at once; more are `rate_limited`.
const MAX_IN_FLIGHT: usize = 32;
/// Frames fed to the socket before one flush.
const WRITE_BATCH: usize = 128;
/// Most frames handled in a row while more are already read, before queued replies and
/// events are written.
const READ_BATCH: usize = 16;
/// Bytes read from the socket at once; a larger client frame takes several reads.
pub const READ_BUFFER: usize = 512;
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
/// (the socket alone is 368 bytes) for the whole life of the session. For the same
/// reason `admitted` comes boxed (its box is freed at once; unboxed, its 152 bytes would
/// stay in the task for good), and the session is built by [`Session::open`], whose
/// locals then need no place in the task.
#[allow(clippy::manual_async_fn)]
pub fn run(
    edge: Arc<Edge>,
    mut socket: WebSocket,
    admitted: Box<Admitted>,
    held: Option<crate::server::Socket>,
) -> impl Future<Output = ()> + Send {
    async move {
        let (mut session, outgoing, channels) = match *admitted {
            Admitted::Authenticated(identity, slot, declared, own) => {
                Session::open(&edge, identity, slot, declared, own)
            }
            Admitted::Pending(pending, presence) => {
                let Some((identity, declared)) = await_hello(&edge, &mut socket, presence).await
                else {
                    return;
                };
                drop(pending);
                let Some(slot) = edge.users.admit(&identity.user) else {
                    let refusal = Refusal::rate_limited("too many connections for this user");
                    send_now(&mut socket, refusal.frame(None)).await;
                    say_bye(&mut socket, ByeCode::RateLimited).await;
                    return;
                };
                Session::open(&edge, identity, slot, declared, None)
            }
        };
        edge.metrics.gauge(&edge.metrics.connections, 1);
        session.run(&mut socket, &outgoing, held, channels).await;
        edge.metrics.gauge(&edge.metrics.connections, -1);
    }
}

/// How a socket got past the upgrade.
#[derive(Debug)]
pub enum Admitted {
    /// With a valid token on the upgrade, a place among its user's connections, what
    /// the query declared (`?device=`, `?presence=`), and a place on the user's own
    /// channel, made ready during the upgrade ([`crate::subscribe::warm_own`]).
    Authenticated(Identity, UserSlot, Declared, Option<Attachment>),
    /// Without a token: it has `hello_timeout` to send `hello`. The presence the query
    /// declared holds unless `hello` declares one.
    Pending(PendingSlot, Option<InitialPresence>),
}

/// What the session knows of its user's privacy setting (for `join`/`leave`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VisibilityState {
    /// Not needed yet: nobody asked.
    Unknown,
    /// Asked; `join`/`leave` wait for the answer.
    Asking,
    Known(Visibility),
}

/// What a connection declares about itself as it opens: its device, its initial presence
/// (docs/protocol.md, section 9) and the channels its upgrade subscribes (`?ch=`,
/// section 2), each checked already, with the presence service's say where it was asked.
#[derive(Debug, Clone)]
pub struct Declared {
    pub device: Option<String>,
    pub presence: InitialPresence,
    pub channels: lifecycle::Named,
}

impl Declared {
    /// From `hello` or the upgrade's query: a device name that is not valid is ignored,
    /// an absent presence is `online`; a status text above the limit is refused.
    pub fn new(
        device: Option<String>,
        presence: Option<InitialPresence>,
    ) -> Result<Declared, Refusal> {
        let presence = presence.unwrap_or(InitialPresence {
            status: PresenceStatus::Online,
            text: None,
        });
        if presence
            .text
            .as_ref()
            .is_some_and(|t| t.len() > MAX_STATUS_TEXT)
        {
            return Err(Refusal::bad_request("status text is too long"));
        }
        Ok(Declared {
            device: device.filter(|d| valid_device(d)),
            presence,
            channels: Vec::new(),
        })
    }
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
        asked: PrivacyAsked,
    },
    /// A presence watch the presence service no longer allows: end it.
    Revoke(ChannelName),
    /// How this user shows themself (for `join`/`leave`), as answered to a question
    /// asked when the edge had told `changes` privacy changes.
    Visibility {
        visibility: Visibility,
        changes: u64,
    },
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
    tasks: Tasks,
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
    /// How this user shows themself, as far as the session knows.
    visibility: VisibilityState,
    /// `join`/`leave` signals waiting for `visibility`.
    deferred: Vec<(ChannelName, &'static str)>,
    /// The user's own channel, made ready during the upgrade: held until the client's
    /// first frames are read (which subscribe it, if anything does), or until the first
    /// heartbeat for a client that sends none.
    own: Option<Attachment>,
}

enum Flow {
    Continue,
    End,
}

impl Session {
    /// A session for an admitted user, the queue its socket is written from, and the
    /// channels to subscribe as it starts.
    fn open(
        edge: &Arc<Edge>,
        identity: Identity,
        slot: UserSlot,
        declared: Declared,
        own: Option<Attachment>,
    ) -> (Session, Outgoing, lifecycle::Named) {
        let (mailbox, outgoing) = edge.open_mailbox(identity.user.clone());
        let control = mailbox.control.clone();
        let conn = control.id;
        let session = Session {
            edge: edge.clone(),
            identity,
            slot,
            mailbox,
            control,
            subs: Subscriptions::default(),
            tasks: Tasks::default(),
            done: Arc::default(),
            limits: Limits::new(&edge.config),
            receipts: HashMap::new(),
            receipts_due: None,
            session_id: format!("{}-{conn}", edge.id),
            // The first write of the presence entry already carries the declared status:
            // a connection that opens invisible is never seen online.
            me: ConnState {
                status: declared.presence.status,
                text: declared.presence.text,
                device: declared.device,
            },
            typing: HashMap::new(),
            visibility: VisibilityState::Unknown,
            deferred: Vec::new(),
            own,
        };
        (session, outgoing, declared.channels)
    }

    /// `held`: the socket's `101`, held back until `welcome` is written (server::Socket);
    /// `channels`: those the upgrade named (`?ch=`), subscribed right after `welcome`.
    async fn run(
        &mut self,
        socket: &mut WebSocket,
        outgoing: &Outgoing,
        mut held: Option<crate::server::Socket>,
        channels: lifecycle::Named,
    ) {
        let heartbeat = self.edge.config.heartbeat();
        self.welcome();
        // Rare work is boxed: the states of an inline `.await` are part of the session's
        // future, which every idle connection holds for its whole life.
        Box::pin(self.put_presence()).await;
        Box::pin(self.subscribe_implicit()).await;
        // Nothing is written yet: on channels that know their head, the `ok`s (without
        // `id`) leave with `welcome` and the `101`, in one segment.
        for (label, privacy) in channels {
            let admitted = self.admit_subscription(None, label, TypeFilters::all(), None, privacy);
            Box::pin(admitted).await;
        }
        let mut last_heard = Instant::now();
        let leeway = Duration::from_secs(self.edge.config.jwt_leeway_s);
        let mut due = Deadlines {
            beat: tokio::time::Instant::now() + heartbeat,
            expiry: Some(expiry_instant(self.identity.exp, leeway)),
            receipts: None,
        };
        let clock = tokio::time::sleep_until(due.next());
        tokio::pin!(clock);
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
            if self.receipts_due != due.receipts {
                due.receipts = self.receipts_due;
                clock.as_mut().reset(due.next());
            }
            tokio::select! {
                biased;
                _ = &mut ended => {
                    if let Some(held) = held.take() {
                        held.release();
                    }
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
                            Ok(frames) => {
                                outgoing.give_back(&mut batch);
                                self.edge.metrics.count(&self.edge.metrics.frames_out, frames);
                                if let Some(held) = held.take() {
                                    held.release();
                                }
                            }
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
                            Done::Allowed { id, ch, types, since, asked } => {
                                let admitted = self.admit_subscription(id, ch, types, since, Some(asked));
                                Box::pin(admitted).await;
                            }
                            Done::Revoke(label) => Box::pin(self.revoke(label)).await,
                            Done::Visibility { visibility, changes } => {
                                Box::pin(self.visibility_known(visibility, changes)).await;
                            }
                        }
                    }
                }
                labels = &mut rechecks => {
                    rechecks.set(control.rechecks());
                    Box::pin(self.recheck(labels)).await;
                }
                incoming = socket.recv() => {
                    // Frames the socket has already read are handled before anything is
                    // written, so the replies to frames that came together (a client's
                    // subscriptions as it connects) leave together, in one write.
                    let mut incoming = incoming;
                    let mut handled = 0;
                    let stop = loop {
                        let message = match incoming {
                            Some(Ok(message)) => message,
                            Some(Err(e)) if is_too_big(&e) => {
                                Box::pin(close(socket, CLOSE_TOO_BIG, "frame too large")).await;
                                break true;
                            }
                            _ => break true,
                        };
                        last_heard = Instant::now();
                        if let Flow::End = Box::pin(self.on_message(message)).await {
                            Box::pin(close(socket, CLOSE_TOO_BIG, "frame too large")).await;
                            break true;
                        }
                        if let Some(new_exp) = self.limits.refreshed_exp.take() {
                            due.expiry = Some(expiry_instant(new_exp, leeway));
                            clock.as_mut().reset(due.next());
                        }
                        handled += 1;
                        // A session asked to end reads no further (the loop says bye).
                        if handled == READ_BATCH || self.control.reason().is_some() {
                            break false;
                        }
                        match socket.recv().now_or_never() {
                            Some(next) => incoming = next,
                            None => break false,
                        }
                    };
                    if stop {
                        break;
                    }
                    // A client subscribes its own channel with its first frames if at all.
                    self.own = None;
                }
                () = &mut clock => {
                    let now = tokio::time::Instant::now();
                    if due.expiry.is_some_and(|at| at <= now) {
                        due.expiry = None;
                        self.control.end(ByeCode::TokenExpired);
                    }
                    if due.receipts.is_some_and(|at| at <= now) {
                        self.flush_receipts();
                        due.receipts = self.receipts_due;
                    }
                    if due.beat <= now {
                        self.own = None;
                        if last_heard.elapsed() > heartbeat * 2 {
                            let closing = close(socket, CLOSE_NORMAL, "heartbeat timeout");
                            let _ = Box::pin(tokio::time::timeout(LAST_WORDS, closing)).await;
                            break;
                        }
                        let ping = tokio::time::timeout(heartbeat, socket.send(Message::Ping(Bytes::new())));
                        if !matches!(Box::pin(ping).await, Ok(Ok(()))) {
                            break;
                        }
                        due.beat = now + heartbeat;
                    }
                    clock.as_mut().reset(due.next());
                }
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

    async fn on_message(&mut self, message: Message) -> Flow {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                self.bad_frame(
                    None,
                    Refusal::bad_request("binary frames are not supported"),
                );
                return Flow::Continue;
            }
            _ => return Flow::Continue,
        };
        if text.len() > self.edge.config.hard_frame_bytes {
            return Flow::End;
        }
        if text.len() > self.edge.config.max_frame_bytes {
            self.bad_frame(None, Refusal::too_large("frame larger than the limit"));
            return Flow::Continue;
        }
        let request = match Request::decode(text.as_bytes()) {
            Ok(request) => request,
            Err(e) => {
                self.edge.metrics.frame_in("invalid");
                self.bad_frame(e.id, Refusal::new(e.code(), e.to_string()));
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
    fn bad_frame(&mut self, id: Option<u64>, refusal: Refusal) {
        self.refuse(id, refusal);
        if self.limits.bad_frames.hit() {
            self.control.end(ByeCode::ProtocolError);
        }
    }

    fn rate_limited(&mut self, id: Option<u64>, message: &str) {
        self.edge.metrics.count(&self.edge.metrics.rate_limited, 1);
        self.refuse(id, Refusal::rate_limited(message));
        if self.limits.rate_limited.hit() {
            self.control.end(ByeCode::RateLimited);
        }
    }

    fn reply(&self, frame: Bytes) {
        self.mailbox.push_event(text(frame));
    }

    /// Answers the request `id` with an `err` frame.
    fn refuse(&self, id: Option<u64>, refusal: Refusal) {
        self.reply(refusal.frame(id));
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

    /// Queues `welcome`, the first frame of every session.
    fn welcome(&self) {
        let welcome = ServerFrame::Welcome {
            user: self.identity.user.to_string(),
            session: self.session_id.clone(),
            heartbeat_ms: self.edge.config.heartbeat_ms,
        };
        self.mailbox.push_event(text(welcome.encode()));
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

/// The session's request tasks. The set is made with the first: most connections never
/// start one, and an empty `JoinSet` still holds an allocation (BENCHMARKS.md, "Memory
/// per idle connection, a second look").
#[derive(Default)]
struct Tasks(Option<JoinSet<()>>);

impl Tasks {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, JoinSet::len)
    }

    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.0.get_or_insert_with(JoinSet::new).spawn(task);
    }

    /// The next task to finish; `None` at once when none runs.
    async fn join_next(&mut self) -> Option<()> {
        match &mut self.0 {
            Some(tasks) => tasks.join_next().await.map(|_| ()),
            None => None,
        }
    }

    fn abort_all(&mut self) {
        if let Some(tasks) = &mut self.0 {
            tasks.abort_all();
        }
    }
}

/// What the session's one timer waits for: the next heartbeat, the token's expiry (until
/// it has passed) and the flush of waiting receipt cursors (while any wait). One timer
/// rather than three: each is about a hundred bytes of every idle session's memory
/// (BENCHMARKS.md, "Memory per idle connection, a second look").
struct Deadlines {
    beat: tokio::time::Instant,
    expiry: Option<tokio::time::Instant>,
    receipts: Option<tokio::time::Instant>,
}

impl Deadlines {
    fn next(&self) -> tokio::time::Instant {
        [self.expiry, self.receipts]
            .into_iter()
            .flatten()
            .fold(self.beat, std::cmp::min)
    }
}

fn expiry_instant(exp: i64, leeway: Duration) -> tokio::time::Instant {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let left = Duration::from_secs(exp.saturating_sub(now).max(0) as u64) + leeway;
    tokio::time::Instant::now() + left
}
