//! A session's outgoing queue, as everything else in the edge sees it.
//!
//! The hub pushes into it without ever waiting: fan-out must not stall on one socket.
//! A full queue therefore ends the session (`bye` `slow_consumer`) instead of dropping an
//! event; the client resumes from its last seq and loses nothing. Signals are lossy by
//! design and are dropped first, once the queue is half full.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use axum::extract::ws::Utf8Bytes;
use switchboard_schemas::{ByeCode, ChannelName};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::metrics::Metrics;

/// Process-unique connection number.
pub type ConnId = u64;

/// What the rest of the edge may do to a session from the outside: end it, with a reason.
#[derive(Debug)]
pub struct ConnControl {
    pub id: ConnId,
    pub user: Arc<str>,
    ending: CancellationToken,
    reason: Mutex<Option<ByeCode>>,
    /// Channels whose membership changed: the session re-checks its right to them.
    recheck: Inbox<ChannelName>,
}

/// Messages for a session's own task, taken all at once. Unlike a channel it allocates
/// nothing while empty, which is what it is almost always: an idle connection must cost
/// as little memory as possible.
#[derive(Debug)]
pub struct Inbox<T> {
    items: Mutex<Vec<T>>,
    poke: Notify,
}

impl<T> Default for Inbox<T> {
    fn default() -> Self {
        Inbox {
            items: Mutex::new(Vec::new()),
            poke: Notify::new(),
        }
    }
}

impl<T> Inbox<T> {
    pub fn push(&self, item: T) {
        self.items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(item);
        self.poke.notify_one();
    }

    /// Waits for and takes everything pushed so far, oldest first.
    pub async fn take(&self) -> Vec<T> {
        loop {
            let taken = std::mem::take(&mut *self.items.lock().unwrap_or_else(|e| e.into_inner()));
            if !taken.is_empty() {
                return taken;
            }
            self.poke.notified().await;
        }
    }
}

impl ConnControl {
    /// A connection that also ends, as `draining`, when `edge_draining` is cancelled. One
    /// token per session to watch instead of two: the edge-wide token is shared by every
    /// session, and polling it on every turn made its lock a point of contention.
    pub fn new(id: ConnId, user: Arc<str>, edge_draining: &CancellationToken) -> ConnControl {
        ConnControl {
            id,
            user,
            ending: edge_draining.child_token(),
            reason: Mutex::new(None),
            recheck: Inbox::default(),
        }
    }

    /// Asks the session to re-authorize its subscriptions to `channel` (a base channel).
    pub fn recheck(&self, channel: ChannelName) {
        self.recheck.push(channel);
    }

    /// Waits for and takes the channels to re-check.
    pub async fn rechecks(&self) -> Vec<ChannelName> {
        self.recheck.take().await
    }

    /// Asks the session to say `bye` with `code` and close. The first reason wins.
    pub fn end(&self, code: ByeCode) {
        let mut reason = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        reason.get_or_insert(code);
        self.ending.cancel();
    }

    /// Why the session is asked to end; `draining` when the edge is, and nothing else was
    /// said first.
    pub fn reason(&self) -> Option<ByeCode> {
        let reason = *self.reason.lock().unwrap_or_else(|e| e.into_inner());
        reason.or_else(|| self.ending.is_cancelled().then_some(ByeCode::Draining))
    }

    /// Ready once the session is asked to end, and ready again each time it is polled
    /// after that, so one future serves a session's whole loop.
    pub fn ended(&self) -> WaitForCancellationFuture<'_> {
        self.ending.cancelled()
    }
}

/// The sending half of a session's queue of encoded frames; cloned into every
/// subscription of the session.
#[derive(Debug)]
pub struct Mailbox {
    queue: Arc<Queue>,
    pub control: Arc<ConnControl>,
    metrics: Arc<Metrics>,
}

/// The receiving half: only the session (or a fallback feed) reads it.
#[derive(Debug)]
pub struct Outgoing {
    queue: Arc<Queue>,
}

/// A bounded queue of frames under one lock, taken a batch at a time. Cheaper than a
/// channel on both counts that matter here: a batch of frames leaves the queue under
/// one lock instead of one atomic pop each, and an empty queue holds no memory beyond
/// its (small, reused) buffer, where a channel keeps a block of 32 slots per session.
#[derive(Debug)]
struct Queue {
    state: Mutex<QueueState>,
    capacity: usize,
    /// Bytes of frames that may wait (docs/protocol.md, section 8): a few large events
    /// cost as much memory as many small ones.
    max_bytes: usize,
    /// Mailboxes alive; the reader sees the end of the queue when the last one goes.
    senders: AtomicUsize,
    /// Wakes senders waiting for room ([`Mailbox::send`]).
    room: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    frames: VecDeque<Utf8Bytes>,
    /// Bytes of `frames`.
    bytes: usize,
    /// The reader, when it waits for frames.
    reader: Option<Waker>,
    /// A sender waits for room: the next take wakes it.
    wanting_room: bool,
    /// The reader is gone: nothing more is queued.
    closed: bool,
}

/// Why a frame was not queued; the frame comes back.
enum Refused {
    Full(Utf8Bytes),
    Closed,
}

/// Buffer capacity a queue keeps after a burst; beyond it, memory goes back once the
/// queue is empty again, so a connection that once lagged does not hold its peak.
const KEPT_CAPACITY: usize = 256;

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `frame` if fewer than `limit` frames and `byte_limit` bytes would wait,
    /// waking the reader. A frame larger than the byte limit still goes into an empty
    /// queue: it is within the frame size limit, and must be deliverable.
    fn push(
        &self,
        frame: Utf8Bytes,
        limit: usize,
        byte_limit: usize,
        want_room: bool,
    ) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refused::Closed);
        }
        let too_many_bytes = !state.frames.is_empty() && state.bytes + frame.len() > byte_limit;
        if state.frames.len() >= limit || too_many_bytes {
            state.wanting_room |= want_room;
            return Err(Refused::Full(frame));
        }
        state.bytes += frame.len();
        state.frames.push_back(frame);
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
        Ok(())
    }
}

impl Mailbox {
    /// A queue for `capacity` frames of at most `max_bytes` in all.
    pub fn new(
        capacity: usize,
        max_bytes: usize,
        control: Arc<ConnControl>,
        metrics: Arc<Metrics>,
    ) -> (Mailbox, Outgoing) {
        let queue = Arc::new(Queue {
            state: Mutex::default(),
            capacity: capacity.max(2),
            max_bytes: max_bytes.max(2),
            senders: AtomicUsize::new(1),
            room: Notify::new(),
        });
        (
            Mailbox {
                queue: queue.clone(),
                control,
                metrics,
            },
            Outgoing { queue },
        )
    }

    pub fn conn(&self) -> ConnId {
        self.control.id
    }

    /// Queues an event frame without waiting. A full queue ends the session as a slow
    /// consumer; returns whether the frame was queued.
    pub fn push_event(&self, frame: Utf8Bytes) -> bool {
        match self
            .queue
            .push(frame, self.queue.capacity, self.queue.max_bytes, false)
        {
            Ok(()) => true,
            Err(Refused::Full(_)) => {
                tracing::debug!(conn = self.control.id, "send queue full: slow consumer");
                if self.control.reason().is_none() {
                    self.metrics.count(&self.metrics.slow_consumers, 1);
                }
                self.control.end(ByeCode::SlowConsumer);
                false
            }
            Err(Refused::Closed) => false,
        }
    }

    /// Queues a signal if the queue is less than half full; signals are lossy.
    pub fn push_signal(&self, frame: Utf8Bytes) {
        let _ = self.queue.push(
            frame,
            self.queue.capacity / 2,
            self.queue.max_bytes / 2,
            false,
        );
    }

    /// Queues a reply or a replayed event, waiting for room. False once the session is gone.
    pub async fn send(&self, mut frame: Utf8Bytes) -> bool {
        loop {
            // Registered before the check, so a take in between still wakes this one.
            let room = self.queue.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self
                .queue
                .push(frame, self.queue.capacity, self.queue.max_bytes, true)
            {
                Ok(()) => return true,
                Err(Refused::Closed) => return false,
                Err(Refused::Full(refused)) => frame = refused,
            }
            room.await;
        }
    }
}

impl Clone for Mailbox {
    fn clone(&self) -> Mailbox {
        self.queue.senders.fetch_add(1, Ordering::Relaxed);
        Mailbox {
            queue: self.queue.clone(),
            control: self.control.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        if self.queue.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            let reader = self.queue.lock().reader.take();
            if let Some(reader) = reader {
                reader.wake();
            }
        }
    }
}

impl Outgoing {
    /// Waits until frames are queued, then moves up to `max` of them, oldest first, into
    /// `into`: true, or false once every mailbox is gone and nothing is left. Cancel-safe:
    /// frames move only in the poll that completes it.
    ///
    /// An empty `into` takes a whole queue of at most `max` frames by trading buffers with
    /// it; [`Outgoing::give_back`] trades back once the frames are written. So an idle
    /// session keeps one frame buffer, not one here and one in its batch
    /// (BENCHMARKS.md, "Memory per idle connection, a second look").
    pub async fn take(&self, into: &mut VecDeque<Utf8Bytes>, max: usize) -> bool {
        std::future::poll_fn(|cx| {
            let mut state = self.queue.lock();
            if into.is_empty() && (1..=max).contains(&state.frames.len()) {
                std::mem::swap(&mut state.frames, into);
                state.bytes = 0;
                self.made_room(state);
                return Poll::Ready(true);
            }
            self.poll_locked(state, cx, max, |frame| into.push_back(frame))
        })
        .await
    }

    /// Gives an emptied batch's buffer back to the queue if the queue has none (nothing
    /// came while the batch was written); a buffer grown by a burst shrinks first.
    pub fn give_back(&self, batch: &mut VecDeque<Utf8Bytes>) {
        if !batch.is_empty() {
            return;
        }
        if batch.capacity() > KEPT_CAPACITY {
            batch.shrink_to(KEPT_CAPACITY);
        }
        let mut state = self.queue.lock();
        if state.frames.capacity() == 0 {
            std::mem::swap(&mut state.frames, batch);
        }
    }

    /// Moves whatever is queued now, without waiting.
    pub fn take_now(&self, into: &mut VecDeque<Utf8Bytes>) {
        self.drain(self.queue.lock(), usize::MAX, |frame| into.push_back(frame));
    }

    /// The next frame; `None` once every mailbox is gone and the queue is empty.
    pub async fn recv(&self) -> Option<Utf8Bytes> {
        let mut next = None;
        let open =
            std::future::poll_fn(|cx| self.poll_drain(cx, 1, |frame| next = Some(frame))).await;
        open.then_some(next).flatten()
    }

    fn poll_drain(
        &self,
        cx: &mut std::task::Context<'_>,
        max: usize,
        sink: impl FnMut(Utf8Bytes),
    ) -> Poll<bool> {
        self.poll_locked(self.queue.lock(), cx, max, sink)
    }

    fn poll_locked(
        &self,
        mut state: MutexGuard<'_, QueueState>,
        cx: &mut std::task::Context<'_>,
        max: usize,
        sink: impl FnMut(Utf8Bytes),
    ) -> Poll<bool> {
        if !state.frames.is_empty() {
            self.drain(state, max, sink);
            return Poll::Ready(true);
        }
        if self.queue.senders.load(Ordering::Acquire) == 0 {
            return Poll::Ready(false);
        }
        match &mut state.reader {
            Some(waker) => waker.clone_from(cx.waker()),
            none => *none = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Hands up to `max` frames to `sink`, gives back a burst's buffer, and wakes the
    /// senders waiting for room.
    fn drain(
        &self,
        mut state: MutexGuard<'_, QueueState>,
        max: usize,
        sink: impl FnMut(Utf8Bytes),
    ) {
        let n = state.frames.len().min(max);
        let taken: usize = state.frames.iter().take(n).map(|f| f.len()).sum();
        state.bytes -= taken;
        state.frames.drain(..n).for_each(sink);
        if state.frames.is_empty() && state.frames.capacity() > KEPT_CAPACITY {
            state.frames.shrink_to(KEPT_CAPACITY);
        }
        if n > 0 {
            self.made_room(state);
        }
    }

    /// Frames left the queue: wakes the senders waiting for room.
    fn made_room(&self, mut state: MutexGuard<'_, QueueState>) {
        let wanting_room = std::mem::take(&mut state.wanting_room);
        drop(state);
        if wanting_room {
            self.queue.room.notify_waiters();
        }
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.closed = true;
        let frames = std::mem::take(&mut state.frames);
        state.bytes = 0;
        drop(state);
        drop(frames);
        self.queue.room.notify_waiters();
    }
}

/// An encoded frame as socket text. Frames are JSON, which is UTF-8 by construction, so
/// the check never fails; it runs once per frame, not once per receiving socket.
pub fn text(frame: bytes::Bytes) -> Utf8Bytes {
    Utf8Bytes::try_from(frame).unwrap_or_else(|_| Utf8Bytes::from_static("{}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn mailbox(capacity: usize) -> (Mailbox, Outgoing) {
        let control = Arc::new(ConnControl::new(
            1,
            Arc::from("u1"),
            &CancellationToken::new(),
        ));
        Mailbox::new(capacity, usize::MAX, control, Arc::default())
    }

    fn frame(n: usize) -> Utf8Bytes {
        Utf8Bytes::from(n.to_string())
    }

    fn texts(frames: &VecDeque<Utf8Bytes>) -> Vec<String> {
        frames.iter().map(|f| f.to_string()).collect()
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_as_well_as_frames() {
        let control = Arc::new(ConnControl::new(
            1,
            Arc::from("u1"),
            &CancellationToken::new(),
        ));
        let (mailbox, outgoing) = Mailbox::new(100, 10, control, Arc::default());
        let big = Utf8Bytes::from("x".repeat(25));
        assert!(
            mailbox.push_event(big.clone()),
            "an empty queue takes any frame"
        );
        mailbox.push_signal(frame(1));
        let mut batch = VecDeque::new();
        outgoing.take_now(&mut batch);
        assert_eq!(batch.len(), 1, "a signal does not fit behind 25 bytes");
        batch.clear();
        for n in 0..5 {
            assert!(mailbox.push_event(Utf8Bytes::from(format!("{n}{n}"))));
        }
        assert!(
            !mailbox.push_event(frame(9)),
            "10 bytes wait: one more is too many"
        );
        assert_eq!(mailbox.control.reason(), Some(ByeCode::SlowConsumer));
        outgoing.take_now(&mut batch);
        assert_eq!(batch.len(), 5);
    }

    #[tokio::test]
    async fn frames_leave_in_order_in_batches_and_a_full_queue_is_a_slow_consumer() {
        let (mailbox, outgoing) = mailbox(4);
        for n in 0..4 {
            assert!(mailbox.push_event(frame(n)));
        }
        assert!(!mailbox.push_event(frame(4)), "a fifth frame does not fit");
        assert_eq!(mailbox.control.reason(), Some(ByeCode::SlowConsumer));

        let mut batch = VecDeque::new();
        assert!(outgoing.take(&mut batch, 3).await);
        assert_eq!(texts(&batch), ["0", "1", "2"]);
        assert!(outgoing.take(&mut batch, 3).await);
        assert_eq!(texts(&batch), ["0", "1", "2", "3"]);
        outgoing.take_now(&mut batch);
        assert_eq!(batch.len(), 4, "nothing is left");
    }

    #[tokio::test]
    async fn a_session_between_writes_keeps_one_frame_buffer() {
        let (mailbox, outgoing) = mailbox(8);
        let buffer = |outgoing: &Outgoing| outgoing.queue.lock().frames.capacity();
        assert!(mailbox.push_event(frame(0)));
        assert!(mailbox.push_event(frame(1)));
        let mut batch = VecDeque::new();
        assert!(outgoing.take(&mut batch, 8).await);
        assert_eq!(texts(&batch), ["0", "1"]);
        assert_eq!(buffer(&outgoing), 0, "the batch took the queue's buffer");
        batch.clear();
        outgoing.give_back(&mut batch);
        assert_eq!(batch.capacity(), 0, "and gave it back once written");
        assert!(buffer(&outgoing) >= 2);

        // Frames that come while a batch is written find a buffer of their own; the
        // written batch then keeps its own, and both go on in order.
        assert!(mailbox.push_event(frame(2)));
        assert!(outgoing.take(&mut batch, 8).await);
        assert!(mailbox.push_event(frame(3)));
        assert_eq!(texts(&batch), ["2"]);
        batch.clear();
        outgoing.give_back(&mut batch);
        assert!(batch.capacity() > 0, "the queue had a buffer already");
        assert!(outgoing.take(&mut batch, 8).await);
        assert_eq!(texts(&batch), ["3"]);
        assert_eq!(outgoing.queue.lock().bytes, 0, "every byte accounted for");
    }

    #[tokio::test]
    async fn signals_are_dropped_once_the_queue_is_half_full() {
        let (mailbox, outgoing) = mailbox(4);
        mailbox.push_signal(frame(0));
        mailbox.push_signal(frame(1));
        mailbox.push_signal(frame(2));
        let mut batch = VecDeque::new();
        outgoing.take_now(&mut batch);
        assert_eq!(texts(&batch), ["0", "1"]);
        assert_eq!(
            mailbox.control.reason(),
            None,
            "a dropped signal ends nothing"
        );
    }

    #[tokio::test]
    async fn the_reader_is_woken_by_a_push_from_another_task() {
        let (mailbox, outgoing) = mailbox(4);
        let pusher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            mailbox.push_event(frame(7));
            mailbox
        });
        assert_eq!(outgoing.recv().await.as_deref(), Some("7"));
        drop(pusher.await.unwrap());
        assert_eq!(outgoing.recv().await, None, "no mailbox is left");
    }

    #[tokio::test]
    async fn send_waits_for_room_and_gives_up_when_the_reader_is_gone() {
        let (mailbox, outgoing) = mailbox(2);
        assert!(mailbox.send(frame(0)).await);
        assert!(mailbox.send(frame(1)).await);
        let waiting = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.send(frame(2)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the queue is full: send waits");
        let mut batch = VecDeque::new();
        assert!(outgoing.take(&mut batch, 1).await);
        assert!(waiting.await.unwrap(), "room was made");
        outgoing.take_now(&mut batch);
        assert_eq!(texts(&batch), ["0", "1", "2"]);

        assert!(mailbox.send(frame(3)).await);
        assert!(mailbox.send(frame(4)).await);
        let stuck = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.send(frame(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(outgoing);
        assert!(!stuck.await.unwrap(), "the session is gone");
        assert!(!mailbox.push_event(frame(6)));
        assert_eq!(
            mailbox.control.reason(),
            None,
            "a closed queue is no slow consumer"
        );
    }
}
