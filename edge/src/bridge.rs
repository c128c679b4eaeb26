//! The bridge: the NATS side of each channel the hub holds.
//!
//! One task per channel owns two core NATS subscriptions, `live.<ns>.<id>` (the stream's
//! republish of stored events) and `sig.<ns>.<id>` (ephemeral signals), and feeds the
//! channel in stream order. Channels of the namespaces in [`ROUTED`] (`user:<id>`, which
//! nearly every connection brings and nobody else shares) have no subscriptions of their
//! own and no task once they know their head: one edge-wide pair, `live.user.*` and
//! `sig.user.*`, is dispatched to them by subject, and their repairs run as short tasks.
//! A NATS subscription holds a preallocated buffer of a few KiB and a task its future,
//! so this keeps an idle connection small; the price is that every edge receives every
//! user channel's events and drops those of users it does not hold (docs/operations.md,
//! "Sizing").
//! The bridge is the only place that notices loss on the live path:
//!
//! - `Nats-Last-Sequence` on a live message names the previous event on the same
//!   subject; if that is past the channel's head, events were missed and are read back
//!   from the stream before the live one is delivered;
//! - after a NATS reconnect, a client-side slow-consumer drop or a new `EVENTS` leader,
//!   every channel re-reads the stream past its head ([`Bridge::resync_all`]).
//!
//! A new channel's head (the seq of its newest stored event) is read through [`Heads`],
//! which asks for the heads of every channel waiting at that moment in one direct get:
//! when each connection brings a channel of its own (`user:<id>`), set-up costs one
//! JetStream request per batch of connections, not one per connection.
//!
//! Everything from NATS is untrusted: undecodable messages are counted, logged and
//! skipped, never a crash.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use async_nats::HeaderMap;
use futures_util::StreamExt;
use switchboard_bus::headers;
use switchboard_bus::store::{Store, StoredEvent};
use switchboard_schemas::shapes::SignalMessage;
use switchboard_schemas::{ChannelName, Namespace, ServerFrame, SubjectKind};

use crate::hub::{Channel, Hub};
use crate::mailbox::{ConnId, text};
use crate::metrics::Metrics;

/// Header naming the connection a signal came from (`<edge id>/<conn>`), so that the
/// sender's own connection does not get it back.
pub const RT_ORIGIN: &str = "Rt-Origin";
const REPAIR_BATCH: usize = 256;
/// Most channel heads asked for in one request.
const HEADS_BATCH: usize = 256;
/// Namespaces whose channels are fed by one edge-wide subscription pair (see above).
pub const ROUTED: [Namespace; 1] = [Namespace::User];

/// A channel waiting for its head, and where to send it.
type HeadRequest = (String, oneshot::Sender<Result<u64, String>>);

/// Reads channel heads in batches: one task takes every request waiting when it is free
/// and asks for all of them at once, so batches grow with the load and a lone request
/// is not delayed.
#[derive(Debug, Clone)]
pub struct Heads {
    requests: mpsc::UnboundedSender<HeadRequest>,
}

impl Heads {
    pub fn start(store: Store) -> Heads {
        let (requests, mut waiting) = mpsc::unbounded_channel::<HeadRequest>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(HEADS_BATCH);
            while waiting.recv_many(&mut batch, HEADS_BATCH).await > 0 {
                let subjects: Vec<String> = batch.iter().map(|(s, _)| s.clone()).collect();
                let answer = store.heads(&subjects).await;
                for (i, (_, reply)) in batch.drain(..).enumerate() {
                    let _ = reply.send(match &answer {
                        Ok(heads) => Ok(heads[i]),
                        Err(e) => Err(e.to_string()),
                    });
                }
            }
        });
        Heads { requests }
    }

    /// The seq of the newest event stored on `subject` (0 when none).
    pub async fn of(&self, subject: String) -> Result<u64, String> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((subject, reply))
            .map_err(|_| "the head reader stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the head reader stopped".to_string())?
    }
}

/// Starts and runs channel bridges; cheap to clone.
#[derive(Debug, Clone)]
pub struct Bridge {
    client: async_nats::Client,
    store: Store,
    heads: Heads,
    /// True once the edge-wide subscriptions of [`ROUTED`] are made.
    routed: tokio::sync::watch::Receiver<bool>,
    hub: Arc<Hub>,
    edge_id: Arc<str>,
    metrics: Arc<Metrics>,
}

impl Bridge {
    pub fn new(
        client: async_nats::Client,
        hub: Arc<Hub>,
        edge_id: Arc<str>,
        metrics: Arc<Metrics>,
    ) -> Bridge {
        let store = Store::new(client.clone());
        let (routing, routed) = tokio::sync::watch::channel(false);
        let bridge = Bridge {
            heads: Heads::start(store.clone()),
            routed,
            store,
            client,
            hub,
            edge_id,
            metrics,
        };
        tokio::spawn(bridge.clone().route(routing));
        bridge
    }

    /// Feeds every channel of the [`ROUTED`] namespaces from one edge-wide subscription
    /// pair, in subject order, for as long as the client lives.
    async fn route(self, routing: tokio::sync::watch::Sender<bool>) {
        let subscribed = async {
            let mut live = Vec::new();
            let mut signals = Vec::new();
            for ns in ROUTED {
                let ns = ns.as_str();
                live.push(self.client.subscribe(format!("live.{ns}.*")).await?);
                signals.push(self.client.subscribe(format!("sig.{ns}.*")).await?);
            }
            Ok::<_, async_nats::SubscribeError>((
                futures_util::stream::select_all(live),
                futures_util::stream::select_all(signals),
            ))
        };
        let (mut live, mut signals) = match subscribed.await {
            Ok(parts) => parts,
            Err(e) => {
                // Without them those channels cannot be fed: every one fails to start
                // (as a channel whose own subscriptions fail does) instead of staying silent.
                tracing::error!(error = %e, "cannot subscribe the edge-wide user channels");
                drop(routing);
                return;
            }
        };
        routing.send_replace(true);
        loop {
            tokio::select! {
                message = live.next() => match message {
                    Some(message) => {
                        let Some(channel) = self.routed_channel(&message) else { continue };
                        if channel.is_ready() {
                            Box::pin(self.on_live(&channel, &message)).await;
                        } else {
                            // Between its subscription and its head: whatever this is, the
                            // channel reads the stream past its head once it knows it.
                            self.repair_routed(channel);
                        }
                    }
                    None => break,
                },
                message = signals.next() => match message {
                    Some(message) => {
                        if let Some(channel) = self.routed_channel(&message)
                            && channel.is_ready()
                        {
                            self.on_signal(&channel, &message);
                        }
                    }
                    None => break,
                },
            }
        }
    }

    /// The channel this edge holds for a routed message's subject, if any.
    fn routed_channel(&self, message: &async_nats::Message) -> Option<Arc<Channel>> {
        let (_, name) = ChannelName::from_subject(message.subject.as_str()).ok()?;
        self.hub.get(&name)
    }

    /// Spawns the task feeding a newly attached channel. A routed channel's task only
    /// reads its head and ends ([`Bridge::start_routed`]): every connection has a routed
    /// channel of its own, and a task living as long as the channel would be memory per
    /// connection.
    pub fn start(&self, channel: Arc<Channel>) {
        if ROUTED.contains(&channel.name.namespace()) {
            tokio::spawn(self.clone().start_routed(channel));
        } else {
            tokio::spawn(self.clone().run(channel));
        }
    }

    /// Has every channel re-read the stream past its head (after a NATS reconnect, or a
    /// new leader of `EVENTS`): the channels with a task of their own are poked, the
    /// routed ones repaired by short tasks.
    pub fn resync_all(&self) {
        self.hub.resync_all();
        for channel in self.hub.channels() {
            if ROUTED.contains(&channel.name.namespace()) {
                self.repair_routed(channel);
            }
        }
    }

    /// Reads a routed channel's stream past its head, in a task of its own, as soon as the
    /// channel knows its head. Repairs of one channel may overlap: the channel delivers
    /// each seq once, in order ([`Channel::deliver`]).
    fn repair_routed(&self, channel: Arc<Channel>) {
        let bridge = self.clone();
        tokio::spawn(async move {
            if channel.ready().await.is_ok() {
                bridge.repair(&channel, None).await;
            }
        });
    }

    /// The value of [`RT_ORIGIN`] for a local connection.
    pub fn origin(&self, conn: ConnId) -> String {
        format!("{}/{conn}", self.edge_id)
    }

    async fn run(self, channel: Arc<Channel>) {
        let subscribed = async {
            let live = self
                .client
                .subscribe(channel.name.subject(SubjectKind::Live))
                .await?;
            let signals = self
                .client
                .subscribe(channel.name.subject(SubjectKind::Signal))
                .await?;
            // The server must know the subscriptions before the head is read, or an
            // event stored in between would be neither in the head nor delivered live.
            // It handles a connection's messages in order, and the head request goes out
            // on the same connection after both `SUB`s.
            let head = self
                .heads
                .of(channel.name.subject(SubjectKind::Durable))
                .await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((live, signals, head))
        };
        // Everything awaited here but the subscriptions themselves is boxed: the task lives
        // as long as its channel, so the size of its future is memory per channel.
        let (mut live, mut signals, head) = match Box::pin(subscribed).await {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!(channel = %channel.name, error = %e, "cannot bridge channel");
                channel.set_failed(e.to_string());
                self.hub.forget(&channel);
                return;
            }
        };
        channel.set_ready(head);
        loop {
            tokio::select! {
                _ = channel.stopped() => break,
                _ = channel.resync.notified() => Box::pin(self.repair(&channel, None)).await,
                message = live.next() => match message {
                    Some(message) => Box::pin(self.on_live(&channel, &message)).await,
                    None => break,
                },
                message = signals.next() => match message {
                    Some(message) => self.on_signal(&channel, &message),
                    None => break,
                },
            }
        }
        if !channel.is_stopped() {
            // The client dropped the subscriptions (it is shutting down): let the next
            // subscriber start a fresh bridge.
            self.hub.forget(&channel);
        }
    }

    /// A channel fed by [`Bridge::route`]: it only needs its head; repairs run when a
    /// message comes before it (see [`Bridge::route`]) or a resync asks for one.
    async fn start_routed(self, channel: Arc<Channel>) {
        let started = async {
            // The edge-wide subscriptions must be known to the server before the head is
            // read, as a channel's own must (see `run`).
            let mut routed = self.routed.clone();
            routed
                .wait_for(|r| *r)
                .await
                .map_err(|_| "the edge-wide user channel subscriptions failed".to_string())?;
            self.heads
                .of(channel.name.subject(SubjectKind::Durable))
                .await
        };
        match started.await {
            Ok(head) => channel.set_ready(head),
            Err(e) => {
                tracing::warn!(channel = %channel.name, error = %e, "cannot bridge channel");
                channel.set_failed(e);
                self.hub.forget(&channel);
            }
        }
    }

    async fn on_live(&self, channel: &Channel, message: &async_nats::Message) {
        if forged(channel, message) {
            return;
        }
        let Some(event) = StoredEvent::from_message(message) else {
            self.metrics.count(&self.metrics.undecodable, 1);
            tracing::warn!(channel = %channel.name, "live message without Nats-Sequence skipped");
            return;
        };
        let head = channel.head();
        let previous = message
            .headers
            .as_ref()
            .and_then(|h: &HeaderMap| h.get(headers::NATS_LAST_SEQUENCE))
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .unwrap_or(0);
        match on_live_path(head, event.seq, previous) {
            Live::Drop => return,
            Live::RepairFirst => {
                tracing::debug!(channel = %channel.name, head, previous, "gap on the live path");
                self.repair(channel, Some(event.seq)).await;
            }
            Live::Deliver => {}
        }
        self.deliver(channel, &event);
    }

    /// Reads stored events past the channel's head (below `until`, when given) and
    /// delivers them in order. Retries with backoff: giving up would lose events.
    async fn repair(&self, channel: &Channel, until: Option<u64>) {
        let subject = channel.name.subject(SubjectKind::Durable);
        let mut backoff = Duration::from_millis(50);
        loop {
            if channel.is_stopped() {
                return;
            }
            let from = channel.head() + 1;
            if until.is_some_and(|u| from >= u) {
                return;
            }
            match self.store.forward(&subject, from, REPAIR_BATCH).await {
                Ok(batch) => {
                    let complete = batch.len() < REPAIR_BATCH;
                    for event in &batch {
                        if until.is_some_and(|u| event.seq >= u) {
                            return;
                        }
                        self.metrics.count(&self.metrics.repaired, 1);
                        self.deliver(channel, event);
                    }
                    if complete {
                        return;
                    }
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    tracing::warn!(channel = %channel.name, error = %e, "repair read failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn deliver(&self, channel: &Channel, event: &StoredEvent) {
        let envelope = match event.envelope() {
            Ok(envelope) => Some(envelope),
            Err(e) => {
                self.metrics.count(&self.metrics.undecodable, 1);
                tracing::warn!(channel = %channel.name, seq = event.seq, error = %e, "undecodable event skipped");
                None
            }
        };
        channel.deliver(event.seq, envelope.as_ref());
        if let Ok(stored) =
            time::OffsetDateTime::parse(&event.time, &time::format_description::well_known::Rfc3339)
        {
            let age = time::OffsetDateTime::now_utc() - stored;
            self.metrics.observe_latency(age.unsigned_abs());
        }
    }

    fn on_signal(&self, channel: &Channel, message: &async_nats::Message) {
        if forged(channel, message) {
            return;
        }
        let signal: SignalMessage = match serde_json::from_slice(&message.payload) {
            Ok(signal) => signal,
            Err(e) => {
                self.metrics.count(&self.metrics.undecodable, 1);
                tracing::debug!(channel = %channel.name, error = %e, "undecodable signal skipped");
                return;
            }
        };
        let origin = message
            .headers
            .as_ref()
            .and_then(|h| h.get(RT_ORIGIN))
            .and_then(|v| {
                v.as_str()
                    .strip_prefix(&*self.edge_id)?
                    .strip_prefix('/')?
                    .parse()
                    .ok()
            });
        channel.signal(origin, |label| {
            let frame = ServerFrame::Sig {
                ch: label.clone(),
                from: signal.from.clone(),
                ty: signal.ty.clone(),
                data: signal.data.clone(),
            };
            text(frame.encode())
        });
    }
}

/// A JetStream push consumer's delivery onto a live or signal subject (its reply is a
/// `$JS.` acknowledgement): a copy of something stored elsewhere, never a republished
/// event or a signal. nats-server lets whoever may create a consumer deliver to any
/// subject, even one that role may not publish on (docs/operations.md, "NATS roles").
fn forged(channel: &Channel, message: &async_nats::Message) -> bool {
    let forged = message
        .reply
        .as_deref()
        .is_some_and(|reply| reply.starts_with("$JS."));
    if forged {
        tracing::warn!(channel = %channel.name, subject = %message.subject, "a consumer's delivery onto a channel subject dropped");
    }
    forged
}

/// What the live path does with an event `seq` whose `Nats-Last-Sequence` is `previous`
/// (0 when absent) on a channel whose head is `head`.
#[derive(Debug, PartialEq, Eq)]
enum Live {
    /// Delivered already (a repeat, or read by a repair or replay first).
    Drop,
    /// The event before it on the subject is past the head: those between were missed
    /// live and are read from the stream before this one is delivered.
    RepairFirst,
    Deliver,
}

fn on_live_path(head: u64, seq: u64, previous: u64) -> Live {
    if seq <= head {
        Live::Drop
    } else if previous > head {
        Live::RepairFirst
    } else {
        Live::Deliver
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_path_drops_repeats_repairs_gaps_and_delivers_the_rest() {
        // Head 10: the next event of the channel, its previous one delivered.
        assert_eq!(on_live_path(10, 11, 10), Live::Deliver);
        // Other subjects' events in between do not make a gap: previous is this
        // channel's own last event.
        assert_eq!(on_live_path(10, 15, 10), Live::Deliver);
        // The channel's first event ever (no Nats-Last-Sequence).
        assert_eq!(on_live_path(0, 1, 0), Live::Deliver);
        // Previous past the head: missed live, read back first.
        assert_eq!(on_live_path(10, 15, 12), Live::RepairFirst);
        assert_eq!(on_live_path(0, 7, 3), Live::RepairFirst);
        // At or below the head: sent already.
        assert_eq!(on_live_path(10, 10, 9), Live::Drop);
        assert_eq!(on_live_path(10, 4, 12), Live::Drop);
    }
}
