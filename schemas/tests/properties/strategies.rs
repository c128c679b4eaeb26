//! Generators shared by the property tests.

use proptest::prelude::*;
use serde_json::Value;
use switchboard_schemas::{Namespace, Timestamp};

/// A channel id: the whole `[A-Za-z0-9_-]{1,128}` range, with short ids more likely.
pub fn channel_id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9_-]{1,12}",
        1 => "[A-Za-z0-9_-]{1,128}",
    ]
}

pub fn namespace() -> impl Strategy<Value = Namespace> {
    proptest::sample::select(Namespace::ALL.to_vec())
}

/// The text of a valid channel, user aliases included.
pub fn channel_text() -> impl Strategy<Value = String> {
    (namespace(), channel_id(), prop::option::of(prop::bool::ANY)).prop_map(
        |(ns, id, alias)| match (ns, alias) {
            (Namespace::User, Some(true)) => format!("user:{id}:notifications"),
            (Namespace::User, Some(false)) => format!("user:{id}:messages"),
            _ => format!("{ns}:{id}"),
        },
    )
}

/// A valid event type: `segment(.segment)*` within 128 characters.
pub fn event_type() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z0-9_]{1,10}", 1..5).prop_map(|segments| segments.join("."))
}

/// Any instant RFC 3339 can write: years 0000 to 9999.
pub fn timestamp() -> impl Strategy<Value = Timestamp> {
    const YEAR_0: i128 = -62_167_219_200 * 1_000_000_000;
    const YEAR_10000: i128 = 253_402_300_800 * 1_000_000_000;
    prop_oneof![
        (YEAR_0..YEAR_10000),
        // Whole seconds, where the text form has no fraction.
        (-62_167_219_200i64..253_402_300_800).prop_map(|secs| i128::from(secs) * 1_000_000_000),
    ]
    .prop_map(|nanos| Timestamp::from_unix_nanos(nanos).expect("generated in range"))
}

/// Arbitrary JSON: every scalar kind (big integers, floats, any Unicode text) nested
/// in arrays and objects.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}
