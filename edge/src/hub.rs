//! The hub: which local connections want which channel, and fan-out to them.
//!
//! One [`Channel`] per base channel that any local connection subscribes to, shared by
//! all of them and dropped with its last subscriber. Each channel is fed by one task of
//! [`crate::bridge`] holding that channel's NATS subscriptions; the hub itself never
//! touches NATS. An event is decoded once, its `evt` frame is built once per spelling of
//! the channel (`user:u1` and its aliases differ), and each matching subscriber gets a
//! clone of the same bytes through its [`Mailbox`] without waiting.
//!
//! # No gap, no duplicate
//!
//! A channel tracks `head`, the last stream sequence it has delivered. Each subscriber
//! tracks the last seq it was sent, so a frame reaching it twice (live and from a repair
//! or replay) is sent once. A subscriber resuming from an old position starts in
//! catch-up mode: live events are buffered for it while its session replays stored
//! events, then the buffer is drained past what the replay sent, and it turns live.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use switchboard_schemas::{ChannelName, Envelope, TypeFilters, UserAlias, encode_evt_from};
use tokio::sync::Notify;

use crate::mailbox::{ConnControl, ConnId, Mailbox, text};
use crate::metrics::Metrics;
use crate::watched::Watched;

/// Live events buffered for a catching-up subscriber before its replay restarts instead.
const CATCH_UP_BUFFER: usize = 4096;

/// Registry of the channels this edge holds.
#[derive(Debug, Default)]
pub struct Hub {
    channels: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Changes told to whole channels so far (see [`Hub::channel_changed`]).
    changes: AtomicU64,
}

/// The channels by name; shared with every [`Attachment`], which may give its place back
/// from anywhere (its subscription's task dropped).
#[derive(Debug, Default)]
struct Registry(Mutex<HashMap<String, Arc<Channel>>>);

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Channel>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A subscription's place on a channel from [`Hub::attach`] until its subscriber is added
/// ([`Attachment::add`]): the channel, and its bridge, stay while it is held. Dropped
/// without being added, it gives the place back. Each attachment counts once and is given
/// back once, by `add` or by its drop, never both: the count cannot go below zero.
#[derive(Debug)]
#[must_use = "an attachment holds its channel until it is added or dropped"]
pub struct Attachment {
    channel: Arc<Channel>,
    channels: Arc<Registry>,
    /// False once `add` took the place over.
    held: bool,
}

/// One subscription of one connection, as given to [`Attachment::add`].
#[derive(Debug)]
pub struct Subscription {
    /// Unique on this edge: one connection may hold two subscriptions to one channel for a
    /// moment (an `unsub` and a new `sub` while the first is still being set up), and
    /// each must leave the channel as itself.
    pub key: u64,
    pub user: Arc<str>,
    /// The channel as the client spelled it; `evt` frames carry it.
    pub label: ChannelName,
    pub filters: TypeFilters,
    pub mailbox: Mailbox,
}

/// A key for a new [`Subscription`].
pub fn subscription_key() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Subscription {
    /// Whether an event of type `ty` goes to this subscription (alias and `types`).
    pub fn wants(&self, ty: &str) -> bool {
        self.label.alias().is_none_or(|a: UserAlias| a.admits(ty)) && self.filters.matches_any(ty)
    }
}

/// One frame per spelling of a channel (its base name, or an alias of it: at most three),
/// built for the first subscriber that spells it so and shared by the rest. Every
/// subscriber of a channel spells its base, so the alias alone tells spellings apart: a
/// fan-out compares a byte per subscriber, not its channel name (BENCHMARKS.md, "The
/// 1,000-subscriber tail and the generator's own cost").
#[derive(Default)]
struct Spellings(Vec<(Option<UserAlias>, Utf8Bytes)>);

impl Spellings {
    fn frame(
        &mut self,
        label: &ChannelName,
        build: impl FnOnce(&ChannelName) -> Utf8Bytes,
    ) -> Utf8Bytes {
        let alias = label.alias();
        if let Some((_, frame)) = self.0.iter().find(|(spelled, _)| *spelled == alias) {
            return frame.clone();
        }
        let frame = build(label);
        self.0.push((alias, frame.clone()));
        frame
    }
}

/// Whether a channel's bridge is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Starting,
    Ready,
    Failed(String),
}

#[derive(Debug)]
pub struct Channel {
    pub name: ChannelName,
    metrics: Arc<Metrics>,
    state: Mutex<ChannelState>,
    ready: Watched<Readiness>,
    /// Set when the last subscriber leaves; the bridge task then ends.
    stopped: Watched<bool>,
    /// Poked when NATS may have dropped live messages; the bridge re-reads the stream.
    pub resync: Notify,
}

#[derive(Debug, Default)]
struct ChannelState {
    head: u64,
    subscribers: Vec<Subscriber>,
    /// [`Attachment`]s held: subscriptions between `Hub::attach` and `Attachment::add`;
    /// the channel must outlive them.
    attaching: usize,
}

#[derive(Debug)]
struct Subscriber {
    sub: Subscription,
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Live {
        last_sent: u64,
    },
    CatchingUp {
        buffer: Vec<(u64, Utf8Bytes)>,
        overflowed: bool,
    },
}

/// What the session should do after a replay pass.
#[derive(Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// The subscriber is live; nothing was missed.
    Live,
    /// Live events overflowed the buffer meanwhile: replay again from this seq.
    ReplayFrom(u64),
    /// Frames to send (in order) before asking again; the subscriber is still catching up.
    Send(Vec<Utf8Bytes>, u64),
    /// The subscription is gone (unsubscribed or revoked meanwhile).
    Gone,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Hub {
        Hub {
            channels: Arc::default(),
            metrics,
            changes: AtomicU64::new(0),
        }
    }

    /// Returns a place on the channel for `name` (a base channel), registering a new one
    /// if needed, and whether it is new (the caller then starts its bridge). The place
    /// is held until [`Attachment::add`] or the attachment's drop.
    pub fn attach(&self, name: &ChannelName) -> (Attachment, bool) {
        let mut channels = self.lock();
        let attached = |channel: Arc<Channel>| Attachment {
            channel,
            channels: self.channels.clone(),
            held: true,
        };
        if let Some(channel) = channels.get(name.as_str()) {
            channel.state().attaching += 1;
            return (attached(channel.clone()), false);
        }
        let channel = Arc::new(Channel {
            name: name.clone(),
            metrics: self.metrics.clone(),
            state: Mutex::new(ChannelState {
                attaching: 1,
                ..ChannelState::default()
            }),
            ready: Watched::new(Readiness::Starting),
            stopped: Watched::new(false),
            resync: Notify::new(),
        });
        channels.insert(name.as_str().to_string(), channel.clone());
        (attached(channel), true)
    }

    /// Removes one subscription; drops the channel when it was the last.
    pub fn detach(&self, channel: &Arc<Channel>, key: u64) {
        let mut channels = self.lock();
        {
            // Order among subscribers means nothing, so the last one fills the hole: a
            // mass disconnect from a big channel costs a scan per leaver, not a shift.
            let mut state = channel.state();
            let subscribers = &mut state.subscribers;
            if let Some(at) = subscribers.iter().position(|s| s.sub.key == key) {
                subscribers.swap_remove(at);
            }
        }
        Self::release_if_idle(&mut channels, channel);
    }

    /// Drops a channel whose bridge failed, so the next subscriber starts a fresh one.
    pub fn forget(&self, channel: &Arc<Channel>) {
        let mut channels = self.lock();
        if channels
            .get(channel.name.as_str())
            .is_some_and(|c| Arc::ptr_eq(c, channel))
        {
            channels.remove(channel.name.as_str());
        }
        channel.stop();
    }

    /// The sessions of `user` on this edge, whatever they subscribe to.
    pub fn sessions_of_user(&self, user: &str) -> Vec<Arc<ConnControl>> {
        let channels = self.channels();
        let mut sessions: Vec<Arc<ConnControl>> = Vec::new();
        for channel in channels {
            for session in channel.sessions_of(user) {
                if !sessions.iter().any(|s| s.id == session.id) {
                    sessions.push(session);
                }
            }
        }
        sessions
    }

    /// Pokes every channel's bridge to re-read the stream (after a NATS reconnect or a
    /// client-side slow-consumer drop).
    pub fn resync_all(&self) {
        for channel in self.lock().values() {
            channel.resync.notify_one();
        }
    }

    /// Every channel this edge holds.
    pub fn channels(&self) -> Vec<Arc<Channel>> {
        self.lock().values().cloned().collect()
    }

    /// The channel named `name`, if this edge holds it.
    pub fn get(&self, name: &ChannelName) -> Option<Arc<Channel>> {
        self.lock().get(name.as_str()).cloned()
    }

    /// Number of channels held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn release_if_idle(channels: &mut HashMap<String, Arc<Channel>>, channel: &Arc<Channel>) {
        let state = channel.state();
        if state.subscribers.is_empty() && state.attaching == 0 {
            drop(state);
            if channels
                .get(channel.name.as_str())
                .is_some_and(|c| Arc::ptr_eq(c, channel))
            {
                channels.remove(channel.name.as_str());
            }
            channel.stop();
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Channel>>> {
        self.channels.lock()
    }

    /// A change that concerns the whole channel `name` (the watched user's privacy,
    /// docs/protocol.md, section 9.4): counts it, and returns the sessions subscribed there,
    /// each of which must re-check its right to stay. A subscription being set up
    /// meanwhile is not among them: it compares [`Hub::changes`] before and after.
    pub fn channel_changed(&self, name: &ChannelName) -> Vec<Arc<ConnControl>> {
        // Counted before the channel and its sessions are read: a subscriber added after
        // the setup read the count is either among these sessions, or its setup sees the
        // count moved once the subscriber is on the channel.
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.get(name).map(|c| c.sessions()).unwrap_or_default()
    }

    /// How many changes [`Hub::channel_changed`] has told so far.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }
}

impl Attachment {
    pub fn channel(&self) -> &Arc<Channel> {
        &self.channel
    }

    /// Adds the subscriber, taking over the attachment's place. `ok` builds the `sub`
    /// reply (if any) from the channel's head; it is queued before any event can be, so
    /// the client sees `ok` first.
    ///
    /// Live (`catch_up` false): events after the head follow. Catching up: live events are
    /// buffered until [`Channel::catch_up`] reports [`CatchUp::Live`].
    pub fn add(
        mut self,
        sub: Subscription,
        catch_up: bool,
        ok: impl FnOnce(u64) -> Option<Utf8Bytes>,
    ) -> u64 {
        self.held = false;
        self.channel.add(sub, catch_up, ok)
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.held {
            let mut channels = self.channels.lock();
            self.channel.state().attaching -= 1;
            Hub::release_if_idle(&mut channels, &self.channel);
        }
    }
}

impl Channel {
    fn state(&self) -> MutexGuard<'_, ChannelState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the bridge has subscribed and knows the channel's head.
    pub async fn ready(&self) -> Result<(), String> {
        self.ready
            .wait_for(|r| match r {
                Readiness::Starting => None,
                Readiness::Ready => Some(Ok(())),
                Readiness::Failed(why) => Some(Err(why.clone())),
            })
            .await
    }

    /// Whether the bridge knows the channel's head (see [`Channel::set_ready`]).
    pub fn is_ready(&self) -> bool {
        self.ready.read(|r| *r == Readiness::Ready)
    }

    /// Called by the bridge once it is subscribed and has read the head from the stream.
    pub fn set_ready(&self, head: u64) {
        self.state().head = head;
        self.ready.set(Readiness::Ready);
    }

    pub fn set_failed(&self, why: String) {
        self.ready.set(Readiness::Failed(why));
    }

    fn stop(&self) {
        self.stopped.set(true);
    }

    /// Whether the last subscriber has left (the bridge should end).
    pub fn is_stopped(&self) -> bool {
        self.stopped.read(|stopped| *stopped)
    }

    /// Resolves once the last subscriber has left.
    pub async fn stopped(&self) {
        self.stopped.wait_for(|stopped| stopped.then_some(())).await
    }

    /// The last seq delivered on this channel.
    pub fn head(&self) -> u64 {
        self.state().head
    }

    /// [`Attachment::add`]: the attachment's place becomes the subscriber's.
    fn add(
        &self,
        sub: Subscription,
        catch_up: bool,
        ok: impl FnOnce(u64) -> Option<Utf8Bytes>,
    ) -> u64 {
        let mut state = self.state();
        state.attaching -= 1;
        let head = state.head;
        let mode = if catch_up {
            Mode::CatchingUp {
                buffer: Vec::new(),
                overflowed: false,
            }
        } else {
            Mode::Live { last_sent: head }
        };
        if let Some(ok) = ok(head) {
            sub.mailbox.push_event(ok);
        }
        // Most channels have one subscriber (a user's own); a first push would make room
        // for four (BENCHMARKS.md, "Memory per idle connection, a second look").
        if state.subscribers.capacity() == 0 {
            state.subscribers.reserve_exact(1);
        }
        state.subscribers.push(Subscriber { sub, mode });
        head
    }

    /// After a replay pass that sent everything up to `replayed`: drains what was
    /// buffered meanwhile, or says to replay again if the buffer overflowed.
    pub fn catch_up(&self, key: u64, replayed: u64) -> CatchUp {
        let mut state = self.state();
        let Some(subscriber) = state.subscribers.iter_mut().find(|s| s.sub.key == key) else {
            return CatchUp::Gone;
        };
        let Mode::CatchingUp { buffer, overflowed } = &mut subscriber.mode else {
            return CatchUp::Live;
        };
        if *overflowed {
            *overflowed = false;
            buffer.clear();
            return CatchUp::ReplayFrom(replayed + 1);
        }
        let fresh: Vec<(u64, Utf8Bytes)> = std::mem::take(buffer)
            .into_iter()
            .filter(|(seq, _)| *seq > replayed)
            .collect();
        match fresh.last() {
            // Sending may wait for room in the queue, which must not happen under the
            // lock: hand the frames out and stay in catch-up for one more round.
            Some((last, _)) => {
                let last = *last;
                CatchUp::Send(fresh.into_iter().map(|(_, f)| f).collect(), last)
            }
            None => {
                subscriber.mode = Mode::Live {
                    last_sent: replayed,
                };
                CatchUp::Live
            }
        }
    }

    /// Delivers one stored event to every subscriber that wants it, at most once each.
    /// Events at or below the head were delivered already and are ignored.
    pub fn deliver(&self, seq: u64, event: Option<&Envelope>) {
        let mut state = self.state();
        if seq <= state.head {
            return;
        }
        state.head = seq;
        // An undecodable event still moves the head (it is counted and logged by the
        // bridge), so it is not mistaken for a gap again and again.
        let Some(event) = event else { return };
        let ty = event.ty.as_str();
        let mut frames = Spellings::default();
        let mut delivered = 0;
        for subscriber in &mut state.subscribers {
            let sub = &subscriber.sub;
            if !sub.wants(ty) {
                continue;
            }
            let frame = frames.frame(&sub.label, |label| evt_frame(label, seq, event));
            match &mut subscriber.mode {
                Mode::Live { last_sent } => {
                    if seq > *last_sent && sub.mailbox.push_event(frame) {
                        *last_sent = seq;
                        delivered += 1;
                    }
                }
                Mode::CatchingUp { buffer, overflowed } => {
                    if *overflowed {
                        continue;
                    }
                    if buffer.len() < CATCH_UP_BUFFER {
                        buffer.push((seq, frame));
                    } else {
                        *overflowed = true;
                        buffer.clear();
                    }
                }
            }
        }
        drop(state);
        self.metrics.count(&self.metrics.deliveries, delivered);
    }

    /// Delivers a signal to every subscriber except the connection that sent it.
    /// `frame` builds the `sig` frame for one spelling of the channel.
    pub fn signal(&self, origin: Option<ConnId>, mut frame: impl FnMut(&ChannelName) -> Utf8Bytes) {
        let state = self.state();
        let mut frames = Spellings::default();
        for subscriber in &state.subscribers {
            let sub = &subscriber.sub;
            if Some(sub.mailbox.conn()) == origin {
                continue;
            }
            sub.mailbox
                .push_signal(frames.frame(&sub.label, &mut frame));
        }
    }

    /// The sessions of `user` subscribed here: after a membership change they re-check
    /// their right to stay (their token may grant the channel regardless).
    pub fn sessions_of(&self, user: &str) -> Vec<Arc<ConnControl>> {
        let state = self.state();
        let mut sessions: Vec<Arc<ConnControl>> = Vec::new();
        for s in state.subscribers.iter().filter(|s| &*s.sub.user == user) {
            if !sessions.iter().any(|c| c.id == s.sub.mailbox.conn()) {
                sessions.push(s.sub.mailbox.control.clone());
            }
        }
        sessions
    }

    /// Every session subscribed here: after a change that concerns the whole channel
    /// (the watched user's privacy) each re-checks its right to stay.
    pub fn sessions(&self) -> Vec<Arc<ConnControl>> {
        let state = self.state();
        let mut sessions: Vec<Arc<ConnControl>> = Vec::new();
        for s in &state.subscribers {
            if !sessions.iter().any(|c| c.id == s.sub.mailbox.conn()) {
                sessions.push(s.sub.mailbox.control.clone());
            }
        }
        sessions
    }

    /// Number of local subscriptions.
    pub fn subscribers(&self) -> usize {
        self.state().subscribers.len()
    }
}

/// The `evt` frame of a stored event for one spelling of its channel.
pub fn evt_frame(label: &ChannelName, seq: u64, event: &Envelope) -> Utf8Bytes {
    text(encode_evt_from(label.as_str(), seq, event))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use switchboard_schemas::{EventType, RawJson, TypeFilters};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::mailbox::{ConnControl, Outgoing};

    fn event() -> Envelope {
        Envelope::new(EventType::parse("bid.new").unwrap(), RawJson::null())
    }

    fn subscriber(conn: ConnId, label: &ChannelName) -> (Subscription, Outgoing) {
        let control = Arc::new(ConnControl::new(
            conn,
            Arc::from("u1"),
            &CancellationToken::new(),
        ));
        let (mailbox, outgoing) = Mailbox::new(64, usize::MAX, control, Arc::default());
        let sub = Subscription {
            key: conn,
            user: Arc::from("u1"),
            label: label.clone(),
            filters: TypeFilters::all(),
            mailbox,
        };
        (sub, outgoing)
    }

    fn seqs(outgoing: &Outgoing) -> Vec<u64> {
        let mut frames = VecDeque::new();
        outgoing.take_now(&mut frames);
        frames
            .iter()
            .filter_map(|f| serde_json::from_str::<serde_json::Value>(f).ok())
            .filter_map(|f| f["seq"].as_u64())
            .collect()
    }

    /// The no-gap handover of docs/protocol.md, section 6: events that arrive live while
    /// a subscriber replays are buffered, and after the replay only those past what it
    /// replayed are sent, each once; then it is live.
    #[test]
    fn a_replaying_subscriber_gets_every_event_once_across_the_handover() {
        let hub = Hub::new(Arc::default());
        let name = ChannelName::parse("project:p1").unwrap();
        let (attachment, fresh) = hub.attach(&name);
        assert!(fresh);
        let channel = attachment.channel().clone();
        channel.set_ready(10);
        let (sub, outgoing) = subscriber(1, &name);
        assert_eq!(attachment.add(sub, true, |_| None), 10);
        // Live events during the replay: 11 and 12 (the replay will also read 11).
        channel.deliver(11, Some(&event()));
        channel.deliver(12, Some(&event()));
        channel.deliver(12, Some(&event())); // a repeat from NATS changes nothing
        assert!(seqs(&outgoing).is_empty(), "buffered, not sent");
        match channel.catch_up(1, 11) {
            CatchUp::Send(frames, last) => {
                assert_eq!((frames.len(), last), (1, 12), "only what the replay lacked");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(channel.catch_up(1, 12), CatchUp::Live);
        channel.deliver(13, Some(&event()));
        assert_eq!(seqs(&outgoing), [13]);
        assert_eq!(channel.catch_up(2, 0), CatchUp::Gone);
    }

    #[test]
    fn a_buffer_that_overflows_during_a_replay_asks_for_another_pass() {
        let hub = Hub::new(Arc::default());
        let name = ChannelName::parse("project:p2").unwrap();
        let (attachment, _) = hub.attach(&name);
        let channel = attachment.channel().clone();
        channel.set_ready(0);
        let (sub, _outgoing) = subscriber(1, &name);
        attachment.add(sub, true, |_| None);
        for seq in 1..=(CATCH_UP_BUFFER as u64 + 1) {
            channel.deliver(seq, Some(&event()));
        }
        assert_eq!(channel.catch_up(1, 5), CatchUp::ReplayFrom(6));
    }

    /// Each attachment is given back once, by `add` or by its drop: a subscription that
    /// fails, one whose task is dropped, and one that is added then leaves all leave the
    /// channel's count where it was, and the channel goes with the last of them.
    #[test]
    fn attachments_are_given_back_once_and_the_channel_goes_with_the_last() {
        let hub = Hub::new(Arc::default());
        let name = ChannelName::parse("project:p3").unwrap();
        let (first, fresh) = hub.attach(&name);
        let (second, again) = hub.attach(&name);
        let (third, _) = hub.attach(&name);
        assert!(fresh && !again);
        let channel = first.channel().clone();
        channel.set_ready(0);
        let (sub, _outgoing) = subscriber(7, &name);
        first.add(sub, false, |_| None);
        // A failed setup drops its attachment; another is dropped with its task.
        drop(second);
        assert_eq!(
            hub.len(),
            1,
            "the added subscriber and one attachment remain"
        );
        hub.detach(&channel, 7);
        assert_eq!(hub.len(), 1, "an attachment still holds the channel");
        assert!(!channel.is_stopped());
        drop(third);
        assert!(hub.is_empty());
        assert!(channel.is_stopped());
        assert_eq!(channel.state().attaching, 0);
        // A channel forgotten after a failed bridge: its attachments still give back
        // their own places only, and a new channel under the same name is untouched.
        let (stale, _) = hub.attach(&name);
        hub.forget(stale.channel());
        let (fresh, new) = hub.attach(&name);
        assert!(new);
        drop(stale);
        assert_eq!(hub.len(), 1);
        assert!(!fresh.channel().is_stopped());
        drop(fresh);
        assert!(hub.is_empty());
    }

    #[test]
    fn a_change_to_a_whole_channel_is_counted_and_reaches_its_sessions() {
        let hub = Hub::new(Arc::default());
        let name = ChannelName::parse("presence:u2").unwrap();
        assert!(hub.channel_changed(&name).is_empty(), "no channel held");
        assert_eq!(hub.changes(), 1, "counted all the same");
        let (attachment, _) = hub.attach(&name);
        attachment.channel().set_ready(0);
        let (sub, _outgoing) = subscriber(3, &name);
        attachment.add(sub, false, |_| None);
        let sessions = hub.channel_changed(&name);
        assert_eq!(sessions.iter().map(|s| s.id).collect::<Vec<_>>(), [3]);
        assert_eq!(hub.changes(), 2);
    }
}
