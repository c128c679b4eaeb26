//! Subscribing with resume, shared by WebSocket sessions, SSE streams and long polls.
//!
//! [`attach`] registers the subscription with the hub at once (so an `unsub` right after
//! finds it); [`subscribe`] then waits for the channel's bridge, queues the `ok`, replays
//! what `since` asks for from the stream, and hands the subscriber over to live delivery
//! without a gap or a duplicate (see [`crate::hub`]). What the stream no longer holds of
//! an archived channel comes first from the [`crate::archive`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use switchboard_bus::store::StreamPosition;
use switchboard_schemas::frame::OkReply;
use switchboard_schemas::{ChannelName, Namespace, ResumeFrom, ServerFrame, SubjectKind};

use crate::Edge;
use crate::archive::{self, Bridgehead, Kept};
use crate::auth::Identity;
use crate::hub::{Attachment, CatchUp, Subscription};
use crate::mailbox::text;
use crate::refusal::Refusal;
use crate::watched::Watched;

/// Stored events read per request while replaying.
const REPLAY_BATCH: usize = 256;
/// Most `since.last` a client may ask for.
const MAX_LAST: u64 = 1000;

/// A place on the channel for `label` (its base channel), with its bridge started if it
/// is new. Follow with [`subscribe`], which adds the subscriber or, failing, drops the
/// attachment and so gives the place back.
pub fn attach(edge: &Edge, label: &ChannelName) -> Attachment {
    let (attachment, fresh) = edge.hub.attach(&label.base());
    if fresh {
        edge.bridge.start(attachment.channel().clone());
    }
    attachment
}

/// Longest an upgrade waits for its user's own channel to be ready ([`warm_own`]).
const WARM_WAIT: Duration = Duration::from_millis(250);

/// A place on the user's own channel (`user:<id>`) once its bridge is ready, for a
/// WebSocket upgrade to hold: nearly every client subscribes it as it connects, and a
/// subscription to a channel that knows its head is answered at once, in the same write
/// as the replies to the frames it came with (docs/operations.md, section 9). Waits at
/// most [`WARM_WAIT`]: a channel slower than that (or failing) is left to the
/// subscription. `None` for a user id that names no channel.
pub async fn warm_own(edge: &Edge, identity: &Identity) -> Option<Attachment> {
    let own = ChannelName::new(Namespace::User, &identity.user).ok()?;
    let attachment = attach(edge, &own);
    let channel = attachment.channel();
    if !channel.is_ready() {
        let _ = tokio::time::timeout(WARM_WAIT, channel.ready()).await;
    }
    Some(attachment)
}

/// Finishes a subscription: waits for the channel's bridge, replies `ok`, replays what
/// `since` asks for, and hands the subscriber over to live delivery.
pub async fn subscribe(
    edge: &Edge,
    attachment: Attachment,
    subscription: Subscription,
    id: Option<u64>,
    since: Option<ResumeFrom>,
    reply: bool,
    progress: Arrives,
) -> Result<(), Refusal> {
    let channel = attachment.channel().clone();
    if let Err(why) = channel.ready().await {
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
    let user = subscription.user.clone();
    let mut archived = None;
    let (start, recovered) = match &since {
        None => (None, true),
        Some(ResumeFrom::Seq { seq, epoch }) if *epoch == position.epoch => {
            let resume = resume(edge, &user, &channel.name, *seq, &position).await?;
            archived = resume.archive;
            (Some(Start::Seq(seq + 1)), resume.recovered)
        }
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
    // A channel the stream holds nothing of may have its events in the archive: `ok`
    // names its last seq all the same, so a client that resumes from it later is not
    // sent the whole archive.
    let archived_last = if channel.head() == 0 {
        archive::newest_archived(edge, &user, &channel.name).await
    } else {
        0
    };
    let head = attachment.add(subscription, start.is_some(), move |head| {
        let frame = ServerFrame::Ok {
            id,
            reply: OkReply::Subscribed {
                ch: ok_label,
                seq: head.max(archived_last),
                epoch,
                recovered,
            },
        };
        reply.then(|| text(frame.encode()))
    });
    // From here on every event after `head` reaches this subscriber (live or through the
    // catch-up buffer): a publish waiting on it may go.
    progress.added();
    if progress.is_cancelled() {
        edge.hub.detach(&channel, key);
        return Ok(());
    }
    let Some(start) = start else { return Ok(()) };
    let send = |kept: &Kept| {
        let ty = kept.event.ty.as_str();
        let wanted = label.alias().is_none_or(|a| a.admits(ty)) && filters.matches_any(ty);
        wanted.then(|| kept.frame(&label))
    };
    let stream = &durable;
    let read = |from: u64| async move {
        let stored = edge.store.forward(stream, from, REPLAY_BATCH).await?;
        let full = stored.len() >= REPLAY_BATCH;
        let last = stored.last().map(|s| s.seq);
        let kept: Vec<Kept> = stored.iter().filter_map(Kept::from_stream).collect();
        Ok::<_, switchboard_bus::store::StoreError>(Batch { kept, full, last })
    };
    // The first pass depends on the form of `since`; later passes read forward from the
    // last seq replayed. `last` reads back from the head, and everything after the head
    // is in the catch-up buffer already. Events at or below `floor` were sent already.
    let (mut batch, mut replayed, mut floor) = match start {
        Start::Seq(from) => {
            let mut replayed = from - 1;
            // What the stream lost after `since` comes first, from the archive, up to
            // the stream's oldest event of the channel (docs/protocol.md, section 6).
            if let Some(archived) = archived {
                match replay_archive(
                    edge,
                    &user,
                    &channel.name,
                    archived,
                    &send,
                    &mailbox,
                    &progress,
                )
                .await?
                {
                    Some(last) => replayed = replayed.max(last),
                    None => return Ok(()),
                }
            }
            (read(replayed + 1).await, replayed, replayed)
        }
        Start::Time(time) => (
            edge.store
                .forward_from_time(&durable, &time, REPLAY_BATCH)
                .await
                .map(|stored| Batch {
                    full: stored.len() >= REPLAY_BATCH,
                    last: stored.last().map(|s| s.seq),
                    kept: stored.iter().filter_map(Kept::from_stream).collect(),
                }),
            0,
            0,
        ),
        Start::Last(n) => {
            // A head of 0 is a channel the stream holds nothing of (never used, or all
            // of it purged): its last events, if any, are in the archive, and whatever
            // a read finds past the head is marked replayed, so the catch-up buffer
            // does not send it again.
            let before = (head > 0).then_some(head + 1);
            let kept = archive::newest(edge, &user, &channel.name, before, n).await?;
            let last = kept.last().map_or(head, |k| k.seq.max(head));
            (
                Ok(Batch {
                    kept,
                    full: false,
                    last: Some(last),
                }),
                0,
                0,
            )
        }
    };
    loop {
        let Batch { kept, full, last } = batch.map_err(Refusal::unavailable)?;
        for event in &kept {
            if event.seq <= floor {
                continue;
            }
            if let Some(frame) = send(event) {
                if !mailbox.send(frame).await {
                    return Ok(());
                }
                edge.metrics.count(&edge.metrics.replayed, 1);
            }
        }
        if let Some(last) = last {
            replayed = replayed.max(last);
        }
        floor = replayed;
        if progress.is_cancelled() {
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
                floor = last;
                batch = Ok(Batch::default());
            }
        }
    }
}

/// Sends the archive's part of a resume: its pages of the channel's events after
/// `since`, up to the stream's part. The last seq sent (or read), or `None` when the
/// subscriber went away meanwhile.
async fn replay_archive(
    edge: &Edge,
    user: &str,
    channel: &ChannelName,
    archived: Bridgehead,
    send: &impl Fn(&Kept) -> Option<axum::extract::ws::Utf8Bytes>,
    mailbox: &crate::mailbox::Mailbox,
    progress: &Arrives,
) -> Result<Option<u64>, Refusal> {
    let Bridgehead { first, before } = archived;
    let epoch = edge.position().epoch;
    let mut page = first;
    let mut last = 0;
    loop {
        let complete = !page.truncated && page.events.len() < archive::PAGE;
        let previous = last;
        for event in &page.events {
            // In order, and below the stream's part: a seq past it would skip the
            // stream's events before it.
            if event.seq <= last || before.is_some_and(|before| event.seq >= before) {
                continue;
            }
            if let Some(frame) = send(event) {
                if !mailbox.send(frame).await {
                    return Ok(None);
                }
                edge.metrics.count(&edge.metrics.replayed, 1);
            }
            last = event.seq;
        }
        if progress.is_cancelled() {
            return Ok(None);
        }
        // A page that moved nothing forward would be asked for again and again.
        if complete || last == previous {
            return Ok(Some(last));
        }
        let request = archive::Request {
            ch: channel.as_str(),
            epoch: &epoch,
            after: last,
            before,
            limit: archive::PAGE,
            order: archive::Order::Asc,
        };
        page = archive::read(edge, user, &request).await?;
    }
}

/// Whether a resume after `since` is recovered (docs/protocol.md, sections 6 and
/// 10.10), and the archive's part when the stream alone does not cover it.
pub struct Resume {
    pub recovered: bool,
    pub archive: Option<Bridgehead>,
}

/// Judges a resume of `channel` (a base channel) after `since`: recovered when the
/// stream still holds everything after it ([`continuous`]), or when the archive holds
/// what the stream lost, up to the stream's part.
pub async fn resume(
    edge: &Edge,
    user: &str,
    channel: &ChannelName,
    since: u64,
    position: &StreamPosition,
) -> Result<Resume, Refusal> {
    judge(edge, user, channel, since, position, archive::PAGE).await
}

/// [`resume`] with the archive's first page holding at most `limit` events.
async fn judge(
    edge: &Edge,
    user: &str,
    channel: &ChannelName,
    since: u64,
    position: &StreamPosition,
    limit: usize,
) -> Result<Resume, Refusal> {
    let durable = channel.subject(SubjectKind::Durable);
    if continuous(edge, &durable, since, position.first_seq).await? {
        return Ok(Resume {
            recovered: recovered(true, false),
            archive: None,
        });
    }
    let archive = archive::bridgehead(edge, user, channel, since, position, limit).await?;
    Ok(Resume {
        recovered: recovered(false, archive.is_some()),
        archive,
    })
}

/// [`resume`]'s judgement alone, for a long poll (its subscription replays later): the
/// archive is asked for one event, only to learn how far it reaches.
pub async fn recoverable(
    edge: &Edge,
    user: &str,
    channel: &ChannelName,
    since: u64,
    position: &StreamPosition,
) -> Result<bool, Refusal> {
    let judged = judge(edge, user, channel, since, position, 1).await?;
    Ok(judged.recovered)
}

/// One read of the stream during a replay.
#[derive(Default)]
struct Batch {
    kept: Vec<Kept>,
    /// The read returned as many as asked: there may be more.
    full: bool,
    /// The last seq read (decodable or not).
    last: Option<u64>,
}

/// A subscription being set up, as its holder and its work share it: the holder may back
/// it out (an `unsub` meanwhile), the work says once it is on the channel. One small
/// allocation per subscription, where a cancellation token and a watch channel took
/// about 450 bytes (BENCHMARKS.md, "Memory per idle connection, a second look").
#[derive(Debug)]
pub struct Progress {
    arrival: Watched<Arrival>,
    cancelled: AtomicBool,
}

/// Where a subscription being set up stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    Pending,
    /// On the channel, its head fixed.
    Added,
    /// The work ended (failed, or dropped) before that.
    Gone,
}

impl Progress {
    /// A new subscription's progress, and the work's hold on it.
    pub fn start() -> (Arc<Progress>, Arrives) {
        let progress = Arc::new(Progress {
            arrival: Watched::new(Arrival::Pending),
            cancelled: AtomicBool::new(false),
        });
        (progress.clone(), Arrives(progress))
    }

    /// Backs the subscription out: the work stops at its next look.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Waits until the subscriber is on the channel (true) or its work ended first
    /// (false).
    pub async fn settled(&self) -> bool {
        self.arrival
            .wait_for(|arrival| match arrival {
                Arrival::Pending => None,
                Arrival::Added => Some(true),
                Arrival::Gone => Some(false),
            })
            .await
    }
}

/// The subscribing work's hold on its [`Progress`]: dropped before [`Arrives::added`],
/// it leaves the subscription gone, so no one waits for it forever.
#[derive(Debug)]
pub struct Arrives(Arc<Progress>);

impl Arrives {
    pub fn added(&self) {
        self.0.arrival.set(Arrival::Added);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }
}

impl Drop for Arrives {
    fn drop(&mut self) {
        self.0.arrival.update(|arrival| {
            let pending = *arrival == Arrival::Pending;
            if pending {
                *arrival = Arrival::Gone;
            }
            pending
        });
    }
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
    let kept = if since == 0 {
        None
    } else {
        edge.store
            .last_at_or_before(durable, Some(since))
            .await
            .map_err(Refusal::unavailable)?
            .map(|event| event.seq)
    };
    Ok(holds_all_after(since, stream_first_seq, kept))
}

/// [`continuous`]'s rule: `kept` is the channel's newest event the stream holds at or
/// before `since` (not asked when `since` is 0).
fn holds_all_after(since: u64, stream_first_seq: u64, kept: Option<u64>) -> bool {
    if since == 0 {
        stream_first_seq <= 1
    } else {
        kept.is_some()
    }
}

/// A resume is recovered when the stream holds everything after `since`, or when the
/// archive reaches from `since` to the stream's part of the channel.
fn recovered(stream_holds_all: bool, archive_bridges: bool) -> bool {
    stream_holds_all || archive_bridges
}

/// The last seq of `channel` (a base channel): the stream's newest event of it, or,
/// when the stream holds none, the archive's newest (0 for a channel never used).
pub async fn last_seq(edge: &Edge, user: &str, channel: &ChannelName) -> Result<u64, Refusal> {
    let durable = channel.subject(SubjectKind::Durable);
    let stored = edge
        .store
        .last_at_or_before(&durable, None)
        .await
        .map_err(Refusal::unavailable)?;
    Ok(match stored {
        Some(event) => event.seq,
        None => archive::newest_archived(edge, user, channel).await,
    })
}

/// Where a replay starts.
enum Start {
    Seq(u64),
    Time(switchboard_schemas::Timestamp),
    Last(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/protocol.md, section 6: `recovered` per channel.
    #[test]
    fn a_resume_is_recovered_while_the_channel_still_holds_its_position() {
        // The channel still holds an event at or before `since`: nothing after it was
        // dropped (retention, the per-channel cap and purges drop the oldest first),
        // however far the stream's own first seq moved.
        assert!(holds_all_after(40, 1, Some(40)));
        assert!(holds_all_after(40, 30, Some(12)));
        // It holds none: what followed `since` may be gone.
        assert!(!holds_all_after(40, 1, None));
        assert!(!holds_all_after(40, 41, None));
        // A client that saw the channel empty lost something only if the stream ever
        // dropped anything.
        assert!(holds_all_after(0, 1, None));
        assert!(holds_all_after(0, 0, None));
        assert!(!holds_all_after(0, 2, None));
        // The archive makes up for what the stream lost.
        assert!(recovered(true, false));
        assert!(recovered(false, true));
        assert!(!recovered(false, false));
    }
}
