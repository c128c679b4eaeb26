//! Who may do what on which channel: the namespace table of docs/protocol.md.
//!
//! The defaults are the table of docs/protocol.md, section 3. A JSON file (`SWITCHBOARD_POLICY_FILE`) may override
//! any namespace, e.g. `{"team": {"subscribe": "authenticated", "publish": "signals",
//! "presence": true}}`. The set of namespaces itself is fixed by the protocol version.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use switchboard_schemas::event::types;
use switchboard_schemas::{ChannelName, EventType, Namespace};

use crate::auth::Identity;
use crate::members::Members;

/// Who may subscribe to a namespace's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscribeRule {
    /// Only the user whose id is the channel id (`user:<sub>` and its aliases).
    Owner,
    /// Members in the `members` bucket.
    Members,
    /// Any authenticated user.
    Authenticated,
    /// The watched user's presence privacy decides (see docs/protocol.md); until then,
    /// the user themself.
    Presence,
}

/// What clients may publish on a namespace's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishRule {
    Nothing,
    /// Ephemeral signals only.
    Signals,
    /// `message.new|edited|deleted`, signals and receipts.
    Messages,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct NamespaceRule {
    pub subscribe: SubscribeRule,
    pub publish: PublishRule,
    /// Channel presence (`who`, join/leave signals).
    pub presence: bool,
}

/// Why something was refused; the message goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub &'static str);

#[derive(Debug, Clone)]
pub struct Policy {
    rules: HashMap<Namespace, NamespaceRule>,
}

impl Default for Policy {
    fn default() -> Policy {
        use PublishRule as P;
        use SubscribeRule as S;
        let rule = |subscribe, publish, presence| NamespaceRule {
            subscribe,
            publish,
            presence,
        };
        let mut rules = HashMap::new();
        rules.insert(Namespace::User, rule(S::Owner, P::Nothing, false));
        for ns in [
            Namespace::Project,
            Namespace::Bid,
            Namespace::Job,
            Namespace::Group,
            Namespace::Team,
        ] {
            rules.insert(ns, rule(S::Members, P::Signals, true));
        }
        rules.insert(Namespace::Conversation, rule(S::Members, P::Messages, true));
        rules.insert(Namespace::Presence, rule(S::Presence, P::Nothing, false));
        rules.insert(Namespace::Domain, rule(S::Authenticated, P::Nothing, false));
        rules.insert(Namespace::System, rule(S::Authenticated, P::Nothing, false));
        Policy { rules }
    }
}

impl Policy {
    /// The defaults with the namespaces named in a JSON file replaced.
    pub fn from_file(path: &Path) -> anyhow::Result<Policy> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let overrides: HashMap<String, NamespaceRule> =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut policy = Policy::default();
        for (name, rule) in overrides {
            let ns = name
                .parse::<Namespace>()
                .map_err(|_| anyhow::anyhow!("{}: unknown namespace {name:?}", path.display()))?;
            policy.rules.insert(ns, rule);
        }
        Ok(policy)
    }

    pub fn rule(&self, ns: Namespace) -> NamespaceRule {
        self.rules[&ns]
    }

    /// May `who` receive the events of `channel`?
    pub fn may_subscribe(
        &self,
        who: &Identity,
        channel: &ChannelName,
        members: &Members,
    ) -> Result<(), Denied> {
        if who.is_granted(channel) || who.role == switchboard_schemas::shapes::Role::Service {
            return Ok(());
        }
        let allowed = match self.rule(channel.namespace()).subscribe {
            SubscribeRule::Owner | SubscribeRule::Presence => channel.id() == &*who.user,
            SubscribeRule::Members => members.contains(&channel.base(), &who.user),
            SubscribeRule::Authenticated => true,
        };
        if allowed {
            Ok(())
        } else {
            Err(Denied("not allowed to subscribe to this channel"))
        }
    }

    /// May `who` send signals on `channel`? They must be allowed to subscribe to it, not
    /// necessarily subscribed.
    pub fn may_signal(
        &self,
        who: &Identity,
        channel: &ChannelName,
        members: &Members,
    ) -> Result<(), Denied> {
        self.may_subscribe(who, channel, members)?;
        match self.rule(channel.namespace()).publish {
            PublishRule::Nothing => Err(Denied("signals are not allowed on this channel")),
            PublishRule::Signals | PublishRule::Messages => Ok(()),
        }
    }

    /// May `who` publish an event of type `ty` on `channel`? Clients publish only chat
    /// messages, only where the namespace allows them.
    pub fn may_publish(
        &self,
        who: &Identity,
        channel: &ChannelName,
        ty: &EventType,
        members: &Members,
    ) -> Result<(), Denied> {
        if !is_client_publishable(ty) {
            return Err(Denied(
                "clients may publish only message.new, message.edited and message.deleted",
            ));
        }
        if channel.alias().is_some() {
            return Err(Denied("publishing to an alias channel is not allowed"));
        }
        self.may_subscribe(who, channel, members)?;
        match self.rule(channel.namespace()).publish {
            PublishRule::Messages => Ok(()),
            _ => Err(Denied("messages are not allowed on this channel")),
        }
    }

    /// May `who` send receipts (`ack`, `read`) for `channel`?
    pub fn may_receipt(
        &self,
        who: &Identity,
        channel: &ChannelName,
        members: &Members,
    ) -> Result<(), Denied> {
        // Receipt commands are addressed by conversation id (`cmd.receipts.<id>`).
        if channel.namespace() != Namespace::Conversation || channel.alias().is_some() {
            return Err(Denied("receipts are only for conversations"));
        }
        self.may_subscribe(who, channel, members)
    }
}

fn is_client_publishable(ty: &EventType) -> bool {
    matches!(
        ty.as_str(),
        types::MESSAGE_NEW | types::MESSAGE_EDITED | types::MESSAGE_DELETED
    )
}
