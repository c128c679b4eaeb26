//! Server-Sent Events and long polling: the same subscriptions as the socket, for
//! clients that cannot hold a WebSocket.
//!
//! Both hold their subscriptions through the lifecycle every transport shares
//! ([`crate::lifecycle`]: start, re-check, revoke, teardown) in a `Feed`: a mailbox with
//! subscriptions to a few channels, resumed from a [`Cursor`]. What is theirs alone is the
//! form: SSE events and poll answers, and the cursor. The cursor is opaque
//! to clients: the stream epoch and, per channel, the last seq delivered, as base64url
//! JSON. Every `evt` carries the cursor after it, so a client resumes from exactly where
//! it stopped (`Last-Event-ID` for SSE, `cursor=` for polling).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchboard_schemas::{ByeCode, ChannelName, ErrorCode, ResumeFrom, ServerFrame, TypeFilters};

use crate::Edge;
use crate::admission::{OpenQuery, authenticate};
use crate::auth::Identity;
use crate::hub::Subscription;
use crate::lifecycle::{self, Setup, Subscriptions};
use crate::limits::UserSlot;
use crate::mailbox::{ConnControl, Mailbox, Outgoing};
use crate::refusal::Refusal;
use crate::subscribe;
use axum::extract::ws::Utf8Bytes;

/// Longest a poll may wait for events.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Most events one poll answer carries; the cursor lets the next poll continue.
const MAX_POLL_EVENTS: usize = 1000;

/// Where a client is: the stream epoch and the last seq delivered per channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(rename = "e")]
    pub epoch: String,
    #[serde(rename = "s")]
    pub seqs: BTreeMap<String, u64>,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// A fallback client's subscriptions, ended when dropped.
struct Feed {
    edge: Arc<Edge>,
    identity: Identity,
    control: Arc<ConnControl>,
    rx: Outgoing,
    /// Kept so that `rx` stays open when every subscription is gone (all failed): the
    /// feed then ends by `control`, telling why, instead of falling silent.
    _mailbox: Mailbox,
    subs: Subscriptions,
    /// Why a subscription could not be set up after the answer started (the first, named
    /// by its channel); the feed then ends, telling it.
    failure: Arc<std::sync::Mutex<Option<Refusal>>>,
    _slot: UserSlot,
}

/// What a request asked for, checked: who, which channels (each with the presence
/// service's say, where it was asked), from where.
struct Opening {
    identity: Identity,
    slot: UserSlot,
    channels: lifecycle::Named,
    cursor: Option<Cursor>,
}

async fn open_request(
    edge: &Edge,
    headers: &HeaderMap,
    query: &OpenQuery,
) -> Result<Opening, Refusal> {
    let (identity, slot) = authenticate(edge, headers, query.token.as_deref()).await?;
    query.presence()?;
    if query.channels.is_empty() {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            "name at least one channel: ?ch=<channel>",
        ));
    }
    let channels = lifecycle::check_named(edge, &identity, &query.channels).await?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let cursor = match last_event_id.or_else(|| query.cursor.clone()) {
        Some(text) => Some(Cursor::decode(&text).ok_or_else(|| {
            Refusal::new(
                ErrorCode::BadRequest,
                "the cursor is not one this edge gave",
            )
        })?),
        None => None,
    };
    Ok(Opening {
        identity,
        slot,
        channels,
        cursor,
    })
}

impl Feed {
    /// Subscribes to every channel, resuming from the cursor where it knows the channel.
    fn open(edge: &Arc<Edge>, opening: Opening, reply: bool) -> Feed {
        let (mailbox, rx) = edge.open_mailbox(opening.identity.user.clone());
        let control = mailbox.control.clone();
        let mut subs = Subscriptions::default();
        let failure: Arc<std::sync::Mutex<Option<Refusal>>> = Arc::default();
        for (label, privacy) in opening.channels {
            let since = opening.cursor.as_ref().and_then(|c| {
                c.seqs.get(label.as_str()).map(|seq| ResumeFrom::Seq {
                    seq: *seq,
                    epoch: c.epoch.clone(),
                })
            });
            let subscription = Subscription {
                key: crate::hub::subscription_key(),
                user: opening.identity.user.clone(),
                label,
                filters: TypeFilters::all(),
                mailbox: mailbox.clone(),
            };
            let setup = Setup {
                id: None,
                since,
                reply,
                privacy,
            };
            let label = subscription.label.clone();
            let work = subs.begin(edge, &opening.identity, subscription, setup);
            let (failed, failure) = (control.clone(), failure.clone());
            tokio::spawn(async move {
                if let Err(refusal) = work.await {
                    failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(lifecycle::named_in(&label, refusal));
                    failed.end(ByeCode::Draining);
                }
            });
        }
        edge.metrics.gauge(&edge.metrics.connections, 1);
        Feed {
            edge: edge.clone(),
            identity: opening.identity,
            control,
            rx,
            _mailbox: mailbox,
            subs,
            failure,
            _slot: opening.slot,
        }
    }

    /// Why a subscription failed after the answer started, if one did.
    fn failure(&self) -> Option<Refusal> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Feed {
    /// Re-authorizes the subscriptions to `channels` (changed membership, a watched
    /// user's privacy) and ends those the user may no longer read: the `unsubbed`
    /// frame of each.
    async fn revoke(&mut self, channels: &[ChannelName]) -> Vec<Bytes> {
        let outcome = lifecycle::recheck(&self.edge, &self.identity, self.subs.labels(), channels);
        let mut lost = outcome.revoke;
        lost.extend(
            lifecycle::no_longer_allowed(&self.edge, &self.identity.user, outcome.ask_privacy)
                .await,
        );
        lost.into_iter()
            .filter(|label| self.subs.end(&self.edge, label))
            .map(|label| {
                ServerFrame::Unsubbed {
                    ch: label,
                    code: switchboard_schemas::UnsubCode::Revoked,
                }
                .encode()
            })
            .collect()
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.subs.end_all(&self.edge);
        self.edge.metrics.gauge(&self.edge.metrics.connections, -1);
    }
}

/// The parts of a queued frame the cursor needs.
#[derive(Deserialize)]
struct Peek<'a> {
    op: &'a str,
    ch: Option<&'a str>,
    seq: Option<u64>,
}

/// `GET /v1/sse?ch=...`: events as `event: evt`, `id: <cursor>`, `data: <evt frame>`.
pub async fn sse(State(edge): State<Arc<Edge>>, headers: HeaderMap, query: OpenQuery) -> Response {
    let opening = match open_request(&edge, &headers, &query).await {
        Ok(opening) => opening,
        Err(refused) => return refused.into_response(),
    };
    let expires = opening.identity.exp;
    let epoch = edge.position().epoch;
    let cursor = match &opening.cursor {
        Some(cursor) if cursor.epoch == epoch => cursor.clone(),
        _ => Cursor {
            epoch,
            seqs: BTreeMap::new(),
        },
    };
    let feed = Feed::open(&edge, opening, true);
    let leeway = edge.config.jwt_leeway_s as i64;
    let state = SseState {
        feed,
        cursor,
        queued: VecDeque::new(),
        ending: false,
    };
    let stream = futures_util::stream::unfold(Some(state), move |state| async move {
        let mut state = state?;
        if let Some(event) = state.queued.pop_front() {
            return Some((Ok(event), Some(state)));
        }
        if state.ending {
            return None;
        }
        let SseState {
            feed,
            cursor,
            queued,
            ending,
        } = &mut state;
        let left = expires + leeway - time::OffsetDateTime::now_utc().unix_timestamp();
        let expiry = tokio::time::sleep(Duration::from_secs(left.max(0) as u64));
        let event = tokio::select! {
            frame = feed.rx.recv() => match frame {
                Some(frame) => sse_event(&frame, cursor),
                None => return None,
            },
            _ = feed.control.ended() => {
                let code = feed.control.reason().unwrap_or(ByeCode::Draining);
                *ending = true;
                let mut last = ending_events(feed.failure().as_ref(), code);
                let first = last.remove(0);
                queued.extend(last);
                first
            }
            channels = feed.control.rechecks() => {
                let lost = feed.revoke(&channels).await;
                // What was queued before the revocation goes first: the `ok` of a
                // subscription revoked as soon as it was set up, events delivered before.
                let mut before = VecDeque::new();
                feed.rx.take_now(&mut before);
                queued.extend(before.iter().map(|frame| sse_event(frame, cursor)));
                queued.extend(lost.iter().map(|frame| {
                    Event::default()
                        .event("unsubbed")
                        .data(String::from_utf8_lossy(frame))
                }));
                // A stream left with no channel ends after its last `unsubbed`.
                *ending = feed.subs.labels().next().is_none();
                Event::default().comment("subscriptions checked")
            }
            _ = expiry => {
                *ending = true;
                bye(ByeCode::TokenExpired)
            }
        };
        Some((Ok::<_, Infallible>(event), Some(state)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(edge.config.heartbeat()))
        .into_response()
}

/// An SSE stream between events.
struct SseState {
    feed: Feed,
    cursor: Cursor,
    /// Events to send before waiting again (a re-check may revoke several channels).
    queued: VecDeque<Event>,
    /// The stream ends once `queued` is sent.
    ending: bool,
}

/// The last events of an SSE stream: why a subscription failed, if one did, as an `err`
/// event (the socket's `err` frame, without `id`), then `bye`.
fn ending_events(failure: Option<&Refusal>, code: ByeCode) -> Vec<Event> {
    let mut events = Vec::with_capacity(2);
    if let Some(refusal) = failure {
        events.push(
            Event::default()
                .event("err")
                .data(String::from_utf8_lossy(&refusal.frame(None))),
        );
    }
    events.push(bye(code));
    events
}

fn bye(code: ByeCode) -> Event {
    Event::default()
        .event("bye")
        .data(String::from_utf8_lossy(&ServerFrame::bye(code).encode()))
}

/// One queued frame as an SSE event, moving the cursor past `evt` and `ok` frames.
fn sse_event(frame: &Utf8Bytes, cursor: &mut Cursor) -> Event {
    let text: &str = frame;
    let peek: Option<Peek> = serde_json::from_str(text).ok();
    let op = peek.as_ref().map_or("err", |p| p.op);
    let mut event = Event::default().event(op).data(text);
    if let Some(Peek {
        ch: Some(ch),
        seq: Some(seq),
        ..
    }) = peek
        && (op == "evt" || op == "ok")
    {
        // An `ok` names the channel's head: the cursor starts there unless it knew more.
        let known = cursor.seqs.entry(ch.to_string()).or_insert(seq);
        if op == "evt" {
            *known = seq;
        }
        event = event.id(cursor.encode());
    }
    event
}

/// `GET /v1/poll?ch=...&cursor=...&wait=<s>`: `{"events":[<evt frames>],"cursor":"..."}`.
pub async fn poll(State(edge): State<Arc<Edge>>, headers: HeaderMap, query: OpenQuery) -> Response {
    let wait = match query.wait.as_deref().map(str::parse::<u64>) {
        None => Duration::from_secs(25),
        Some(Ok(s)) => Duration::from_secs(s).min(MAX_WAIT),
        Some(Err(_)) => {
            return Refusal::new(ErrorCode::BadRequest, "wait is a number of seconds")
                .into_response();
        }
    };
    let opening = match open_request(&edge, &headers, &query).await {
        Ok(opening) => opening,
        Err(refused) => return refused.into_response(),
    };
    let epoch = edge.position().epoch;
    let recovered = opening.cursor.as_ref().is_none_or(|c| c.epoch == epoch);
    let mut cursor = match opening.cursor.clone() {
        Some(cursor) if cursor.epoch == epoch => cursor,
        _ => {
            // No cursor (or one from another epoch): answer at once with the heads.
            let mut cursor = Cursor {
                epoch,
                seqs: BTreeMap::new(),
            };
            for (channel, _) in &opening.channels {
                let user = &opening.identity.user;
                let head = match subscribe::last_seq(&edge, user, &channel.base()).await {
                    Ok(head) => head,
                    Err(refusal) => return refusal.into_response(),
                };
                cursor.seqs.insert(channel.to_string(), head);
            }
            return poll_answer(&[], &cursor, recovered);
        }
    };
    // Judged per channel, as for a socket's `since` (docs/protocol.md, sections 6 and
    // 10.10): the stream, or the archive where the stream lost events.
    let mut recovered = recovered;
    let position = edge.position();
    for (channel, _) in &opening.channels {
        if let Some(seq) = cursor.seqs.get(channel.as_str()) {
            let user = &opening.identity.user;
            match subscribe::recoverable(&edge, user, &channel.base(), *seq, &position).await {
                Ok(kept) => recovered &= kept,
                Err(refusal) => return refusal.into_response(),
            }
        }
    }
    // Channels new to the cursor start at their head, like a fresh subscription.
    let mut opening = opening;
    for (channel, _) in &opening.channels {
        if !cursor.seqs.contains_key(channel.as_str()) {
            let user = &opening.identity.user;
            let head = match subscribe::last_seq(&edge, user, &channel.base()).await {
                Ok(head) => head,
                Err(refusal) => return refusal.into_response(),
            };
            cursor.seqs.insert(channel.to_string(), head);
        }
    }
    opening.cursor = Some(cursor.clone());
    let mut feed = Feed::open(&edge, opening, false);
    let mut events: Vec<Utf8Bytes> = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    // Wait for the first event, then take whatever else is already there.
    loop {
        let frame = if events.is_empty() {
            tokio::select! {
                frame = feed.rx.recv() => frame,
                _ = tokio::time::sleep_until(deadline) => None,
                _ = feed.control.ended() => None,
                // A lost membership ends the wait: the next poll is refused.
                channels = feed.control.rechecks() => match feed.revoke(&channels).await.first() {
                    Some(_) => None,
                    None => continue,
                },
            }
        } else {
            tokio::time::timeout(Duration::from_millis(20), feed.rx.recv())
                .await
                .unwrap_or_default()
        };
        let Some(frame) = frame else { break };
        let text: &str = &frame;
        if let Ok(Peek {
            op: "evt",
            ch: Some(ch),
            seq: Some(seq),
        }) = serde_json::from_str::<Peek>(text)
        {
            cursor.seqs.insert(ch.to_string(), seq);
            events.push(frame);
            if events.len() >= MAX_POLL_EVENTS {
                break;
            }
        }
    }
    // A channel that could not be set up: the poll answers its refusal, and the cursor
    // it was sent stays where it was (the events taken meanwhile come again).
    let failure = feed.failure();
    drop(feed);
    match failure {
        Some(refusal) => refusal.into_response(),
        None => poll_answer(&events, &cursor, recovered),
    }
}

fn poll_answer(events: &[Utf8Bytes], cursor: &Cursor, recovered: bool) -> Response {
    let mut body = String::from("{\"events\":[");
    for (i, frame) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(frame);
    }
    body.push_str("],\"cursor\":");
    body.push_str(&serde_json::to_string(&cursor.encode()).unwrap_or_default());
    body.push_str(",\"recovered\":");
    body.push_str(if recovered { "true" } else { "false" });
    body.push('}');
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_anything_else_is_refused() {
        let mut seqs = BTreeMap::new();
        seqs.insert("conversation:c1".to_string(), 1301);
        seqs.insert("user:u1:notifications".to_string(), 7);
        let cursor = Cursor {
            epoch: "1763823000123456789".into(),
            seqs,
        };
        let text = cursor.encode();
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(Cursor::decode(&text), Some(cursor));
        for bad in ["", "not base64!", "e30", "eyJlIjoxfQ"] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    async fn body(response: Response) -> (u16, String) {
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    /// docs/protocol.md, section 11.1: a subscription that fails after the stream
    /// started is named in an `err` event before the `bye`.
    #[tokio::test]
    async fn a_failure_after_the_stream_started_is_told_before_bye() {
        let channel = ChannelName::parse("conversation:c1").unwrap();
        let refusal = lifecycle::named_in(
            &channel,
            Refusal::unavailable("channel unavailable: no responders"),
        );
        let events = ending_events(Some(&refusal), ByeCode::Draining);
        let stream = futures_util::stream::iter(events.into_iter().map(Ok::<_, Infallible>));
        let (_, text) = body(Sse::new(stream).into_response()).await;
        let err = r#"{"op":"err","code":"unavailable","message":"conversation:c1: channel unavailable: no responders"}"#;
        let bye = String::from_utf8(ServerFrame::bye(ByeCode::Draining).encode().to_vec()).unwrap();
        assert_eq!(
            text,
            format!("event: err\ndata: {err}\n\nevent: bye\ndata: {bye}\n\n")
        );
        // Without a failure (the edge drains, the token expires) only `bye`.
        let events = ending_events(None, ByeCode::TokenExpired);
        assert_eq!(events.len(), 1);
    }

    /// docs/protocol.md, section 11.2: a poll whose subscription failed answers the
    /// refusal, named by its channel, in the form of any HTTP error.
    #[tokio::test]
    async fn a_poll_whose_channel_failed_answers_the_refusal() {
        let channel = ChannelName::parse("project:p1").unwrap();
        let refusal =
            lifecycle::named_in(&channel, Refusal::unavailable("channel unavailable: gone"));
        let (status, text) = body(refusal.into_response()).await;
        assert_eq!(status, 503);
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            answer,
            serde_json::json!({"code":"unavailable","message":"project:p1: channel unavailable: gone"})
        );
    }
}
