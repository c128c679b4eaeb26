//! Title and message templates of notification rules: text with `{placeholders}` filled
//! from the event.
//!
//! A template is parsed once, when the rules file is loaded, so a typo in a placeholder
//! stops the worker at start-up instead of producing odd text at run time.
//!
//! | placeholder | value |
//! | --- | --- |
//! | `{type}` | the event type (`bid.new`) |
//! | `{channel}`, `{channel.id}`, `{channel.namespace}` | `project:p1`, `p1`, `project` |
//! | `{actor.id}`, `{actor.type}` | the envelope's actor |
//! | `{source}`, `{subject}` | the envelope's fields |
//! | `{data}` | the whole `data` as JSON |
//! | `{data.a.b}`, `{data.items.0}` | a field of `data` (array items by index) |
//!
//! `{field|fallback}` renders `fallback` when the field is absent or `null`; without a
//! fallback such a field renders as nothing. Strings render without quotes, other JSON
//! values as JSON. `{{` and `}}` are literal braces.

use serde_json::Value;
use switchboard_schemas::{ChannelName, Envelope};

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field { field: Field, fallback: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Type,
    Channel,
    ChannelId,
    ChannelNamespace,
    ActorId,
    ActorType,
    Source,
    Subject,
    /// A path into `data`; empty for the whole of it.
    Data(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `{{` in {0:?} (write `{{{{` for a literal brace)")]
    Unclosed(String),
    #[error("stray `}}` in {0:?} (write `}}}}` for a literal brace)")]
    Stray(String),
    #[error(
        "unknown placeholder {{{0}}}: expected type, channel, channel.id, channel.namespace, actor.id, actor.type, source, subject, data or data.<path>"
    )]
    Unknown(String),
}

/// What a template is rendered from: the event, its channel, and its `data` parsed once.
pub struct EventView<'a> {
    pub envelope: &'a Envelope,
    pub channel: &'a ChannelName,
    pub data: &'a Value,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(TemplateError::Stray(text.to_string())),
                '{' => {
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => inner.push(c),
                            None => return Err(TemplateError::Unclosed(text.to_string())),
                        }
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    let (name, fallback) = inner.split_once('|').unwrap_or((&inner, ""));
                    parts.push(Part::Field {
                        field: Field::parse(name.trim())?,
                        fallback: fallback.to_string(),
                    });
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template(parts))
    }

    pub fn render(&self, event: &EventView<'_>) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field { field, fallback } => match field.value(event) {
                    Some(value) => out.push_str(&value),
                    None => out.push_str(fallback),
                },
            }
        }
        out
    }
}

impl Field {
    fn parse(name: &str) -> Result<Field, TemplateError> {
        Ok(match name {
            "type" => Field::Type,
            "channel" => Field::Channel,
            "channel.id" => Field::ChannelId,
            "channel.namespace" => Field::ChannelNamespace,
            "actor.id" => Field::ActorId,
            "actor.type" => Field::ActorType,
            "source" => Field::Source,
            "subject" => Field::Subject,
            "data" => Field::Data(Vec::new()),
            _ => match name.strip_prefix("data.") {
                Some(path) if path.split('.').all(|segment| !segment.is_empty()) => {
                    Field::Data(path.split('.').map(str::to_string).collect())
                }
                _ => return Err(TemplateError::Unknown(name.to_string())),
            },
        })
    }

    fn value(&self, event: &EventView<'_>) -> Option<String> {
        let envelope = event.envelope;
        match self {
            Field::Type => Some(envelope.ty.to_string()),
            Field::Channel => Some(event.channel.to_string()),
            Field::ChannelId => Some(event.channel.id().to_string()),
            Field::ChannelNamespace => Some(event.channel.namespace().to_string()),
            Field::ActorId => envelope.actor.as_ref().map(|actor| actor.id.clone()),
            Field::ActorType => envelope.actor.as_ref().map(|actor| actor.kind.clone()),
            Field::Source => envelope.source.clone(),
            Field::Subject => envelope.subject.clone(),
            Field::Data(path) => {
                let mut value = event.data;
                for segment in path {
                    value = match value {
                        Value::Object(map) => map.get(segment)?,
                        Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                        _ => return None,
                    };
                }
                match value {
                    Value::Null => None,
                    Value::String(text) => Some(text.clone()),
                    other => Some(other.to_string()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use switchboard_schemas::{Actor, EventType, RawJson};

    use super::*;

    fn render(template: &str, data: Value) -> String {
        let mut envelope = Envelope::new(
            EventType::parse("bid.new").unwrap(),
            RawJson::encode(&data).unwrap(),
        );
        envelope.actor = Some(Actor {
            id: "c7".into(),
            kind: "contractor".into(),
        });
        let channel = ChannelName::parse("project:p1").unwrap();
        let view = EventView {
            envelope: &envelope,
            channel: &channel,
            data: &data,
        };
        Template::parse(template).unwrap().render(&view)
    }

    #[test]
    fn fills_placeholders_from_the_event() {
        let data = json!({"amount": 5000, "bid": {"id": "b1"}, "tags": ["x", "y"], "note": null});
        assert_eq!(
            render(
                "{actor.id} ({actor.type}) bid {data.amount} on {channel.id} in {channel.namespace}",
                data.clone()
            ),
            "c7 (contractor) bid 5000 on p1 in project"
        );
        assert_eq!(
            render("{data.bid.id} {data.tags.1} {data.bid}", data.clone()),
            r#"b1 y {"id":"b1"}"#
        );
        assert_eq!(
            render(
                "[{data.note|none}] [{data.missing}] [{source|?}] {type} {channel}",
                data
            ),
            "[none] [] [?] bid.new project:p1"
        );
        assert_eq!(
            render("{{literal}} {{{type}}}", json!({})),
            "{literal} {bid.new}"
        );
    }

    #[test]
    fn refuses_malformed_templates() {
        assert!(matches!(
            Template::parse("{data.amount"),
            Err(TemplateError::Unclosed(_))
        ));
        assert!(matches!(
            Template::parse("a } b"),
            Err(TemplateError::Stray(_))
        ));
        for unknown in ["{actor}", "{data.}", "{data..x}", "{nope}", "{}"] {
            assert!(
                matches!(Template::parse(unknown), Err(TemplateError::Unknown(_))),
                "{unknown}"
            );
        }
    }
}
