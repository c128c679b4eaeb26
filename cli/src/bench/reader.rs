//! Reading subscribers' sockets: a task per socket tallies the `evt` frames it gets
//! (received, duplicated by seq) and their latency from the publisher's timestamp,
//! scanning each frame for the two numbers instead of parsing it.

use std::sync::Arc;

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

use super::{Socket, unix_micros};

/// The number after `"<key>":` in a frame, without parsing the frame.
pub(super) fn scan_number(frame: &str, key: &str) -> Option<u64> {
    let at = frame.find(key)? + key.len();
    let digits: &str = &frame[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// One subscriber's tally.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) received: u64,
    pub(super) duplicated: u64,
    last_seq: u64,
}

impl Tally {
    pub(super) fn count(&mut self, seq: u64) {
        self.received += 1;
        if seq <= self.last_seq {
            self.duplicated += 1;
        } else {
            self.last_seq = seq;
        }
    }
}

/// A task reading one subscriber's socket; its tally and latencies, merged at the end.
pub(super) struct Reader {
    pub(super) task: tokio::task::JoinHandle<()>,
    pub(super) state: Arc<std::sync::Mutex<(Tally, Histogram<u64>)>>,
}

impl Reader {
    /// Stops reading and returns what was seen.
    pub(super) fn finish(self) -> (Tally, Histogram<u64>) {
        self.task.abort();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let empty = Histogram::<u64>::new(3).expect("a 3-digit histogram");
        std::mem::replace(&mut *state, (Tally::default(), empty))
    }
}

pub(super) fn spawn_reader(mut socket: Socket) -> Reader {
    let state = Arc::new(std::sync::Mutex::new((
        Tally::default(),
        Histogram::<u64>::new(3).expect("a 3-digit histogram"),
    )));
    let mine = state.clone();
    let task = tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            if !text.starts_with("{\"op\":\"evt\"") {
                continue;
            }
            let (Some(seq), Some(t)) =
                (scan_number(&text, "\"seq\":"), scan_number(&text, "\"t\":"))
            else {
                continue;
            };
            // Uncontended until the end: only this task takes the lock while it runs.
            let mut state = mine.lock().unwrap_or_else(|e| e.into_inner());
            state.0.count(seq);
            let _ = state.1.record(unix_micros().saturating_sub(t));
        }
    });
    Reader { task, state }
}
