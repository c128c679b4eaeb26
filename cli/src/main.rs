//! `switchboard`: the operator's and backend developer's command.
//!
//! Each subcommand lives in its own module and talks to NATS (or PostgreSQL, for
//! `migrate` and `members`) directly; the CLI embeds neither the edge nor a worker.
//!
//! - `init`, `status`, `migrate`, `members`: set up and look after a deployment.
//! - `erase`: remove a user's messages or a conversation everywhere (asks the workers).
//! - `publish`, `tail`, `replay`: put events on channels, follow them, read them back
//!   (replay shares its ordered multi-channel reader, [`merge`], with tail).
//! - `token`: development tokens for curl and the demo.
//!
//! Every failure ends with a non-zero exit and one line on stderr saying what to do.
//! Nothing is colored, so there is nothing for `NO_COLOR` to turn off.

mod bench;
mod erase;
mod init;
mod keys;
mod members;
mod merge;
mod migrate;
mod output;
mod publish;
mod replay;
mod status;
mod tail;
mod token;
mod vapid;
mod when;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard_bus::{NatsOptions, Role};

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Switchboard: real-time events over NATS JetStream",
    after_help = "Examples:
  switchboard init
  switchboard publish --channel project:p1 --type bid.new --data '{\"amount\":5000}'
  switchboard tail project:p1 --last 10
  switchboard replay --user u1 --since 2h > missed.jsonl
  export TOKEN=$(switchboard token --sub u1 --ttl 1h)"
)]
struct Cli {
    /// How to reach NATS: URL, credentials, TLS.
    #[command(flatten)]
    nats: NatsOptions,

    /// The NATS role the seed or creds belong to (`admin` for operators; `service` for a
    /// backend's key): it decides the inbox prefix replies come to.
    #[arg(long, global = true, env = "SWITCHBOARD_NATS_ROLE", default_value = "admin", value_parser = parse_role)]
    nats_role: Role,

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
    /// Show streams, worker lag (consumer backlog), connected edges and their
    /// connections, and buckets.
    ///
    /// Example: switchboard status --json
    Status(status::Args),
    /// Apply the PostgreSQL migrations (idempotent).
    ///
    /// Example: switchboard migrate --database-url postgres://localhost/switchboard
    Migrate(migrate::Args),
    /// Channel membership: `rebuild` rewrites the KV bucket `members` from PostgreSQL.
    ///
    /// Example: switchboard members rebuild --database-url postgres://localhost/switchboard
    Members(members::Args),
    /// Erase a user's messages (every channel) or a conversation from the EVENTS stream,
    /// the archive, search, inboxes and notifications; prints what was removed where.
    ///
    /// Example: switchboard erase --user u1
    Erase(erase::Args),
    /// Publish events: one from flags, or JSON lines from stdin; prints each seq.
    ///
    /// Example: switchboard publish --channel project:p1 --type bid.new --data '{"amount":5000}'
    Publish(publish::Args),
    /// Follow channels live (and their signals), optionally from a stored position.
    ///
    /// Example: switchboard tail project:p1 conversation:c1 --signals --last 10
    Tail(tail::Args),
    /// Read back stored events (by channel, user, seq or time window, type) as JSON
    /// lines, or re-deliver them to a subject for a consumer that needs backfill.
    ///
    /// Example: switchboard replay --user u1 --since 2h --output missed.jsonl
    Replay(replay::Args),
    /// Make the NATS role seeds once (mode 0600) and print the public keys the server's
    /// authorization reads (`SWITCHBOARD_NATS_<ROLE>_PUBKEY=...`).
    ///
    /// Example: switchboard keys --dir .data/nats-keys > .data/nats-pubkeys.env
    Keys(keys::Args),
    /// Mint a development token (HS256, SWITCHBOARD_JWT_SECRET); prints only the token.
    ///
    /// Example: curl -H "Authorization: Bearer $(switchboard token --sub u1)" ...
    Token(token::Args),
    /// Make a VAPID key pair for Web Push; prints SWITCHBOARD_VAPID_PRIVATE_KEY=... and
    /// SWITCHBOARD_VAPID_PUBLIC_KEY=....
    ///
    /// Example: switchboard vapid >> /etc/switchboard/workers.env
    Vapid(vapid::Args),
    /// Load generator: measure an edge with real sockets (release build; loopback).
    ///
    /// The edge and NATS URLs must be loopback addresses. A run opens at most 50,000
    /// sockets (`scale`: 100,000, from generator processes of at most 18,000 each), lasts
    /// at most 600 s, and publishes at most 1,000,000 events/s and 10,000,000 events in
    /// all, of at most 60 KiB each.
    ///
    /// Example: switchboard bench fanout --subscribers 5000 --rate 10 --edge-pid $(pgrep -n switchboard-edge)
    Bench(bench::Args),
}

/// An error that ends the command because the user interrupted it, not because it
/// failed: exit code 130, as for any command stopped by Ctrl-C.
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    switchboard_bus::logging::init("warn", switchboard_bus::logging::LogTo::Stderr);
    let nats = &Nats {
        options: cli.nats,
        role: cli.nats_role,
    };
    let result = match cli.command {
        Command::Init(args) => init::run(nats, cli.json, args).await,
        Command::Status(args) => status::run(nats, cli.json, args).await,
        Command::Migrate(args) => migrate::run(cli.json, args).await,
        Command::Members(args) => members::run(nats, cli.json, args).await,
        Command::Erase(args) => erase::run(nats, cli.json, args).await,
        Command::Publish(args) => publish::run(nats, cli.json, args).await,
        Command::Tail(args) => tail::run(nats, cli.json, args).await,
        Command::Replay(args) => replay::run(nats, cli.json, args).await,
        Command::Keys(args) => keys::run(cli.json, args),
        Command::Token(args) => token::run(cli.json, args),
        Command::Vapid(args) => vapid::run(cli.json, args),
        Command::Bench(args) => bench::run(nats, cli.json, args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchboard: {error:#}");
            if error.downcast_ref::<Interrupted>().is_some() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Resolves on the first Ctrl-C (SIGINT) received from now on. Unlike
/// `tokio::signal::ctrl_c()`, which starts listening when first polled, the listener is in
/// place as soon as this returns, so an early Ctrl-C is never the default "die at once".
fn on_interrupt() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use anyhow::Context as _;
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for Ctrl-C")?;
    Ok(async move {
        interrupts.recv().await;
    })
}

/// How the command reaches NATS: the connection settings and the role they belong to.
#[derive(Debug)]
pub struct Nats {
    pub options: NatsOptions,
    pub role: Role,
}

impl Nats {
    /// Connects, failing fast with a message that says where it tried (without any
    /// password the URL holds).
    async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        use anyhow::Context as _;
        let url = self.options.redacted_url();
        self.options
            .connect_options(self.role, "switchboard")
            .await?
            .connection_timeout(std::time::Duration::from_secs(5))
            .connect(self.options.servers())
            .await
            .with_context(|| {
                format!(
                    "cannot connect to NATS at {url} as {} (set --nats-url or SWITCHBOARD_NATS_URL, \
                     and --nats-nkey or SWITCHBOARD_NATS_NKEY, \
                     or --nats-creds or SWITCHBOARD_NATS_CREDS)",
                    self.role
                )
            })
    }
}

fn parse_role(name: &str) -> Result<Role, String> {
    Role::parse(name)
        .ok_or_else(|| format!("unknown role {name:?} (edge, workers, service, admin)"))
}
