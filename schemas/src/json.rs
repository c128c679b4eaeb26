//! [`RawJson`]: a JSON value carried as text, checked once and never parsed again.
//!
//! Event `data`, signal `data` and RPC `params`/`result` are opaque to Switchboard: it
//! stores them, moves them between processes and splices them into outgoing frames.
//! Building a `serde_json::Value` tree for each of them would cost more than all the
//! rest of a delivery, so they stay text, validated at the boundary where they enter.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// One complete JSON value as UTF-8 text, without surrounding whitespace.
///
/// Every constructor checks the text, so holding a `RawJson` means it can be written
/// into a JSON document verbatim. Equality compares the text, not the meaning:
/// `{"a":1}` and `{ "a": 1 }` are different values.
#[derive(Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// JSON `null`, what an absent `data` means.
    pub fn null() -> RawJson {
        RawJson::from_string("null".to_owned()).expect("`null` is JSON")
    }

    /// `{}`, what absent RPC `params` mean.
    pub fn empty_object() -> RawJson {
        RawJson::from_string("{}".to_owned()).expect("`{}` is JSON")
    }

    /// Checks `text` and keeps it (without surrounding whitespace).
    pub fn from_string(text: String) -> Result<RawJson, serde_json::Error> {
        RawValue::from_string(text).map(RawJson)
    }

    /// Checks `bytes` (UTF-8 and JSON) and keeps a copy of the text.
    pub fn from_slice(bytes: &[u8]) -> Result<RawJson, serde_json::Error> {
        serde_json::from_slice::<Box<RawValue>>(bytes).map(RawJson)
    }

    /// Serializes `value` straight to text, with no intermediate tree.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<RawJson, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(RawJson)
    }

    /// Parses the text into `T`, for the few places that must look inside.
    pub fn decode<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.as_str())
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.as_str().as_bytes()
    }
}

impl Default for RawJson {
    fn default() -> RawJson {
        RawJson::null()
    }
}

impl From<Box<RawValue>> for RawJson {
    fn from(raw: Box<RawValue>) -> RawJson {
        RawJson(raw)
    }
}

impl From<&RawValue> for RawJson {
    fn from(raw: &RawValue) -> RawJson {
        RawJson(raw.to_owned())
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RawJson {}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serializes as the JSON value itself (spliced, not quoted). Only `serde_json` knows
/// how to do that; other formats carry the text through [`RawJson::as_str`].
impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// Captures the JSON value at this position without building a tree (`serde_json` only).
impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawJson, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(RawJson)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_text_and_trims_whitespace() {
        assert_eq!(
            RawJson::from_slice(b" {\"a\": [1, 2]}\n").unwrap().as_str(),
            "{\"a\": [1, 2]}"
        );
        assert!(RawJson::from_slice(b"{\"a\":").is_err());
        assert!(RawJson::from_slice(b"1 2").is_err());
        assert!(RawJson::from_slice(b"").is_err());
        assert!(RawJson::from_slice(b"\"\xff\"").is_err());
        assert_eq!(RawJson::default().as_str(), "null");
    }

    #[test]
    fn splices_into_documents() {
        let data = RawJson::encode(&serde_json::json!({"amount": 5000})).unwrap();
        assert_eq!(
            serde_json::to_string(&[&data, &RawJson::null()]).unwrap(),
            r#"[{"amount":5000},null]"#
        );
    }
}
