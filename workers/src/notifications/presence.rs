//! Who is online now, read from the KV bucket `presence` that the edges keep: one key
//! per live connection, `<user>.<connection>`, expiring by per-message TTL. A user is
//! online while at least one key under `<user>.` holds a value; a deleted key, and one
//! whose TTL ran out (a purge marker), mean that connection is gone.
//!
//! Push and email go only to users offline at the moment their notification is decided.
//! This module only reads the bucket (batched direct gets, no consumer); the edges own it.

use std::collections::HashSet;

use futures_util::{StreamExt, TryStreamExt};
use switchboard_bus::PRESENCE_BUCKET;
use switchboard_bus::store::{Store, StoreError};
use switchboard_schemas::UserId;

/// Lookups in flight at once for one event.
const CONCURRENT_LOOKUPS: usize = 16;

#[derive(Debug, thiserror::Error)]
#[error("presence lookup in KV bucket {PRESENCE_BUCKET} failed: {0}")]
pub struct PresenceError(#[from] StoreError);

/// Reads the `presence` bucket.
#[derive(Clone)]
pub struct Presence {
    store: Store,
}

impl Presence {
    pub fn new(client: async_nats::Client) -> Presence {
        Presence {
            store: Store::new(client),
        }
    }

    /// Which of `users` have at least one live connection.
    pub async fn online(&self, users: &[UserId]) -> Result<HashSet<UserId>, PresenceError> {
        futures_util::stream::iter(users.iter().cloned())
            .map(|user| {
                let store = self.store.clone();
                async move {
                    let keys = store
                        .scan_bucket(PRESENCE_BUCKET, &format!("{user}.>"))
                        .await?;
                    Ok::<_, PresenceError>((!keys.is_empty()).then_some(user))
                }
            })
            .buffer_unordered(CONCURRENT_LOOKUPS)
            .try_filter_map(|online| async move { Ok(online) })
            .try_collect()
            .await
    }
}
