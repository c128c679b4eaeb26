//! The opaque paging cursors of `inbox.list` and `messages.search`: where the previous
//! page ended, as (time in unix microseconds, tie-breaker), in base64url.
//!
//! Clients must not build or read them; anything that does not parse is `bad_request`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The longest cursor accepted (a tie-breaker is a channel or an event id, both short).
const MAX_LEN: usize = 512;

/// A page boundary: the last item's time and its tie-breaker (channel or event id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub micros: i64,
    pub key: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid cursor: pass back the `next` of a previous page")]
pub struct InvalidCursor;

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("1:{}:{}", self.micros, self.key))
    }

    pub fn parse(text: &str) -> Result<Cursor, InvalidCursor> {
        if text.len() > MAX_LEN {
            return Err(InvalidCursor);
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| InvalidCursor)?;
        let text = String::from_utf8(bytes).map_err(|_| InvalidCursor)?;
        let mut parts = text.splitn(3, ':');
        let (Some("1"), Some(micros), Some(key)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(InvalidCursor);
        };
        let micros = micros.parse().map_err(|_| InvalidCursor)?;
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':');
        if key.is_empty() || !key.chars().all(valid) {
            return Err(InvalidCursor);
        }
        Ok(Cursor {
            micros,
            key: key.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_the_round_trip() {
        let cursor = Cursor {
            micros: 1_765_000_000_123_456,
            key: "conversation:c1".into(),
        };
        assert_eq!(Cursor::parse(&cursor.encode()), Ok(cursor));
    }

    #[test]
    fn anything_else_is_refused() {
        for text in [
            "",
            "!!",
            "bm9wZQ",
            &URL_SAFE_NO_PAD.encode("1:x:conversation:c1"),
            &URL_SAFE_NO_PAD.encode("2:1:conversation:c1"),
            &URL_SAFE_NO_PAD.encode("1:1:"),
            &URL_SAFE_NO_PAD.encode("1:1:a'b"),
            &"A".repeat(600),
        ] {
            assert_eq!(Cursor::parse(text), Err(InvalidCursor), "{text}");
        }
    }
}
