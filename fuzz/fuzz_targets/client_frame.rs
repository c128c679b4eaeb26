//! Client frames: the bytes of a WebSocket message, as the edge hands them to
//! `Request::decode`.
//!
//! The edge refuses binary messages before decoding and tungstenite checks that text
//! messages are UTF-8, but `Request::decode` takes bytes, so the fuzzer feeds it
//! anything, invalid UTF-8 included.
//!
//! Properties: decoding never panics; only UTF-8 decodes (the protocol answers invalid
//! UTF-8 with `bad_request`); a decoded frame encodes to JSON that decodes to the same
//! frame and encodes to the same text again, with its `op` and the input's `id`; its
//! channel passes `switchboard_fuzz::check_channel`; a refused frame's message is
//! bounded, and it echoes the `id` whenever the frame was an object with a valid one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;
use switchboard_fuzz::{MAX_ERROR_MESSAGE, check_channel};
use switchboard_schemas::frame::FrameErrorKind;
use switchboard_schemas::{ChannelName, ClientFrame, Request};

/// The fields every encoded frame must have, read back independently of `Request`.
#[derive(Deserialize)]
struct Head {
    op: String,
    id: Option<u64>,
}

fn channel(frame: &ClientFrame) -> Option<&ChannelName> {
    match frame {
        ClientFrame::Sub { ch, .. }
        | ClientFrame::Unsub { ch }
        | ClientFrame::Pub { ch, .. }
        | ClientFrame::Sig { ch, .. }
        | ClientFrame::Ack { ch, .. }
        | ClientFrame::Read { ch, .. }
        | ClientFrame::Who { ch }
        | ClientFrame::History { ch, .. } => Some(ch),
        ClientFrame::Hello { .. }
        | ClientFrame::Presence { .. }
        | ClientFrame::Refresh { .. }
        | ClientFrame::Ping
        | ClientFrame::Rpc { .. } => None,
    }
}

/// The input as a tree, when serde_json can build one (it refuses nesting deeper than
/// 128, which `Request::decode` carries without building anything).
fn tree(data: &[u8]) -> Option<Value> {
    serde_json::from_slice(data).ok()
}

fuzz_target!(|data: &[u8]| {
    match Request::decode(data) {
        Ok(request) => {
            assert!(
                std::str::from_utf8(data).is_ok(),
                "a frame that is not UTF-8 decoded to {request:?}"
            );
            let encoded = request.encode();
            let again = Request::decode(encoded.as_bytes())
                .unwrap_or_else(|error| panic!("{encoded} does not decode: {error}"));
            assert_eq!(again, request, "{encoded} decodes to another frame");
            assert_eq!(again.encode(), encoded, "encoding is not stable");

            let head: Head = serde_json::from_str(&encoded).expect("an encoded frame has an op");
            assert_eq!(head.op, request.frame.op());
            assert_eq!(head.id, request.id);
            if let Some(input) = tree(data) {
                assert_eq!(input.get("id").and_then(Value::as_u64), request.id);
                assert_eq!(
                    input.get("op").and_then(Value::as_str),
                    Some(request.frame.op())
                );
            }

            if let Some(ch) = channel(&request.frame) {
                check_channel(ch);
            }
        }
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.len() <= MAX_ERROR_MESSAGE,
                "unbounded message: {message}"
            );
            if matches!(error.kind, FrameErrorKind::Json(_)) {
                return;
            }
            if let Some(input) = tree(data) {
                assert_eq!(
                    input.is_object(),
                    error.kind != FrameErrorKind::NotAnObject,
                    "{error} for {input}"
                );
                assert_eq!(
                    error.id,
                    input.get("id").and_then(Value::as_u64),
                    "the error does not echo the frame's id: {error}"
                );
            }
        }
    }
});
