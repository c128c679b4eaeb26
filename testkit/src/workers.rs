//! A `switchboard-workers` process for tests of other packages (the edge's, the CLI's).

use std::ffi::OsStr;
use std::process::{Command, Stdio};

use crate::postgres::Postgres;
use crate::process::{Process, binary};

/// How to start `switchboard-workers` running some jobs against a test's NATS. Every
/// worker serves HTTP on a port of its own (`127.0.0.1:0`), since tests run side by side,
/// and logs at `warn` unless told otherwise.
///
/// ```ignore
/// let _workers = Workers::new(stack.nats.env(Role::Workers), "archive")
///     .start_with_postgres()
///     .await;
/// ```
#[derive(Debug)]
pub struct Workers {
    cmd: Command,
}

/// Workers started on a PostgreSQL cluster of their own. Dropping it stops the workers,
/// then PostgreSQL.
#[derive(Debug)]
pub struct WorkersWithPostgres {
    pub process: Process,
    pub postgres: Postgres,
}

impl Workers {
    /// `nats_env` is how the process reaches NATS (`Nats::env(Role::Workers)`), `jobs` the
    /// value of `SWITCHBOARD_WORKERS` (e.g. `"archive"`, `"presence,receipts"`).
    pub fn new(nats_env: impl IntoIterator<Item = (String, String)>, jobs: &str) -> Workers {
        let mut cmd = Command::new(binary("switchboard-workers"));
        cmd.envs(nats_env)
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

    /// Starts the process on `database_url`; it is killed when the returned handle drops.
    pub fn start(mut self, database_url: &str) -> Process {
        self.cmd.env("DATABASE_URL", database_url);
        Process::spawn(self.cmd).expect("start switchboard-workers")
    }

    /// Starts PostgreSQL (a fresh database with the project's migrations), then the
    /// process on it.
    pub async fn start_with_postgres(self) -> WorkersWithPostgres {
        let postgres = Postgres::start().expect("start PostgreSQL");
        let database_url = postgres.database().await.expect("create a database");
        WorkersWithPostgres {
            process: self.start(&database_url),
            postgres,
        }
    }
}
