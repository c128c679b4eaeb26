//! Reading subscribers' sockets: a task per socket tallies the `evt` frames it gets
//! (received, duplicated by seq) and their latency from the publisher's timestamp,
//! scanning each frame for the two numbers instead of parsing it.
//!
//! The generator shares the machine with the server it measures, so what it spends per
//! event is taken from the server: it scans frames with `memchr`'s substring search (the
//! standard library's builds a searcher for every call), and each reader keeps its
//! latencies in a plain list, put into one histogram at the end. A histogram per reader
//! (a thousand readers, tens of kilobytes each) missed the cache at almost every event
//! (BENCHMARKS.md, "The 1,000-subscriber tail and the generator's own cost").

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

use super::{Socket, unix_micros};

/// The number after `"<key>":` in a frame, without parsing the frame.
pub(super) fn scan_number(frame: &str, key: &str) -> Option<u64> {
    let at = memchr::memmem::find(frame.as_bytes(), key.as_bytes())? + key.len();
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

/// What one subscriber saw: its tally, and each event's latency in microseconds.
#[derive(Default)]
pub(super) struct Seen {
    tally: Tally,
    latencies: Vec<u32>,
}

impl Seen {
    /// Counts an event by the `seq` and `t` (the publisher's send time, unix
    /// microseconds) it carries; a frame without both is passed over.
    pub(super) fn count(&mut self, event: &str) {
        if let (Some(seq), Some(t)) = (scan_number(event, "\"seq\":"), scan_number(event, "\"t\":"))
        {
            self.tally.count(seq);
            let micros = unix_micros().saturating_sub(t);
            self.latencies
                .push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
    }
}

/// A reader's state, shared between its task and [`Reader::finish`]; only the task takes
/// the lock while it runs.
pub(super) type Shared = Arc<Mutex<Seen>>;

/// A task reading one subscriber's socket; its tally and latencies, merged at the end.
pub(super) struct Reader {
    pub(super) task: tokio::task::JoinHandle<()>,
    pub(super) state: Shared,
}

impl Reader {
    /// Stops reading and returns what was seen, the latencies as a histogram.
    pub(super) fn finish(self) -> (Tally, Histogram<u64>) {
        self.task.abort();
        let seen = std::mem::take(&mut *self.state.lock().unwrap_or_else(|e| e.into_inner()));
        let mut histogram = Histogram::<u64>::new(3).expect("a 3-digit histogram");
        for &micros in &seen.latencies {
            let _ = histogram.record(u64::from(micros));
        }
        (seen.tally, histogram)
    }
}

pub(super) fn spawn_reader(mut socket: Socket) -> Reader {
    let state = Shared::default();
    let mine = state.clone();
    let task = tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            if text.starts_with("{\"op\":\"evt\"") {
                mine.lock().unwrap_or_else(|e| e.into_inner()).count(&text);
            }
        }
    });
    Reader { task, state }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_are_counted_by_seq_and_timed_from_their_send_time() {
        let sent = unix_micros() - 5_000;
        let event = |seq: u64| {
            format!(
                r#"{{"op":"evt","ch":"domain:d","seq":{seq},"event":{{"data":{{"t":{sent},"pad":"x"}}}}}}"#
            )
        };
        let mut seen = Seen::default();
        seen.count(&event(1));
        seen.count(&event(2));
        seen.count(&event(2));
        seen.count(r#"{"op":"ok","id":3}"#);
        assert_eq!((seen.tally.received, seen.tally.duplicated), (3, 1));

        let reader = Reader {
            task: tokio::spawn(async {}),
            state: Arc::new(Mutex::new(seen)),
        };
        let (tally, histogram) = reader.finish();
        assert_eq!(tally.received, 3);
        assert_eq!(histogram.len(), 3, "one latency per event counted");
        assert!(histogram.min() >= 5_000, "timed from the send time");
    }

    #[test]
    fn numbers_are_scanned_without_parsing() {
        let frame = r#"{"op":"evt","seq":42,"event":{"data":{"t":1795000000000000}}}"#;
        assert_eq!(scan_number(frame, "\"seq\":"), Some(42));
        assert_eq!(scan_number(frame, "\"t\":"), Some(1_795_000_000_000_000));
        assert_eq!(scan_number(frame, "\"id\":"), None);
    }
}
