//! The envelope's JSON and postcard forms.

use proptest::prelude::*;
use serde_json::{Value, json};
use switchboard_schemas::{Envelope, EnvelopeError, EventId};

use crate::strategies::{event_type, json_value, timestamp};

/// The JSON text of an envelope with arbitrary `data` and any optional fields.
fn envelope_json() -> impl Strategy<Value = Value> {
    let id = prop_oneof![
        Just(EventId::generate().to_string()),
        "evt_[A-Za-z0-9_-]{1,128}",
    ];
    let optional_text = || prop::option::of(any::<String>());
    (
        id,
        event_type(),
        timestamp(),
        (optional_text(), optional_text()),
        prop::option::of((any::<String>(), any::<String>())),
        prop::option::of(json_value()),
        prop::option::of((optional_text(), optional_text(), optional_text())),
    )
        .prop_map(
            |(id, ty, timestamp, (source, subject), actor, data, metadata)| {
                let mut envelope = json!({ "id": id, "type": ty, "timestamp": timestamp });
                let fields = envelope.as_object_mut().expect("an object");
                let mut set = |key: &str, value: Option<Value>| {
                    if let Some(value) = value {
                        fields.insert(key.to_owned(), value);
                    }
                };
                set("source", source.map(Value::from));
                set("subject", subject.map(Value::from));
                set(
                    "actor",
                    actor.map(|(id, kind)| json!({ "id": id, "type": kind })),
                );
                set("data", data);
                set(
                    "metadata",
                    metadata.map(|(correlation, causation, version)| {
                        let mut metadata = serde_json::Map::new();
                        for (key, value) in [
                            ("correlationId", correlation),
                            ("causationId", causation),
                            ("version", version),
                        ] {
                            if let Some(value) = value {
                                metadata.insert(key.to_owned(), value.into());
                            }
                        }
                        Value::Object(metadata)
                    }),
                );
                envelope
            },
        )
}

proptest! {
    #[test]
    fn json_to_postcard_to_json_round_trips(input in envelope_json()) {
        let text = serde_json::to_vec(&input).unwrap();
        let envelope = Envelope::from_json(&text).unwrap();

        let postcard = envelope.to_postcard();
        let decoded = Envelope::from_postcard(&postcard).unwrap();
        prop_assert_eq!(&decoded, &envelope);
        prop_assert_eq!(Envelope::decode(&postcard, false).unwrap(), envelope.clone());

        // Compared as parsed from text on both sides: floats then parse the same way.
        let output = decoded.to_json();
        let mut expected: Value = serde_json::from_slice(&text).unwrap();
        expected
            .as_object_mut()
            .unwrap()
            .entry("data")
            .or_insert(Value::Null);
        prop_assert_eq!(serde_json::from_slice::<Value>(&output).unwrap(), expected);
        prop_assert_eq!(Envelope::from_json(&output).unwrap(), envelope);
    }

    #[test]
    fn other_versions_are_a_typed_error(input in envelope_json(), version in any::<u8>()) {
        prop_assume!(version != 1);
        let mut postcard = Envelope::from_json(&serde_json::to_vec(&input).unwrap())
            .unwrap()
            .to_postcard();
        postcard[0] = version;
        prop_assert!(matches!(
            Envelope::from_postcard(&postcard),
            Err(EnvelopeError::UnsupportedVersion(v)) if v == version
        ));
    }

    #[test]
    fn truncated_or_extended_postcard_is_refused(input in envelope_json(), cut in any::<prop::sample::Index>(), extra in prop::collection::vec(any::<u8>(), 1..8)) {
        let postcard = Envelope::from_json(&serde_json::to_vec(&input).unwrap())
            .unwrap()
            .to_postcard();
        let truncated = &postcard[..cut.index(postcard.len())];
        prop_assert!(Envelope::from_postcard(truncated).is_err());
        let extended = [postcard.as_slice(), &extra].concat();
        prop_assert!(
            matches!(Envelope::from_postcard(&extended), Err(EnvelopeError::TrailingBytes(n)) if n == extra.len())
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::from_postcard(&bytes);
        let _ = Envelope::from_json(&bytes);
        let versioned = [&[1u8][..], &bytes].concat();
        let _ = Envelope::from_postcard(&versioned);
    }
}
