//! Logging set-up shared by Switchboard's binaries.
//!
//! `SWITCHBOARD_LOG` filters (`info`, `switchboard_workers=debug,info`, ...). Whatever it
//! says, async-nats logs nothing below `info`: at `debug` it prints each server address it
//! tries whole, password included, and no secret may reach a log
//! (docs/operations.md, "NATS roles").
//!
//! `SWITCHBOARD_LOG_FORMAT` picks the line format (docs/operations.md §7): `text` (the
//! default) for people, `json` for log pipelines: one JSON object per line with
//! `timestamp`, `level`, `target` and `message` at the top level, then the event's own
//! fields, and the fields of the span it happened in under `span` (with `trace_id` when
//! the span continues a trace).
//!
//! [`init_traced`] adds the span export of [`crate::traces`] for the edge and the workers
//! (docs/operations.md, "Traces"): its layer has a filter of its own, so spans are
//! exported whatever `SWITCHBOARD_LOG` lets through.

use opentelemetry::trace::TracerProvider as _;
use tracing::Level;
use tracing_subscriber::filter::{FilterExt as _, dynamic_filter_fn, filter_fn};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::traces::{self, Traces};

/// Where a binary's log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTo {
    Stdout,
    Stderr,
}

/// How each log line is written (`SWITCHBOARD_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// Reads a `SWITCHBOARD_LOG_FORMAT` value; `None` for anything but `text` or `json`.
    pub fn parse(value: &str) -> Option<LogFormat> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// Installs the global subscriber: `SWITCHBOARD_LOG`, else `default` (e.g. `info`), in
/// the format `SWITCHBOARD_LOG_FORMAT` names. Exports no spans (the CLI).
pub fn init(default: &str, to: LogTo) {
    install(default, to, None);
}

/// [`init`], and for a service (`switchboard-edge`, `switchboard-workers`) the span
/// export of [`crate::traces`] when an OTLP endpoint is configured. Keep the returned
/// [`Traces`] and call [`Traces::shutdown`] before exiting, so the last spans leave.
pub fn init_traced(default: &str, to: LogTo, service: &str) -> Traces {
    install(default, to, Some(service))
}

fn install(default: &str, to: LogTo, service: Option<&str>) -> Traces {
    let writer = match to {
        LogTo::Stdout => BoxMakeWriter::new(std::io::stdout),
        LogTo::Stderr => BoxMakeWriter::new(std::io::stderr),
    };
    let setting = std::env::var("SWITCHBOARD_LOG_FORMAT").unwrap_or_default();
    let format = LogFormat::parse(&setting);
    let filter = EnvFilter::try_from_env("SWITCHBOARD_LOG").unwrap_or_else(|_| default.into());
    let quiet_nats =
        filter_fn(|meta| !(meta.target().starts_with("async_nats") && *meta.level() > Level::INFO));
    let export = match service {
        Some(service) => traces::exporter(service),
        None => Ok(None),
    };
    let (traced, failure) = match export {
        Ok(Some((provider, traced))) => {
            // Each layer with its own filter: the log lines what SWITCHBOARD_LOG lets
            // through, the exporter our own spans and the events inside them whatever
            // SWITCHBOARD_LOG says. The exporter's filter is asked at every span and event,
            // not cached per callsite, which makes both filters answer afresh each time:
            // with cached answers, a span could inherit the per-layer verdicts an
            // `enabled` check that dispatched nothing left on the thread (a dependency's
            // `log` record), and go missing from the export.
            let ours = dynamic_filter_fn(|meta, _| {
                meta.target().starts_with("switchboard") && *meta.level() <= Level::INFO
            });
            let exported = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("switchboard"))
                .with_filter(ours)
                .boxed();
            let layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![
                lines(format, writer)
                    .with_filter(filter.and(quiet_nats))
                    .boxed(),
                exported,
            ];
            tracing_subscriber::registry().with(layers).init();
            (traced, None)
        }
        not_exporting => {
            // No exporter: the same global filters and single layer as ever.
            tracing_subscriber::registry()
                .with(filter)
                .with(quiet_nats)
                .with(lines(format, writer))
                .init();
            (Traces::default(), not_exporting.err())
        }
    };
    if format.is_none() {
        tracing::warn!(
            value = %setting,
            "SWITCHBOARD_LOG_FORMAT must be text or json; writing text"
        );
    }
    if let Some(error) = failure {
        tracing::warn!(%error, "traces are not exported");
    } else if traces::exporting() {
        if let Some(protocol) = traces::unsupported_protocol() {
            tracing::warn!(
                %protocol,
                "only the http/protobuf OTLP protocol is built in; exporting traces with it"
            );
        }
        tracing::info!("exporting traces over OTLP (http/protobuf)");
    }
    traced
}

/// The layer writing log lines in `format` (text when the setting was not understood).
fn lines<S>(format: Option<LogFormat>, writer: BoxMakeWriter) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    match format {
        Some(LogFormat::Json) => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
        Some(LogFormat::Text) | None => {
            tracing_subscriber::fmt::layer().with_writer(writer).boxed()
        }
    }
}

/// An error with its causes, for a log line or a message ("error sending request:
/// connection refused"): `Display` of most errors shows only the outermost one.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::LogFormat;

    #[test]
    fn the_log_format_is_text_unless_json_is_asked_for() {
        assert_eq!(LogFormat::parse(""), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse("text"), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse(" JSON "), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("logfmt"), None);
    }
}
