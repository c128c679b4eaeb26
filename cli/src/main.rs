//! `switchboard`: the operator's and backend developer's command.
//!
//! Each subcommand lives in its own module and talks to NATS (or PostgreSQL, for
//! `migrate`) directly; the CLI embeds neither the edge nor a worker.

mod init;
mod members;
mod migrate;
mod output;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Switchboard: real-time events over NATS JetStream"
)]
struct Cli {
    /// NATS server URL(s), comma separated.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,

    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update the JetStream streams and KV buckets (idempotent).
    ///
    /// Example: switchboard init --replicas 3
    Init(init::Args),
    /// Show streams, consumers with their pending counts, and buckets.
    Status,
    /// Apply the PostgreSQL migrations (idempotent).
    ///
    /// Example: switchboard migrate --database-url postgres://localhost/switchboard
    Migrate(migrate::Args),
    /// Channel membership: `rebuild` rewrites the KV bucket `members` from PostgreSQL.
    ///
    /// Example: switchboard members rebuild --database-url postgres://localhost/switchboard
    Members(members::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Init(args) => init::run(&cli.nats_url, cli.json, args).await,
        Command::Status => status::run(&cli.nats_url, cli.json).await,
        Command::Migrate(args) => migrate::run(cli.json, args).await,
        Command::Members(args) => members::run(&cli.nats_url, cli.json, args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchboard: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Connects to NATS, failing fast with a message that says where it tried.
async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    use anyhow::Context as _;
    async_nats::ConnectOptions::new()
        .connection_timeout(std::time::Duration::from_secs(5))
        .connect(url)
        .await
        .with_context(|| {
            format!("cannot connect to NATS at {url} (set --nats-url or SWITCHBOARD_NATS_URL)")
        })
}
