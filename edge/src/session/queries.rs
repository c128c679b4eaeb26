//! Questions the session answers from elsewhere: `who` (the `occupancy` bucket),
//! `history` (the stream, then the archive) and `rpc` (worker services), each in a task of its own
//! (docs/protocol.md, sections 4.7, 4.10 and 4.12).

use super::*;
use crate::archive;

impl Session {
    /// `rpc`: a call to a worker service, answered through the mailbox.
    pub(super) fn on_rpc(
        &mut self,
        id: Option<u64>,
        method: RpcMethod,
        params: RawJson,
        trace: Option<TraceParent>,
    ) {
        let edge = self.edge.clone();
        let caller = self.identity.clone();
        self.spawn(id, async move {
            Some(
                match rpc::call(&edge, &caller, &method, &params, trace.as_ref()).await {
                    Ok(result) => ServerFrame::Ok {
                        id,
                        reply: OkReply::Rpc { result },
                    }
                    .encode(),
                    Err(refusal) => refusal.frame(id),
                },
            )
        });
    }

    /// `who`: every user with a connection subscribed to the channel now, on any edge.
    pub(super) fn on_who(&mut self, id: Option<u64>, ch: ChannelName) {
        if let Err(why) = self
            .edge
            .policy
            .may_subscribe(&self.identity, &ch, &self.edge.members)
        {
            return self.refuse(id, Refusal::forbidden(why));
        }
        if !self.has_presence(&ch) {
            return self.refuse(id, Refusal::bad_request("this channel has no presence"));
        }
        let edge = self.edge.clone();
        let asker = self.identity.user.clone();
        self.spawn(id, async move {
            let filter = occupancy_filter(&ch.base());
            let entries = match edge.store.scan_bucket(OCCUPANCY_BUCKET, &filter).await {
                Ok(entries) => entries,
                Err(e) => return Some(Refusal::unavailable(e).frame(id)),
            };
            #[derive(serde::Deserialize)]
            struct Occupant {
                status: PresenceStatus,
            }
            let mut by_user: std::collections::BTreeMap<String, Vec<PresenceStatus>> =
                Default::default();
            for (key, value) in entries {
                // <ns>.<id>.<user>.<conn>
                let Some(user) = key.split('.').nth(2) else {
                    continue;
                };
                let Ok(occupant) = serde_json::from_slice::<Occupant>(&value) else {
                    continue;
                };
                by_user
                    .entry(user.to_string())
                    .or_default()
                    .push(occupant.status);
            }
            let present: Vec<Member> = by_user
                .into_iter()
                .map(|(user, statuses)| Member {
                    user,
                    status: VisibleStatus::aggregate(statuses),
                })
                // Invisible everywhere looks offline, and offline users are not here.
                .filter(|m| m.status != VisibleStatus::Offline)
                .collect();
            // Only the users the asker may see (docs/protocol.md, section 9.4): the others
            // are absent, as if not there. Unanswered, nobody is listed.
            let users = present.iter().map(|m| m.user.clone()).collect();
            let visible = match crate::privacy::visible_to(&edge, &asker, users).await {
                Ok(visible) => visible,
                Err(refusal) => return Some(refusal.frame(id)),
            };
            let members = present
                .into_iter()
                .filter(|m| *m.user == *asker || visible.contains(&m.user))
                .collect();
            Some(
                ServerFrame::Ok {
                    id,
                    reply: OkReply::Members { members },
                }
                .encode(),
            )
        });
    }

    pub(super) fn on_history(
        &mut self,
        id: Option<u64>,
        ch: ChannelName,
        before: Option<u64>,
        limit: Option<u32>,
    ) {
        if let Err(why) = self
            .edge
            .policy
            .may_subscribe(&self.identity, &ch, &self.edge.members)
        {
            return self.refuse(id, Refusal::forbidden(why));
        }
        let limit = limit.unwrap_or(HISTORY_DEFAULT).clamp(1, HISTORY_MAX) as usize;
        let edge = self.edge.clone();
        let user = self.identity.user.clone();
        self.spawn(id, async move {
            // The stream's newest events, continued into the archive where the stream
            // no longer holds enough (docs/protocol.md, section 4.7).
            let kept = match archive::newest(&edge, &user, &ch.base(), before, limit).await {
                Ok(kept) => kept,
                Err(refusal) => return Some(refusal.frame(id)),
            };
            let frames: Vec<_> = kept
                .iter()
                .filter(|k| ch.admits(k.event.ty.as_str()))
                .map(|k| k.frame(&ch))
                .collect();
            Some(archive::history_reply(id, &frames))
        });
    }
}
