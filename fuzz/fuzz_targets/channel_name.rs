//! Channel names, subjects and token channel patterns from arbitrary text.
//!
//! Properties: parsing never panics; an accepted channel keeps the exact text, and its
//! subjects have exactly three tokens with no wildcard and map back to its base
//! channel (`switchboard_fuzz::check_channel`); an accepted subject maps to a channel
//! whose subject is the same text; an accepted pattern prints as its text; every
//! refusal quotes a bounded excerpt.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_fuzz::{MAX_ERROR_MESSAGE, check_channel};
use switchboard_schemas::{ChannelName, ChannelPattern};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    match ChannelName::parse(text) {
        Ok(channel) => {
            assert_eq!(channel.as_str(), text);
            check_channel(&channel);
        }
        Err(error) => assert!(error.to_string().len() <= MAX_ERROR_MESSAGE, "{error}"),
    }

    match ChannelName::from_subject(text) {
        Ok((kind, channel)) => {
            assert_eq!(channel.alias(), None, "a subject names a base channel");
            assert_eq!(channel.subject(kind), text);
            check_channel(&channel);
        }
        Err(error) => assert!(error.to_string().len() <= MAX_ERROR_MESSAGE, "{error}"),
    }

    match ChannelPattern::parse(text) {
        Ok(pattern) => {
            assert_eq!(pattern.to_string(), text);
            let json = serde_json::to_string(&pattern).expect("a pattern serializes");
            assert_eq!(
                serde_json::from_str::<ChannelPattern>(&json).ok(),
                Some(pattern.clone())
            );
            if let ChannelPattern::Exact(channel) = &pattern {
                check_channel(channel);
                assert!(pattern.matches(channel));
            }
        }
        Err(error) => assert!(error.to_string().len() <= MAX_ERROR_MESSAGE, "{error}"),
    }
});
