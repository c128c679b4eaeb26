//! The workers' configuration: one typed struct, from flags and environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// `switchboard-workers`: the background jobs behind Switchboard.
///
/// Every option is also read from the environment variable shown; flags win.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchboard-workers", version, about, long_about = None)]
pub struct WorkersConfig {
    /// How to reach NATS (as the `workers` role): URL, credentials, TLS.
    #[command(flatten)]
    pub nats: switchboard_bus::NatsOptions,

    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Jobs to run in this process, comma separated (default: all of them).
    #[arg(
        long,
        env = "SWITCHBOARD_WORKERS",
        value_delimiter = ',',
        default_values_t = JobName::ALL
    )]
    pub workers: Vec<JobName>,

    /// How long JetStream waits for a message's ack before it delivers the message again.
    /// The message being retried is kept alive meanwhile; what a killed worker had
    /// fetched waits this long before another copy gets it.
    #[arg(
        long,
        env = "SWITCHBOARD_WORKERS_ACK_WAIT_MS",
        default_value_t = 30_000
    )]
    pub ack_wait_ms: u64,

    /// Where `/healthz`, `/readyz` and `/metrics` are served (docs/operations.md §7).
    #[arg(
        long,
        env = "SWITCHBOARD_WORKERS_ADDR",
        default_value = "127.0.0.1:8090"
    )]
    pub addr: SocketAddr,

    /// Connections to PostgreSQL per process.
    #[arg(long, env = "SWITCHBOARD_WORKERS_DB_CONNECTIONS", default_value_t = 4)]
    pub db_connections: u32,

    /// Longest the presence job keeps what it published before writing it to PostgreSQL
    /// (docs/operations.md §2): longer gathers more users per write; a crash costs the
    /// next start reading that much back from the stream.
    #[arg(long, env = "SWITCHBOARD_PRESENCE_SAVE_MS", default_value_t = 1_000)]
    pub presence_save_ms: u64,

    #[command(flatten)]
    pub notifications: crate::notifications::NotificationsConfig,

    #[command(flatten)]
    pub outbox: crate::outbox::OutboxConfig,

    #[command(flatten)]
    pub archive: crate::archive::ArchiveConfig,
}

impl WorkersConfig {
    pub fn presence_save(&self) -> Duration {
        Duration::from_millis(self.presence_save_ms)
    }

    pub fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms.max(1))
    }

    /// The jobs to run, each once, in the order given.
    pub fn jobs(&self) -> Vec<JobName> {
        let mut jobs = Vec::new();
        for job in &self.workers {
            if !jobs.contains(job) {
                jobs.push(*job);
            }
        }
        jobs
    }
}

/// The jobs this build knows; each is one durable consumer named after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JobName {
    /// `member.*` and `conversation.participant_*` events -> PostgreSQL and KV `members`.
    Membership,
    /// `cmd.receipts.*` commands -> cursors in PostgreSQL and `message.receipt` events;
    /// serves `receipts.get`.
    Receipts,
    /// KV `presence` -> `user.presence` events and last-seen; serves
    /// `presence.privacy.set|get` and `presence.authorize`.
    Presence,
    /// Domain events -> notifications, push and email by the rules; serves
    /// `notifications.*`; expires old notifications.
    Notifications,
    /// `switchboard.outbox` rows -> events (one publishing copy at a time).
    Outbox,
    /// Events of the archived namespaces -> `switchboard.archive` and the inbox; serves
    /// `int.archive.read`, `inbox.list|mute` and `messages.search`.
    Archive,
}

impl JobName {
    pub const ALL: [JobName; 6] = [
        JobName::Membership,
        JobName::Receipts,
        JobName::Presence,
        JobName::Notifications,
        JobName::Outbox,
        JobName::Archive,
    ];
}

impl JobName {
    /// The name in flags, logs, metric labels and the consumer's name.
    pub fn name(self) -> &'static str {
        match self {
            JobName::Membership => "membership",
            JobName::Receipts => "receipts",
            JobName::Presence => "presence",
            JobName::Notifications => "notifications",
            JobName::Outbox => "outbox",
            JobName::Archive => "archive",
        }
    }
}

impl std::fmt::Display for JobName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<WorkersConfig, clap::Error> {
        let mut argv = vec!["switchboard-workers", "--database-url", "postgres://x/y"];
        argv.extend_from_slice(args);
        WorkersConfig::try_parse_from(argv)
    }

    #[test]
    fn runs_every_job_by_default_and_each_once() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.jobs(), JobName::ALL);
        assert_eq!(config.ack_wait(), Duration::from_secs(30));
        let twice = parse(&["--workers", "membership,membership"]).unwrap();
        assert_eq!(twice.jobs(), [JobName::Membership]);
        assert!(parse(&["--workers", "membership,nope"]).is_err());
        assert_eq!(JobName::Membership.to_string(), "membership");
        for job in JobName::ALL {
            let value = job.to_possible_value().unwrap();
            assert_eq!(job.name(), value.get_name());
        }
        assert_eq!(config.addr.to_string(), "127.0.0.1:8090");
    }
}
