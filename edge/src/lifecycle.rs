//! One subscription lifecycle for every transport: WebSocket sessions, SSE streams and
//! long polls start, re-check, revoke and tear down their subscriptions here, so the
//! three cannot drift apart (docs/protocol.md, sections 3, 6 and 9.4).
//!
//! - **Named on opening.** [`check_named`] checks, as one, the channels a request names
//!   as it opens (a socket's upgrade, an SSE stream, a poll), before it is answered.
//! - **Start.** [`authorize`] decides by the namespace rules, the token's grants and the
//!   membership copy; a `presence:<user>` the rules do not allow is the watched user's
//!   call, asked of the presence service ([`ask_privacy`]). [`Subscriptions::begin`] then
//!   attaches to the channel at once (an `unsub` right after finds it) and returns the
//!   work that replays and goes live ([`crate::subscribe`]); once the subscriber is on the
//!   channel it is re-checked for a membership or privacy change that came meanwhile.
//! - **Re-check.** When channels change (a membership change, a `refresh`, a watched
//!   user's privacy change) [`recheck`] says which subscriptions end at once and which
//!   presence watches must be asked again ([`no_longer_allowed`]). Pure: no NATS,
//!   unit-tested below.
//! - **Revoke and teardown.** [`Subscriptions::end`] backs out a subscription still
//!   being set up and leaves the channel; the transport tells its client `unsubbed`
//!   `revoked` in its own form.
//!
//! What a WebSocket session adds around this (occupancy, `join`/`leave`) stays in the
//! session: SSE and polls have no channel presence.

use std::sync::Arc;

use switchboard_schemas::channel::SYSTEM_BROADCAST;
use switchboard_schemas::{ChannelName, ErrorCode, Namespace, ResumeFrom};

use crate::Edge;
use crate::auth::Identity;
use crate::hub::{Channel, Subscription};
use crate::members::Members;
use crate::policy::Policy;
use crate::refusal::Refusal;
use crate::subscribe::{self, Progress};

/// Whether a subscription may start.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// A `presence:<user>` watch: the watched user's privacy setting decides.
    AskPrivacy,
    Refused(Refusal),
}

/// Decides a new subscription to `label` by the rules, the token and the members.
pub fn authorize(edge: &Edge, identity: &Identity, label: &ChannelName) -> Access {
    access(&edge.policy, &edge.members, identity, label)
}

fn access(policy: &Policy, members: &Members, identity: &Identity, label: &ChannelName) -> Access {
    match policy.may_subscribe(identity, label, members) {
        Ok(()) => Access::Allowed,
        Err(_) if label.namespace() == Namespace::Presence => Access::AskPrivacy,
        Err(why) => Access::Refused(Refusal::forbidden(why)),
    }
}

/// Asks the presence service whether `user` may watch `target`'s presence.
pub use crate::privacy::may_watch;

/// Finishes a start that was [`Access::AskPrivacy`]: the presence service's `true` lets
/// the watch go on; a `false` refuses it, worded alike whether the user hides or does not
/// exist; no answer refuses it as `unavailable`.
///
/// A privacy change told while the watch is still being set up reaches only the
/// subscribers already on the channel: the answer carries the edge's count of such
/// changes as it was before asking, and [`Subscriptions::begin`] asks again once the
/// subscriber is on the channel if the count moved meanwhile.
pub async fn ask_privacy(
    edge: &Edge,
    user: &str,
    label: &ChannelName,
) -> Result<PrivacyAsked, Refusal> {
    let asked = PrivacyAsked {
        changes: edge.hub.changes(),
    };
    if may_watch(edge, user, label.id()).await? {
        Ok(asked)
    } else {
        Err(Refusal::forbidden("this user's presence is private"))
    }
}

/// Channels a request named as it opened, checked, each with the presence service's say
/// where it was asked ([`check_named`]).
pub type Named = Vec<(ChannelName, Option<PrivacyAsked>)>;

/// The channels a request names as it opens (`?ch=`, repeated: a socket's upgrade, an SSE
/// stream, a poll), checked as one: each must be a channel and allowed, a presence watch
/// the rules leave to its user is asked of the presence service, duplicates are merged.
/// The first refusal refuses the request, naming its channel. Each channel comes with the
/// presence service's say, where it was asked.
pub async fn check_named(
    edge: &Edge,
    identity: &Identity,
    named: &[String],
) -> Result<Named, Refusal> {
    if named.len() > edge.config.max_subscriptions {
        return Err(Refusal::new(ErrorCode::RateLimited, "too many channels"));
    }
    let mut channels = Named::with_capacity(named.len());
    for raw in named {
        let label = ChannelName::parse(raw).map_err(|e| Refusal::bad_request(e.to_string()))?;
        if channels.iter().any(|(known, _)| *known == label) {
            continue;
        }
        let privacy = match authorize(edge, identity, &label) {
            Access::Allowed => None,
            Access::AskPrivacy => Some(
                ask_privacy(edge, &identity.user, &label)
                    .await
                    .map_err(|refusal| named_in(&label, refusal))?,
            ),
            Access::Refused(refusal) => return Err(named_in(&label, refusal)),
        };
        channels.push((label, privacy));
    }
    Ok(channels)
}

/// A refusal about one of several channels, naming it.
pub fn named_in(label: &ChannelName, refusal: Refusal) -> Refusal {
    Refusal::new(refusal.code, format!("{label}: {}", refusal.message))
}

/// A presence watch the presence service allowed, and when: the edge's count of
/// channel-wide changes ([`crate::hub::Hub::changes`]) read before it was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrivacyAsked {
    changes: u64,
}

/// How a subscription starts, besides who and what: the request it answers (`id`, and
/// whether to `reply` with `ok`), where it resumes (`since`), and the presence service's
/// say when it was asked.
#[derive(Debug, Default)]
pub struct Setup {
    pub id: Option<u64>,
    pub since: Option<ResumeFrom>,
    pub reply: bool,
    pub privacy: Option<PrivacyAsked>,
}

/// Whether a subscription now on its channel must be re-checked for what changed while
/// it was being set up (changes are told only to subscribers on the channel). `now` is
/// the rules' say at this moment; `privacy` the presence service's earlier say, if asked;
/// `changes` the edge's count of channel-wide changes now.
fn stale_on_arrival(now: &Access, privacy: Option<PrivacyAsked>, changes: u64) -> bool {
    match now {
        Access::Allowed => false,
        // A membership change took the right away.
        Access::Refused(_) => true,
        // A presence watch: the presence service's earlier yes stands unless a privacy
        // change was told since (or it was never asked: the rules allowed it at start).
        Access::AskPrivacy => privacy.is_none_or(|asked| asked.changes != changes),
    }
}

/// Finishes a re-check's [`Recheck::ask_privacy`]: the watches the presence service no
/// longer allows, asked all at once. Unanswered, a watch stays: it was allowed, and an
/// outage of the presence service must not look like a privacy change.
pub async fn no_longer_allowed(
    edge: &Edge,
    user: &str,
    labels: Vec<ChannelName>,
) -> Vec<ChannelName> {
    let answers =
        futures_util::future::join_all(labels.iter().map(|l| may_watch(edge, user, l.id()))).await;
    let mut lost = Vec::new();
    for (label, answer) in labels.into_iter().zip(answers) {
        match answer {
            Ok(true) => {}
            Ok(false) => lost.push(label),
            Err(refusal) => tracing::warn!(%refusal, %label, "presence watch not re-checked"),
        }
    }
    lost
}

/// What a re-check decided for the subscriptions held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recheck {
    /// Subscriptions that end now (`unsubbed` `revoked`).
    pub revoke: Vec<ChannelName>,
    /// Presence watches the rules no longer allow: the presence service decides again,
    /// and a `false` revokes them.
    pub ask_privacy: Vec<ChannelName>,
}

/// Re-authorizes the subscriptions in `held` whose base channel is in `changed`.
/// A `refresh` passes every held base channel: the new token may grant less.
pub fn recheck<'a>(
    edge: &Edge,
    identity: &Identity,
    held: impl IntoIterator<Item = &'a ChannelName>,
    changed: &[ChannelName],
) -> Recheck {
    decide(&edge.policy, &edge.members, identity, held, changed)
}

fn decide<'a>(
    policy: &Policy,
    members: &Members,
    identity: &Identity,
    held: impl IntoIterator<Item = &'a ChannelName>,
    changed: &[ChannelName],
) -> Recheck {
    let mut outcome = Recheck::default();
    for label in held {
        if !changed.contains(&label.base()) {
            continue;
        }
        match access(policy, members, identity, label) {
            Access::Allowed => {}
            Access::AskPrivacy => outcome.ask_privacy.push(label.clone()),
            Access::Refused(_) => outcome.revoke.push(label.clone()),
        }
    }
    outcome
}

/// One subscription as a connection holds it.
#[derive(Debug)]
struct Held {
    label: ChannelName,
    channel: Arc<Channel>,
    /// Cancelled on unsubscribe, so a subscribe still in flight backs out; tells when the
    /// subscriber is on the channel (its head fixed), or that it failed first.
    progress: Arc<Progress>,
    /// The subscription's key in the hub.
    key: u64,
}

/// A connection's subscriptions, by the channel as the client spelled it.
///
/// A list, not a map: a connection holds a few (at most `max_subscriptions`), and a map
/// of two makes room for four; on an edge of idle connections that difference was memory
/// per connection (BENCHMARKS.md, "Memory per idle connection, a second look").
#[derive(Debug, Default)]
pub struct Subscriptions {
    held: Vec<Held>,
}

impl Subscriptions {
    pub fn contains(&self, label: &ChannelName) -> bool {
        self.position(label).is_some()
    }

    fn position(&self, label: &ChannelName) -> Option<usize> {
        self.held.iter().position(|held| held.label == *label)
    }

    pub fn labels(&self) -> impl Iterator<Item = &ChannelName> {
        self.held.iter().map(|held| &held.label)
    }

    /// Subscriptions that count toward the per-connection limit: `system:broadcast` is
    /// implicit and does not.
    pub fn counted(&self) -> usize {
        self.labels()
            .filter(|label| label.as_str() != SYSTEM_BROADCAST)
            .count()
    }

    /// Holds `held` in place of any subscription to the same label. Room for the first
    /// four is made one place at a time: most connections hold two or three.
    fn hold(&mut self, held: Held) {
        if let Some(at) = self.position(&held.label) {
            self.held[at] = held;
            return;
        }
        if self.held.len() == self.held.capacity() && self.held.len() < 4 {
            self.held.reserve_exact(1);
        }
        self.held.push(held);
    }

    /// Attaches `subscription` (authorized for `identity`) to its channel now and returns
    /// the work that finishes it: wait for the bridge, reply `ok` (when `reply`), replay
    /// what `since` asks for, hand over to live delivery. The caller runs it in a task of
    /// its own, and may drop it at any point.
    pub fn begin(
        &mut self,
        edge: &Arc<Edge>,
        identity: &Identity,
        subscription: Subscription,
        setup: Setup,
    ) -> impl Future<Output = Result<(), Refusal>> + Send + 'static {
        let Setup {
            id,
            since,
            reply,
            privacy,
        } = setup;
        // Given back by the work when it fails, or with it when it is dropped first.
        let attachment = subscribe::attach(edge, &subscription.label);
        let channel = attachment.channel().clone();
        let (progress, arrives) = Progress::start();
        let on_channel = progress.clone();
        let (label, identity) = (subscription.label.clone(), identity.clone());
        let control = subscription.mailbox.control.clone();
        self.hold(Held {
            label: subscription.label.clone(),
            channel,
            progress,
            key: subscription.key,
        });
        edge.metrics.gauge(&edge.metrics.subscriptions, 1);
        let edge = edge.clone();
        async move {
            let work =
                subscribe::subscribe(&edge, attachment, subscription, id, since, reply, arrives);
            // A membership or privacy change is told to the subscribers on the channel; one
            // that came while this subscription was being set up found it not there yet.
            // Once it is, any later change finds it, and this check catches the earlier
            // ones.
            let recheck = async {
                if on_channel.settled().await {
                    let now = authorize(&edge, &identity, &label);
                    if stale_on_arrival(&now, privacy, edge.hub.changes()) {
                        control.recheck(label.base());
                    }
                }
            };
            let (outcome, ()) = tokio::join!(work, recheck);
            outcome
        }
    }

    /// Resolves once every subscription held to `channel` (by any spelling) is on the
    /// channel. A client that subscribes and then publishes on one connection must see its
    /// own message: the edge handles each frame in order but finishes both in tasks, and
    /// a publish stored before the subscription fixes its head would never reach it.
    pub fn settled(&self, channel: &ChannelName) -> impl Future<Output = ()> + Send + 'static {
        let base = channel.base();
        let pending: Vec<Arc<Progress>> = self
            .held
            .iter()
            .filter(|held| held.label.base() == base)
            .map(|held| held.progress.clone())
            .collect();
        async move {
            for progress in &pending {
                // Failed or ended: nothing to wait for.
                progress.settled().await;
            }
        }
    }

    /// Ends a subscription: backs out one still being set up, leaves the channel.
    /// Returns whether there was one.
    pub fn end(&mut self, edge: &Edge, label: &ChannelName) -> bool {
        let Some(at) = self.position(label) else {
            return false;
        };
        let held = self.held.swap_remove(at);
        held.progress.cancel();
        // Detaching a subscription that never got added is harmless.
        edge.hub.detach(&held.channel, held.key);
        edge.metrics.gauge(&edge.metrics.subscriptions, -1);
        true
    }

    /// Ends every subscription, as the connection goes.
    pub fn end_all(&mut self, edge: &Edge) {
        while let Some(held) = self.held.last() {
            let label = held.label.clone();
            self.end(edge, &label);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_schemas::shapes::Role;
    use switchboard_schemas::{ChannelPattern, ErrorCode};

    fn identity(user: &str, grants: &[&str]) -> Identity {
        Identity {
            user: user.into(),
            role: Role::User,
            grants: grants
                .iter()
                .map(|g| ChannelPattern::parse(g).unwrap())
                .collect(),
            exp: i64::MAX,
        }
    }

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    #[test]
    fn a_start_is_allowed_refused_or_left_to_the_watched_users_privacy() {
        let (policy, members) = (Policy::default(), Members::default());
        let u1 = identity("u1", &["project:p1"]);
        assert_eq!(
            access(&policy, &members, &u1, &ch("project:p1")),
            Access::Allowed
        );
        assert_eq!(
            access(&policy, &members, &u1, &ch("user:u1")),
            Access::Allowed
        );
        assert!(matches!(
            access(&policy, &members, &u1, &ch("project:p2")),
            Access::Refused(Refusal {
                code: ErrorCode::Forbidden,
                ..
            })
        ));
        assert!(matches!(
            access(&policy, &members, &u1, &ch("user:u2")),
            Access::Refused(_)
        ));
        assert_eq!(
            access(&policy, &members, &u1, &ch("presence:u1")),
            Access::Allowed
        );
        assert_eq!(
            access(&policy, &members, &u1, &ch("presence:u2")),
            Access::AskPrivacy
        );
    }

    #[test]
    fn a_recheck_touches_only_the_changed_channels() {
        let (policy, members) = (Policy::default(), Members::default());
        // The token no longer grants project:p1 nor presence:u2.
        let u1 = identity("u1", &[]);
        let held = [
            ch("project:p1"),
            ch("project:p2"),
            ch("user:u1:notifications"),
            ch("presence:u2"),
        ];
        let membership = decide(&policy, &members, &u1, &held, &[ch("project:p1")]);
        assert_eq!(
            membership,
            Recheck {
                revoke: vec![ch("project:p1")],
                ask_privacy: vec![],
            }
        );
        // A refresh re-checks everything held: aliases by their base channel, presence
        // watches by the watched user's privacy.
        let all: Vec<ChannelName> = held.iter().map(ChannelName::base).collect();
        let refresh = decide(&policy, &members, &u1, &held, &all);
        assert_eq!(refresh.revoke, [ch("project:p1"), ch("project:p2")]);
        assert_eq!(refresh.ask_privacy, [ch("presence:u2")]);
        // A privacy change of u2 concerns the watches of u2 only.
        let privacy = decide(&policy, &members, &u1, &held, &[ch("presence:u2")]);
        assert_eq!(privacy.ask_privacy, [ch("presence:u2")]);
        assert!(privacy.revoke.is_empty());
    }

    /// A change told while a subscription was being set up missed it: once on the
    /// channel, a subscription the rules now refuse, or a presence watch allowed before a
    /// privacy change was told, is re-checked; anything else stays as it is.
    #[test]
    fn a_change_during_set_up_is_caught_once_the_subscriber_is_on_the_channel() {
        let asked = Some(PrivacyAsked { changes: 4 });
        // Allowed by the rules: nothing to ask, whatever changed.
        assert!(!stale_on_arrival(&Access::Allowed, None, 9));
        assert!(!stale_on_arrival(&Access::Allowed, asked, 9));
        // Refused by the rules now: a membership change came meanwhile.
        let refused = Access::Refused(Refusal::forbidden("not a member"));
        assert!(stale_on_arrival(&refused, None, 0));
        assert!(stale_on_arrival(&refused, asked, 4));
        // A presence watch: its yes holds while no privacy change was told since...
        assert!(!stale_on_arrival(&Access::AskPrivacy, asked, 4));
        // ...and is asked again after one (the presence service's answer may predate it).
        assert!(stale_on_arrival(&Access::AskPrivacy, asked, 5));
        // Started by a rule that no longer holds, never asked: the presence service decides.
        assert!(stale_on_arrival(&Access::AskPrivacy, None, 4));
    }

    #[test]
    fn a_grant_keeps_a_subscription_through_a_recheck() {
        let (policy, members) = (Policy::default(), Members::default());
        let u1 = identity("u1", &["project:*", "presence:u2"]);
        let held = [ch("project:p1"), ch("presence:u2")];
        let refresh = decide(
            &policy,
            &members,
            &u1,
            &held,
            &[ch("project:p1"), ch("presence:u2")],
        );
        assert_eq!(refresh, Recheck::default());
    }
}
