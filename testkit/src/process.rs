//! Spawning server processes that cannot outlive the test binary.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from the process-wide spawner thread with `PR_SET_PDEATHSIG = SIGKILL`.
///
/// The death signal is tied to the thread that forked the child, so forking from a test's
/// own thread would kill the server as soon as that test thread ended.
pub(crate) fn spawn(mut cmd: Command) -> Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs
                    // between fork and exec here.
                    unsafe {
                        cmd.pre_exec(|| {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static, so this loop never ends and the thread
                // that parents every server lives as long as the process.
            })
            .expect("spawn the testkit spawner thread");
        tx
    });
    let program = cmd.get_program().to_string_lossy().into_owned();
    let (tx, rx) = mpsc::channel();
    spawner
        .send((std::mem::replace(&mut cmd, Command::new("true")), tx))
        .context("testkit spawner thread is gone")?;
    rx.recv()
        .context("testkit spawner thread is gone")?
        .with_context(|| format!("spawn {program}"))
}

/// A child process that is killed (and reaped) when dropped.
#[derive(Debug)]
pub(crate) struct Guarded(pub(crate) Option<Child>);

/// A process under test (an edge, a worker): killed when dropped, and killed with the
/// test binary even if that dies without unwinding.
#[derive(Debug)]
pub struct Process(Guarded);

impl Process {
    pub fn spawn(cmd: Command) -> Result<Process> {
        Ok(Process(Guarded(Some(spawn(cmd)?))))
    }

    pub fn pid(&self) -> Option<u32> {
        self.0.pid()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) without waiting.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.0.pid() {
            // SAFETY: kill has no memory preconditions; the pid is our own child.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// Kills with SIGKILL and reaps.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// Waits for the process to exit by itself, up to `timeout`; its exit status.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.0.0.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Guarded {
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    pub(crate) fn has_exited(&mut self) -> bool {
        match &mut self.0 {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// Another process may take it before the server binds it; callers retry on a bind failure.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// The workspace root (the directory holding the top `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives one level below the workspace root")
        .to_path_buf()
}

/// The path of a workspace binary (`switchboard-edge`, `switchboard-workers`, ...) built
/// in the same profile as the running test, for tests that run processes of another
/// package. `scripts/test` builds every binary before the tests run.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first (`cargo build --bins`, as scripts/test does)",
        path.display()
    );
    path
}

/// Waits until `log`, past its first `offset` bytes, contains `needle`; fails early if the
/// process exits. The offset lets a restarted server append to the log of its first run.
pub(crate) fn wait_for_log(
    child: &mut Guarded,
    log: &Path,
    offset: usize,
    needle: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let bytes = std::fs::read(log).unwrap_or_default();
        let text = String::from_utf8_lossy(bytes.get(offset..).unwrap_or_default());
        if text.contains(needle) {
            return Ok(());
        }
        if child.has_exited() {
            bail!("process exited before it was ready; its log:\n{text}");
        }
        if Instant::now() > deadline {
            bail!("not ready after {timeout:?}; its log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Looks `name` up on `PATH`.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}
