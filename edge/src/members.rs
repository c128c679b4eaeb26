//! Channel membership as this edge knows it: a copy of the KV bucket `members`
//! (`<ns>.<id>.<user>` -> role), loaded at start and kept fresh by a KV watch.
//!
//! The membership worker is the only writer of the bucket. When a key disappears, the
//! sessions of that user holding that channel re-check their right to it, so a removed
//! member's live subscriptions end within the watch's latency, on every edge.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use switchboard_bus::MEMBERS_BUCKET;
use switchboard_schemas::{ChannelName, Membership, UserId};
use tokio::sync::watch;

use crate::hub::Hub;

/// The set of `(channel, user)` memberships; cheap lookups under a read lock.
#[derive(Debug)]
pub struct Members {
    keys: RwLock<HashSet<String>>,
    loaded: watch::Sender<bool>,
}

impl Default for Members {
    fn default() -> Members {
        Members {
            keys: RwLock::default(),
            loaded: watch::Sender::new(false),
        }
    }
}

impl Members {
    pub fn contains(&self, channel: &ChannelName, user: &str) -> bool {
        let Ok(user) = UserId::parse(user) else {
            return false;
        };
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&Membership::new(channel, user).key())
    }

    /// True once the bucket's current content has been read.
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// Waits until the bucket's current content has been read.
    pub async fn loaded(&self) {
        let mut rx = self.loaded.subscribe();
        let _ = rx.wait_for(|loaded| *loaded).await;
    }

    /// Follows the bucket for as long as the edge runs, re-watching from scratch after
    /// any interruption (a NATS restart ends the watch).
    pub async fn follow(self: Arc<Self>, js: jetstream::Context, hub: Arc<Hub>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.watch_once(&js, &hub).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, "members watch interrupted; re-watching");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn watch_once(&self, js: &jetstream::Context, hub: &Hub) -> anyhow::Result<()> {
        let store = js.get_key_value(MEMBERS_BUCKET).await?;
        let mut watch = store.watch_with_history(">").await?;
        let empty = store.status().await?.values() == 0;
        // A re-watch rebuilds the set; memberships that vanished meanwhile are revoked
        // when the rebuild completes.
        let mut fresh: Option<HashSet<String>> = Some(HashSet::new());
        if empty {
            self.install(fresh.take().unwrap_or_default(), hub);
        }
        while let Some(entry) = watch.next().await {
            let entry = entry?;
            let present = entry.operation == kv::Operation::Put;
            match &mut fresh {
                Some(set) => {
                    if present {
                        set.insert(entry.key.clone());
                    } else {
                        set.remove(&entry.key);
                    }
                    if entry.seen_current || entry.delta == 0 {
                        let set = fresh.take().unwrap_or_default();
                        self.install(set, hub);
                    }
                }
                None => {
                    let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
                    if present {
                        keys.insert(entry.key.clone());
                    } else if keys.remove(&entry.key) {
                        drop(keys);
                        revoke(hub, &entry.key);
                    }
                }
            }
        }
        anyhow::bail!("watch ended")
    }

    /// Replaces the whole set, revoking what disappeared.
    fn install(&self, set: HashSet<String>, hub: &Hub) {
        let removed: Vec<String> = {
            let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
            let removed = keys.difference(&set).cloned().collect();
            *keys = set;
            removed
        };
        for key in removed {
            revoke(hub, &key);
        }
        self.loaded.send_replace(true);
    }
}

/// Tells the sessions of the key's user holding the key's channel to re-check.
fn revoke(hub: &Hub, key: &str) {
    let Some(member) = Membership::from_key(key) else {
        return;
    };
    if let Some(held) = hub.get(&member.channel) {
        for session in held.sessions_of(member.user.as_str()) {
            session.recheck(member.channel.clone());
        }
    }
}
