//! A `switchboard-workers` process for tests of other packages (the edge's, the CLI's).

use std::ffi::OsStr;
use std::process::{Command, Stdio};

use crate::process::{Process, binary};

/// How to start `switchboard-workers` running some jobs against a test's NATS and
/// PostgreSQL. Every worker serves HTTP on a port of its own (`127.0.0.1:0`), since tests
/// run side by side, and logs at `warn` unless told otherwise.
///
/// ```ignore
/// let _workers = Workers::new(stack.nats.env(Role::Workers), &database_url, "archive").start();
/// ```
#[derive(Debug)]
pub struct Workers {
    cmd: Command,
}

impl Workers {
    /// `nats_env` is how the process reaches NATS (`Nats::env(Role::Workers)`), `jobs` the
    /// value of `SWITCHBOARD_WORKERS` (e.g. `"archive"`, `"presence,receipts"`).
    pub fn new(
        nats_env: impl IntoIterator<Item = (String, String)>,
        database_url: &str,
        jobs: &str,
    ) -> Workers {
        let mut cmd = Command::new(binary("switchboard-workers"));
        cmd.envs(nats_env)
            .env("DATABASE_URL", database_url)
            .env("SWITCHBOARD_WORKERS_ADDR", "127.0.0.1:0")
            .env("SWITCHBOARD_WORKERS", jobs)
            .env("SWITCHBOARD_LOG", "warn")
            .stdin(Stdio::null());
        Workers { cmd }
    }

    /// One more setting, or another value for one set above (e.g. `SWITCHBOARD_LOG`).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Workers {
        self.cmd.env(key, value);
        self
    }

    /// Starts the process; it is killed when the returned handle drops.
    pub fn start(self) -> Process {
        Process::spawn(self.cmd).expect("start switchboard-workers")
    }
}
