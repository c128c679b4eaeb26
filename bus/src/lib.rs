//! Switchboard on NATS: what every process that talks to the bus shares.
//!
//! - [`Publisher`]: the publishing API for Rust backend services. It stores an
//!   [`Envelope`](switchboard_schemas::Envelope) on its channel's durable subject through
//!   JetStream, with the headers every consumer relies on, and answers with the stream
//!   sequence. Publishing the same event id twice stores it once.
//! - [`definitions`]: the declarative stream and bucket definitions of `nats/jetstream/`,
//!   applied idempotently by `switchboard init`, and the status report of
//!   `switchboard status`.
//! - [`headers`]: the header names that cross process boundaries.
//! - [`exposition`] and [`logging`]: the metrics registry and the log set-up every binary
//!   shares (docs/operations.md §7).
//! - [`traces`]: W3C trace context continued in spans, exported over OTLP when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set (docs/operations.md, "Traces").
//!
//! Non-Rust services need none of this: they publish a JSON envelope on `rt.<ns>.<id>`
//! with the headers listed in `docs/protocol.md`.

pub mod connect;
pub mod definitions;
pub mod exposition;
pub mod headers;
pub mod logging;
mod publish;
pub mod store;
pub mod traces;

pub use connect::{NatsOptions, Role, RoleKeys};
pub use publish::{Encoding, PublishError, Published, Publisher};

/// Name of the stream holding every durable event.
pub const EVENTS_STREAM: &str = "EVENTS";
/// Name of the work-queue stream carrying commands from edges to workers.
pub const CMDS_STREAM: &str = "CMDS";
/// KV bucket of live connections.
pub const PRESENCE_BUCKET: &str = "presence";
/// KV bucket of channel occupancy: which connection is subscribed to which channel.
pub const OCCUPANCY_BUCKET: &str = "occupancy";
/// KV bucket of live edges: one heartbeat entry per edge, with a TTL. An edge's entries in
/// `presence` and `occupancy` live as long as its heartbeat (docs/protocol.md, "Presence").
pub const EDGES_BUCKET: &str = "edges";
/// Subject on which every edge answers who it is and how busy it is; `switchboard
/// status` sends one request and gathers the answers.
pub const EDGES_STATUS_SUBJECT: &str = "switchboard.edges.status";
/// KV bucket of channel members.
pub const MEMBERS_BUCKET: &str = "members";
/// The method families Switchboard's workers answer under `svc.<family>.`: only the
/// workers role (and the admin) may serve them, and no backend hook may claim them
/// (`nats/auth.conf` names each in the workers' subscriptions and the service role's
/// deny list; `bus/tests/roles.rs` checks that it does).
pub const SWITCHBOARD_METHOD_FAMILIES: [&str; 9] = [
    "notifications",
    "presence",
    "receipts",
    "inbox",
    "messages",
    "push",
    "contacts",
    "erase",
    "switchboard",
];

/// The servers a NATS URL setting names (`SWITCHBOARD_NATS_URL`, `--nats-url`): one URL,
/// or a comma-separated list, the way a cluster's clients list its nodes
/// (`nats://n1:4222,nats://n2:4222,nats://n3:4222`). Spaces around each are ignored.
///
/// Hand the result to `async_nats::connect` or `ConnectOptions::connect`: given the
/// setting as one string, async-nats parses it as a single URL and a list fails with
/// "invalid port number".
pub fn nats_servers(setting: &str) -> Vec<&str> {
    setting
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::nats_servers;

    #[test]
    fn a_nats_url_setting_names_one_server_or_a_comma_separated_list() {
        assert_eq!(
            nats_servers("nats://127.0.0.1:4222"),
            ["nats://127.0.0.1:4222"]
        );
        assert_eq!(
            nats_servers("nats://n1:4222, nats://n2:4222,nats://n3:4222,"),
            ["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"]
        );
    }
}
