//! Declarative JetStream definitions (`nats/jetstream/*.json`) and applying them.
//!
//! Each file is a stream configuration in the JSON form nats-server itself uses (the output
//! of `nats stream info --json`), so operators can read and diff them with NATS's own
//! tools. KV buckets are streams named `KV_<bucket>` with the bucket conventions spelled
//! out. Only the keys a file names are compared with the server: the server adds its own
//! metadata and defaults, which are not drift.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures_util::TryStreamExt;
use serde::Serialize;
use serde_json::{Map, Value};

/// The definitions shipped with this build (the repository's `nats/jetstream/`).
const BUILTIN: [(&str, &str); 6] = [
    (
        "EVENTS.json",
        include_str!("../../nats/jetstream/EVENTS.json"),
    ),
    ("CMDS.json", include_str!("../../nats/jetstream/CMDS.json")),
    (
        "KV_presence.json",
        include_str!("../../nats/jetstream/KV_presence.json"),
    ),
    (
        "KV_members.json",
        include_str!("../../nats/jetstream/KV_members.json"),
    ),
    (
        "KV_occupancy.json",
        include_str!("../../nats/jetstream/KV_occupancy.json"),
    ),
    (
        "KV_edges.json",
        include_str!("../../nats/jetstream/KV_edges.json"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stream {stream}: {message}")]
    Server { stream: String, message: String },
}

/// One stream as declared in a file.
#[derive(Debug, Clone)]
pub struct StreamDefinition {
    pub config: stream::Config,
    /// The keys the file names; only these are compared with the server.
    declared: Vec<String>,
}

impl StreamDefinition {
    /// Parses one definition file's text.
    pub fn parse(file: &str, text: &str) -> Result<StreamDefinition, DefinitionError> {
        let invalid = |message: String| DefinitionError::Invalid {
            file: file.to_string(),
            message,
        };
        let raw: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let config: stream::Config = serde_json::from_value(Value::Object(raw.clone()))
            .map_err(|e| invalid(e.to_string()))?;
        if config.name.is_empty() {
            return Err(invalid("`name` is required".into()));
        }
        Ok(StreamDefinition {
            config,
            declared: raw.keys().cloned().collect(),
        })
    }

    /// Keys whose declared value differs from `existing`.
    fn drift(&self, existing: &stream::Config) -> Vec<String> {
        let want = to_map(&self.config);
        let have = to_map(existing);
        self.declared
            .iter()
            .filter(|key| want.get(*key) != have.get(*key))
            .cloned()
            .collect()
    }
}

fn to_map(config: &stream::Config) -> Map<String, Value> {
    match serde_json::to_value(config) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// The full set of streams and buckets Switchboard needs.
#[derive(Debug, Clone)]
pub struct Definitions {
    pub streams: Vec<StreamDefinition>,
}

impl Definitions {
    /// The definitions compiled into this binary.
    pub fn builtin() -> Definitions {
        let streams = BUILTIN
            .iter()
            .map(|(file, text)| {
                StreamDefinition::parse(file, text)
                    .unwrap_or_else(|e| panic!("built-in definition is invalid: {e}"))
            })
            .collect();
        Definitions { streams }
    }

    /// Every `*.json` file in `dir`, in file-name order.
    pub fn from_dir(dir: &Path) -> Result<Definitions, DefinitionError> {
        let read_error = |source| DefinitionError::Read {
            path: dir.display().to_string(),
            source,
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(read_error)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        let mut streams = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| DefinitionError::Read {
                path: path.display().to_string(),
                source,
            })?;
            streams.push(StreamDefinition::parse(&path.display().to_string(), &text)?);
        }
        Ok(Definitions { streams })
    }

    /// Overrides the replica count of every stream (3 on a three-node cluster).
    pub fn with_replicas(mut self, replicas: usize) -> Definitions {
        for def in &mut self.streams {
            def.config.num_replicas = replicas;
            if !def.declared.iter().any(|k| k == "num_replicas") {
                def.declared.push("num_replicas".into());
            }
        }
        self
    }

    /// Creates what is missing and updates what drifted. Running it twice changes nothing.
    pub async fn apply(&self, js: &jetstream::Context) -> Result<Vec<Applied>, DefinitionError> {
        let mut report = Vec::new();
        for def in &self.streams {
            let name = def.config.name.clone();
            let server = |message: String| DefinitionError::Server {
                stream: name.clone(),
                message,
            };
            let outcome = match js.get_stream(&name).await {
                Ok(mut existing) => {
                    let info = existing.info().await.map_err(|e| server(e.to_string()))?;
                    let drift = def.drift(&info.config);
                    if drift.is_empty() {
                        Outcome::Unchanged
                    } else {
                        js.update_stream(&def.config)
                            .await
                            .map_err(|e| server(format!("update of {drift:?} refused: {e}")))?;
                        Outcome::Updated { changed: drift }
                    }
                }
                Err(e) if is_stream_not_found(&e) => {
                    js.create_stream(def.config.clone())
                        .await
                        .map_err(|e| server(format!("create refused: {e}")))?;
                    Outcome::Created
                }
                Err(e) => return Err(server(e.to_string())),
            };
            report.push(Applied {
                stream: name,
                outcome,
            });
        }
        Ok(report)
    }
}

fn is_stream_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(e)
            if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// What [`Definitions::apply`] did to one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub stream: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Created,
    Updated { changed: Vec<String> },
    Unchanged,
}

/// A snapshot of the streams, their consumers and the KV buckets.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub streams: Vec<StreamStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub name: String,
    /// `Some(bucket)` for a KV bucket's stream.
    pub bucket: Option<String>,
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub subjects: u64,
    pub replicas: usize,
    pub consumers: Vec<ConsumerStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    pub name: String,
    /// Messages not yet delivered to this consumer.
    pub pending: u64,
    /// Delivered but not yet acknowledged.
    pub ack_pending: usize,
    pub redelivered: usize,
    pub waiting: usize,
    /// Time since the consumer was last active, when the server knows it.
    pub idle: Option<Duration>,
}

/// Reads every stream's state and its consumers' backlog.
pub async fn status(js: &jetstream::Context) -> Result<Status, DefinitionError> {
    let server = |stream: &str, e: &dyn std::fmt::Display| DefinitionError::Server {
        stream: stream.to_string(),
        message: e.to_string(),
    };
    let infos: Vec<stream::Info> = js
        .streams()
        .try_collect()
        .await
        .map_err(|e| server("*", &e))?;
    let mut streams = Vec::new();
    for info in infos {
        let name = info.config.name.clone();
        let stream = js.get_stream(&name).await.map_err(|e| server(&name, &e))?;
        let mut consumers: Vec<ConsumerStatus> = stream
            .consumers()
            .map_ok(|c| ConsumerStatus {
                name: c.name.clone(),
                pending: c.num_pending,
                ack_pending: c.num_ack_pending,
                redelivered: c.num_redelivered,
                waiting: c.num_waiting,
                idle: c
                    .delivered
                    .last_active
                    .map(|t| (time::OffsetDateTime::now_utc() - t).unsigned_abs()),
            })
            .try_collect()
            .await
            .map_err(|e| server(&name, &e))?;
        consumers.sort_by(|a, b| a.name.cmp(&b.name));
        streams.push(StreamStatus {
            bucket: name.strip_prefix("KV_").map(str::to_string),
            messages: info.state.messages,
            bytes: info.state.bytes,
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
            subjects: info.state.subjects_count,
            replicas: info.config.num_replicas,
            consumers,
            name,
        });
    }
    streams.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Status { streams })
}
