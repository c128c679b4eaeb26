//! Logging set-up shared by Switchboard's binaries.
//!
//! `SWITCHBOARD_LOG` filters (`info`, `switchboard_workers=debug,info`, ...). Whatever it
//! says, async-nats logs nothing below `info`: at `debug` it prints each server address it
//! tries whole, password included, and no secret may reach a log
//! (docs/operations.md, "NATS roles").

use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::prelude::*;

/// Where a binary's log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTo {
    Stdout,
    Stderr,
}

/// Installs the global subscriber: `SWITCHBOARD_LOG`, else `default` (e.g. `info`).
pub fn init(default: &str, to: LogTo) {
    let writer = match to {
        LogTo::Stdout => BoxMakeWriter::new(std::io::stdout),
        LogTo::Stderr => BoxMakeWriter::new(std::io::stderr),
    };
    let filter = EnvFilter::try_from_env("SWITCHBOARD_LOG").unwrap_or_else(|_| default.into());
    tracing_subscriber::registry()
        .with(filter)
        .with(filter_fn(|event| {
            !(event.target().starts_with("async_nats") && *event.level() > Level::INFO)
        }))
        .with(tracing_subscriber::fmt::layer().with_writer(writer))
        .init();
}
