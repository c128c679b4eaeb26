//! `switchboard-edge`: see the crate docs of `switchboard_edge`.

use clap::{CommandFactory as _, Parser};
use switchboard_edge::config::EdgeConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = EdgeConfig::parse();
    // A weak or missing token key stops the edge (status 2) before it listens or
    // connects anywhere; logging starts after, so the check's notes are not shown twice.
    if let Err(e) = switchboard_edge::auth::Verifier::from_config(&config) {
        EdgeConfig::command()
            .error(clap::error::ErrorKind::ValueValidation, e)
            .exit();
    }
    let traces = switchboard_bus::logging::init_traced(
        "info",
        switchboard_bus::logging::LogTo::Stdout,
        "switchboard-edge",
    );
    let served = run(config).await;
    // The last spans leave before the process does (docs/operations.md, "Traces").
    traces.shutdown();
    served
}

async fn run(config: EdgeConfig) -> anyhow::Result<()> {
    // Before listening: a certificate that does not load is a deployment error to fix.
    let tls = switchboard_edge::tls::Tls::from_config(&config)?;
    let listener = switchboard_edge::server::listen(config.addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.addr))?;
    let edge = switchboard_edge::Edge::start(config).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %listener.local_addr()?, scheme, edge = %edge.id, "edge ready");
    switchboard_edge::serve(edge, listener, tls, shutdown_signal()).await
}

/// Resolves on SIGTERM or SIGINT: both start a drain.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
