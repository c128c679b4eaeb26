//! Client frames to handlers: one arm per op of docs/protocol.md, section 4. The
//! handlers live by concern in the sibling modules; `refresh`, which touches only the
//! session's identity, is here.

use super::*;

impl Session {
    pub(super) async fn on_request(&mut self, request: Request) {
        let id = request.id;
        match request.frame {
            ClientFrame::Hello { .. } => {
                self.bad_frame(id, Refusal::bad_request("already authenticated"))
            }
            ClientFrame::Ping => self.reply(ServerFrame::Pong { id }.encode()),
            ClientFrame::Sub { ch, types, since } => self.on_sub(id, ch, types, since).await,
            ClientFrame::Unsub { ch } => {
                self.unsubscribe(&ch).await;
                self.reply(ServerFrame::ok(id).encode());
            }
            ClientFrame::Pub {
                ch,
                ty,
                data,
                key,
                trace,
            } => self.on_pub(id, ch, ty, data, key, trace),
            ClientFrame::Sig { ch, ty, data } => self.on_sig(id, ch, ty, data).await,
            ClientFrame::Ack { ch, seq } => self.on_receipt(id, ch, Some(seq), None),
            ClientFrame::Read { ch, seq } => self.on_receipt(id, ch, None, Some(seq)),
            ClientFrame::Presence { status, text } => self.on_presence(id, status, text).await,
            ClientFrame::Who { ch } => self.on_who(id, ch),
            ClientFrame::History { ch, before, limit } => self.on_history(id, ch, before, limit),
            ClientFrame::Refresh { token } => self.on_refresh(id, token).await,
            ClientFrame::Rpc {
                method,
                params,
                trace,
            } => self.on_rpc(id, method, params, trace),
        }
    }

    /// `refresh`: a new token for the same user; subscriptions are re-authorized.
    pub(super) async fn on_refresh(&mut self, id: Option<u64>, token: String) {
        match self.edge.verifier.verify(&token).await {
            Ok(fresh) if fresh.user == self.identity.user => {
                self.limits.refreshed_exp = Some(fresh.exp);
                self.identity = fresh;
                self.reply(ServerFrame::ok(id).encode());
                // The new token may grant less: subscriptions are re-authorized.
                let held = self.subs.labels().map(ChannelName::base).collect();
                self.recheck(held).await;
            }
            Ok(_) => self.refuse(id, Refusal::unauthorized("refresh must keep the same sub")),
            Err(e) => self.refuse(id, Refusal::unauthorized(e)),
        }
    }
}
