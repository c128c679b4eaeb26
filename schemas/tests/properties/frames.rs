//! Client frame decoding.

use proptest::prelude::*;
use serde_json::{Value, json};
use switchboard_schemas::frame::{FrameErrorKind, RpcMethod, SignalType};
use switchboard_schemas::{
    ChannelName, ClientFrame, EventType, PresenceStatus, RawJson, Request, ResumeFrom, TypeFilter,
};

use crate::strategies::{channel_text, event_type, json_value, timestamp};

const FIELDS: [&str; 17] = [
    "op", "id", "token", "device", "ch", "types", "since", "type", "data", "key", "seq", "status",
    "text", "before", "limit", "method", "params",
];
const OPS: [&str; 13] = [
    "hello", "sub", "unsub", "pub", "sig", "ack", "read", "presence", "who", "history", "refresh",
    "ping", "rpc",
];

fn channel() -> impl Strategy<Value = ChannelName> {
    channel_text().prop_map(|text| ChannelName::parse(&text).unwrap())
}

fn raw_json() -> impl Strategy<Value = RawJson> {
    json_value().prop_map(|value| RawJson::encode(&value).unwrap())
}

fn type_filter() -> impl Strategy<Value = TypeFilter> {
    prop_oneof![
        Just(TypeFilter::All),
        event_type().prop_map(|ty| TypeFilter::parse(&ty).unwrap()),
        event_type().prop_map(|ty| TypeFilter::parse(&format!("{ty}.*")).unwrap()),
    ]
}

fn resume_from() -> impl Strategy<Value = ResumeFrom> {
    prop_oneof![
        (any::<u64>(), any::<String>()).prop_map(|(seq, epoch)| ResumeFrom::Seq { seq, epoch }),
        timestamp().prop_map(ResumeFrom::Time),
        any::<u64>().prop_map(ResumeFrom::Last),
    ]
}

fn presence_status() -> impl Strategy<Value = PresenceStatus> {
    prop::sample::select(vec![
        PresenceStatus::Online,
        PresenceStatus::Away,
        PresenceStatus::Busy,
        PresenceStatus::Invisible,
    ])
}

/// Every op with every combination of its fields.
fn client_frame() -> impl Strategy<Value = ClientFrame> {
    let text = || any::<String>();
    let maybe_text = || prop::option::of(any::<String>());
    prop_oneof![
        (text(), maybe_text()).prop_map(|(token, device)| ClientFrame::Hello {
            token,
            device,
            presence: None
        }),
        (
            channel(),
            prop::collection::vec(type_filter(), 0..4),
            prop::option::of(resume_from())
        )
            .prop_map(|(ch, types, since)| ClientFrame::Sub {
                ch,
                types: types.into(),
                since
            }),
        channel().prop_map(|ch| ClientFrame::Unsub { ch }),
        (channel(), event_type(), raw_json(), maybe_text()).prop_map(|(ch, ty, data, key)| {
            ClientFrame::Pub {
                ch,
                ty: EventType::parse(&ty).unwrap(),
                data,
                key,
                trace: None,
            }
        }),
        (channel(), "[a-z0-9_.-]{1,64}", raw_json()).prop_map(|(ch, ty, data)| ClientFrame::Sig {
            ch,
            ty: SignalType::parse(&ty).unwrap(),
            data,
        }),
        (channel(), any::<u64>()).prop_map(|(ch, seq)| ClientFrame::Ack { ch, seq }),
        (channel(), any::<u64>()).prop_map(|(ch, seq)| ClientFrame::Read { ch, seq }),
        (presence_status(), maybe_text())
            .prop_map(|(status, text)| ClientFrame::Presence { status, text }),
        channel().prop_map(|ch| ClientFrame::Who { ch }),
        (
            channel(),
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u32>())
        )
            .prop_map(|(ch, before, limit)| ClientFrame::History { ch, before, limit }),
        text().prop_map(|token| ClientFrame::Refresh { token }),
        Just(ClientFrame::Ping),
        // Absent and `null` params both read as `{}`, so generate neither.
        (
            event_type(),
            raw_json().prop_filter("not null", |params| params.as_str() != "null")
        )
            .prop_map(|(method, params)| ClientFrame::Rpc {
                method: RpcMethod::parse(&method).unwrap(),
                params,
                trace: None,
            }),
    ]
}

/// JSON objects made of the protocol's own field names with arbitrary values, so
/// decoding gets past the first checks and into every op's conversions.
fn frame_like_object() -> impl Strategy<Value = serde_json::Map<String, Value>> {
    let value = prop_oneof![
        json_value(),
        prop::sample::select(OPS.to_vec()).prop_map(Value::from),
        channel_text().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
    ];
    prop::collection::btree_map(prop::sample::select(FIELDS.to_vec()), value, 0..8).prop_map(
        |map| {
            map.into_iter()
                .map(|(key, value)| (key.to_owned(), value))
                .collect()
        },
    )
}

proptest! {
    #[test]
    fn valid_frames_decode_to_what_was_encoded(
        id in prop::option::of(any::<u64>()),
        frame in client_frame(),
    ) {
        let request = Request { id, frame };
        let decoded = Request::decode(request.encode().as_bytes());
        prop_assert_eq!(decoded, Ok(request));
    }

    #[test]
    fn unknown_ops_echo_the_id(id in any::<u64>(), op in any::<String>()) {
        prop_assume!(!OPS.contains(&op.as_str()));
        let frame = json!({ "op": op, "id": id, "ch": "project:p1" }).to_string();
        let error = Request::decode(frame.as_bytes()).unwrap_err();
        prop_assert_eq!(error.id, Some(id));
        prop_assert!(matches!(error.kind, FrameErrorKind::UnknownOp(_)));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Request::decode(&bytes);
    }

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        let _ = Request::decode(text.as_bytes());
    }

    #[test]
    fn arbitrary_json_never_panics(value in json_value()) {
        let _ = Request::decode(value.to_string().as_bytes());
    }

    #[test]
    fn frame_like_objects_never_panic_and_keep_a_valid_id(object in frame_like_object()) {
        let text = Value::Object(object.clone()).to_string();
        if let (Err(error), Some(id)) = (
            Request::decode(text.as_bytes()),
            object.get("id").and_then(Value::as_u64),
        ) {
            prop_assert_eq!(error.id, Some(id), "{}", error);
        }
    }
}

proptest! {
    /// Found by fuzzing (fuzz/, target `client_frame`): serde_json checks UTF-8 only in
    /// the strings it reads, so a byte that is not UTF-8 inside an unknown field used to
    /// decode. A frame must be UTF-8 as a whole (docs/protocol.md, frame rules).
    #[test]
    fn bytes_that_are_not_utf8_are_refused_anywhere(
        id in any::<u64>(),
        frame in client_frame(),
        bad in prop::sample::select(vec![0x80u8, 0x9b, 0xc3, 0xed, 0xf8, 0xff]),
        in_key in any::<bool>(),
    ) {
        let encoded = Request { id: Some(id), frame }.encode();
        let unknown = if in_key { "{\"x\u{1}\":0}" } else { "\"x\u{1}\"" };
        let text = format!("{},\"future\":{unknown}}}", &encoded[..encoded.len() - 1]);
        let valid = text.replace('\u{1}', "");
        prop_assert!(Request::decode(valid.as_bytes()).is_ok(), "{}", valid);
        let bytes: Vec<u8> = text.bytes().map(|b| if b == 1 { bad } else { b }).collect();
        let error = Request::decode(&bytes).unwrap_err();
        prop_assert!(matches!(error.kind, FrameErrorKind::Json(_)), "{}", error);
        prop_assert_eq!(error.id, None);
    }
}
