//! Subscribing with resume, shared by WebSocket sessions, SSE streams and long polls.
//!
//! [`attach`] registers the subscription with the hub at once (so an `unsub` right after
//! finds it); [`subscribe`] then waits for the channel's bridge, queues the `ok`, replays
//! what `since` asks for from the stream, and hands the subscriber over to live delivery
//! without a gap or a duplicate (see [`crate::hub`]).

use std::sync::Arc;

use switchboard_schemas::frame::OkReply;
use switchboard_schemas::{ChannelName, Envelope, ResumeFrom, ServerFrame, SubjectKind};
use tokio_util::sync::CancellationToken;

use crate::Edge;
use crate::hub::{CatchUp, Channel, Subscription, evt_frame};
use crate::mailbox::text;
use crate::refusal::Refusal;

/// Stored events read per request while replaying.
const REPLAY_BATCH: usize = 256;
/// Most `since.last` a client may ask for.
const MAX_LAST: u64 = 1000;

/// The channel for `label` (its base channel), with its bridge started if it is new.
/// Follow with [`subscribe`], which adds the subscriber or gives the attachment up.
pub fn attach(edge: &Edge, label: &ChannelName) -> Arc<Channel> {
    let (channel, fresh) = edge.hub.attach(&label.base());
    if fresh {
        edge.bridge.start(channel.clone());
    }
    channel
}

/// Finishes a subscription: waits for the channel's bridge, replies `ok`, replays what
/// `since` asks for, and hands the subscriber over to live delivery.
pub async fn subscribe(
    edge: &Edge,
    channel: Arc<Channel>,
    subscription: Subscription,
    id: Option<u64>,
    since: Option<ResumeFrom>,
    reply: bool,
    progress: Progress,
) -> Result<(), Refusal> {
    let Progress { cancel, added } = progress;
    if let Err(why) = channel.ready().await {
        edge.hub.abandon(&channel);
        return Err(Refusal::unavailable(format!("channel unavailable: {why}")));
    }
    // A resume by seq needs the stream's range as it is now, not as last cached.
    let position = match &since {
        Some(ResumeFrom::Seq { .. }) => edge
            .store
            .position()
            .await
            .unwrap_or_else(|_| edge.position()),
        _ => edge.position(),
    };
    let durable = channel.name.subject(SubjectKind::Durable);
    let (start, recovered) = match &since {
        None => (None, true),
        Some(ResumeFrom::Seq { seq, epoch }) if *epoch == position.epoch => (
            Some(Start::Seq(seq + 1)),
            continuous(edge, &durable, *seq, position.first_seq).await?,
        ),
        Some(ResumeFrom::Seq { .. }) => (None, false),
        Some(ResumeFrom::Time(time)) => (Some(Start::Time(*time)), true),
        Some(ResumeFrom::Last(n)) => (Some(Start::Last((*n).min(MAX_LAST) as usize)), true),
    };
    let label = subscription.label.clone();
    let filters = subscription.filters.clone();
    let mailbox = subscription.mailbox.clone();
    let key = subscription.key;
    let epoch = position.epoch.clone();
    let ok_label = label.clone();
    let head = channel.add(subscription, start.is_some(), move |head| {
        let frame = ServerFrame::Ok {
            id,
            reply: OkReply::Subscribed {
                ch: ok_label,
                seq: head,
                epoch,
                recovered,
            },
        };
        reply.then(|| text(frame.encode()))
    });
    // From here on every event after `head` reaches this subscriber (live or through the
    // catch-up buffer): a publish waiting on it may go.
    added.send_replace(true);
    if cancel.is_cancelled() {
        edge.hub.detach(&channel, key);
        return Ok(());
    }
    let Some(start) = start else { return Ok(()) };
    let send = |seq: u64, event: &Envelope| {
        let wanted = label.alias().is_none_or(|a| a.admits(event.ty.as_str()))
            && filters.matches_any(event.ty.as_str());
        wanted.then(|| evt_frame(&label, seq, event))
    };
    let read = |from: u64| edge.store.forward(&durable, from, REPLAY_BATCH);
    // The first pass depends on the form of `since`; later passes read forward from the
    // last seq replayed. `last` reads back from the head, and everything after the head
    // is in the catch-up buffer already.
    let (mut batch, mut replayed) = match start {
        Start::Seq(from) => (read(from).await, from - 1),
        Start::Time(time) => (
            edge.store
                .forward_from_time(&durable, &time, REPLAY_BATCH)
                .await,
            0,
        ),
        Start::Last(n) => (edge.store.newest(&durable, Some(head + 1), n).await, head),
    };
    loop {
        let stored = batch.map_err(Refusal::unavailable)?;
        let full = stored.len() >= REPLAY_BATCH;
        for event in &stored {
            if let Ok(envelope) = event.envelope()
                && let Some(frame) = send(event.seq, &envelope)
            {
                if !mailbox.send(frame).await {
                    return Ok(());
                }
                edge.metrics.count(&edge.metrics.replayed, 1);
            }
            replayed = replayed.max(event.seq);
        }
        if cancel.is_cancelled() {
            return Ok(());
        }
        if full {
            batch = read(replayed + 1).await;
            continue;
        }
        // Caught up with the stream as of now: hand over to live delivery.
        match channel.catch_up(key, replayed) {
            CatchUp::Live | CatchUp::Gone => return Ok(()),
            CatchUp::ReplayFrom(from) => batch = read(from).await,
            CatchUp::Send(frames, last) => {
                for frame in frames {
                    if !mailbox.send(frame).await {
                        return Ok(());
                    }
                }
                replayed = last;
                batch = Ok(Vec::new());
            }
        }
    }
}

/// How a subscription in progress talks with its holder: `cancel` backs it out (an
/// `unsub` meanwhile), `added` turns true once it is on the channel.
#[derive(Debug)]
pub struct Progress {
    pub cancel: CancellationToken,
    pub added: tokio::sync::watch::Sender<bool>,
}

/// Whether the stream still holds every event of the channel after `since` (docs/protocol.md,
/// section 6: `recovered`), judged per channel: a channel loses events by the stream's
/// age limit, by its own cap (`max_msgs_per_subject`) or by a purge, and all of them drop
/// a channel's oldest events first. So while the channel still holds an event at or
/// before `since`, nothing after it is gone. When it holds none, what followed `since`
/// may be gone too: not recovered. A client that saw the channel empty (`since` 0) has
/// lost something only if the stream ever dropped anything.
pub async fn continuous(
    edge: &Edge,
    durable: &str,
    since: u64,
    stream_first_seq: u64,
) -> Result<bool, Refusal> {
    if since == 0 {
        return Ok(stream_first_seq <= 1);
    }
    let kept = edge
        .store
        .last_at_or_before(durable, Some(since))
        .await
        .map_err(Refusal::unavailable)?;
    Ok(kept.is_some())
}

/// Where a replay starts.
enum Start {
    Seq(u64),
    Time(switchboard_schemas::Timestamp),
    Last(usize),
}
