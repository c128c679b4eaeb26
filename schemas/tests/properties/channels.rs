//! Channel names and the channel <-> subject mapping.

use proptest::prelude::*;
use switchboard_schemas::{ChannelName, ChannelPattern, Namespace, SubjectKind};

use crate::strategies::{channel_id, channel_text, namespace};

proptest! {
    #[test]
    fn valid_channels_parse_display_and_map_to_subjects(text in channel_text()) {
        let channel = ChannelName::parse(&text).unwrap();
        prop_assert_eq!(channel.to_string(), text.as_str());
        prop_assert_eq!(serde_json::to_string(&channel).unwrap(), serde_json::to_string(&text).unwrap());

        let base = channel.base();
        prop_assert_eq!(base.to_string(), format!("{}:{}", channel.namespace(), channel.id()));
        prop_assert_eq!(base.alias(), None);
        for kind in SubjectKind::ALL {
            let subject = channel.subject(kind);
            prop_assert_eq!(ChannelName::from_subject(&subject).unwrap(), (kind, base.clone()));
        }
        prop_assert!(ChannelPattern::Exact(base.clone()).matches(&channel));
        prop_assert!(ChannelPattern::Namespace(channel.namespace()).matches(&channel));
    }

    #[test]
    fn ids_with_a_foreign_character_are_refused(
        ns in namespace(),
        id in channel_id(),
        at in any::<prop::sample::Index>(),
        bad in prop::sample::select(vec!['.', '*', '>', ' ', '\t', '\n', '\0', 'é', '中', '/', '$', '\u{200b}']),
    ) {
        let mut id = id;
        id.insert(at.index(id.len() + 1), bad);
        let channel = format!("{ns}:{id}");
        let alias = format!("user:{id}:messages");
        prop_assert!(ChannelName::parse(&channel).is_err());
        prop_assert!(ChannelName::new(ns, &id).is_err());
        prop_assert!(ChannelName::parse(&alias).is_err());
    }

    #[test]
    fn empty_and_overlong_ids_are_refused(ns in namespace(), long in "[A-Za-z0-9_-]{129,300}") {
        let empty = format!("{ns}:");
        let overlong = format!("{ns}:{long}");
        prop_assert!(ChannelName::parse(&empty).is_err());
        prop_assert!(ChannelName::parse(&overlong).is_err());
    }

    #[test]
    fn unknown_namespaces_are_refused(ns in "[a-zA-Z_]{0,16}", id in channel_id()) {
        prop_assume!(ns.parse::<Namespace>().is_err());
        let channel = format!("{ns}:{id}");
        prop_assert!(ChannelName::parse(&channel).is_err());
    }

    #[test]
    fn extra_parts_are_refused(text in channel_text(), extra in "[A-Za-z0-9_:-]{0,20}") {
        let channel = ChannelName::parse(&text).unwrap();
        let with_extra = format!("{text}:{extra}");
        let is_new_alias = channel.namespace() == Namespace::User
            && channel.alias().is_none()
            && (extra == "notifications" || extra == "messages");
        prop_assume!(!is_new_alias);
        prop_assert!(ChannelName::parse(&with_extra).is_err());
    }

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        if let Ok(channel) = ChannelName::parse(&text) {
            prop_assert_eq!(channel.to_string(), text.as_str());
        }
        if let Ok((kind, channel)) = ChannelName::from_subject(&text) {
            prop_assert_eq!(channel.subject(kind), text.as_str());
        }
        if let Ok(pattern) = ChannelPattern::parse(&text) {
            prop_assert_eq!(pattern.to_string(), text.as_str());
        }
    }

    #[test]
    fn channel_like_strings_never_panic(text in "[a-z]{0,14}[:.][A-Za-z0-9_:.*> -]{0,20}") {
        if let Ok(channel) = ChannelName::parse(&text) {
            prop_assert_eq!(channel.to_string(), text.as_str());
            prop_assert!(!text.contains(['.', '*', '>', ' ']));
        }
        if let Ok((kind, channel)) = ChannelName::from_subject(&text) {
            prop_assert_eq!(channel.subject(kind), text.as_str());
        }
    }
}
