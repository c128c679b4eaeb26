//! Writes the committed seed corpora (`fuzz/corpus/<target>/`) from the examples in
//! `docs/protocol.md`, so the fuzzers start from real frames, envelopes and channels
//! instead of discovering JSON from nothing.
//!
//! Run it again after the protocol document or the postcard layout changes:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```
//!
//! - `client_frame`: every JSON object line of the document (client frames, and server
//!   frames, which decode to an unknown op), plus the `since` forms the document only
//!   names in a table.
//! - `envelope_json`: every object in the document that has an `id`, a `type` and a
//!   `timestamp`; where the document abbreviates the id (`evt_01JD...`), a copy with a
//!   valid id too.
//! - `envelope_postcard`: the postcard form of each of those that decodes.
//! - `channel_name`: every backticked or quoted word of the document that looks like a
//!   channel, a channel pattern or a subject, plus the forms it only describes.
//! - `event_fields`: every backticked or quoted word that looks like a timestamp, an
//!   event type or filter, an event id or an RPC method.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use serde_json::Value;
use switchboard_schemas::Envelope;

/// Stands in for the abbreviated ids of the document.
const VALID_ID: &str = "evt_01JD0000000000000000000000";

fn main() -> std::io::Result<()> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = fs::read_to_string(fuzz.join("../docs/protocol.md"))?;

    let objects = json_objects(&doc);
    let mut frames: BTreeSet<String> = objects.iter().map(|(text, _)| text.clone()).collect();
    for since in [
        r#"{"time":"2026-11-22T14:30:00Z"}"#,
        r#"{"time":"2026-11-22T16:30:00.123456789+02:00"}"#,
        r#"{"last":10}"#,
    ] {
        frames.insert(format!(
            r#"{{"op":"sub","id":1,"ch":"user:u1:notifications","types":["notification.*","*"],"since":{since}}}"#
        ));
    }

    let mut envelopes = BTreeSet::new();
    for (_, value) in &objects {
        collect_envelopes(value, &mut envelopes);
    }
    let postcards: BTreeSet<Vec<u8>> = envelopes
        .iter()
        .filter_map(|text| Envelope::from_json(text.as_bytes()).ok())
        .map(|envelope| envelope.to_postcard())
        .collect();

    let fields = quoted_words(&doc, |word| {
        word.len() <= 64
            && word
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-:.*+".contains(&b))
            && (word.contains(['.', ':', '*']) || word.starts_with("evt_"))
    });
    let mut channels = channel_words(&doc);
    // The document names these forms in prose only.
    channels.extend(
        [
            "user:u-1:notifications",
            "live.conversation.c1",
            "sig.conversation.c1",
        ]
        .map(String::from),
    );

    let corpus = fuzz.join("corpus");
    write(
        &corpus.join("client_frame"),
        frames.iter().map(String::as_bytes),
    )?;
    write(
        &corpus.join("envelope_json"),
        envelopes.iter().map(String::as_bytes),
    )?;
    write(
        &corpus.join("envelope_postcard"),
        postcards.iter().map(Vec::as_slice),
    )?;
    write(
        &corpus.join("channel_name"),
        channels.iter().map(String::as_bytes),
    )?;
    write(
        &corpus.join("event_fields"),
        fields.iter().map(String::as_bytes),
    )?;
    Ok(())
}

/// Each line's JSON object: the text from its first `{` (after a `C:`/`S:` prompt,
/// indentation or a table cell) up to the end of the line, less a trailing comma,
/// kept when it parses.
fn json_objects(doc: &str) -> Vec<(String, Value)> {
    doc.lines()
        .filter_map(|line| {
            let start = line.find('{')?;
            let text = line[start..].trim_end().trim_end_matches(',');
            let value: Value = serde_json::from_str(text).ok()?;
            value.is_object().then(|| (text.to_owned(), value))
        })
        .collect()
}

fn collect_envelopes(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(fields) => {
            if ["id", "type", "timestamp"]
                .iter()
                .all(|key| fields.contains_key(*key))
            {
                out.insert(value.to_string());
                let mut valid = fields.clone();
                valid.insert("id".to_owned(), VALID_ID.into());
                out.insert(Value::Object(valid).to_string());
            }
            fields
                .values()
                .for_each(|field| collect_envelopes(field, out));
        }
        Value::Array(items) => items.iter().for_each(|item| collect_envelopes(item, out)),
        _ => {}
    }
}

/// Words between backticks or double quotes that contain a `:` (channels and
/// patterns) or start with a subject prefix.
fn channel_words(doc: &str) -> BTreeSet<String> {
    quoted_words(doc, |word| {
        word.len() <= 200
            && word
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-:.*>".contains(&b))
            && (word.contains(':')
                || ["rt.", "live.", "sig."]
                    .iter()
                    .any(|prefix| word.starts_with(prefix)))
    })
}

/// The non-empty words between backticks or double quotes that `keep` accepts.
fn quoted_words(doc: &str, keep: impl Fn(&str) -> bool) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    for quote in ['`', '"'] {
        words.extend(
            doc.split(quote)
                .skip(1)
                .step_by(2)
                .filter(|word| !word.is_empty() && keep(word))
                .map(str::to_owned),
        );
    }
    words
}

/// Replaces the directory's files with one file per input, named by position.
fn write<'a>(dir: &Path, inputs: impl Iterator<Item = &'a [u8]>) -> std::io::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    let mut count = 0;
    for (index, input) in inputs.enumerate() {
        fs::write(dir.join(format!("doc-{index:03}")), input)?;
        count += 1;
    }
    println!("{}: {count} inputs", dir.display());
    Ok(())
}
