//! Who may see a user's presence: each user's setting in `switchboard.presence_privacy`
//! and the one rule that reads it (docs/protocol.md §9).
//!
//! A watcher may always see themself; anyone else by the target's setting: `everyone`;
//! `contacts` (the default, also for users who never chose) when both are active
//! members of one `conversation:` or `project:` channel; `nobody` never. The rule is one
//! SQL statement over a whole list of targets, so `presence.authorize` (one target),
//! `presence.visible` (an edge's `who` list) and `presence.get` (a contact list) answer
//! alike, each in one round trip.
//!
//! It owns `switchboard.presence_privacy` and reads `switchboard.channel_members`.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use switchboard_schemas::UserId;

const GET: &str = "SELECT visibility FROM switchboard.presence_privacy WHERE user_id = $1";

/// The current setting, locked until the transaction that changes it commits, so two
/// concurrent changes each see what the other left.
const GET_FOR_UPDATE: &str =
    "SELECT visibility FROM switchboard.presence_privacy WHERE user_id = $1 FOR UPDATE";

const SET: &str = "
INSERT INTO switchboard.presence_privacy (user_id, visibility) VALUES ($1, $2)
ON CONFLICT (user_id) DO UPDATE SET visibility = EXCLUDED.visibility";

/// Which of the targets `$2` (in their order) the watcher `$1` may see. The watcher's
/// contacts among the targets are found once: from the watcher's memberships (index
/// `channel_members_by_user`), each target looked up by primary key. A target without a
/// row has the default, `contacts`.
const VISIBLE: &str = "
WITH asked AS (
    SELECT user_id, ord FROM unnest($2::text[]) WITH ORDINALITY AS a (user_id, ord)
), contacts AS (
    SELECT DISTINCT theirs.user_id
      FROM switchboard.channel_members mine
      JOIN switchboard.channel_members theirs
        ON theirs.channel = mine.channel AND theirs.active
       AND theirs.user_id = ANY ($2::text[])
     WHERE mine.user_id = $1 AND mine.active
       AND (mine.channel LIKE 'conversation:%' OR mine.channel LIKE 'project:%')
)
SELECT a.user_id
  FROM asked a
  LEFT JOIN switchboard.presence_privacy p ON p.user_id = a.user_id
 WHERE a.user_id = $1
    OR coalesce(p.visibility, 'contacts') = 'everyone'
    OR (coalesce(p.visibility, 'contacts') = 'contacts'
        AND a.user_id IN (SELECT user_id FROM contacts))
 ORDER BY a.ord";

/// A user's presence privacy setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Everyone,
    /// The default: [`VISIBLE`] says the same for users without a row.
    #[default]
    Contacts,
    Nobody,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Everyone => "everyone",
            Visibility::Contacts => "contacts",
            Visibility::Nobody => "nobody",
        }
    }

    fn parse(name: &str) -> Option<Visibility> {
        [
            Visibility::Everyone,
            Visibility::Contacts,
            Visibility::Nobody,
        ]
        .into_iter()
        .find(|v| v.as_str() == name)
    }
}

/// Reads and changes privacy settings; decides who may see whom.
#[derive(Clone)]
pub struct Privacy {
    db: PgPool,
}

impl Privacy {
    pub fn new(db: PgPool) -> Privacy {
        Privacy { db }
    }

    /// `user`'s setting (the default when they never chose).
    pub async fn visibility(&self, user: &UserId) -> Result<Visibility, sqlx::Error> {
        let stored: Option<String> = sqlx::query_scalar(GET)
            .bind(user.as_str())
            .fetch_optional(&self.db)
            .await?;
        Ok(stored
            .as_deref()
            .and_then(Visibility::parse)
            .unwrap_or_default())
    }

    /// Stores `user`'s setting; whether it changed what others may see (choosing the
    /// default for the first time changes nothing). Committed when this returns.
    pub async fn set(&self, user: &UserId, visibility: Visibility) -> Result<bool, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let before: Option<String> = sqlx::query_scalar(GET_FOR_UPDATE)
            .bind(user.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let before = before
            .as_deref()
            .and_then(Visibility::parse)
            .unwrap_or_default();
        // Written even when equal: the row records an explicit choice.
        sqlx::query(SET)
            .bind(user.as_str())
            .bind(visibility.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(before != visibility)
    }

    /// The users among `targets` that `watcher` may see, in the order given.
    pub async fn visible(
        &self,
        watcher: &UserId,
        targets: &[UserId],
    ) -> Result<Vec<UserId>, sqlx::Error> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = targets.iter().map(UserId::as_str).collect();
        let rows: Vec<String> = sqlx::query_scalar(VISIBLE)
            .bind(watcher.as_str())
            .bind(&ids)
            .fetch_all(&self.db)
            .await?;
        // The rows are targets, already valid ids; anything else would be a bug upstream.
        Ok(rows
            .iter()
            .filter_map(|id| UserId::parse(id).ok())
            .collect())
    }

    /// Whether `watcher` may see `target`.
    pub async fn allowed(&self, watcher: &UserId, target: &UserId) -> Result<bool, sqlx::Error> {
        let visible = self.visible(watcher, std::slice::from_ref(target)).await?;
        Ok(!visible.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_have_their_json_names_and_contacts_is_the_default() {
        assert_eq!(Visibility::default(), Visibility::Contacts);
        for v in [
            Visibility::Everyone,
            Visibility::Contacts,
            Visibility::Nobody,
        ] {
            assert_eq!(Visibility::parse(v.as_str()), Some(v));
            assert_eq!(
                serde_json::to_string(&v).unwrap(),
                format!("\"{}\"", v.as_str())
            );
        }
        assert_eq!(Visibility::parse("friends"), None);
        assert!(serde_json::from_str::<Visibility>(r#""friends""#).is_err());
    }
}
