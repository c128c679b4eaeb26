//! Properties shared by the fuzz targets in `fuzz_targets/`.
//!
//! Each target feeds untrusted bytes to one parser of `switchboard-schemas` and, for
//! whatever it accepts, asserts the properties the rest of Switchboard relies on. A
//! failed assertion is a panic, which libFuzzer reports as a crash and saves the
//! input for. This crate is outside the main workspace: `scripts/fuzz` builds it with
//! coverage instrumentation; see `docs/fuzzing.md`.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use switchboard_schemas::{
    ChannelName, ChannelPattern, Envelope, EventId, EventType, SubjectKind, Timestamp,
    encode_evt_from,
};

/// The longest message an error may carry back to whoever sent the input. Errors
/// quote a bounded excerpt of what they refuse, never the whole input, so a client
/// cannot make the edge echo (or log) a megabyte.
pub const MAX_ERROR_MESSAGE: usize = 512;

/// What every accepted channel guarantees: its text is the client's, its subjects are
/// three plain NATS tokens with no wildcard, and each subject maps back to the
/// channel's base.
pub fn check_channel(channel: &ChannelName) {
    let text = channel.as_str();
    let ns = channel.namespace();
    let id = channel.id();
    assert!(
        (1..=128).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "channel {text:?} has id {id:?} outside the grammar"
    );
    let rebuilt = match channel.alias() {
        None => format!("{ns}:{id}"),
        Some(alias) => {
            assert_eq!(ns.as_str(), "user", "only user channels have aliases");
            format!("{ns}:{id}:{alias}")
        }
    };
    assert_eq!(
        rebuilt, text,
        "namespace, id and alias do not spell the channel"
    );
    assert_eq!(channel.to_string(), text);
    assert_eq!(ChannelName::parse(text).as_ref(), Ok(channel));

    let base = channel.base();
    assert_eq!(base.alias(), None);
    assert_eq!((base.namespace(), base.id()), (ns, id));
    assert_eq!(ChannelName::new(ns, id).as_ref(), Ok(&base));
    assert!(ChannelPattern::Exact(base.clone()).matches(channel));
    assert!(ChannelPattern::Exact(channel.clone()).matches(channel));
    assert!(ChannelPattern::Namespace(ns).matches(channel));

    for kind in SubjectKind::ALL {
        let subject = channel.subject(kind);
        let tokens: Vec<&str> = subject.split('.').collect();
        assert_eq!(
            tokens,
            [kind.prefix(), ns.as_str(), id],
            "subject {subject:?} of {text:?} is not exactly three tokens"
        );
        assert!(
            subject
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>'),
            "subject {subject:?} of {text:?} has a wildcard, a space or a control character"
        );
        assert_eq!(
            ChannelName::from_subject(&subject),
            Ok((kind, base.clone())),
            "subject {subject:?} does not map back to {base}"
        );
        assert_eq!(base.subject(kind), subject);
    }

    let json = serde_json::to_string(channel).expect("a channel serializes");
    assert_eq!(
        serde_json::from_str::<ChannelName>(&json).as_ref().ok(),
        Some(channel)
    );
}

/// What every decoded envelope guarantees: both encodings decode back to it and are
/// stable, its fields print in their grammar, and an `evt` frame carries its JSON
/// verbatim.
pub fn check_envelope(envelope: &Envelope) {
    let json = envelope.to_json();
    let from_json = Envelope::from_json(&json).unwrap_or_else(|error| {
        panic!(
            "{} does not decode: {error}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(
        &from_json, envelope,
        "the JSON form decodes to another envelope"
    );
    assert_eq!(from_json.to_json(), json, "the JSON form is not stable");
    assert_eq!(Envelope::decode(&json, true).ok().as_ref(), Some(envelope));

    let postcard = envelope.to_postcard();
    let from_postcard = Envelope::from_postcard(&postcard)
        .unwrap_or_else(|error| panic!("the postcard form does not decode: {error}"));
    assert_eq!(
        &from_postcard, envelope,
        "the postcard form decodes to another envelope"
    );
    assert_eq!(
        from_postcard.to_postcard(),
        postcard,
        "the postcard form is not stable"
    );
    assert_eq!(
        Envelope::decode(&postcard, false).ok().as_ref(),
        Some(envelope)
    );

    let timestamp = envelope.timestamp;
    assert_eq!(Timestamp::parse(&timestamp.to_string()), Ok(timestamp));
    assert_eq!(
        Timestamp::from_unix_nanos(timestamp.unix_nanos()),
        Ok(timestamp)
    );
    assert_eq!(
        EventId::parse(envelope.id.as_str()).as_ref(),
        Ok(&envelope.id)
    );
    assert_eq!(
        EventType::parse(envelope.ty.as_str()).as_ref(),
        Ok(&envelope.ty)
    );
    let data = envelope.data.as_str();
    assert_eq!(data.trim(), data, "data keeps surrounding whitespace");
    assert!(
        serde_json::from_str::<IgnoredAny>(data).is_ok(),
        "data is not JSON: {data}"
    );

    #[derive(Deserialize)]
    struct Evt<'a> {
        op: &'a str,
        ch: &'a str,
        seq: u64,
        #[serde(borrow)]
        event: &'a RawValue,
    }
    let frame = encode_evt_from("user:u-1:messages", u64::MAX, envelope);
    let evt: Evt<'_> = serde_json::from_slice(&frame).unwrap_or_else(|error| {
        panic!(
            "{} is not an evt frame: {error}",
            String::from_utf8_lossy(&frame)
        )
    });
    assert_eq!(
        (evt.op, evt.ch, evt.seq),
        ("evt", "user:u-1:messages", u64::MAX)
    );
    assert_eq!(
        evt.event.get().as_bytes(),
        json,
        "the evt frame changed the envelope"
    );
}
