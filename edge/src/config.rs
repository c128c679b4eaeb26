//! The edge's configuration: one typed struct, from flags and `SWITCHBOARD_*` variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// `switchboard-edge`: the stateless WebSocket gateway.
///
/// Every option is also read from the environment variable shown; flags win.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchboard-edge", version, about, long_about = None)]
pub struct EdgeConfig {
    /// Address to listen on.
    #[arg(long, env = "SWITCHBOARD_EDGE_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// How to reach NATS (as the `edge` role): URL, credentials, TLS.
    #[command(flatten)]
    pub nats: switchboard_bus::NatsOptions,

    /// This edge's id in logs, presence entries and `switchboard status` (default: random).
    #[arg(long, env = "SWITCHBOARD_EDGE_ID")]
    pub edge_id: Option<String>,

    /// Algorithm of the fixed key (SWITCHBOARD_JWT_SECRET or SWITCHBOARD_JWT_PUBLIC_KEY),
    /// which every token checked with it must use: HS256, HS384, HS512, RS256, RS384,
    /// RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA.
    #[arg(long, env = "SWITCHBOARD_JWT_ALG", default_value = "HS256")]
    pub jwt_alg: String,

    /// Shared secret for HS* algorithms: at least 32 random bytes, and no value printed in
    /// Switchboard's own files (the edge refuses to start otherwise).
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key file for RS256, ES256 or EdDSA.
    #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Required `iss` claim, when set.
    #[arg(long, env = "SWITCHBOARD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long, env = "SWITCHBOARD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock leeway for `exp` and `nbf`, in seconds.
    #[arg(long, env = "SWITCHBOARD_JWT_LEEWAY_S", default_value_t = 5)]
    pub jwt_leeway_s: u64,

    /// JSON Web Key Set to check tokens against, by URL (https; plain http only to a
    /// loopback address). A token is checked with the key its `kid` names; an unknown
    /// `kid` refetches the set (at most once per 30 s). A fixed key, when also set,
    /// serves tokens without `kid`.
    /// (Its value is not shown here: a URL may carry a credential.)
    #[arg(long, env = "SWITCHBOARD_JWT_JWKS_URL", hide_env_values = true)]
    pub jwt_jwks_url: Option<String>,

    /// JSON Web Key Set to check tokens against, from a file (re-read like the URL; set
    /// one of the two).
    #[arg(long, env = "SWITCHBOARD_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,

    /// Seconds between re-reads of the key set; a failed read keeps the last good set.
    #[arg(
        long,
        env = "SWITCHBOARD_JWT_JWKS_REFRESH_S",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub jwt_jwks_refresh_s: u64,

    /// WebSocket ping interval; a peer silent for twice this long is closed. The presence
    /// TTL follows it.
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_MS", default_value_t = 25_000)]
    pub heartbeat_ms: u64,

    /// Time an unauthenticated socket has to send `hello`.
    #[arg(long, env = "SWITCHBOARD_HELLO_TIMEOUT_MS", default_value_t = 5_000)]
    pub hello_timeout_ms: u64,

    /// Largest client frame answered normally; larger ones get `too_large`.
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Frames above this size close the socket with 1009.
    #[arg(long, env = "SWITCHBOARD_HARD_FRAME_BYTES", default_value_t = 1024 * 1024)]
    pub hard_frame_bytes: usize,

    /// Sustained client frames per second per connection.
    #[arg(long, env = "SWITCHBOARD_FRAMES_PER_S", default_value_t = 50)]
    pub frames_per_s: u32,

    /// Burst of client frames per connection.
    #[arg(long, env = "SWITCHBOARD_FRAME_BURST", default_value_t = 100)]
    pub frame_burst: u32,

    /// Subscriptions per connection (`system:broadcast` not counted).
    #[arg(long, env = "SWITCHBOARD_MAX_SUBS", default_value_t = 100)]
    pub max_subscriptions: usize,

    /// `sub` frames per second per connection (burst: three seconds' worth); each user
    /// gets four times the per-connection rates across their connections on this edge.
    #[arg(long, env = "SWITCHBOARD_SUB_PER_S", default_value_t = 50)]
    pub sub_per_s: u32,

    /// `pub` frames per second per connection (burst: three seconds' worth).
    #[arg(long, env = "SWITCHBOARD_PUB_PER_S", default_value_t = 20)]
    pub pub_per_s: u32,

    /// `sig` frames per second per connection (burst: three seconds' worth).
    #[arg(long, env = "SWITCHBOARD_SIG_PER_S", default_value_t = 20)]
    pub sig_per_s: u32,

    /// Open connections (WebSocket, SSE, long poll) per user on this edge.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNS_PER_USER", default_value_t = 50)]
    pub max_conns_per_user: usize,

    /// Sockets still waiting for `hello` at once; more are refused with HTTP 429.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_UNAUTHENTICATED",
        default_value_t = 10_000
    )]
    pub max_unauthenticated: usize,

    /// Sockets waiting for `hello` from one client address; more get HTTP 429. Other
    /// addresses are not affected.
    #[arg(long, env = "SWITCHBOARD_MAX_PENDING_PER_IP", default_value_t = 64)]
    pub max_pending_per_ip: usize,

    /// Proxies whose `X-Forwarded-For` names the client (comma separated addresses or
    /// CIDR blocks, e.g. `10.0.0.0/8`). From any other peer the header is ignored: the
    /// peer is the client.
    #[arg(
        long,
        env = "SWITCHBOARD_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = crate::admission::AddressBlock::parse
    )]
    pub trusted_proxies: Vec<crate::admission::AddressBlock>,

    /// Time a connection has to send a complete request head (request line and headers),
    /// counted from when it opens and again from each response on a kept-alive
    /// connection; then it is closed.
    #[arg(long, env = "SWITCHBOARD_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// Longest request head (request line and headers), in bytes, at least 8192; longer
    /// ones are refused with HTTP 431.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_REQUEST_HEAD_BYTES",
        default_value_t = 16 * 1024
    )]
    pub max_request_head_bytes: usize,

    /// Connections speaking plain HTTP at once: those not yet upgraded to a WebSocket,
    /// SSE streams, long polls and other requests. More are answered HTTP 503 and closed.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_HTTP_CONNECTIONS",
        default_value_t = 10_000
    )]
    pub max_http_connections: usize,

    /// PEM certificate chain (leaf first): with `SWITCHBOARD_TLS_KEY`, the edge serves
    /// HTTPS and WSS itself (TLS 1.3) and puts replaced files in service within seconds.
    /// Unset: plain HTTP, for use behind a TLS-terminating proxy.
    #[arg(long = "tls-cert", env = "SWITCHBOARD_TLS_CERT")]
    pub listener_tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `SWITCHBOARD_TLS_CERT`.
    #[arg(long = "tls-key", env = "SWITCHBOARD_TLS_KEY")]
    pub listener_tls_key: Option<PathBuf>,

    /// Browser origins allowed to connect (comma separated, each `scheme://host[:port]`);
    /// empty allows any to open a WebSocket. The origins listed also get CORS answers on
    /// `/v1/sse`, `/v1/poll`, `/v1/rpc/*` and `/v1/publish`. Requests without an `Origin`
    /// header (servers, native apps) are always allowed.
    #[arg(long, env = "SWITCHBOARD_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub allowed_origins: Vec<String>,

    /// Development mode: serve the demo app of this directory at `/` (scripts/up sets it
    /// to the repository's `web/`). Leave unset in production.
    #[arg(long, env = "SWITCHBOARD_WEB_DIR")]
    pub web_dir: Option<PathBuf>,

    /// Bad frames per minute before the session ends with `protocol_error`.
    #[arg(long, env = "SWITCHBOARD_MAX_BAD_FRAMES", default_value_t = 10)]
    pub max_bad_frames: u32,

    /// Frames queued for one socket before it counts as a slow consumer.
    #[arg(long, env = "SWITCHBOARD_SEND_QUEUE", default_value_t = 1024)]
    pub send_queue: usize,

    /// Bytes of frames queued for one socket before it counts as a slow consumer.
    #[arg(long, env = "SWITCHBOARD_SEND_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub send_queue_bytes: usize,

    /// How long an `rpc` waits for the worker's answer.
    #[arg(long, env = "SWITCHBOARD_RPC_TIMEOUT_MS", default_value_t = 5_000)]
    pub rpc_timeout_ms: u64,

    /// After SIGTERM, how long clients get to move before the edge exits.
    #[arg(long, env = "SWITCHBOARD_DRAIN_GRACE_MS", default_value_t = 5_000)]
    pub drain_grace_ms: u64,

    /// Publish hook (moderation): client messages in the hooked namespaces are sent to
    /// this NATS subject, which must be under `svc.` (e.g. `svc.moderation.check`), and
    /// stored only as the backend answering there decides (docs/protocol.md, section 10.13).
    /// Unset: no hook.
    #[arg(long, env = "SWITCHBOARD_PUBLISH_HOOK", value_parser = crate::hook::parse_subject)]
    pub publish_hook: Option<String>,

    /// Namespaces whose client messages go through the publish hook (comma separated).
    #[arg(
        long,
        env = "SWITCHBOARD_PUBLISH_HOOK_NAMESPACES",
        value_delimiter = ',',
        default_value = "conversation",
        value_parser = crate::hook::parse_namespace
    )]
    pub publish_hook_namespaces: Vec<switchboard_schemas::channel::Namespace>,

    /// How long a publish waits for the hook's answer; then it is `unavailable` (or
    /// accepted, with `SWITCHBOARD_PUBLISH_HOOK_FAIL_OPEN`).
    #[arg(
        long,
        env = "SWITCHBOARD_PUBLISH_HOOK_TIMEOUT_MS",
        default_value_t = 2_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub publish_hook_timeout_ms: u64,

    /// Store a message as the client sent it when the hook does not answer in time or
    /// answers something unreadable (default: refuse it with `unavailable`).
    #[arg(
        long,
        env = "SWITCHBOARD_PUBLISH_HOOK_FAIL_OPEN",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub publish_hook_fail_open: bool,

    /// Namespaces the workers' archive job keeps (comma separated; give the edge the
    /// workers' value): `history` and resumes read what `EVENTS` no longer holds of
    /// their channels from the archive (docs/protocol.md, section 10.10).
    #[arg(
        long,
        env = "SWITCHBOARD_ARCHIVE_NAMESPACES",
        value_delimiter = ',',
        default_value = "conversation",
        value_parser = crate::hook::parse_namespace
    )]
    pub archive_namespaces: Vec<switchboard_schemas::channel::Namespace>,
}

impl EdgeConfig {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn hello_timeout(&self) -> Duration {
        Duration::from_millis(self.hello_timeout_ms)
    }

    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.rpc_timeout_ms)
    }

    /// The demo app's directory, when development mode is on (an empty value is off).
    pub fn web_dir(&self) -> Option<&std::path::Path> {
        self.web_dir
            .as_deref()
            .filter(|dir| !dir.as_os_str().is_empty())
    }

    pub fn publish_hook_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_hook_timeout_ms)
    }

    pub fn drain_grace(&self) -> Duration {
        Duration::from_millis(self.drain_grace_ms)
    }
}

/// An origin as browsers send it in `Origin`: `http(s)://host[:port]`, nothing after the
/// host (a path or a trailing `/` would never match, so it is refused, not ignored).
fn parse_origin(value: &str) -> Result<String, String> {
    let origin = value.trim();
    let host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| {
            format!("{origin:?} is not an origin: it must start with https:// or http://")
        })?;
    let valid_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if !valid_host {
        return Err(format!(
            "{origin:?} is not an origin: after the scheme only host[:port] may follow (no path, no trailing /)"
        ));
    }
    Ok(origin.to_string())
}
