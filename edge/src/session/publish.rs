//! `pub`: client messages (`message.new`, `.edited`, `.deleted`), authorized, given an
//! id derived from the client's key, put to the publish hook where one is configured,
//! and stored through JetStream before `ok` (docs/protocol.md, sections 4.4 and 10.13).

use super::*;
use crate::hook::{Question, Verdict};

/// Longest a publish waits for the connection's own subscription to the channel to be set up.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

impl Session {
    pub(super) fn on_pub(
        &mut self,
        id: Option<u64>,
        ch: ChannelName,
        ty: EventType,
        data: switchboard_schemas::RawJson,
        key: Option<String>,
        trace: Option<TraceParent>,
    ) {
        if !self.limits.take(Op::Pub, &self.slot) {
            return self.rate_limited(id, "too many publishes");
        }
        if let Err(why) = self
            .edge
            .policy
            .may_publish(&self.identity, &ch, &ty, &self.edge.members)
        {
            return self.refuse(id, Refusal::forbidden(why));
        }
        let edits = ty.as_str() != types::MESSAGE_NEW;
        let target = match message_target(&data, edits) {
            Ok(target) => target,
            Err(refusal) => return self.bad_frame(id, refusal),
        };
        let user = self.identity.user.clone();
        let event_id = match &key {
            Some(key) if key.is_empty() || key.len() > 128 => {
                return self.bad_frame(id, Refusal::bad_request("key must be 1 to 128 characters"));
            }
            Some(key) => EventId::derive(&[&user, ch.as_str(), key]),
            None => EventId::generate(),
        };
        let keyed = key.is_some();
        let edge = self.edge.clone();
        let settled = self.subs.settled(&ch);
        self.spawn(id, async move {
            // A `sub` sent before this `pub` is on the channel before the message is stored.
            let _ = tokio::time::timeout(SETTLE_LIMIT, settled).await;
            if let Some(seq) = target {
                match original_sender(&edge, &ch, seq).await {
                    Ok(Some(sender)) if sender == *user => {}
                    Ok(Some(_)) => {
                        let why = "only the original sender may edit or delete a message";
                        return Some(Refusal::forbidden(why).frame(id));
                    }
                    Ok(None) => {
                        let missing = format!("no message with seq {seq} on {ch}");
                        return Some(Refusal::new(ErrorCode::NotFound, missing).frame(id));
                    }
                    Err(refusal) => return Some(refusal.frame(id)),
                }
            }
            let mut event = Envelope::new(ty, data);
            event.id = event_id;
            event.actor = Some(Actor {
                id: user.to_string(),
                kind: "user".into(),
            });
            event.source = Some("switchboard-edge".into());
            if let Some(hook) = edge.hook.as_ref().filter(|hook| hook.applies(&ch)) {
                let question = Question {
                    event: &event,
                    ch: &ch,
                    user: &user,
                    trace: trace.as_ref(),
                    target,
                    keyed,
                };
                match hook.decide(&edge.nats, question).await {
                    Ok(Verdict::Accept) => {}
                    Ok(Verdict::Modify(data)) => event.data = data,
                    Ok(Verdict::Reject(reason)) => {
                        return Some(Refusal::forbidden(reason).frame(id));
                    }
                    Err(refusal) => return Some(refusal.frame(id)),
                }
            }
            let published = edge
                .publisher
                .publish_traced(&ch, &event, Encoding::Postcard, trace.as_ref())
                .await;
            match published {
                Ok(published) => Some({
                    edge.metrics.count(&edge.metrics.published, 1);
                    ServerFrame::Ok {
                        id,
                        reply: OkReply::Published {
                            seq: published.seq,
                            event_id: event.id,
                        },
                    }
                    .encode()
                }),
                Err(e) => Some(Refusal::unavailable(e).frame(id)),
            }
        });
    }
}

/// For `message.edited` / `message.deleted`: the seq of the original message in `data`.
pub(super) fn message_target(
    data: &switchboard_schemas::RawJson,
    edits: bool,
) -> Result<Option<u64>, Refusal> {
    #[derive(serde::Deserialize)]
    struct Target {
        seq: Option<u64>,
    }
    if !data.as_str().trim_start().starts_with('{') {
        return Err(Refusal::bad_request("message data must be a JSON object"));
    }
    let target: Target = data
        .decode()
        .map_err(|_| Refusal::bad_request("message data.seq must be a sequence number"))?;
    if !edits {
        return Ok(None);
    }
    target.seq.map(Some).ok_or_else(|| {
        Refusal::bad_request("message.edited and message.deleted need data.seq, the original's seq")
    })
}

/// The sender of the `message.new` stored at `seq` on `ch`; `None` if there is none.
pub(super) async fn original_sender(
    edge: &Edge,
    ch: &ChannelName,
    seq: u64,
) -> Result<Option<String>, Refusal> {
    let Some(stored) = edge.store.get(seq).await.map_err(Refusal::unavailable)? else {
        return Ok(None);
    };
    if stored.subject != ch.subject(SubjectKind::Durable) {
        return Ok(None);
    }
    let Ok(event) = stored.envelope() else {
        return Ok(None);
    };
    if event.ty.as_str() != types::MESSAGE_NEW {
        return Ok(None);
    }
    Ok(event.actor.map(|a| a.id))
}
