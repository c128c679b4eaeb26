//! The field grammars that frames and envelopes are made of, from arbitrary text:
//! timestamps, event types, type filters, event ids, signal types and RPC methods.
//!
//! They are fuzzed on their own as well as inside `client_frame` and `envelope_json`
//! because a short input reaches their edge cases (offsets at the ends of the year
//! range, leap seconds, 128-character limits) far sooner than a whole frame does.
//!
//! Properties: parsing never panics; an accepted value prints as a text that parses
//! back to it (for types, filters, ids, signal types and methods, the input itself);
//! a timestamp is in years 0000-9999 and survives nanoseconds and JSON; an RPC
//! method's subject has no wildcard and no empty token; refusals are bounded.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_fuzz::MAX_ERROR_MESSAGE;
use switchboard_schemas::frame::{RpcMethod, SignalType};
use switchboard_schemas::{EventId, EventType, Timestamp, TypeFilter};

fn bounded(error: impl std::fmt::Display) {
    let message = error.to_string();
    assert!(
        message.len() <= MAX_ERROR_MESSAGE,
        "unbounded message: {message}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    match Timestamp::parse(text) {
        Ok(time) => {
            let written = time.to_string();
            assert!(written.ends_with('Z'), "{written} is not UTC");
            assert!((0..=9999).contains(&time.as_offset_date_time().year()));
            assert_eq!(
                Timestamp::parse(&written),
                Ok(time),
                "{written} reads back differently"
            );
            assert_eq!(Timestamp::from_unix_nanos(time.unix_nanos()), Ok(time));
            let json = serde_json::to_string(&time).expect("a timestamp serializes");
            assert_eq!(serde_json::from_str::<Timestamp>(&json).ok(), Some(time));
        }
        Err(error) => bounded(error),
    }

    match EventType::parse(text) {
        Ok(ty) => {
            assert_eq!(ty.as_str(), text);
            assert!(text.len() <= 128 && !text.split('.').any(str::is_empty));
            assert_eq!(TypeFilter::parse(text), Ok(TypeFilter::Exact(ty.clone())));
            assert!(TypeFilter::Exact(ty.clone()).matches(text));
            let child = format!("{text}.x");
            assert!(TypeFilter::Prefix(ty.clone()).matches(&child));
            assert!(!TypeFilter::Prefix(ty).matches(text));
        }
        Err(error) => bounded(error),
    }

    match TypeFilter::parse(text) {
        Ok(filter) => assert_eq!(filter.to_string(), text),
        Err(error) => bounded(error),
    }

    match EventId::parse(text) {
        Ok(id) => {
            assert_eq!(id.as_str(), text);
            assert!(text.starts_with("evt_") && text.len() <= 4 + 128);
        }
        Err(error) => bounded(error),
    }

    match SignalType::parse(text) {
        Ok(ty) => assert_eq!(ty.as_str(), text),
        Err(error) => bounded(error),
    }

    match RpcMethod::parse(text) {
        Ok(method) => {
            assert_eq!(method.as_str(), text);
            let subject = method.subject();
            assert!(
                subject
                    .split('.')
                    .all(|token| !token.is_empty() && !token.contains(['*', '>'])),
                "subject {subject:?} has a wildcard or an empty token"
            );
        }
        Err(error) => bounded(error),
    }
});
