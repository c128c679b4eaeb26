//! History and resume past the stream (docs/protocol.md, sections 4.7 and 6): a real edge, a
//! real `switchboard-workers` process running the archive job, real NATS and
//! PostgreSQL. A conversation's older events are purged from `EVENTS`; `history`, `sub`
//! with `since`, SSE and long polling continue into the archive with the same frames
//! and seqs, no gap and no duplicate.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use support::*;
use switchboard_testkit::{
    Workers, WorkersWithPostgres, archived_through, events_epoch, purge_events,
};

const CH: &str = "conversation:c1";
/// Events of the conversation the stream keeps after the purge.
const KEPT: u64 = 6;

async fn workers(stack: &Stack) -> WorkersWithPostgres {
    Workers::new(stack.nats.env(Role::Workers), "archive")
        .start_with_postgres()
        .await
}

/// What the conversation holds: its evt frames as a subscriber saw them live, by seq.
struct Conversation {
    frames: BTreeMap<u64, Value>,
    original: u64,
    edited: u64,
    deleted: u64,
}

impl Conversation {
    fn seqs(&self) -> Vec<u64> {
        self.frames.keys().copied().collect()
    }

    /// The frame the archive should give for `seq`: the live one, with an edited
    /// message's current text and a deleted one's mark.
    fn expected(&self, seq: u64, frame: &Value) -> Value {
        let mut expected = self.frames[&seq].clone();
        if seq == self.edited {
            expected["event"]["data"]["text"] = json!("edited");
            expected["event"]["data"]["editedAt"] = frame["event"]["data"]["editedAt"].clone();
        }
        if seq == self.deleted {
            expected["event"]["data"] = json!({});
            expected["event"]["deleted"] = json!(true);
        }
        expected
    }
}

/// Publishes 20 messages with other channels' events in between (so the
/// conversation's seqs are not consecutive), an edit of one and a deletion of another,
/// and records every frame a live subscriber got.
async fn converse(stack: &Stack, edge: &Edge) -> Conversation {
    stack.add_member(CH, "u1").await;
    let mut live = edge.connect("u1").await;
    assert_eq!(live.sub_member(json!({"ch": CH})).await["op"], "ok");
    let mut seqs = Vec::new();
    for n in 0..20 {
        let seq = stack
            .publish(CH, "message.new", json!({"text": format!("m{n}")}))
            .await;
        seqs.push(seq);
        stack.publish("project:p1", "bid.new", json!({})).await;
    }
    let (original, deleted) = (seqs[3], seqs[5]);
    stack
        .publish(
            CH,
            "message.edited",
            json!({"seq": original, "text": "edited"}),
        )
        .await;
    stack
        .publish(CH, "message.deleted", json!({"seq": deleted}))
        .await;
    let frames: BTreeMap<u64, Value> = live
        .events(22)
        .await
        .into_iter()
        .map(|f| (f["seq"].as_u64().unwrap(), f))
        .collect();
    assert_eq!(frames.len(), 22);
    Conversation {
        frames,
        original,
        edited: original,
        deleted,
    }
}

/// Pages back through `history` with `limit` per page, newest first; the pages joined
/// in ascending order.
async fn history_pages(client: &mut Client, limit: u64) -> Vec<Value> {
    let mut pages: Vec<Vec<Value>> = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut frame = json!({"op": "history", "ch": CH, "limit": limit});
        if let Some(before) = before {
            frame["before"] = json!(before);
        }
        let reply = client.request(frame).await;
        assert_eq!(reply["op"], "ok", "{reply}");
        let events = reply["events"].as_array().unwrap().clone();
        let Some(oldest) = events.first() else { break };
        before = oldest["seq"].as_u64();
        pages.push(events);
    }
    pages.into_iter().rev().flatten().collect()
}

fn assert_same(conversation: &Conversation, frames: &[Value]) {
    assert_eq!(
        seqs(frames),
        conversation.seqs(),
        "every seq once, in order"
    );
    for frame in frames {
        let seq = frame["seq"].as_u64().unwrap();
        assert_eq!(
            *frame,
            conversation.expected(seq, frame),
            "frame of seq {seq}"
        );
    }
}

#[tokio::test]
async fn history_and_resume_continue_into_the_archive_after_a_purge() {
    let stack = Stack::start().await;
    let _workers = workers(&stack).await;
    let edge = stack.edge(&[]);
    let conversation = converse(&stack, &edge).await;
    let all = conversation.seqs();
    let last = *all.last().unwrap();
    archived_through(&stack.client, CH, last).await;
    purge_events(&stack.client, "rt.conversation.c1", KEPT).await;
    let boundary = all[all.len() - KEPT as usize];

    let mut client = edge.connect("u1").await;
    // (a) History pages, newest first, across the boundary: pages of 4 split the
    // stream's 6 events 4 + 2, and the archive continues the second page.
    let frames = history_pages(&mut client, 4).await;
    assert_same(&conversation, &frames);
    // The edit reached the archive's copy of the original, and the deletion its mark.
    let edited = frames
        .iter()
        .find(|f| f["seq"] == conversation.original)
        .unwrap();
    assert_eq!(edited["event"]["data"]["text"], "edited");
    assert!(edited["event"]["data"]["editedAt"].is_string(), "{edited}");
    let deleted = frames
        .iter()
        .find(|f| f["seq"] == conversation.deleted)
        .unwrap();
    assert_eq!(deleted["event"]["deleted"], true, "{deleted}");
    // A page that ends exactly at the boundary, and one from above the newest.
    let page = client
        .request(json!({"op": "history", "ch": CH, "before": boundary, "limit": 3}))
        .await;
    assert_eq!(
        seqs(page["events"].as_array().unwrap()),
        all[all.len() - KEPT as usize - 3..all.len() - KEPT as usize].to_vec()
    );
    let page = client
        .request(json!({"op": "history", "ch": CH, "before": last + 1000, "limit": 100}))
        .await;
    assert_same(&conversation, page["events"].as_array().unwrap());

    // (b) A resume from before the purge: recovered, everything after `since` once, in
    // order, then live events.
    let epoch = events_epoch(&stack.client).await;
    let since = all[1];
    let ok = client
        .sub(json!({"ch": CH, "since": {"seq": since, "epoch": epoch}}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    assert_eq!(ok["recovered"], true, "{ok}");
    let replayed = client.events(all.len() - 2).await;
    let expected: Vec<u64> = all[2..].to_vec();
    assert_eq!(seqs(&replayed), expected);
    for frame in &replayed {
        let seq = frame["seq"].as_u64().unwrap();
        assert_eq!(*frame, conversation.expected(seq, frame));
    }
    let fresh = stack
        .publish(CH, "message.new", json!({"text": "live"}))
        .await;
    let live = client.events(1).await;
    assert_eq!(seqs(&live), [fresh]);
    assert_eq!(client.no_more_events().await, None);

    // `since.last` reaches into the archive too.
    let mut other = edge.connect("u1").await;
    let ok = other.sub(json!({"ch": CH, "since": {"last": 10}})).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let newest = other.events(10).await;
    let mut expected: Vec<u64> = all[all.len() - 9..].to_vec();
    expected.push(fresh);
    assert_eq!(seqs(&newest), expected);

    // Long polling resumes from a cursor the same way: the first poll says recovered,
    // and the polls after it go on from its cursor.
    let cursor = serde_json::to_vec(&json!({"e": epoch, "s": {CH: since}})).unwrap();
    let mut cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cursor);
    let bearer = format!("Bearer {}", token("u1", 3600, &[]));
    let mut polled = Vec::new();
    for round in 0.. {
        assert!(round < 20, "polled only {:?}", seqs(&polled));
        let path = format!("/v1/poll?ch={CH}&cursor={cursor}&wait=2");
        let (status, body) = http_as(&edge.addr, "GET", &path, &bearer, "").await;
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        if round == 0 {
            assert_eq!(answer["recovered"], true, "{answer}");
        }
        polled.extend(answer["events"].as_array().unwrap().iter().cloned());
        cursor = answer["cursor"].as_str().unwrap().to_string();
        if polled.last().is_some_and(|f| f["seq"] == fresh) {
            break;
        }
    }
    let mut expected: Vec<u64> = all[2..].to_vec();
    expected.push(fresh);
    assert_eq!(seqs(&polled), expected);
}

/// A conversation purged entirely from the stream: the archive answers for all of it.
#[tokio::test]
async fn a_conversation_gone_from_the_stream_is_read_from_the_archive() {
    let stack = Stack::start().await;
    let _workers = workers(&stack).await;
    let edge = stack.edge(&[]);
    let conversation = converse(&stack, &edge).await;
    let all = conversation.seqs();
    archived_through(&stack.client, CH, *all.last().unwrap()).await;
    purge_events(&stack.client, "rt.conversation.c1", 0).await;

    let mut client = edge.connect("u1").await;
    assert_same(&conversation, &history_pages(&mut client, 7).await);
    // `since.last` on a channel the stream holds nothing of.
    let mut latest = edge.connect("u1").await;
    let ok = latest.sub(json!({"ch": CH, "since": {"last": 5}})).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    assert_eq!(
        ok["seq"],
        *all.last().unwrap(),
        "ok names the archive's last seq"
    );
    // So does a long poll's first cursor.
    let bearer = format!("Bearer {}", token("u1", 3600, &[]));
    let path = format!("/v1/poll?ch={CH}");
    let (status, body) = http_as(&edge.addr, "GET", &path, &bearer, "").await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(answer["cursor"].as_str().unwrap())
        .unwrap();
    let cursor: Value = serde_json::from_slice(&cursor).unwrap();
    assert_eq!(cursor["s"][CH], *all.last().unwrap(), "{cursor}");
    assert_eq!(seqs(&latest.events(5).await), all[all.len() - 5..].to_vec());
    let epoch = events_epoch(&stack.client).await;
    let ok = client
        .sub(json!({"ch": CH, "since": {"seq": all[0], "epoch": epoch}}))
        .await;
    assert_eq!(ok["recovered"], true, "{ok}");
    assert_eq!(seqs(&client.events(all.len() - 1).await), all[1..].to_vec());
    let fresh = stack
        .publish(CH, "message.new", json!({"text": "live"}))
        .await;
    assert_eq!(seqs(&client.events(1).await), [fresh]);

    // SSE resumes from a cursor through the archive as well: `ok` recovered, then
    // every frame after it, the archive's as the socket got them.
    let cursor = serde_json::to_vec(&json!({"e": epoch, "s": {CH: all[0]}})).unwrap();
    let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cursor);
    let bearer = format!("Bearer {}", token("u1", 3600, &[]));
    let mut sse = SseStream::open(
        &edge.addr,
        &format!("ch={CH}"),
        &[("Authorization", &bearer), ("Last-Event-ID", &cursor)],
    )
    .await;
    let (name, _, data) = sse.next().await;
    assert_eq!(name, "ok", "{data}");
    let ok: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(ok["recovered"], true, "{ok}");
    let mut streamed = Vec::new();
    while streamed.len() < all.len() {
        let (name, _, data) = sse.next().await;
        assert_eq!(name, "evt", "{data}");
        streamed.push(serde_json::from_str::<Value>(&data).unwrap());
    }
    let mut expected = all[1..].to_vec();
    expected.push(fresh);
    assert_eq!(seqs(&streamed), expected);
    for frame in &streamed[..all.len() - 1] {
        let seq = frame["seq"].as_u64().unwrap();
        assert_eq!(*frame, conversation.expected(seq, frame));
    }
}

/// A hung archive worker (stopped, not crashed: NATS still has its subscription, so the
/// request is not refused at once) keeps a `sub` to a conversation the stream holds
/// nothing of waiting for the archive's last seq only briefly, not for the RPC timeout;
/// the `ok` then names what the stream knows.
#[tokio::test]
async fn a_hung_archive_holds_a_sub_back_only_briefly() {
    let stack = Stack::start().await;
    let workers = workers(&stack).await;
    let edge = stack.edge(&[("SWITCHBOARD_RPC_TIMEOUT_MS", "60000")]);
    let conversation = converse(&stack, &edge).await;
    let all = conversation.seqs();
    archived_through(&stack.client, CH, *all.last().unwrap()).await;
    purge_events(&stack.client, "rt.conversation.c1", 0).await;

    workers.process.signal(libc::SIGSTOP);
    let mut client = edge.connect("u1").await;
    let asked = Instant::now();
    let ok = client.sub(json!({"ch": CH})).await;
    let waited = asked.elapsed();
    workers.process.signal(libc::SIGCONT);
    assert_eq!(ok["op"], "ok", "{ok}");
    assert_eq!(
        ok["seq"], 0,
        "without the archive's answer, the stream's head: {ok}"
    );
    // The edge waits 2 s for the archive (docs/protocol.md, section 4.2); the RPC
    // timeout is a minute here.
    assert!(
        waited < Duration::from_secs(8),
        "the sub waited {waited:?} for a stopped worker"
    );

    // Back: the same sub names the archive's last seq again.
    let mut again = edge.connect("u1").await;
    let ok = again.sub(json!({"ch": CH})).await;
    assert_eq!(ok["seq"], *all.last().unwrap(), "{ok}");
}

/// Without workers there is no archive: history and resume answer from the stream
/// alone, `recovered: false`, and the session goes on.
#[tokio::test]
async fn without_the_archive_a_resume_is_not_recovered_and_the_session_lives() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let conversation = converse(&stack, &edge).await;
    let all = conversation.seqs();
    purge_events(&stack.client, "rt.conversation.c1", KEPT).await;
    let kept = all[all.len() - KEPT as usize..].to_vec();

    let mut client = edge.connect("u1").await;
    let page = client
        .request(json!({"op": "history", "ch": CH, "limit": 50}))
        .await;
    assert_eq!(seqs(page["events"].as_array().unwrap()), kept);
    let epoch = events_epoch(&stack.client).await;
    let ok = client
        .sub(json!({"ch": CH, "since": {"seq": all[1], "epoch": epoch}}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    assert_eq!(ok["recovered"], false, "{ok}");
    assert_eq!(seqs(&client.events(kept.len()).await), kept);
    let pong = client.request(json!({"op": "ping"})).await;
    assert_eq!(pong["op"], "pong");
}

/// A channel outside the archived namespaces never asks the archive: its resume past a
/// purge is not recovered even with the archive job running.
#[tokio::test]
async fn channels_that_are_not_archived_behave_as_before() {
    let stack = Stack::start().await;
    let _workers = workers(&stack).await;
    let edge = stack.edge(&[]);
    stack.add_member("project:p9", "u1").await;
    let mut seqs_p9 = Vec::new();
    for _ in 0..5 {
        seqs_p9.push(stack.publish("project:p9", "bid.new", json!({})).await);
    }
    purge_events(&stack.client, "rt.project.p9", 2).await;
    let mut client = edge.connect("u1").await;
    let epoch = events_epoch(&stack.client).await;
    let ok = client
        .sub_member(json!({"ch": "project:p9", "since": {"seq": seqs_p9[0], "epoch": epoch}}))
        .await;
    assert_eq!(ok["recovered"], false, "{ok}");
    assert_eq!(seqs(&client.events(2).await), seqs_p9[3..].to_vec());
}

/// The edge trusts the archive only as far as its `through` reaches: a scripted archive
/// (a service on the real NATS, answering `int.archive.read` as the workers would) that
/// lags or answers nonsense leaves a resume `recovered: false`; one that covers the
/// lost part is replayed before the stream's. The requests follow docs/protocol.md,
/// section 10.10.
#[tokio::test]
async fn the_archive_is_trusted_only_as_far_as_its_through() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let ch = "conversation:c3";
    stack.add_member(ch, "u1").await;
    let mut live = edge.connect("u1").await;
    assert_eq!(live.sub_member(json!({"ch": ch})).await["op"], "ok");
    for n in 0..5 {
        stack
            .publish(ch, "message.new", json!({"text": format!("m{n}")}))
            .await;
    }
    let frames = live.events(5).await;
    let all = seqs(&frames);
    purge_events(&stack.client, "rt.conversation.c3", 2).await;

    // 0: lagging, 1: covering, 2: nonsense.
    let mode = Arc::new(AtomicU64::new(0));
    let asked: Arc<Mutex<Vec<Value>>> = Arc::default();
    let archived: Vec<Value> = frames[..3]
        .iter()
        .map(|f| json!({"seq": f["seq"], "event": f["event"]}))
        .collect();
    {
        let (mode, asked) = (mode.clone(), asked.clone());
        stack
            .serve(
                "int.archive.read",
                "int.archive.read",
                move |_, _, params| {
                    asked.lock().unwrap().push(params.clone());
                    let after = params["after"].as_u64().unwrap_or(0);
                    let events: Vec<Value> = archived
                        .iter()
                        .filter(|e| e["seq"].as_u64().unwrap() > after)
                        .cloned()
                        .collect();
                    Some(match mode.load(Ordering::SeqCst) {
                        0 => json!({"result": {"events": events, "through": 0}}),
                        1 => json!({"result": {"events": events, "through": u64::MAX / 2}}),
                        _ => json!({"result": {"nope": true}}),
                    })
                },
            )
            .await;
    }
    let epoch = events_epoch(&stack.client).await;
    let since = json!({"seq": all[0], "epoch": epoch});

    let mut client = edge.connect("u1").await;
    let ok = client.sub(json!({"ch": ch, "since": since})).await;
    assert_eq!(
        ok["recovered"], false,
        "a lagging archive is not trusted: {ok}"
    );
    assert_eq!(seqs(&client.events(2).await), all[3..].to_vec());
    let request = asked.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        request,
        json!({"ch": ch, "epoch": epoch, "after": all[0], "before": all[3], "limit": 1000, "order": "asc"})
    );

    mode.store(2, Ordering::SeqCst);
    let mut other = edge.connect("u1").await;
    let ok = other.sub(json!({"ch": ch, "since": since})).await;
    assert_eq!(ok["recovered"], false, "an unreadable answer: {ok}");
    assert_eq!(seqs(&other.events(2).await), all[3..].to_vec());
    let pong = other.request(json!({"op": "ping"})).await;
    assert_eq!(pong["op"], "pong");

    mode.store(1, Ordering::SeqCst);
    let mut third = edge.connect("u1").await;
    let ok = third.sub(json!({"ch": ch, "since": since})).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    let replayed = third.events(4).await;
    assert_eq!(seqs(&replayed), all[1..].to_vec());
    assert_eq!(replayed, frames[1..].to_vec(), "the same frames");
    // History asks newest first, below the stream's oldest.
    let page = third
        .request(json!({"op": "history", "ch": ch, "limit": 4}))
        .await;
    assert_eq!(seqs(page["events"].as_array().unwrap()), all[1..].to_vec());
    let request = asked.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        request,
        json!({"ch": ch, "epoch": epoch, "after": 0, "before": all[3], "limit": 2, "order": "desc"})
    );
}

/// Large messages: the archive stops a page early to fit one NATS message (`truncated`);
/// a resume and a history page read on instead of taking the short page for the end.
#[tokio::test]
async fn pages_the_archive_stops_early_are_read_on() {
    let stack = Stack::start().await;
    let _workers = workers(&stack).await;
    let edge = stack.edge(&[]);
    stack.add_member(CH, "u1").await;
    // 8 KiB each: 100 of them do not fit the archive's 768 KiB page.
    let text = "x".repeat(8 * 1024);
    let mut all = Vec::new();
    for _ in 0..150 {
        all.push(
            stack
                .publish(CH, "message.new", json!({"text": text}))
                .await,
        );
    }
    let last = *all.last().unwrap();
    archived_through(&stack.client, CH, last).await;
    purge_events(&stack.client, "rt.conversation.c1", 2).await;

    let mut client = edge.connect("u1").await;
    let page = client
        .request(json!({"op": "history", "ch": CH, "limit": 100}))
        .await;
    assert_eq!(
        seqs(page["events"].as_array().unwrap()),
        all[50..].to_vec(),
        "a full page across the archive's short pages"
    );
    let epoch = events_epoch(&stack.client).await;
    let ok = client
        .sub(json!({"ch": CH, "since": {"seq": all[0], "epoch": epoch}}))
        .await;
    assert_eq!(ok["recovered"], true, "{ok}");
    assert_eq!(seqs(&client.events(149).await), all[1..].to_vec());
    assert_eq!(client.no_more_events().await, None);
}

/// What EVENTS lost before the archive job ever ran is in no archive: a resume from
/// before it is not recovered, though the archive has everything since it started
/// (int.archive.read `from`).
#[tokio::test]
async fn what_the_stream_lost_before_the_archive_began_is_not_recovered() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    stack.add_member(CH, "u1").await;
    let mut before = Vec::new();
    for n in 0..5 {
        before.push(
            stack
                .publish(CH, "message.new", json!({"text": format!("early {n}")}))
                .await,
        );
    }
    purge_events(&stack.client, "rt.conversation.c1", 0).await;
    let _workers = workers(&stack).await;
    let mut after = Vec::new();
    for n in 0..3 {
        after.push(
            stack
                .publish(CH, "message.new", json!({"text": format!("late {n}")}))
                .await,
        );
    }
    archived_through(&stack.client, CH, *after.last().unwrap()).await;
    purge_events(&stack.client, "rt.conversation.c1", 1).await;

    let epoch = events_epoch(&stack.client).await;
    let mut client = edge.connect("u1").await;
    // From before the archive began: events are gone for good.
    let ok = client
        .sub(json!({"ch": CH, "since": {"seq": before[1], "epoch": epoch}}))
        .await;
    assert_eq!(ok["recovered"], false, "{ok}");
    // ... and what the stream still holds follows.
    assert_eq!(seqs(&client.events(1).await), [after[2]]);
    client.request(json!({"op": "unsub", "ch": CH})).await;
    // From after it began: the archive and the stream cover everything.
    let ok = client
        .sub(json!({"ch": CH, "since": {"seq": before[4], "epoch": epoch}}))
        .await;
    assert_eq!(ok["recovered"], true, "{ok}");
    assert_eq!(seqs(&client.events(3).await), after);
}
