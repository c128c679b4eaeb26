//! Stored events of several channels, read back in one seq order.
//!
//! `replay` and `tail` both ask for "every stored event of these channels between two
//! sequences, oldest first". JetStream's direct get reads one subject at a time, so each
//! channel gets a reader task that pages forward through its subject and hands whole
//! batches over a channel of capacity one; [`Merged`] merges the readers' batches by
//! stream sequence, which is unique across subjects. Memory is bounded by the readers:
//! each holds at most three batches (one being read, one queued, one being merged), and
//! the batch size shrinks as the number of channels grows.
//!
//! Channels are grouped by the subject they read: `user:u1` and `user:u1:messages` share
//! `rt.user.u1`, which is read once; each event is shown under the first spelling the
//! caller asked for that admits its type (an alias admits only its types).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use switchboard_bus::store::{MAX_BATCH, Store, StoreError, StoredEvent};
use switchboard_schemas::{ChannelName, SubjectKind, Timestamp};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Events held in memory by all readers together, at most about three times this.
const EVENT_BUDGET: usize = 4096;
/// Below this, many channels would cost more round trips than they save memory.
const MIN_BATCH: usize = 32;

/// One subject to read and the channel spellings asked for on it.
#[derive(Debug, Clone)]
pub struct Source {
    /// `rt.<ns>.<id>`.
    pub subject: String,
    spellings: Vec<ChannelName>,
}

impl Source {
    /// The spelling an event of type `ty` is shown under, if any spelling admits it.
    pub fn spelling_for(&self, ty: &str) -> Option<&ChannelName> {
        self.spellings.iter().find(|channel| channel.admits(ty))
    }

    /// The channels asked for on this subject, in the order asked.
    pub fn spellings(&self) -> &[ChannelName] {
        &self.spellings
    }

    /// The base channel, `<ns>:<id>`.
    pub fn base(&self) -> ChannelName {
        self.spellings[0].base()
    }
}

/// Groups channels by the subject they read, in the order first asked for.
pub fn group(channels: impl IntoIterator<Item = ChannelName>) -> Vec<Source> {
    let mut sources: Vec<Source> = Vec::new();
    for channel in channels {
        let subject = channel.subject(SubjectKind::Durable);
        match sources.iter_mut().find(|s| s.subject == subject) {
            Some(source) if !source.spellings.contains(&channel) => source.spellings.push(channel),
            Some(_) => {}
            None => sources.push(Source {
                subject,
                spellings: vec![channel],
            }),
        }
    }
    sources
}

/// The sequence of the first event stored at or after `time` on any channel.
pub async fn first_seq_at_or_after(
    store: &Store,
    time: &Timestamp,
) -> Result<Option<u64>, StoreError> {
    let first = store
        .forward_from_time(SubjectKind::Durable.wildcard(), time, 1)
        .await?;
    Ok(first.first().map(|event| event.seq))
}

/// An event and the index of the [`Source`] it was read from.
#[derive(Debug)]
pub struct Item {
    pub source: usize,
    pub event: StoredEvent,
}

type Batch = Result<Vec<StoredEvent>, StoreError>;

struct Reader {
    batch: VecDeque<StoredEvent>,
    batches: mpsc::Receiver<Batch>,
    task: JoinHandle<()>,
}

/// The events of several sources with `first <= seq <= last`, in ascending seq order.
pub struct Merged {
    readers: Vec<Reader>,
    /// (seq of the reader's next event, reader), smallest first.
    heads: BinaryHeap<Reverse<(u64, usize)>>,
    /// Readers whose batch is used up and whose next batch has not been awaited yet.
    to_refill: Vec<usize>,
}

impl Merged {
    /// Starts one reader task per source; reading begins at once.
    pub fn start(store: &Store, sources: &[Source], first: u64, last: u64) -> Merged {
        let batch_size = (EVENT_BUDGET / sources.len().max(1)).clamp(MIN_BATCH, MAX_BATCH);
        let readers = sources
            .iter()
            .map(|source| {
                let (tx, batches) = mpsc::channel(1);
                let task = tokio::spawn(read_subject(
                    store.clone(),
                    source.subject.clone(),
                    first,
                    last,
                    batch_size,
                    tx,
                ));
                Reader {
                    batch: VecDeque::new(),
                    batches,
                    task,
                }
            })
            .collect::<Vec<_>>();
        Merged {
            to_refill: (0..readers.len()).collect(),
            readers,
            heads: BinaryHeap::new(),
        }
    }

    /// The next event in seq order; `None` when every source is read to the end.
    pub async fn next(&mut self) -> Result<Option<Item>, StoreError> {
        while let Some(index) = self.to_refill.pop() {
            let reader = &mut self.readers[index];
            match reader.batches.recv().await {
                Some(Ok(batch)) => {
                    reader.batch = batch.into();
                    if let Some(front) = reader.batch.front() {
                        self.heads.push(Reverse((front.seq, index)));
                    }
                }
                Some(Err(error)) => {
                    self.to_refill.push(index);
                    return Err(error);
                }
                None => {}
            }
        }
        let Some(Reverse((_, index))) = self.heads.pop() else {
            return Ok(None);
        };
        let reader = &mut self.readers[index];
        let event = reader
            .batch
            .pop_front()
            .expect("a reader is in the heap only while its batch has events");
        match reader.batch.front() {
            Some(next) => self.heads.push(Reverse((next.seq, index))),
            None => self.to_refill.push(index),
        }
        Ok(Some(Item {
            source: index,
            event,
        }))
    }
}

impl Drop for Merged {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.task.abort();
        }
    }
}

/// Pages forward through `subject` from `first` to `last`, one batch at a time; ends
/// after the last batch, after an error, or when nobody listens any more.
async fn read_subject(
    store: Store,
    subject: String,
    first: u64,
    last: u64,
    batch_size: usize,
    batches: mpsc::Sender<Batch>,
) {
    let mut next = first.max(1);
    while next <= last {
        let batch = match store.forward(&subject, next, batch_size).await {
            Ok(mut events) => {
                events.retain(|event| event.seq <= last);
                match events.last() {
                    Some(newest) => next = newest.seq + 1,
                    None => return,
                }
                Ok(events)
            }
            Err(error) => Err(error),
        };
        let failed = batch.is_err();
        if batches.send(batch).await.is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(text: &str) -> ChannelName {
        ChannelName::parse(text).unwrap()
    }

    #[test]
    fn channels_sharing_a_subject_are_read_once() {
        let sources = group([
            channel("user:u1:messages"),
            channel("project:p1"),
            channel("user:u1"),
            channel("project:p1"),
        ]);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].subject, "rt.user.u1");
        assert_eq!(sources[1].subject, "rt.project.p1");
        assert_eq!(
            sources[0].spelling_for("message.new").unwrap().as_str(),
            "user:u1:messages"
        );
        assert_eq!(
            sources[0].spelling_for("bid.new").unwrap().as_str(),
            "user:u1"
        );
        assert_eq!(sources[0].base().as_str(), "user:u1");
        let only_alias = group([channel("user:u2:notifications")]);
        assert!(only_alias[0].spelling_for("bid.new").is_none());
    }
}
