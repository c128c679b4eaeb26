//! `switchboard-workers`: see the crate docs of `switchboard_workers`.

use std::process::ExitCode;

use clap::Parser;
use switchboard_workers::config::WorkersConfig;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let config = WorkersConfig::parse();
    let traces = switchboard_bus::logging::init_traced(
        "info",
        switchboard_bus::logging::LogTo::Stdout,
        "switchboard-workers",
    );
    let code = run(config).await;
    // The last spans leave before the process does (docs/operations.md, "Traces").
    traces.shutdown();
    code
}

async fn run(config: WorkersConfig) -> ExitCode {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let exposition = match switchboard_workers::telemetry::install() {
        Ok(exposition) => exposition,
        Err(error) => {
            eprintln!("switchboard-workers: {error}");
            return ExitCode::FAILURE;
        }
    };
    let jobs: Vec<String> = config.jobs().iter().map(ToString::to_string).collect();
    tracing::info!(jobs = %jobs.join(","), nats = %config.nats.redacted_url(), "workers starting");
    match switchboard_workers::run(config, exposition, shutdown).await {
        Ok(()) => {
            tracing::info!("workers stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "workers failed");
            eprintln!("switchboard-workers: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT: each job finishes the message in hand, then
/// the process exits 0.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the workers with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight messages"),
        _ = int.recv() => tracing::info!("SIGINT: finishing in-flight messages"),
    }
    shutdown.cancel();
}
