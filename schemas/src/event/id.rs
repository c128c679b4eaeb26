//! [`EventId`]: the unique id of an event, also its JetStream `Nats-Msg-Id`.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

use super::EventFieldError;

/// `evt_` followed by 1..=128 characters of `[A-Za-z0-9_-]`.
///
/// Ids made here are `evt_` + a 128-bit UUID in Crockford base32 (26 characters, the
/// ULID alphabet), so generated ids sort by creation time as plain strings. Backends
/// may choose their own ids within the grammar; it keeps every id safe as a NATS header
/// value, a URL component and a SQL key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct EventId(String);

const PREFIX: &str = "evt_";
const MAX_SUFFIX_LEN: usize = 128;

/// Namespace of the name-based UUIDs behind [`EventId::derive`]. Changing it changes
/// every derived id, which would let a retried publish through the dedupe window.
const DERIVE_NAMESPACE: Uuid = Uuid::from_u128(0xfa04_0134_1670_4af5_99ed_41bb_ef5f_ae8a);

impl EventId {
    /// A fresh id from a UUIDv7: time-ordered, and ordered within this process too.
    pub fn generate() -> EventId {
        EventId::from_uuid(Uuid::now_v7())
    }

    /// The same id for the same `parts`, in every process and every release.
    ///
    /// The edge derives a client publish's id from (user, channel, idempotency key), so
    /// a retry maps to the same `Nats-Msg-Id` and JetStream stores the event once. Each
    /// part is length-prefixed before hashing: with a plain separator, `["a:b", "c"]`
    /// and `["a", "b:c"]` would collide, and the parts are client-chosen.
    pub fn derive(parts: &[&str]) -> EventId {
        let mut name = Vec::with_capacity(parts.iter().map(|part| part.len() + 8).sum());
        for part in parts {
            name.extend_from_slice(&(part.len() as u64).to_be_bytes());
            name.extend_from_slice(part.as_bytes());
        }
        EventId::from_uuid(Uuid::new_v5(&DERIVE_NAMESPACE, &name))
    }

    pub fn parse(text: &str) -> Result<EventId, EventFieldError> {
        let valid = text.strip_prefix(PREFIX).is_some_and(|suffix| {
            (1..=MAX_SUFFIX_LEN).contains(&suffix.len())
                && suffix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if valid {
            Ok(EventId(text.to_owned()))
        } else {
            Err(EventFieldError::Id(crate::error::excerpt(text)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn from_uuid(uuid: Uuid) -> EventId {
        let mut id = String::with_capacity(PREFIX.len() + 26);
        id.push_str(PREFIX);
        id.push_str(&crockford_base32(uuid.as_u128()));
        EventId(id)
    }
}

/// 128 bits as 26 Crockford base32 digits, most significant first (the ULID text form):
/// the first digit holds the top 3 bits, each of the other 25 holds 5.
fn crockford_base32(value: u128) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    (0..26)
        .map(|digit| {
            let shift = 5 * (25 - digit);
            char::from(ALPHABET[((value >> shift) & 0x1f) as usize])
        })
        .collect()
}

impl TryFrom<String> for EventId {
    type Error = EventFieldError;

    fn try_from(text: String) -> Result<EventId, EventFieldError> {
        EventId::parse(&text)
    }
}

impl std::str::FromStr for EventId {
    type Err = EventFieldError;

    fn from_str(text: &str) -> Result<EventId, EventFieldError> {
        EventId::parse(text)
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl AsRef<str> for EventId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_the_ulid_text_form() {
        assert_eq!(crockford_base32(0), "0".repeat(26));
        assert_eq!(crockford_base32(u128::MAX), format!("7{}", "Z".repeat(25)));
        // ULID spec example: 01ARZ3NDEKTSV4RRFFQ69G5FAV.
        assert_eq!(
            crockford_base32(0x0156_3E3A_B5D3_D676_4C61_EFB9_9302_BD5B),
            "01ARZ3NDEKTSV4RRFFQ69G5FAV"
        );
    }

    #[test]
    fn generated_ids_are_time_ordered_and_valid() {
        let ids: Vec<EventId> = (0..1000).map(|_| EventId::generate()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
        for id in &ids {
            assert_eq!(id.as_str().len(), 30);
            assert!(id.as_str().starts_with("evt_0"), "{id}");
            assert_eq!(EventId::parse(id.as_str()).as_ref(), Ok(id));
        }
    }

    #[test]
    fn derived_ids_are_deterministic_and_unambiguous() {
        let a = EventId::derive(&["u1", "conversation:c1", "k-123"]);
        assert_eq!(a, EventId::derive(&["u1", "conversation:c1", "k-123"]));
        assert_ne!(a, EventId::derive(&["u2", "conversation:c1", "k-123"]));
        assert_ne!(a, EventId::derive(&["u1", "conversation:c1", "k-124"]));
        assert_ne!(
            EventId::derive(&["a\0b", "c"]),
            EventId::derive(&["a", "b\0c"])
        );
        assert_ne!(EventId::derive(&["ab", ""]), EventId::derive(&["a", "b"]));
        assert!(EventId::parse(a.as_str()).is_ok());
        // Pinned: a derived id must never change between releases, or a retry across
        // a rolling upgrade would be stored twice.
        assert_eq!(a.as_str(), "evt_7X0RS9046ZAS9RZ0W8489QA3EA");
    }

    #[test]
    fn parse_accepts_the_grammar_only() {
        for good in [
            "evt_1",
            "evt_01JD3X",
            "evt_a-b_c",
            &format!("evt_{}", "x".repeat(128)),
        ] {
            assert!(EventId::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "evt_",
            "evt",
            "EVT_1",
            "1",
            "evt_a b",
            "evt_a.b",
            "evt_a\r\nb",
            "evt_é",
            &format!("evt_{}", "x".repeat(129)),
        ] {
            assert!(EventId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serde_checks_on_the_way_in() {
        let id: EventId = serde_json::from_str(r#""evt_abc""#).unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""evt_abc""#);
        assert!(serde_json::from_str::<EventId>(r#""abc""#).is_err());
    }
}
