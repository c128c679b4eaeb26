//! `sub` and `unsub` for the socket: limits and occupancy around the subscription
//! lifecycle every transport shares ([`crate::lifecycle`]): start, presence watches the
//! presence service decides, revocation after a re-check.

use super::*;

impl Session {
    /// Every connection receives `system:broadcast` without asking.
    pub(super) async fn subscribe_implicit(&mut self) {
        let label = ChannelName::system_broadcast();
        self.start_subscription(label, TypeFilters::all(), Setup::default())
            .await;
    }

    pub(super) async fn on_sub(
        &mut self,
        id: Option<u64>,
        ch: ChannelName,
        types: TypeFilters,
        since: Option<ResumeFrom>,
    ) {
        if !self.limits.take(Op::Sub, &self.slot) {
            let refusal = Refusal::rate_limited("too many subscribe requests");
            return self.rate_limited(id, &about(id, &ch, refusal).message);
        }
        if self.subs.contains(&ch) {
            let refusal = Refusal::bad_request("already subscribed to this channel");
            return self.bad_frame(id, about(id, &ch, refusal));
        }
        match lifecycle::authorize(&self.edge, &self.identity, &ch) {
            Access::Allowed => self.admit_subscription(id, ch, types, since, None).await,
            Access::AskPrivacy => self.ask_presence_privacy(id, ch, types, since),
            Access::Refused(refusal) => self.reply(about(id, &ch, refusal).frame(id)),
        }
    }

    /// The checks after authorization: the per-connection limit, then subscribing.
    /// `privacy` is the presence service's say on a presence watch, when it was asked.
    /// A refusal of a subscription without `id` (one the upgrade named, or a `sub` frame
    /// without one) names its channel, since nothing else tells the client which it was.
    pub(super) async fn admit_subscription(
        &mut self,
        id: Option<u64>,
        ch: ChannelName,
        types: TypeFilters,
        since: Option<ResumeFrom>,
        privacy: Option<PrivacyAsked>,
    ) {
        if self.subs.contains(&ch) {
            let refusal = Refusal::bad_request("already subscribed to this channel");
            return self.bad_frame(id, about(id, &ch, refusal));
        }
        if self.subs.counted() >= self.edge.config.max_subscriptions {
            let refusal = Refusal::rate_limited("too many subscriptions on this connection");
            return self.rate_limited(id, &about(id, &ch, refusal).message);
        }
        let setup = Setup {
            id,
            since,
            reply: true,
            privacy,
        };
        self.start_subscription(ch, types, setup).await;
    }

    /// Asks the presence service whether this user may watch `presence:<target>`.
    pub(super) fn ask_presence_privacy(
        &mut self,
        id: Option<u64>,
        ch: ChannelName,
        types: TypeFilters,
        since: Option<ResumeFrom>,
    ) {
        let edge = self.edge.clone();
        let user = self.identity.user.clone();
        let done = self.done.clone();
        self.spawn(id, async move {
            match lifecycle::ask_privacy(&edge, &user, &ch).await {
                Ok(asked) => {
                    done.push(Done::Allowed {
                        id,
                        ch,
                        types,
                        since,
                        asked,
                    });
                    None
                }
                Err(refusal) => Some(about(id, &ch, refusal).frame(id)),
            }
        });
    }

    /// Attaches to the channel now (so an `unsub` right after finds it) and finishes in a
    /// task: wait for the bridge, reply `ok`, replay, go live.
    pub(super) async fn start_subscription(
        &mut self,
        label: ChannelName,
        types: TypeFilters,
        setup: Setup,
    ) {
        if self.has_presence(&label) {
            self.occupy(&label).await;
        }
        let subscription = Subscription {
            key: crate::hub::subscription_key(),
            user: self.identity.user.clone(),
            label: label.clone(),
            filters: types,
            mailbox: self.mailbox.clone(),
        };
        let (id, reply) = (setup.id, setup.reply);
        let work = self
            .subs
            .begin(&self.edge, &self.identity, subscription, setup);
        let mailbox = self.mailbox.clone();
        let done = self.done.clone();
        let mut work = Box::pin(async move {
            if let Err(refusal) = work.await {
                if reply {
                    mailbox
                        .send(text(about(id, &label, refusal).frame(id)))
                        .await;
                }
                done.push(Done::SubFailed(label));
            }
        });
        // On a channel that knows its head, with nothing to replay, the work is done in
        // one poll: here, so that its `ok` leaves with the session's next write and no
        // task is made for it. Otherwise a task of its own finishes it (its first poll
        // registers the task's waker in place of this one's).
        if (&mut work).now_or_never().is_none() {
            self.tasks.spawn(work);
        }
    }

    /// Ends a subscription: backs out one still being set up, leaves the channel.
    /// Returns whether there was one.
    pub(super) async fn unsubscribe(&mut self, label: &ChannelName) -> bool {
        if !self.subs.contains(label) {
            return false;
        }
        if self.has_presence(label) {
            self.vacate(label).await;
        }
        self.subs.end(&self.edge, label)
    }

    /// Ends a subscription the client may no longer hold and tells it so.
    pub(super) async fn revoke(&mut self, label: ChannelName) {
        if self.unsubscribe(&label).await {
            let frame = ServerFrame::Unsubbed {
                ch: label,
                code: UnsubCode::Revoked,
            };
            self.reply(frame.encode());
        }
    }

    /// Re-authorizes the subscriptions to `channels` (changed membership, a refresh, a
    /// watched user's privacy): what the rules refuse ends now, presence watches are
    /// asked of the presence service again.
    pub(super) async fn recheck(&mut self, channels: Vec<ChannelName>) {
        // This user's own privacy changed: `join`/`leave` follow the new setting.
        let own = ChannelName::parse(&format!("presence:{}", self.identity.user)).ok();
        if own.is_some_and(|own| channels.contains(&own)) {
            self.visibility_changed();
        }
        let outcome = lifecycle::recheck(&self.edge, &self.identity, self.subs.labels(), &channels);
        for label in outcome.revoke {
            self.revoke(label).await;
        }
        if !outcome.ask_privacy.is_empty() {
            let (edge, user, done) = (
                self.edge.clone(),
                self.identity.user.clone(),
                self.done.clone(),
            );
            let labels = outcome.ask_privacy;
            self.tasks.spawn(async move {
                for label in lifecycle::no_longer_allowed(&edge, &user, labels).await {
                    done.push(Done::Revoke(label));
                }
            });
        }
    }
}

/// A refusal of the subscription to `label` as told to the client: named by its channel
/// when there is no `id` to answer.
fn about(id: Option<u64>, label: &ChannelName, refusal: Refusal) -> Refusal {
    match id {
        Some(_) => refusal,
        None => lifecycle::named_in(label, refusal),
    }
}
