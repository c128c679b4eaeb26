//! [`EventType`] and the [`TypeFilter`]s a subscription narrows itself with.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

use super::EventFieldError;
use crate::error::excerpt;

/// `segment(.segment)*` with segments of `[a-z0-9_]`, 1..=128 characters in all.
///
/// The type travels in the `Rt-Type` header so the edge can filter without decoding
/// the payload; the grammar keeps it a safe header value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct EventType(String);

const MAX_TYPE_LEN: usize = 128;

impl EventType {
    pub fn parse(text: &str) -> Result<EventType, EventFieldError> {
        if is_event_type(text) {
            Ok(EventType(text.to_owned()))
        } else {
            Err(EventFieldError::Type(excerpt(text)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_event_type(text: &str) -> bool {
    is_dotted_name(text, MAX_TYPE_LEN)
}

/// `segment(.segment)*` with segments of `[a-z0-9_]`, at most `max_len` bytes: the
/// grammar of event types, shared with RPC method names.
pub(crate) fn is_dotted_name(text: &str, max_len: usize) -> bool {
    text.len() <= max_len
        && text.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

impl TryFrom<String> for EventType {
    type Error = EventFieldError;

    fn try_from(text: String) -> Result<EventType, EventFieldError> {
        if is_event_type(&text) {
            Ok(EventType(text))
        } else {
            Err(EventFieldError::Type(excerpt(&text)))
        }
    }
}

impl std::str::FromStr for EventType {
    type Err = EventFieldError;

    fn from_str(text: &str) -> Result<EventType, EventFieldError> {
        EventType::parse(text)
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl AsRef<str> for EventType {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One entry of a subscription's `types`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TypeFilter {
    /// `*`: every type.
    All,
    /// `bid.new`: that type only.
    Exact(EventType),
    /// `bid.*`: every type under `bid.`, at any depth, but not `bid` itself. Holds
    /// the parent type (`bid`).
    Prefix(EventType),
}

impl TypeFilter {
    pub fn parse(text: &str) -> Result<TypeFilter, EventFieldError> {
        if text == "*" {
            return Ok(TypeFilter::All);
        }
        if let Some(parent) = text.strip_suffix(".*") {
            return EventType::parse(parent)
                .map(TypeFilter::Prefix)
                .map_err(|_| EventFieldError::TypeFilter(excerpt(text)));
        }
        EventType::parse(text)
            .map(TypeFilter::Exact)
            .map_err(|_| EventFieldError::TypeFilter(excerpt(text)))
    }

    /// Takes the type as a string because the edge reads it from the `Rt-Type` header.
    pub fn matches(&self, ty: &str) -> bool {
        match self {
            TypeFilter::All => true,
            TypeFilter::Exact(exact) => exact.as_str() == ty,
            TypeFilter::Prefix(parent) => ty
                .strip_prefix(parent.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|rest| !rest.is_empty()),
        }
    }
}

impl fmt::Display for TypeFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypeFilter::All => f.write_str("*"),
            TypeFilter::Exact(exact) => f.write_str(exact.as_str()),
            TypeFilter::Prefix(parent) => write!(f, "{parent}.*"),
        }
    }
}

impl Serialize for TypeFilter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl std::str::FromStr for TypeFilter {
    type Err = EventFieldError;

    fn from_str(text: &str) -> Result<TypeFilter, EventFieldError> {
        TypeFilter::parse(text)
    }
}

/// A subscription's `types`: an event passes if any filter matches. Empty (or a
/// `types` left out of the `sub`) lets everything through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct TypeFilters(Vec<TypeFilter>);

impl TypeFilters {
    /// Lets every type through.
    pub fn all() -> TypeFilters {
        TypeFilters::default()
    }

    pub fn matches_any(&self, ty: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|filter| filter.matches(ty))
    }

    pub fn as_slice(&self) -> &[TypeFilter] {
        &self.0
    }
}

impl From<Vec<TypeFilter>> for TypeFilters {
    fn from(filters: Vec<TypeFilter>) -> TypeFilters {
        TypeFilters(filters)
    }
}

impl FromIterator<TypeFilter> for TypeFilters {
    fn from_iter<I: IntoIterator<Item = TypeFilter>>(filters: I) -> TypeFilters {
        TypeFilters(filters.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_grammar() {
        for good in [
            "bid",
            "bid.new",
            "conversation.participant_added",
            "a.b.c9_",
            "x1",
        ] {
            assert!(EventType::parse(good).is_ok(), "{good}");
        }
        let longest = format!("{}.{}", "a".repeat(63), "b".repeat(64));
        assert!(EventType::parse(&longest).is_ok());
        for bad in [
            "",
            ".",
            "bid.",
            ".bid",
            "bid..new",
            "Bid.new",
            "bid-new",
            "bid new",
            "bid.*",
            "bid.>",
            "é",
            &format!("{longest}x"),
        ] {
            assert!(EventType::parse(bad).is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<EventType>(r#""Bid""#).is_err());
    }

    #[test]
    fn prefix_filters_match_any_depth_but_not_the_parent() {
        let bids = TypeFilter::parse("bid.*").unwrap();
        assert!(bids.matches("bid.new"));
        assert!(bids.matches("bid.x.y"));
        assert!(!bids.matches("bid"));
        assert!(!bids.matches("bidding.new"));
        assert!(!bids.matches("project.update"));
        assert_eq!(bids.to_string(), "bid.*");
    }

    #[test]
    fn exact_and_all_filters() {
        let exact = TypeFilter::parse("bid.new").unwrap();
        assert!(exact.matches("bid.new"));
        assert!(!exact.matches("bid.new.x"));
        assert!(!exact.matches("bid"));
        let all = TypeFilter::parse("*").unwrap();
        for ty in ["bid", "bid.new", "system.status"] {
            assert!(all.matches(ty));
        }
        for bad in [
            "", "bid*", "*.new", "bid.*.*", ".*", "bid.**", "BID.*", "bid.>",
        ] {
            assert!(TypeFilter::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn empty_filters_let_everything_through() {
        assert!(TypeFilters::all().matches_any("anything.at_all"));
        let filters: TypeFilters = ["bid.*", "message.new"]
            .into_iter()
            .map(|f| TypeFilter::parse(f).unwrap())
            .collect();
        assert!(filters.matches_any("bid.update"));
        assert!(filters.matches_any("message.new"));
        assert!(!filters.matches_any("message.edited"));
    }
}
