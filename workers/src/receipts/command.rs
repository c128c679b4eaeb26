//! Reading a receipts command (`cmd.receipts.<conversation id>`) as a typed [`Receipt`],
//! or refusing it with the reason it is poison.
//!
//! Pure functions of the message: no I/O here.

use switchboard_schemas::shapes::ReceiptCommand;
use switchboard_schemas::{ChannelName, Namespace, UserId};

/// One user's cursors on one conversation, as a command reports them. Cumulative:
/// "delivered up to `delivered`, read up to `read`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub conversation: ChannelName,
    pub user: UserId,
    /// Already raised to `read`: reading a message means it was delivered.
    pub delivered: u64,
    pub read: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("not a receipts command: {0}")]
    Json(#[from] serde_json::Error),
    #[error("receipts are for conversation channels, not {0}")]
    NotAConversation(String),
    #[error("command for {conversation} arrived on {subject}")]
    SubjectMismatch {
        conversation: String,
        subject: String,
    },
    #[error("invalid user id {0:?}")]
    User(String),
    #[error("cursor {0} does not fit a bigint")]
    TooLarge(u64),
}

/// Cursors are stored as PostgreSQL `bigint`.
const MAX_CURSOR: u64 = i64::MAX as u64;

impl Receipt {
    /// The receipt a command carries; `None` when it moves no cursor (both absent or 0).
    pub fn read(subject: &str, payload: &[u8]) -> Result<Option<Receipt>, Invalid> {
        let command: ReceiptCommand = serde_json::from_slice(payload)?;
        let conversation = command.conversation;
        if conversation.namespace() != Namespace::Conversation || conversation.alias().is_some() {
            return Err(Invalid::NotAConversation(conversation.to_string()));
        }
        if subject != command_subject(&conversation) {
            return Err(Invalid::SubjectMismatch {
                conversation: conversation.to_string(),
                subject: subject.to_string(),
            });
        }
        let user = UserId::parse(&command.user).map_err(|e| Invalid::User(e.0))?;
        let read = command.read.unwrap_or(0);
        let delivered = command.delivered.unwrap_or(0).max(read);
        if delivered > MAX_CURSOR {
            return Err(Invalid::TooLarge(delivered));
        }
        if delivered == 0 {
            return Ok(None);
        }
        Ok(Some(Receipt {
            conversation,
            user,
            delivered,
            read,
        }))
    }
}

impl Receipt {
    /// The receipt with both cursors lowered to `last`, the conversation's last stored
    /// seq: a cursor never points past what the conversation holds (docs/protocol.md
    /// §4.6). `None` when nothing is left to move (an empty conversation).
    pub fn clamped(self, last: u64) -> Option<Receipt> {
        let delivered = self.delivered.min(last);
        if delivered == 0 {
            return None;
        }
        Some(Receipt {
            delivered,
            read: self.read.min(last),
            ..self
        })
    }
}

fn command_subject(conversation: &ChannelName) -> String {
    format!("cmd.receipts.{}", conversation.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(subject: &str, json: &str) -> Result<Option<Receipt>, Invalid> {
        Receipt::read(subject, json.as_bytes())
    }

    #[test]
    fn read_implies_delivered_and_absent_means_zero() {
        let receipt = read(
            "cmd.receipts.c1",
            r#"{"conversation":"conversation:c1","user":"u2","delivered":5,"read":4}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(receipt.conversation.as_str(), "conversation:c1");
        assert_eq!(receipt.user.as_str(), "u2");
        assert_eq!((receipt.delivered, receipt.read), (5, 4));

        let read_only = read(
            "cmd.receipts.c1",
            r#"{"conversation":"conversation:c1","user":"u2","read":7}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!((read_only.delivered, read_only.read), (7, 7));

        let acked = read(
            "cmd.receipts.c1",
            r#"{"conversation":"conversation:c1","user":"u2","delivered":3}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!((acked.delivered, acked.read), (3, 0));

        let nothing = read(
            "cmd.receipts.c1",
            r#"{"conversation":"conversation:c1","user":"u2","delivered":0}"#,
        );
        assert!(nothing.unwrap().is_none());
    }

    #[test]
    fn cursors_past_the_last_seq_are_clamped_to_it() {
        let receipt = read(
            "cmd.receipts.c1",
            r#"{"conversation":"conversation:c1","user":"u2","delivered":9,"read":7}"#,
        )
        .unwrap()
        .unwrap();
        let pair = |r: Option<Receipt>| r.map(|r| (r.delivered, r.read));
        assert_eq!(pair(receipt.clone().clamped(20)), Some((9, 7)));
        assert_eq!(pair(receipt.clone().clamped(9)), Some((9, 7)));
        assert_eq!(pair(receipt.clone().clamped(8)), Some((8, 7)));
        assert_eq!(pair(receipt.clone().clamped(3)), Some((3, 3)));
        assert_eq!(pair(receipt.clamped(0)), None, "an empty conversation");
    }

    #[test]
    fn poison_is_refused_with_a_reason() {
        let cases = [
            ("cmd.receipts.c1", "garbage"),
            ("cmd.receipts.c1", r#"{"conversation":"conversation:c1"}"#),
            (
                "cmd.receipts.p1",
                r#"{"conversation":"project:p1","user":"u2","read":1}"#,
            ),
            (
                "cmd.receipts.c2",
                r#"{"conversation":"conversation:c1","user":"u2","read":1}"#,
            ),
            (
                "cmd.receipts.c1",
                r#"{"conversation":"conversation:c1","user":"u.2","read":1}"#,
            ),
            (
                "cmd.receipts.c1",
                r#"{"conversation":"conversation:c1","user":"u2","read":-1}"#,
            ),
            (
                "cmd.receipts.c1",
                r#"{"conversation":"conversation:c1","user":"u2","delivered":9223372036854775808}"#,
            ),
        ];
        for (subject, json) in cases {
            assert!(read(subject, json).is_err(), "{subject} {json}");
        }
    }
}
