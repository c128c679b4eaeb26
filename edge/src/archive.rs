//! The archive as the edge sees it: what `EVENTS` no longer holds of a channel in an
//! archived namespace, asked of the workers over `int.archive.read` (docs/protocol.md,
//! sections 4.7, 6 and 10.10). The edge never touches PostgreSQL.
//!
//! The stream keeps a suffix of each channel's events (retention, the per-channel cap and
//! purges all drop the oldest first); the archive keeps every event of the channel up to
//! `through`, the stream seq it has processed. A history page or a resume that reaches
//! past the stream's oldest event of the channel reads the older part here, below that
//! event, so the two parts meet without a gap or a duplicate when `through` reaches the
//! stream's part. The archive lags the stream by up to about a second: a read that needs
//! more waits for it briefly ([`LAG_WAIT`]) and otherwise does without the archive.
//!
//! Events from either source become a [`Kept`] and leave as `evt` frames made by one
//! encoder ([`Kept::frame`]): an archived event's frame is the stream's frame, except
//! that it carries the event as the archive holds it now (an edited message's current
//! text, a deleted one's empty data and `"deleted": true`).
//!
//! Owns: the request and answer of `int.archive.read`, which channels are archived
//! (`SWITCHBOARD_ARCHIVE_NAMESPACES` in [`crate::config`]), and the pure decisions of
//! where the stream ends and the archive must begin. It must not touch the hub or a
//! session.

use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchboard_bus::store::{StoredEvent, StreamPosition};
use switchboard_schemas::channel::Namespace;
use switchboard_schemas::{ChannelName, Envelope, RawJson, SubjectKind, encode_evt};

use crate::Edge;
use crate::mailbox::text;
use crate::refusal::Refusal;

/// Most events one `int.archive.read` answers (the workers' cap).
pub const PAGE: usize = 1000;
/// How long a read waits for an archive that has not yet processed what it needs.
pub const LAG_WAIT: Duration = Duration::from_secs(2);
/// Pause between two asks while waiting for the archive.
const LAG_POLL: Duration = Duration::from_millis(100);

/// Which channels the archive holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    namespaces: Vec<Namespace>,
}

impl Archive {
    /// The namespaces of `SWITCHBOARD_ARCHIVE_NAMESPACES` (the edge's configuration).
    pub fn new(namespaces: &[Namespace]) -> Archive {
        Archive {
            namespaces: namespaces.to_vec(),
        }
    }

    /// Whether the archive holds the events of `channel` (any spelling).
    pub fn holds(&self, channel: &ChannelName) -> bool {
        self.namespaces.contains(&channel.namespace())
    }
}

/// One stored event to send again, from the stream or from the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub seq: u64,
    pub event: Envelope,
    /// The archive's mark on a deleted message (its data is then empty).
    pub deleted: bool,
}

impl Kept {
    /// A stream event, or `None` when it is not a valid envelope (skipped like the
    /// live path skips it).
    pub fn from_stream(stored: &StoredEvent) -> Option<Kept> {
        Some(Kept {
            seq: stored.seq,
            event: stored.envelope().ok()?,
            deleted: false,
        })
    }

    /// The `evt` frame for one spelling of the channel: the live path's frame, with
    /// `"deleted":true` in the event when the archive marked it so.
    pub fn frame(&self, label: &ChannelName) -> Utf8Bytes {
        if !self.deleted {
            return crate::hub::evt_frame(label, self.seq, &self.event);
        }
        let mut event = self.event.to_json();
        // The envelope is a JSON object: its closing brace is its last byte.
        event.pop();
        event.extend_from_slice(br#","deleted":true}"#);
        text(encode_evt(label.as_str(), self.seq, &event))
    }
}

/// The order of an archive read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    Asc,
    Desc,
}

/// An `int.archive.read` request: the channel's events with `after < seq < before`.
#[derive(Debug, Clone, Serialize)]
pub struct Request<'a> {
    /// The base channel (aliases are the edge's business).
    pub ch: &'a str,
    pub epoch: &'a str,
    pub after: u64,
    pub before: Option<u64>,
    pub limit: usize,
    pub order: Order,
}

/// An answer of `int.archive.read`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// In the order asked for.
    pub events: Vec<Kept>,
    /// Every archived event of the channel with a seq up to this is present.
    pub through: u64,
    /// ... and from this seq on: what came before may never have reached the archive
    /// (it started later, or fell behind the stream's retention).
    pub from: u64,
    /// The archive stopped the page early (to fit one NATS message): fewer events than
    /// asked for do not mean there are no more.
    pub truncated: bool,
}

impl Page {
    /// Reads the workers' answer. An event that is not a valid envelope is left out,
    /// as the stream's readers leave out undecodable events; an answer of another
    /// shape is an error.
    pub fn parse(result: &[u8]) -> Result<Page, String> {
        #[derive(Deserialize)]
        struct Answer {
            events: Vec<Item>,
            through: u64,
            #[serde(default)]
            from: u64,
            #[serde(default)]
            truncated: bool,
        }
        #[derive(Deserialize)]
        struct Item {
            seq: u64,
            event: Box<serde_json::value::RawValue>,
            #[serde(default)]
            deleted: bool,
        }
        #[derive(Deserialize)]
        struct Mark {
            #[serde(default)]
            deleted: bool,
        }
        let answer: Answer = serde_json::from_slice(result)
            .map_err(|e| format!("unreadable answer from int.archive.read: {e}"))?;
        let events = answer
            .events
            .into_iter()
            .filter_map(|item| {
                let raw = item.event.get().as_bytes();
                let event = Envelope::from_json(raw).ok()?;
                // The mark may sit beside the event or inside it.
                let inside = serde_json::from_slice::<Mark>(raw).is_ok_and(|m| m.deleted);
                Some(Kept {
                    seq: item.seq,
                    event,
                    deleted: item.deleted || inside,
                })
            })
            .collect();
        Ok(Page {
            events,
            through: answer.through,
            from: answer.from,
            truncated: answer.truncated,
        })
    }
}

/// Asks the archive once, on behalf of `user` (for the workers' logs).
pub async fn read(edge: &Edge, user: &str, request: &Request<'_>) -> Result<Page, Refusal> {
    let params = RawJson::encode(request)
        .map_err(|e| Refusal::new(switchboard_schemas::ErrorCode::Internal, e.to_string()))?;
    let result = crate::rpc::ask_internal(edge, user, "archive.read", &params).await?;
    Page::parse(result.as_str().as_bytes()).map_err(Refusal::unavailable)
}

/// Asks the archive until its answer covers every seq up to `needed`, for at most
/// [`LAG_WAIT`]. `None` when it never does or cannot be asked (no workers): the caller
/// then does without the archive.
pub async fn read_covering(
    edge: &Edge,
    user: &str,
    request: &Request<'_>,
    needed: u64,
) -> Option<Page> {
    let deadline = tokio::time::Instant::now() + LAG_WAIT;
    loop {
        // A worker that takes longer than the whole wait is as good as none.
        let answer = tokio::time::timeout_at(deadline, read(edge, user, request))
            .await
            .unwrap_or_else(|_| Err(Refusal::unavailable("int.archive.read took too long")));
        match answer {
            Ok(page) if page.through >= needed => return Some(page),
            Ok(page) => {
                if tokio::time::Instant::now() + LAG_POLL > deadline {
                    tracing::info!(
                        channel = request.ch,
                        through = page.through,
                        needed,
                        "the archive is behind; answering from the stream alone"
                    );
                    return None;
                }
                tokio::time::sleep(LAG_POLL).await;
            }
            // Debug, not info: without the archive job this happens on every short
            // history page of an archived channel, and the answer says it (`recovered`).
            Err(refusal) => {
                tracing::debug!(channel = request.ch, %refusal, "archive not available; answering from the stream alone");
                return None;
            }
        }
    }
}

/// What a newest-first read still needs from the archive once the stream gave what it
/// holds: the archive's events below `before`, at most `limit` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub before: Option<u64>,
    pub limit: usize,
    /// The archive must have processed the stream up to here for its part to meet the
    /// stream's without a gap.
    pub needed: u64,
    /// Whether the stream gave anything: then an archive short of `needed` would leave
    /// a gap between the two parts and must not be used. Without a stream part, what
    /// the archive has is the newest known and is used as it is.
    pub joined: bool,
}

/// The archive's share of a page of the `limit` newest events below `before`, given
/// the seqs (ascending) the stream returned for it. The stream holds a suffix of the
/// channel, so when it returned fewer than `limit`, it holds nothing older than its
/// oldest, and the rest is below that in the archive. `stream_last` is the stream's
/// last seq (any channel): no event of the channel is newer.
pub fn shortfall(
    stream: &[u64],
    limit: usize,
    before: Option<u64>,
    stream_last: u64,
) -> Option<Shortfall> {
    if stream.len() >= limit {
        return None;
    }
    let limit = limit - stream.len();
    Some(match stream.first() {
        Some(&oldest) => Shortfall {
            before: Some(oldest),
            limit,
            needed: oldest - 1,
            joined: true,
        },
        None => Shortfall {
            before,
            limit,
            needed: before.map_or(stream_last, |b| b.saturating_sub(1).min(stream_last)),
            joined: false,
        },
    })
}

/// The archive's events (newest first, all below the stream's oldest) and the stream's
/// (ascending) as one ascending page, with at most `limit` of the archive's: the newest.
/// Anything the archive sent at or above the stream's oldest is the stream's to give,
/// and is dropped.
pub fn join_newest(archive_desc: Vec<Kept>, stream_asc: Vec<Kept>, limit: usize) -> Vec<Kept> {
    let boundary = stream_asc.first().map_or(u64::MAX, |k| k.seq);
    let mut page: Vec<Kept> = archive_desc
        .into_iter()
        .filter(|k| k.seq < boundary)
        .collect();
    page.sort_by_key(|k| std::cmp::Reverse(k.seq));
    page.dedup_by_key(|k| k.seq);
    page.truncate(limit);
    page.reverse();
    page.extend(stream_asc);
    page
}

/// The archive must have processed up to here before a resume after `since` can be
/// served from it: just below the stream's oldest event of the channel after `since`
/// (`first_kept`), or, when the stream holds none, the stream's last seq.
pub fn resume_needed(first_kept: Option<u64>, stream_last: u64) -> u64 {
    first_kept.map_or(stream_last, |first| first - 1)
}

/// The `limit` newest events of `channel` (a base channel) with seq < `before`, in
/// ascending order: from the stream, continued into the archive when the channel is
/// archived and the stream holds too few. This serves `history` and `since.last`.
pub async fn newest(
    edge: &Edge,
    user: &str,
    channel: &ChannelName,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<Kept>, Refusal> {
    let durable = channel.subject(SubjectKind::Durable);
    let stored = edge
        .store
        .newest(&durable, before, limit)
        .await
        .map_err(Refusal::unavailable)?;
    let seqs: Vec<u64> = stored.iter().map(|s| s.seq).collect();
    let stream: Vec<Kept> = stored.iter().filter_map(Kept::from_stream).collect();
    if !edge.archive.holds(channel) {
        return Ok(stream);
    }
    let position = edge.position();
    let Some(short) = shortfall(&seqs, limit, before, position.last_seq) else {
        return Ok(stream);
    };
    let request = Request {
        ch: channel.as_str(),
        epoch: &position.epoch,
        after: 0,
        before: short.before,
        limit: short.limit.min(PAGE),
        order: Order::Desc,
    };
    let page = if short.joined {
        read_covering(edge, user, &request, short.needed).await
    } else {
        read(edge, user, &request).await.ok()
    };
    let Some(mut page) = page else {
        return Ok(stream);
    };
    // A page the archive stopped early (large events) is continued below its oldest.
    let mut events = std::mem::take(&mut page.events);
    while page.truncated && events.len() < short.limit {
        let Some(oldest) = events.last().map(|e| e.seq) else {
            break;
        };
        let more = Request {
            before: Some(oldest),
            limit: short.limit - events.len(),
            ..request.clone()
        };
        match read(edge, user, &more).await {
            Ok(next) if next.events.first().is_some_and(|e| e.seq < oldest) => {
                page = next;
                events.append(&mut page.events);
            }
            _ => break,
        }
    }
    Ok(join_newest(events, stream, short.limit))
}

/// The seq of the newest archived event of `channel` (a base channel), when the
/// archive holds the channel and answers within [`LAG_WAIT`]; 0 otherwise. For a channel
/// the stream holds nothing of any more, this is its last seq. A `sub` waits for it, so
/// a worker that hangs (rather than crashes, which is answered at once) costs a `sub` the
/// lag wait, not the whole RPC timeout.
pub async fn newest_archived(edge: &Edge, user: &str, channel: &ChannelName) -> u64 {
    if !edge.archive.holds(channel) {
        return 0;
    }
    let epoch = edge.position().epoch;
    let request = Request {
        ch: channel.as_str(),
        epoch: &epoch,
        after: 0,
        before: None,
        limit: 1,
        order: Order::Desc,
    };
    tokio::time::timeout(LAG_WAIT, read(edge, user, &request))
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|page| page.events.first().map(|k| k.seq))
        .unwrap_or(0)
}

/// How a resume by seq continues when the stream lost events after `since`: the
/// archive's first page of what follows `since`, up to `before` (the stream's oldest
/// event of the channel after `since`), the rest read on from there.
#[derive(Debug)]
pub struct Bridgehead {
    pub first: Page,
    pub before: Option<u64>,
}

/// Whether the archive covers what the stream lost of `channel` after `since`; if so,
/// where the replay starts (its first page holds at most `limit` events). `None`: not
/// archived, behind, or not answering.
pub async fn bridgehead(
    edge: &Edge,
    user: &str,
    channel: &ChannelName,
    since: u64,
    position: &StreamPosition,
    limit: usize,
) -> Result<Option<Bridgehead>, Refusal> {
    if !edge.archive.holds(channel) {
        return Ok(None);
    }
    let durable = channel.subject(SubjectKind::Durable);
    let first_kept = edge
        .store
        .forward(&durable, since + 1, 1)
        .await
        .map_err(Refusal::unavailable)?
        .first()
        .map(|e| e.seq);
    let request = Request {
        ch: channel.as_str(),
        epoch: &position.epoch,
        after: since,
        before: first_kept,
        limit: limit.clamp(1, PAGE),
        order: Order::Asc,
    };
    let needed = resume_needed(first_kept, position.last_seq);
    Ok(read_covering(edge, user, &request, needed)
        .await
        // The archive must also reach back to the first event after `since`.
        .filter(|first| first.from <= since + 1)
        .map(|first| Bridgehead {
            first,
            before: first_kept,
        }))
}

/// `{"op":"ok","id":<id>,"events":[<evt frames>]}` from frames already encoded, so an
/// archived event reads the same in `history` as in a replay.
pub fn history_reply(id: Option<u64>, frames: &[Utf8Bytes]) -> Bytes {
    let mut out = String::with_capacity(frames.iter().map(|f| f.len() + 1).sum::<usize>() + 48);
    out.push_str(r#"{"op":"ok","#);
    if let Some(id) = id {
        out.push_str(&format!(r#""id":{id},"#));
    }
    out.push_str(r#""events":["#);
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(frame);
    }
    out.push_str("]}");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use switchboard_schemas::frame::{EvtFrame, OkReply};
    use switchboard_schemas::{EventType, ServerFrame};

    use super::*;

    fn kept(seq: u64) -> Kept {
        Kept {
            seq,
            event: Envelope::new(
                EventType::parse("message.new").unwrap(),
                RawJson::encode(&serde_json::json!({"text": format!("m{seq}")})).unwrap(),
            ),
            deleted: false,
        }
    }

    fn seqs(page: &[Kept]) -> Vec<u64> {
        page.iter().map(|k| k.seq).collect()
    }

    #[test]
    fn only_the_archived_namespaces_are_read_from_the_archive() {
        let conversation = ChannelName::parse("conversation:c1").unwrap();
        let alias = ChannelName::parse("user:u1:messages").unwrap();
        let archive = Archive::new(&[Namespace::Conversation]);
        assert!(archive.holds(&conversation) && !archive.holds(&alias));
        assert!(Archive::new(&[Namespace::User]).holds(&alias));
        assert!(!Archive::new(&[]).holds(&conversation));
    }

    /// A full page from the stream needs nothing more; a short one continues below the
    /// stream's oldest event, and must meet it.
    #[test]
    fn the_archive_continues_below_the_streams_oldest_event() {
        assert_eq!(shortfall(&[5, 6, 7], 3, None, 100), None);
        assert_eq!(
            shortfall(&[40, 41], 5, Some(50), 100),
            Some(Shortfall {
                before: Some(40),
                limit: 3,
                needed: 39,
                joined: true,
            })
        );
        // Nothing below `before` in the stream: the archive answers for all of it, and
        // need not have processed past the stream's end.
        let alone = shortfall(&[], 4, Some(500), 100).unwrap();
        assert_eq!(
            (alone.before, alone.needed, alone.joined),
            (Some(500), 100, false)
        );
        assert_eq!(shortfall(&[], 4, Some(60), 100).unwrap().needed, 59);
        assert_eq!(shortfall(&[], 4, None, 100).unwrap().needed, 100);
    }

    #[test]
    fn archive_and_stream_join_in_order_without_duplicates() {
        let archive = vec![kept(39), kept(30), kept(30), kept(12), kept(40)];
        let stream = vec![kept(40), kept(44)];
        assert_eq!(
            seqs(&join_newest(archive.clone(), stream.clone(), 10)),
            [12, 30, 39, 40, 44]
        );
        // An archive that sends more than asked gives only its newest.
        assert_eq!(seqs(&join_newest(archive, stream, 2)), [30, 39, 40, 44]);
        assert_eq!(
            seqs(&join_newest(vec![kept(9), kept(3)], vec![], 5)),
            [3, 9]
        );
        assert_eq!(seqs(&join_newest(vec![], vec![kept(1)], 5)), [1]);
    }

    #[test]
    fn a_resume_needs_the_archive_up_to_the_streams_part() {
        assert_eq!(resume_needed(Some(120), 500), 119);
        assert_eq!(resume_needed(None, 500), 500);
    }

    #[test]
    fn archived_events_make_the_streams_frames() {
        let event = kept(1201);
        let label = ChannelName::parse("conversation:c1").unwrap();
        let stream_frame = EvtFrame {
            ch: label.clone(),
            seq: 1201,
            event: event.event.clone(),
        }
        .encode();
        assert_eq!(event.frame(&label).as_bytes(), &stream_frame[..]);

        let deleted = Kept {
            deleted: true,
            event: Envelope {
                data: RawJson::encode(&serde_json::json!({})).unwrap(),
                ..event.event.clone()
            },
            ..event
        };
        let frame: serde_json::Value = serde_json::from_str(&deleted.frame(&label)).unwrap();
        assert_eq!(frame["op"], "evt");
        assert_eq!(frame["seq"], 1201);
        assert_eq!(frame["event"]["deleted"], true);
        assert_eq!(frame["event"]["data"], serde_json::json!({}));
        assert_eq!(frame["event"]["id"], deleted.event.id.as_str());
    }

    #[test]
    fn answers_are_read_with_the_deleted_mark_in_either_place() {
        let answer = br#"{"events":[
            {"seq":7,"event":{"id":"evt_1","type":"message.new","timestamp":"2026-11-22T14:30:00Z","data":{"text":"hi","editedAt":"2026-11-22T14:31:00Z"}}},
            {"seq":8,"event":{"id":"evt_2","type":"message.new","timestamp":"2026-11-22T14:30:00Z","data":{},"deleted":true}},
            {"seq":9,"deleted":true,"event":{"id":"evt_3","type":"message.new","timestamp":"2026-11-22T14:30:00Z","data":{}}},
            {"seq":10,"event":{"type":"not an envelope"}}
        ],"through":12}"#;
        let page = Page::parse(answer).unwrap();
        assert_eq!(page.through, 12);
        assert_eq!(seqs(&page.events), [7, 8, 9]);
        assert_eq!(
            page.events.iter().map(|k| k.deleted).collect::<Vec<_>>(),
            [false, true, true]
        );
        assert!(page.events[0].event.data.as_str().contains("editedAt"));
        assert!(Page::parse(br#"{"events":[]}"#).is_err());
        assert!(Page::parse(b"[]").is_err());
    }

    #[test]
    fn a_history_reply_reads_like_the_one_serde_writes() {
        let label = ChannelName::parse("conversation:c1").unwrap();
        let events = [kept(3), kept(4)];
        let frames: Vec<Utf8Bytes> = events.iter().map(|k| k.frame(&label)).collect();
        for id in [Some(6), None] {
            let expected = ServerFrame::Ok {
                id,
                reply: OkReply::History {
                    events: events
                        .iter()
                        .map(|k| EvtFrame {
                            ch: label.clone(),
                            seq: k.seq,
                            event: k.event.clone(),
                        })
                        .collect(),
                },
            }
            .encode();
            assert_eq!(history_reply(id, &frames), expected);
        }
    }
}
