//! A PostgreSQL cluster per test, and a fresh migrated database per call.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use sqlx::{Connection, Executor, PgConnection};
use tempfile::TempDir;

use crate::process::{Guarded, free_port, spawn, wait_for_log};

const READY: &str = "database system is ready to accept connections";

/// A running PostgreSQL cluster in a temporary directory.
///
/// `initdb` costs seconds, so the first cluster of a machine is initialised once into a
/// template directory under the system temp dir; every cluster after that starts from a
/// copy of it.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    data: PathBuf,
    log: PathBuf,
    run_as: Option<(u32, u32)>,
    child: Guarded,
    dir: TempDir,
}

impl Postgres {
    /// Starts a cluster on a free port.
    pub fn start() -> Result<Postgres> {
        let bin = pg_bin_dir()?;
        let run_as = postgres_user_if_root()?;
        let template = template_cluster(&bin, run_as)?;
        let dir = tempfile::Builder::new().prefix("sb-pg-").tempdir()?;
        chown(dir.path(), run_as)?;
        let data = dir.path().join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .status()?;
        if !status.success() {
            bail!("copying the template cluster failed: {status}");
        }
        let log = dir.path().join("postgres.log");
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port();
            match launch(&bin, &data, dir.path(), port, &log, run_as) {
                Ok(child) => {
                    return Ok(Postgres {
                        port,
                        data,
                        log,
                        run_as,
                        child,
                        dir,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("postgres did not start")))
    }

    /// The URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates an empty database and returns its URL.
    pub async fn empty_database(&self) -> Result<String> {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let name = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut admin = PgConnection::connect(&self.url("postgres")).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        admin.close().await?;
        Ok(self.url(&name))
    }

    /// Creates a database with the project's migrations applied and returns its URL.
    pub async fn database(&self) -> Result<String> {
        let url = self.empty_database().await?;
        let mut conn = PgConnection::connect(&url).await?;
        sqlx::migrate!("../migrations")
            .run(&mut conn)
            .await
            .context("apply migrations")?;
        conn.close().await?;
        Ok(url)
    }

    /// Kills the cluster with SIGKILL, as a crash would.
    pub fn stop(&mut self) {
        self.child.kill();
    }

    /// Stops every process of the cluster with SIGSTOP, as a server that hangs: its
    /// sockets stay open and nothing answers, neither the backends of open connections nor
    /// the postmaster for new ones. [`Postgres::resume`] lets them go on.
    pub fn pause(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    /// Continues a cluster stopped by [`Postgres::pause`].
    pub fn resume(&self) {
        self.signal_all(libc::SIGCONT);
    }

    /// Sends `signal` to the postmaster, then to each of its children (each backend is a
    /// process group of its own, so a group's signal would miss them). Stopped first, the
    /// postmaster starts no backend after the children are listed.
    fn signal_all(&self, signal: i32) {
        let Some(postmaster) = self.child.pid() else {
            return;
        };
        let kill = |pid: u32| {
            // SAFETY: kill has no memory preconditions; the pids are our child and its own.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        };
        kill(postmaster);
        children_of(postmaster).into_iter().for_each(kill);
    }

    /// Starts the cluster again on the same port and data directory.
    ///
    /// The backends of a cluster killed with SIGKILL exit once they notice their
    /// postmaster is gone, and until the last one has, a new postmaster refuses the data
    /// directory ("pre-existing shared memory block is still in use"): it is tried again
    /// for a few seconds.
    pub fn start_again(&mut self) -> Result<()> {
        self.child.kill();
        let bin = pg_bin_dir()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let launched = launch(
                &bin,
                &self.data,
                self.dir.path(),
                self.port,
                &self.log,
                self.run_as,
            );
            match launched {
                Err(e)
                    if Instant::now() < deadline
                        && format!("{e:#}").contains("pre-existing shared memory block") =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                launched => {
                    self.child = launched?;
                    return Ok(());
                }
            }
        }
    }
}

impl Drop for Postgres {
    /// Stops the cluster with an immediate shutdown (SIGQUIT), which, unlike SIGKILL, lets
    /// the postmaster remove its System V shared memory segment: every cluster killed
    /// outright leaves one behind, and after 4,096 of them (`kernel.shmmni`) no
    /// PostgreSQL on the machine can start. Killed anyway if it has not exited in 5 s.
    fn drop(&mut self) {
        // A paused cluster would not see the signal below.
        self.resume();
        if let Some(pid) = self.child.pid() {
            // SAFETY: kill has no memory preconditions; the pid is our own, unreaped child.
            unsafe {
                libc::kill(pid as i32, libc::SIGQUIT);
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !self.child.has_exited() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            self.child.kill();
        }
        remove_orphaned_segment(&self.data);
    }
}

/// The processes whose parent is `pid`, from `/proc/<pid>/stat` (its fourth field, after
/// the command name in parentheses, which may itself hold spaces or parentheses).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let child: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            let (_, after_name) = stat.rsplit_once(')')?;
            let parent: u32 = after_name.split_whitespace().nth(1)?.parse().ok()?;
            (parent == pid).then_some(child)
        })
        .collect()
}

/// Removes the System V segment of a cluster whose postmaster ended without removing it
/// (a test's [`Postgres::stop`] with nothing started after it, or the 5 s above run out):
/// `postmaster.pid` outlives such an end and names the segment on its seventh line
/// (`<key> <shmid>`). A segment of that id and key is this cluster's; the kernel destroys
/// it once the last of the cluster's processes still attached has gone.
fn remove_orphaned_segment(data: &Path) {
    let Ok(pid_file) = std::fs::read_to_string(data.join("postmaster.pid")) else {
        return;
    };
    let mut line = pid_file
        .lines()
        .nth(6)
        .unwrap_or_default()
        .split_whitespace();
    let (Some(Ok(key)), Some(Ok(shmid))) = (
        line.next().map(str::parse::<libc::key_t>),
        line.next().map(str::parse::<libc::c_int>),
    ) else {
        return;
    };
    // SAFETY: IPC_STAT writes into the zeroed struct we own; IPC_RMID takes no buffer.
    unsafe {
        let mut info: libc::shmid_ds = std::mem::zeroed();
        if libc::shmctl(shmid, libc::IPC_STAT, &mut info) == 0 && info.shm_perm.__key == key {
            libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut());
        }
    }
}

fn launch(
    bin: &Path,
    data: &Path,
    socket_dir: &Path,
    port: u16,
    log: &Path,
    run_as: Option<(u32, u32)>,
) -> Result<Guarded> {
    let log_file = File::options().create(true).append(true).open(log)?;
    chown(log, run_as)?;
    let already = std::fs::metadata(log)?.len() as usize;
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D")
        .arg(data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(socket_dir)
        // Durability is the test's subject only where a test kills the server on purpose,
        // and those tests restart from what reached the OS, which these settings keep.
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
        .args(["-c", "max_connections=200"])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    let mut child = Guarded(Some(spawn(cmd)?));
    wait_for_log(&mut child, log, already, READY, Duration::from_secs(30))
        .context("postgres failed to start")?;
    Ok(child)
}

/// Returns the template cluster, running `initdb` the first time on this machine.
fn template_cluster(bin: &Path, run_as: Option<(u32, u32)>) -> Result<PathBuf> {
    let version = bin
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pg".into());
    let root = std::env::temp_dir().join("switchboard-testkit");
    std::fs::create_dir_all(&root)?;
    let template = root.join(format!("pg-{version}-template"));
    if template.join("PG_VERSION").is_file() {
        return Ok(template);
    }
    // Parallel tests may all find the template missing: each builds its own and the first
    // rename wins, so no lock is needed and no one sees a half-built template.
    let staging = root.join(format!("pg-{version}-staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    chown(&root, run_as)?;
    chown(&staging, run_as)?;
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D")
        .arg(staging.join("data"))
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        .stdin(Stdio::null());
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    let output = cmd.output().context("run initdb")?;
    if !output.status.success() {
        bail!(
            "initdb failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if std::fs::rename(staging.join("data"), &template).is_err() && !template.is_dir() {
        bail!(
            "could not install the template cluster at {}",
            template.display()
        );
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(template)
}

fn pg_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SWITCHBOARD_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Some(initdb) = crate::process::which("initdb") {
        return Ok(initdb.parent().unwrap_or(Path::new("/")).to_path_buf());
    }
    Err(anyhow!(
        "PostgreSQL binaries not found: set SWITCHBOARD_PG_BIN, or run scripts/test \
         (it installs Debian's postgresql package)"
    ))
}

fn postgres_user_if_root() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres")?;
    // SAFETY: getpwnam returns null or a pointer to a static record read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("running as root, and there is no `postgres` user to run PostgreSQL as");
    }
    // SAFETY: checked non-null above.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn chown(path: &Path, run_as: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}
