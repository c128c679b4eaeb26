//! The publish hook (docs/protocol.md, section 10.13): a backend accepts, rejects or
//! rewrites a client's message before it is stored.
//!
//! With `SWITCHBOARD_PUBLISH_HOOK` set, a client `pub` in a hooked namespace is sent as a
//! NATS request to that subject: the would-be event as JSON, with the sender in
//! `Rt-User`, the channel in `Rt-Channel` and the client's `traceparent` if it sent one.
//! Only the edge sets `Rt-Channel` (an `rpc` naming the hook's subject never carries it),
//! so a hook can tell a real question from a client calling it by name. Backends
//! publishing through `POST /v1/publish` or NATS are trusted and never asked.
//!
//! The hook's silence, no one listening, or an answer that is not one of the three
//! documented shapes is a failure: the message is refused `unavailable` (fail closed),
//! or stored as sent when `SWITCHBOARD_PUBLISH_HOOK_FAIL_OPEN` is set. Unreadable
//! answers are logged, without the message.
//!
//! # Retries
//! A client retries a `pub` with the same `key` when it saw no answer. The verdict for a
//! keyed message is remembered on this edge while JetStream still dedupes its event id
//! (the `EVENTS` duplicate window), and a retry gets it without a second question: a
//! rejected key stays rejected with the same reason, an accepted or rewritten one is
//! published again with the same id and data, which JetStream answers with the first
//! seq. A retry that arrives while the first question is open waits for its answer.
//! At most 100,000 verdicts holding at most 32 MiB of rewritten data are kept; past
//! that the oldest are forgotten first (their retries are asked again).
//! Failing closed is no verdict: the retry asks again. A retry that reaches another edge
//! is asked again there (verdicts live in memory); if the first was stored, its publish
//! still dedupes to the first seq.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use switchboard_bus::{SWITCHBOARD_METHOD_FAMILIES, headers};
use switchboard_schemas::{ChannelName, Envelope, ErrorCode, Namespace, RawJson, TraceParent};
use tokio::sync::OnceCell;

use crate::config::EdgeConfig;
use crate::refusal::Refusal;

/// Header naming the channel of the message the hook is asked about.
pub const RT_CHANNEL: &str = "Rt-Channel";
/// How long a verdict is remembered: the `EVENTS` duplicate window (nats/jetstream).
const REMEMBER: Duration = Duration::from_secs(600);
/// Verdicts remembered at once, and bytes of rewritten data among them; past either,
/// the oldest go first.
const REMEMBER_MAX: usize = 100_000;
const REMEMBER_BYTES: usize = 32 * 1024 * 1024;
/// Longest rejection reason passed on to the client.
const MAX_REASON: usize = 512;
const DEFAULT_REASON: &str = "the message was rejected";

/// What the hook decided about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Store the message as the client sent it.
    Accept,
    /// Store nothing; the client gets `forbidden` with this reason.
    Reject(String),
    /// Store and deliver the message with this `data` instead.
    Modify(RawJson),
}

/// The configured hook and the verdicts it gave recently.
#[derive(Debug)]
pub struct PublishHook {
    subject: String,
    namespaces: Vec<Namespace>,
    timeout: Duration,
    fail_open: bool,
    verdicts: Mutex<Verdicts>,
}

#[derive(Debug, Default)]
struct Verdicts {
    by_event: HashMap<String, Arc<OnceCell<Verdict>>>,
    /// Event ids in the order they were first asked about, for expiry.
    asked: VecDeque<(Instant, String)>,
    /// Bytes of the rewritten `data` held by remembered verdicts.
    bytes: usize,
}

/// The question a client's message poses.
#[derive(Debug)]
pub struct Question<'a> {
    pub event: &'a Envelope,
    pub ch: &'a ChannelName,
    pub user: &'a str,
    pub trace: Option<&'a TraceParent>,
    /// For an edit or delete, the seq of the original message; a rewrite must keep it.
    pub target: Option<u64>,
    /// Whether the event id comes from the client's key (so a retry carries it again).
    pub keyed: bool,
}

/// Why the hook gave no verdict.
#[derive(Debug, thiserror::Error)]
enum NoVerdict {
    #[error("no answer within {0:?}")]
    Silent(Duration),
    #[error("no service listens on the hook's subject")]
    NoResponders,
    #[error("request failed: {0}")]
    Request(async_nats::RequestError),
    #[error("unreadable answer: {0}")]
    Unreadable(String),
}

impl PublishHook {
    /// The hook of `config`, if one is set.
    pub fn from_config(config: &EdgeConfig) -> Option<PublishHook> {
        let subject = config.publish_hook.clone()?;
        Some(PublishHook {
            subject,
            namespaces: config.publish_hook_namespaces.clone(),
            timeout: config.publish_hook_timeout(),
            fail_open: config.publish_hook_fail_open,
            verdicts: Mutex::default(),
        })
    }

    /// Whether client messages on `ch` go through the hook.
    pub fn applies(&self, ch: &ChannelName) -> bool {
        self.namespaces.contains(&ch.namespace())
    }

    /// The verdict on `question`: remembered from an earlier try of the same key, or
    /// asked now. `Err` is the refusal for the client (the hook failed, closed).
    pub async fn decide(
        &self,
        nats: &async_nats::Client,
        question: Question<'_>,
    ) -> Result<Verdict, Refusal> {
        if !question.keyed {
            return self.ask(nats, &question).await;
        }
        let slot = self.slot(question.event.id.as_str());
        let fresh = std::sync::atomic::AtomicBool::new(false);
        let verdict = slot
            .get_or_try_init(|| {
                fresh.store(true, std::sync::atomic::Ordering::Relaxed);
                self.ask(nats, &question)
            })
            .await
            .cloned()?;
        if let Verdict::Modify(data) = &verdict
            && fresh.load(std::sync::atomic::Ordering::Relaxed)
        {
            let mut verdicts = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
            let kept = verdicts
                .by_event
                .get(question.event.id.as_str())
                .is_some_and(|kept| Arc::ptr_eq(kept, &slot));
            if kept {
                verdicts.bytes += data.as_str().len();
            }
        }
        Ok(verdict)
    }

    /// The remembered verdict (or the place for it) of one event id.
    fn slot(&self, event_id: &str) -> Arc<OnceCell<Verdict>> {
        let mut verdicts = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while let Some((asked, id)) = verdicts.asked.front() {
            if now.duration_since(*asked) < REMEMBER
                && verdicts.asked.len() < REMEMBER_MAX
                && verdicts.bytes <= REMEMBER_BYTES
            {
                break;
            }
            let id = id.clone();
            verdicts.asked.pop_front();
            if let Some(gone) = verdicts.by_event.remove(&id)
                && let Some(Verdict::Modify(data)) = gone.get()
            {
                verdicts.bytes = verdicts.bytes.saturating_sub(data.as_str().len());
            }
        }
        if let Some(slot) = verdicts.by_event.get(event_id) {
            return slot.clone();
        }
        let slot = Arc::new(OnceCell::new());
        verdicts.by_event.insert(event_id.to_string(), slot.clone());
        verdicts.asked.push_back((now, event_id.to_string()));
        slot
    }

    async fn ask(
        &self,
        nats: &async_nats::Client,
        question: &Question<'_>,
    ) -> Result<Verdict, Refusal> {
        match self.request(nats, question).await {
            Ok(verdict) => Ok(verdict),
            Err(why) => {
                let unreadable = matches!(why, NoVerdict::Unreadable(_));
                if self.fail_open {
                    tracing::warn!(
                        hook = %self.subject, ch = %question.ch, event_id = %question.event.id,
                        unreadable, error = %why,
                        "publish hook gave no verdict: message accepted (fail open)"
                    );
                    Ok(Verdict::Accept)
                } else {
                    tracing::warn!(
                        hook = %self.subject, ch = %question.ch, event_id = %question.event.id,
                        unreadable, error = %why,
                        "publish hook gave no verdict: message refused (fail closed)"
                    );
                    Err(Refusal::new(
                        ErrorCode::Unavailable,
                        "the message could not be checked now; try again",
                    ))
                }
            }
        }
    }

    async fn request(
        &self,
        nats: &async_nats::Client,
        question: &Question<'_>,
    ) -> Result<Verdict, NoVerdict> {
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::RT_USER, question.user);
        h.insert(RT_CHANNEL, question.ch.as_str());
        h.insert(headers::CONTENT_TYPE, headers::JSON);
        if let Some(trace) = question.trace {
            h.insert(headers::TRACEPARENT, trace.as_str());
        }
        let request = nats.request_with_headers(
            self.subject.clone(),
            h,
            Bytes::from(question.event.to_json()),
        );
        let reply = match tokio::time::timeout(self.timeout, request).await {
            Err(_) => return Err(NoVerdict::Silent(self.timeout)),
            Ok(Err(e)) => {
                return Err(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => NoVerdict::NoResponders,
                    async_nats::RequestErrorKind::TimedOut => NoVerdict::Silent(self.timeout),
                    _ => NoVerdict::Request(e),
                });
            }
            Ok(Ok(reply)) => reply,
        };
        read_answer(&reply.payload, question.target).map_err(NoVerdict::Unreadable)
    }
}

/// Reads the hook's answer. A rewrite must be a JSON object and, for an edit or delete,
/// keep `seq` pointing at the same original (`target`).
fn read_answer(payload: &[u8], target: Option<u64>) -> Result<Verdict, String> {
    #[derive(Deserialize)]
    struct Answer {
        action: String,
        reason: Option<String>,
        data: Option<RawJson>,
    }
    #[derive(Deserialize)]
    struct Target {
        seq: Option<u64>,
    }
    let answer: Answer = serde_json::from_slice(payload)
        .map_err(|e| format!("not {{\"action\": ...}} JSON ({e})"))?;
    match answer.action.as_str() {
        "accept" => Ok(Verdict::Accept),
        "reject" => {
            let reason = answer
                .reason
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| DEFAULT_REASON.to_string());
            Ok(Verdict::Reject(truncate(reason, MAX_REASON)))
        }
        "modify" => {
            let data = answer.data.ok_or("modify without data")?;
            if !data.as_str().trim_start().starts_with('{') {
                return Err("modify data is not a JSON object".into());
            }
            if let Some(seq) = target {
                let kept: Target = data
                    .decode()
                    .map_err(|_| "modify data.seq is not a sequence number")?;
                if kept.seq != Some(seq) {
                    return Err(format!(
                        "modify data.seq must stay {seq}, the original message's seq"
                    ));
                }
            }
            Ok(Verdict::Modify(data))
        }
        other => Err(format!(
            "unknown action {:?} (accept, reject or modify)",
            truncate(other.to_string(), 32)
        )),
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// `SWITCHBOARD_PUBLISH_HOOK`: a plain subject under `svc.`, outside Switchboard's own
/// method families.
pub fn parse_subject(value: &str) -> Result<String, String> {
    let subject = value.trim();
    let Some(rest) = subject.strip_prefix("svc.") else {
        return Err(format!(
            "{subject:?} is not under svc.: the publish hook must be a subject like svc.moderation.check"
        ));
    };
    let valid_token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if !rest.split('.').all(valid_token) {
        return Err(format!(
            "{subject:?} is not a plain subject: after svc. come dot-separated tokens of [A-Za-z0-9_-] (no wildcards, spaces or empty tokens)"
        ));
    }
    let family = rest.split('.').next().unwrap_or_default();
    if SWITCHBOARD_METHOD_FAMILIES.contains(&family) {
        return Err(format!(
            "{subject:?} is under svc.{family}., which Switchboard's workers answer: choose another name, like svc.moderation.check"
        ));
    }
    Ok(subject.to_string())
}

/// One of `SWITCHBOARD_PUBLISH_HOOK_NAMESPACES`.
pub fn parse_namespace(value: &str) -> Result<Namespace, String> {
    value.trim().parse().map_err(|e| format!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_subjects_are_plain_and_under_svc() {
        assert_eq!(
            parse_subject("svc.moderation.check").unwrap(),
            "svc.moderation.check"
        );
        for bad in [
            "moderation.check",
            "svc.",
            "svc.moderation.*",
            "svc.>",
            "svc.a..b",
            "svc.a b",
            "svc.notifications.check",
            "svc.erase.user",
            "rt.conversation.c1",
        ] {
            assert!(parse_subject(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn answers_are_read_strictly() {
        assert_eq!(
            read_answer(br#"{"action":"accept"}"#, None),
            Ok(Verdict::Accept)
        );
        assert_eq!(
            read_answer(br#"{"action":"reject","reason":"no phone numbers"}"#, None),
            Ok(Verdict::Reject("no phone numbers".into()))
        );
        assert_eq!(
            read_answer(br#"{"action":"reject"}"#, None),
            Ok(Verdict::Reject(DEFAULT_REASON.into()))
        );
        let Ok(Verdict::Modify(data)) =
            read_answer(br#"{"action":"modify","data":{"text":"***"}}"#, None)
        else {
            panic!("modify not read");
        };
        assert_eq!(data.as_str(), r#"{"text":"***"}"#);
        assert!(read_answer(br#"{"action":"modify","data":{"seq":7}}"#, Some(7)).is_ok());
        for bad in [
            &br#"not json"#[..],
            br#"{}"#,
            br#"{"action":"maybe"}"#,
            br#"{"action":"modify"}"#,
            br#"{"action":"modify","data":"text"}"#,
            br#"{"action":"modify","data":[1]}"#,
        ] {
            assert!(read_answer(bad, None).is_err(), "{bad:?} read");
        }
        assert!(read_answer(br#"{"action":"modify","data":{"seq":8}}"#, Some(7)).is_err());
        assert!(read_answer(br#"{"action":"modify","data":{"text":"x"}}"#, Some(7)).is_err());
    }

    fn hook() -> PublishHook {
        PublishHook {
            subject: "svc.moderation.check".into(),
            namespaces: vec![Namespace::Conversation],
            timeout: Duration::from_secs(1),
            fail_open: false,
            verdicts: Mutex::default(),
        }
    }

    #[test]
    fn a_retry_finds_the_first_verdict_until_rewritten_data_crowds_it_out() {
        let hook = hook();
        let first = hook.slot("evt_a");
        first.set(Verdict::Reject("no".into())).unwrap();
        assert!(Arc::ptr_eq(&first, &hook.slot("evt_a")), "remembered");

        let big = RawJson::from_string(format!("{{\"text\":\"{}\"}}", "x".repeat(1024))).unwrap();
        let rewritten = hook.slot("evt_b");
        rewritten.set(Verdict::Modify(big)).unwrap();
        hook.verdicts.lock().unwrap().bytes = REMEMBER_BYTES + 1;
        // Over the byte budget: the oldest go, until the budget holds again.
        hook.slot("evt_c");
        let verdicts = hook.verdicts.lock().unwrap();
        assert!(!verdicts.by_event.contains_key("evt_a"));
        assert!(!verdicts.by_event.contains_key("evt_b"));
        assert!(verdicts.by_event.contains_key("evt_c"));
        assert!(verdicts.bytes <= REMEMBER_BYTES);
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_REASON);
        let cut = truncate(long, MAX_REASON);
        assert!(cut.len() <= MAX_REASON);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
