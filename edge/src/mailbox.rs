//! A session's outgoing queue, as everything else in the edge sees it.
//!
//! The hub pushes into it without ever waiting: fan-out must not stall on one socket.
//! A full queue therefore ends the session (`bye` `slow_consumer`) instead of dropping an
//! event; the client resumes from its last seq and loses nothing. Signals are lossy by
//! design and are dropped first, once the queue is half full.

use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use switchboard_schemas::{ByeCode, ChannelName};
use tokio::sync::{Notify, mpsc};
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
    pub fn new(id: ConnId, user: Arc<str>) -> ConnControl {
        ConnControl {
            id,
            user,
            ending: CancellationToken::new(),
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

    pub fn reason(&self) -> Option<ByeCode> {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ready once the session is asked to end, and ready again each time it is polled
    /// after that, so one future serves a session's whole loop.
    pub fn ended(&self) -> WaitForCancellationFuture<'_> {
        self.ending.cancelled()
    }
}

/// The sending half of a session's queue of encoded frames.
#[derive(Debug, Clone)]
pub struct Mailbox {
    tx: mpsc::Sender<Utf8Bytes>,
    pub control: Arc<ConnControl>,
    metrics: Arc<Metrics>,
}

impl Mailbox {
    pub fn new(
        capacity: usize,
        control: Arc<ConnControl>,
        metrics: Arc<Metrics>,
    ) -> (Mailbox, mpsc::Receiver<Utf8Bytes>) {
        let (tx, rx) = mpsc::channel(capacity.max(2));
        (
            Mailbox {
                tx,
                control,
                metrics,
            },
            rx,
        )
    }

    pub fn conn(&self) -> ConnId {
        self.control.id
    }

    /// Queues an event frame without waiting. A full queue ends the session as a slow
    /// consumer; returns whether the frame was queued.
    pub fn push_event(&self, frame: Utf8Bytes) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(conn = self.control.id, "send queue full: slow consumer");
                if self.control.reason().is_none() {
                    self.metrics.count(&self.metrics.slow_consumers, 1);
                }
                self.control.end(ByeCode::SlowConsumer);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a signal if the queue is less than half full; signals are lossy.
    pub fn push_signal(&self, frame: Utf8Bytes) {
        if self.tx.capacity() * 2 > self.tx.max_capacity() {
            let _ = self.tx.try_send(frame);
        }
    }

    /// Queues a reply or a replayed event, waiting for room. False once the session is gone.
    pub async fn send(&self, frame: Utf8Bytes) -> bool {
        self.tx.send(frame).await.is_ok()
    }
}

/// An encoded frame as socket text. Frames are JSON, which is UTF-8 by construction, so
/// the check never fails; it runs once per frame, not once per receiving socket.
pub fn text(frame: bytes::Bytes) -> Utf8Bytes {
    Utf8Bytes::try_from(frame).unwrap_or_else(|_| Utf8Bytes::from_static("{}"))
}
