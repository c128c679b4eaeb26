//! The publish hook (docs/protocol.md, section 10.13): a backend accepts, rejects or
//! rewrites a client's message before it is stored; no verdict fails closed or open;
//! retries with the same key get the first verdict.

mod support;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::*;

const HOOK: &str = "svc.moderation.check";

/// What the test hook was asked: (Rt-User, the would-be event).
type Asked = Arc<Mutex<Vec<(Option<String>, Value)>>>;

/// A hook service on `svc.moderation.*` that answers each question with `verdict(event)`
/// (`None`: silence) and records it.
async fn moderation(
    stack: &Stack,
    verdict: impl Fn(&Value) -> Option<Value> + Send + 'static,
) -> Asked {
    let asked: Asked = Arc::default();
    let record = asked.clone();
    stack
        .serve(
            "svc.moderation.*",
            "svc.moderation.probe",
            move |subject, user, event| {
                if subject != HOOK {
                    return Some(json!({}));
                }
                record.lock().unwrap().push((user, event.clone()));
                verdict(&event)
            },
        )
        .await;
    asked
}

async fn conversation(stack: &Stack) {
    for user in ["u1", "u2"] {
        stack.add_member("conversation:c1", user).await;
    }
}

fn hooked(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![("SWITCHBOARD_PUBLISH_HOOK", HOOK)];
    env.extend_from_slice(extra);
    env
}

fn message(text: &str, key: &str) -> Value {
    json!({"op":"pub","ch":"conversation:c1","type":"message.new",
           "data":{"text": text},"key": key})
}

async fn stored(stack: &Stack) -> u64 {
    let mut stream = stack.js.get_stream("EVENTS").await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn an_accepted_message_is_asked_about_once_and_stored_as_sent() {
    let stack = Stack::start().await;
    conversation(&stack).await;
    let asked = moderation(&stack, |_| Some(json!({"action":"accept"}))).await;
    let edge = stack.edge(&hooked(&[]));
    let mut alice = edge.connect("u1").await;

    let ok = alice.request(message("hello", "k-1")).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let retry = alice.request(message("hello", "k-1")).await;
    assert_eq!(retry["seq"], ok["seq"]);
    assert_eq!(retry["event_id"], ok["event_id"]);

    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "a retry is answered from the first verdict");
    let (user, event) = &asked[0];
    assert_eq!(user.as_deref(), Some("u1"));
    assert_eq!(event["id"], ok["event_id"]);
    assert_eq!(event["type"], "message.new");
    assert_eq!(event["actor"]["id"], "u1");
    assert_eq!(event["data"]["text"], "hello");
    assert_eq!(stored(&stack).await, 1);
}

#[tokio::test]
async fn the_question_names_the_channel_and_carries_the_trace() {
    let stack = Stack::start().await;
    conversation(&stack).await;
    let mut questions = stack.client.subscribe(HOOK).await.unwrap();
    switchboard_testkit::synced(&stack.client).await.unwrap();
    let client = stack.client.clone();
    let answered = tokio::spawn(async move {
        let question = questions.next().await.unwrap();
        let headers = question.headers.clone().unwrap();
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        let seen = (
            header("Rt-User"),
            header("Rt-Channel"),
            header("traceparent"),
        );
        client
            .publish(question.reply.unwrap(), r#"{"action":"accept"}"#.into())
            .await
            .unwrap();
        seen
    });
    let edge = stack.edge(&hooked(&[]));
    let mut alice = edge.connect("u1").await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut frame = message("traced", "k-t");
    frame["trace"] = json!(trace);
    let ok = alice.request(frame).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let (user, channel, traceparent) = answered.await.unwrap();
    assert_eq!(user.as_deref(), Some("u1"));
    assert_eq!(channel.as_deref(), Some("conversation:c1"));
    assert_eq!(traceparent.as_deref(), Some(trace));
}

#[tokio::test]
async fn a_rejected_message_is_forbidden_stored_nowhere_and_stays_rejected() {
    let stack = Stack::start().await;
    conversation(&stack).await;
    let asked = moderation(&stack, |event| {
        let text = event["data"]["text"].as_str().unwrap_or_default();
        Some(if text.contains("555") {
            json!({"action":"reject","reason":"no phone numbers, please"})
        } else {
            json!({"action":"accept"})
        })
    })
    .await;
    let edge = stack.edge(&hooked(&[]));
    let mut alice = edge.connect("u1").await;
    let mut bob = edge.connect("u2").await;
    bob.sub(json!({"ch":"conversation:c1"})).await;

    let refused = alice.request(message("call me at 555-0100", "k-2")).await;
    assert_eq!(refused["op"], "err", "{refused}");
    assert_eq!(refused["code"], "forbidden");
    assert_eq!(refused["message"], "no phone numbers, please");
    // The same key with harmless text: still the first verdict.
    let retry = alice.request(message("hello", "k-2")).await;
    assert_eq!(retry["code"], "forbidden", "{retry}");
    assert_eq!(retry["message"], "no phone numbers, please");
    assert_eq!(asked.lock().unwrap().len(), 1);

    assert_eq!(stored(&stack).await, 0, "nothing in EVENTS");
    assert!(bob.no_more_events().await.is_none(), "nothing delivered");

    // Another key is a new message, asked about afresh.
    let ok = alice.request(message("hello", "k-3")).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    assert_eq!(stored(&stack).await, 1);
}

#[tokio::test]
async fn a_modified_message_is_stored_and_delivered_as_the_hook_wrote_it() {
    let stack = Stack::start().await;
    conversation(&stack).await;
    let asked = moderation(&stack, |event| {
        let text = event["data"]["text"].as_str().unwrap_or_default();
        Some(json!({"action":"modify",
                    "data":{"text": text.replace("555-0100", "[number removed]"), "moderated": true}}))
    })
    .await;
    let edge = stack.edge(&hooked(&[]));
    let mut alice = edge.connect("u1").await;
    let mut bob = edge.connect("u2").await;
    bob.sub(json!({"ch":"conversation:c1"})).await;

    let ok = alice.request(message("call 555-0100", "k-4")).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let event = bob.recv_where(|f| f["op"] == "evt").await;
    assert_eq!(event["seq"], ok["seq"]);
    assert_eq!(event["event"]["data"]["text"], "call [number removed]");
    assert_eq!(event["event"]["data"]["moderated"], true);

    let retry = alice.request(message("call 555-0100", "k-4")).await;
    assert_eq!(retry["seq"], ok["seq"], "a retry returns the same seq");
    assert_eq!(retry["event_id"], ok["event_id"]);
    assert_eq!(asked.lock().unwrap().len(), 1);
    assert!(bob.no_more_events().await.is_none(), "stored once");

    let seq = ok["seq"].as_u64().unwrap();
    let stream = stack.js.get_stream("EVENTS").await.unwrap();
    let raw = stream.direct_get(seq).await.unwrap();
    let envelope = switchboard_schemas::Envelope::decode(&raw.payload, false)
        .or_else(|_| switchboard_schemas::Envelope::decode(&raw.payload, true))
        .unwrap();
    let data: Value = envelope.data.decode().unwrap();
    assert_eq!(data["text"], "call [number removed]");
    assert_eq!(stored(&stack).await, 1);
}

#[tokio::test]
async fn a_silent_hook_fails_closed_and_a_retry_asks_again() {
    let stack = Stack::start().await;
    conversation(&stack).await;
    let silent = Arc::new(Mutex::new(true));
    let quiet = silent.clone();
    let asked = moderation(&stack, move |_| {
        (!*quiet.lock().unwrap()).then(|| json!({"action":"accept"}))
    })
    .await;
    let edge = stack.edge(&hooked(&[("SWITCHBOARD_PUBLISH_HOOK_TIMEOUT_MS", "300")]));
    let mut alice = edge.connect("u1").await;

    let refused = alice.request(message("hello", "k-5")).await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert_eq!(stored(&stack).await, 0);

    // No verdict was given, so none is remembered: the retry asks again.
    *silent.lock().unwrap() = false;
    let ok = alice.request(message("hello", "k-5")).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    assert_eq!(asked.lock().unwrap().len(), 2);
    assert_eq!(stored(&stack).await, 1);
}

#[tokio::test]
async fn a_silent_hook_fails_open_when_configured() {
    let stack = Stack::start().await;
    conversation(&stack).await;
    let asked = moderation(&stack, |_| None).await;
    let edge = stack.edge(&hooked(&[
        ("SWITCHBOARD_PUBLISH_HOOK_TIMEOUT_MS", "300"),
        ("SWITCHBOARD_PUBLISH_HOOK_FAIL_OPEN", "1"),
    ]));
    let mut alice = edge.connect("u1").await;
    let mut bob = edge.connect("u2").await;
    bob.sub(json!({"ch":"conversation:c1"})).await;

    let ok = alice.request(message("hello", "k-6")).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let event = bob.recv_where(|f| f["op"] == "evt").await;
    assert_eq!(event["event"]["data"]["text"], "hello", "stored as sent");
    let retry = alice.request(message("hello", "k-6")).await;
    assert_eq!(retry["seq"], ok["seq"]);
    assert_eq!(asked.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn no_listening_hook_fails_closed() {
    let stack = Stack::start().await;
    conversation(&stack).await;
    let edge = stack.edge(&hooked(&[]));
    let mut alice = edge.connect("u1").await;
    let refused = alice.request(message("hello", "k-7")).await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert_eq!(stored(&stack).await, 0);
}

#[tokio::test]
async fn unreadable_answers_count_as_no_answer() {
    let stack = Stack::start().await;
    conversation(&stack).await;
    let answers = [
        json!("accept"),
        json!({"verdict":"accept"}),
        json!({"action":"maybe"}),
        json!({"action":"modify"}),
        json!({"action":"modify","data":"plain text"}),
    ];
    let next = Arc::new(Mutex::new(answers.clone().into_iter()));
    let source = next.clone();
    moderation(&stack, move |_| source.lock().unwrap().next()).await;
    let closed = stack.edge(&hooked(&[]));
    let mut alice = closed.connect("u1").await;
    for (n, answer) in answers.iter().enumerate() {
        let refused = alice.request(message("hello", &format!("k-bad-{n}"))).await;
        assert_eq!(refused["code"], "unavailable", "{answer} gave {refused}");
    }
    assert_eq!(stored(&stack).await, 0);

    // Failing open, the same answers store the message as sent.
    *next.lock().unwrap() = answers.clone().into_iter();
    let open = stack.edge(&hooked(&[("SWITCHBOARD_PUBLISH_HOOK_FAIL_OPEN", "1")]));
    let mut alice = open.connect("u1").await;
    for (n, answer) in answers.iter().enumerate() {
        let ok = alice
            .request(message("hello", &format!("k-open-{n}")))
            .await;
        assert_eq!(ok["op"], "ok", "{answer} gave {ok}");
    }
    assert_eq!(stored(&stack).await, answers.len() as u64);
}

#[tokio::test]
async fn an_edit_rewritten_away_from_its_original_is_no_verdict() {
    let stack = Stack::start().await;
    conversation(&stack).await;
    moderation(&stack, |event| {
        Some(if event["type"] == "message.edited" {
            json!({"action":"modify","data":{"seq": 999_999, "text":"elsewhere"}})
        } else {
            json!({"action":"accept"})
        })
    })
    .await;
    let edge = stack.edge(&hooked(&[]));
    let mut alice = edge.connect("u1").await;
    let ok = alice.request(message("hello", "k-8")).await;
    let edit = alice
        .request(
            json!({"op":"pub","ch":"conversation:c1","type":"message.edited",
                        "data":{"seq": ok["seq"], "text":"hello again"},"key":"k-9"}),
        )
        .await;
    assert_eq!(edit["code"], "unavailable", "{edit}");
    assert_eq!(stored(&stack).await, 1);
}

#[tokio::test]
async fn namespaces_outside_the_hook_are_not_asked_about() {
    let stack = Stack::start().await;
    conversation(&stack).await;
    let asked = moderation(&stack, |_| Some(json!({"action":"reject"}))).await;
    let edge = stack.edge(&hooked(&[(
        "SWITCHBOARD_PUBLISH_HOOK_NAMESPACES",
        "project",
    )]));
    let mut alice = edge.connect("u1").await;
    let ok = alice.request(message("hello", "k-10")).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    assert!(asked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn backend_publishes_are_not_asked_about() {
    let stack = Stack::start().await;
    conversation(&stack).await;
    let asked = moderation(&stack, |_| Some(json!({"action":"reject"}))).await;
    let edge = stack.edge(&hooked(&[]));
    let service = token_with(json!({"sub":"billing","role":"service","exp": now() + 3600}));
    let (status, body) = http(
        &edge.addr,
        "POST",
        "/v1/publish",
        &[("Authorization", &format!("Bearer {service}"))],
        &json!({"channel":"conversation:c1","type":"message.new","data":{"text":"from the backend"}})
            .to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(asked.lock().unwrap().is_empty());
}

#[test]
fn a_bad_hook_subject_stops_the_edge_at_startup() {
    for (subject, says) in [
        ("moderation.check", "under svc."),
        ("svc.moderation.*", "plain subject"),
        ("svc.notifications.check", "Switchboard's workers"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard-edge"))
            .env("SWITCHBOARD_PUBLISH_HOOK", subject)
            .env("SWITCHBOARD_JWT_SECRET", &*SECRET)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{subject} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("SWITCHBOARD_PUBLISH_HOOK") || stderr.contains("--publish-hook"),
            "{stderr}"
        );
        assert!(stderr.contains(says), "{subject}: {stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard-edge"))
        .env("SWITCHBOARD_PUBLISH_HOOK", HOOK)
        .env("SWITCHBOARD_PUBLISH_HOOK_NAMESPACES", "conversation,chat")
        .env("SWITCHBOARD_JWT_SECRET", &*SECRET)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown namespace"));
}
