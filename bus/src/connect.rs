//! Connecting to NATS as one of Switchboard's roles (docs/operations.md, "NATS roles").
//!
//! NATS always runs with authorization on: every process authenticates as a [`Role`],
//! with an NKey seed file or a `.creds` file, and receives replies only under its role's
//! inbox prefix. [`NatsOptions`] are the connection settings every binary takes (flags
//! and `SWITCHBOARD_NATS_*` variables); [`RoleKeys`] makes and reads the role seeds that
//! `switchboard keys`, `scripts/up` and the tests use.
//!
//! Seeds are secrets: they are read from files (never from arguments, where `ps` shows
//! them), and no error or log line here carries one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_nats::ConnectOptions;

/// Who a process is on NATS; the server config (`nats/auth.conf`) gives each its
/// permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `switchboard-edge`.
    Edge,
    /// `switchboard-workers`.
    Workers,
    /// Backend services of the app.
    Service,
    /// The `switchboard` command and operators.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Edge, Role::Workers, Role::Service, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Workers => "workers",
            Role::Service => "service",
            Role::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == name)
    }

    /// The prefix of this role's reply subjects: the only replies it may receive.
    pub fn inbox_prefix(self) -> String {
        format!("_INBOX_{}", self.name())
    }

    /// The environment variable through which nats-server learns this role's public key
    /// (`nats/auth.conf`).
    pub fn public_key_variable(self) -> String {
        format!("SWITCHBOARD_NATS_{}_PUBKEY", self.name().to_uppercase())
    }

    /// The file name of this role's seed in a keys directory.
    pub fn seed_file_name(self) -> String {
        format!("{}.nk", self.name())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a connection could not be set up. Never carries a seed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectSetupError {
    #[error("cannot read the NKey seed file {path} ({setting}): {error}")]
    ReadSeed {
        path: PathBuf,
        setting: &'static str,
        error: std::io::Error,
    },
    #[error("{path} ({setting}) does not hold a valid NKey user seed")]
    BadSeed {
        path: PathBuf,
        setting: &'static str,
    },
    #[error("cannot load the credentials file {path} (SWITCHBOARD_NATS_CREDS): {error}")]
    Creds {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "set both SWITCHBOARD_NATS_TLS_CERT and SWITCHBOARD_NATS_TLS_KEY for a client certificate, or neither"
    )]
    HalfClientCertificate,
    #[error("cannot write {path}: {error}")]
    WriteSeed {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// How a binary reaches NATS: servers, credentials, TLS. Flattened into each binary's
/// configuration, so every one reads the same flags and variables.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsOptions {
    /// NATS server URL(s), comma separated; `tls://` URLs require TLS.
    #[arg(
        long = "nats-url",
        env = "SWITCHBOARD_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true,
        global = true
    )]
    pub url: String,

    /// File holding this process's NKey user seed (mode 0600; `switchboard keys` makes
    /// one per role).
    #[arg(long = "nats-nkey", env = "SWITCHBOARD_NATS_NKEY", global = true)]
    pub nkey: Option<PathBuf>,

    /// `.creds` file (user JWT and seed) for NATS deployments in operator/JWT mode.
    #[arg(
        long = "nats-creds",
        env = "SWITCHBOARD_NATS_CREDS",
        conflicts_with = "nkey",
        global = true
    )]
    pub creds: Option<PathBuf>,

    /// PEM file of the CA that signed the NATS servers' certificates; implies TLS.
    #[arg(long = "nats-tls-ca", env = "SWITCHBOARD_NATS_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate, for servers that verify clients (with --nats-tls-key).
    #[arg(
        long = "nats-tls-cert",
        env = "SWITCHBOARD_NATS_TLS_CERT",
        global = true
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of the client certificate.
    #[arg(long = "nats-tls-key", env = "SWITCHBOARD_NATS_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
}

impl NatsOptions {
    /// Options for a plain URL and nothing else (tests, defaults).
    pub fn url(url: impl Into<String>) -> NatsOptions {
        NatsOptions {
            url: url.into(),
            nkey: None,
            creds: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }

    /// The servers to hand to [`ConnectOptions::connect`] (see [`crate::nats_servers`]).
    pub fn servers(&self) -> Vec<&str> {
        crate::nats_servers(&self.url)
    }

    /// Connection options for `role`: credentials, TLS, the role's inbox prefix and the
    /// client name. The caller adds what is its own (reconnect policy, callbacks).
    pub async fn connect_options(
        &self,
        role: Role,
        name: impl Into<String>,
    ) -> Result<ConnectOptions, ConnectSetupError> {
        let mut options = ConnectOptions::new()
            .name(name.into())
            .custom_inbox_prefix(role.inbox_prefix());
        if let Some(path) = &self.nkey {
            options = options.nkey(read_seed(path, "SWITCHBOARD_NATS_NKEY")?);
        }
        if let Some(path) = &self.creds {
            options =
                options
                    .credentials_file(path)
                    .await
                    .map_err(|error| ConnectSetupError::Creds {
                        path: path.clone(),
                        error,
                    })?;
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                options = options
                    .add_client_certificate(cert.clone(), key.clone())
                    .require_tls(true);
            }
            (None, None) => {}
            _ => return Err(ConnectSetupError::HalfClientCertificate),
        }
        if self.servers().iter().any(|url| url.starts_with("tls://")) {
            options = options.require_tls(true);
        }
        Ok(options)
    }

    /// The URL setting with any password in it replaced, for logs and errors.
    pub fn redacted_url(&self) -> String {
        self.servers()
            .into_iter()
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A URL fit for logs and errors: `scheme://user:secret@host/path?query` becomes
/// `scheme://user:***@host/path?***`. Token-only userinfo (`scheme://secret@host`) is
/// replaced whole, and a query, which may carry a token or `password=`, is hidden.
pub fn redact_url(url: &str) -> String {
    let (url, hidden_query) = match url.split_once('?') {
        Some((before, _)) => (before, "?***"),
        None => (url, ""),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return format!("{url}{hidden_query}");
    };
    let authority_end = rest.find(['/', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return format!("{url}{hidden_query}");
    };
    let redacted = match rest[..at].split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{scheme}://{redacted}{}{hidden_query}", &rest[at..])
}

/// Reads a seed file and checks that it holds a user seed; the seed itself appears in
/// no error.
fn read_seed(path: &Path, setting: &'static str) -> Result<String, ConnectSetupError> {
    let text = fs::read_to_string(path).map_err(|error| ConnectSetupError::ReadSeed {
        path: path.to_path_buf(),
        setting,
        error,
    })?;
    // A seed file may hold comments or a creds-style armour: take the seed line.
    let seed = text
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("SU"))
        .unwrap_or_default();
    match nkeys::KeyPair::from_seed(seed) {
        Ok(_) => Ok(seed.to_string()),
        Err(_) => Err(ConnectSetupError::BadSeed {
            path: path.to_path_buf(),
            setting,
        }),
    }
}

/// The role seeds in one directory (`<role>.nk`, mode 0600), made once and kept.
#[derive(Debug, Clone)]
pub struct RoleKeys {
    dir: PathBuf,
}

impl RoleKeys {
    pub fn new(dir: impl Into<PathBuf>) -> RoleKeys {
        RoleKeys { dir: dir.into() }
    }

    /// Where `role`'s seed is (or will be).
    pub fn seed_path(&self, role: Role) -> PathBuf {
        self.dir.join(role.seed_file_name())
    }

    /// Makes the seed of `role` unless it exists, and returns its public key. An existing
    /// seed is kept: the server's authorization and every process using it stay valid.
    pub fn ensure(&self, role: Role) -> Result<String, ConnectSetupError> {
        let path = self.seed_path(role);
        if !path.exists() {
            write_new_seed(&self.dir, &path)?;
        }
        let seed = read_seed(&path, "seed file")?;
        let pair = nkeys::KeyPair::from_seed(&seed).map_err(|_| ConnectSetupError::BadSeed {
            path: path.clone(),
            setting: "seed file",
        })?;
        Ok(pair.public_key())
    }

    /// [`RoleKeys::ensure`] for every role: `(role, public key)`.
    pub fn ensure_all(&self) -> Result<Vec<(Role, String)>, ConnectSetupError> {
        Role::ALL
            .into_iter()
            .map(|role| Ok((role, self.ensure(role)?)))
            .collect()
    }
}

fn write_new_seed(dir: &Path, path: &Path) -> Result<(), ConnectSetupError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let write_error = |error| ConnectSetupError::WriteSeed {
        path: path.to_path_buf(),
        error,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(write_error)?;
    let pair = nkeys::KeyPair::new_user();
    let seed = pair
        .seed()
        .map_err(|e| write_error(std::io::Error::other(e.to_string())))?;
    // create_new: two concurrent `ensure` calls never overwrite each other's seed.
    let mut file = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(write_error(e)),
    };
    writeln!(file, "{seed}").map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("nats://edge:hunter2@n1:4222"),
            "nats://edge:***@n1:4222"
        );
        assert_eq!(redact_url("nats://s3cr3t@n1:4222"), "nats://***@n1:4222");
        assert_eq!(redact_url("tls://n1:4222"), "tls://n1:4222");
        assert_eq!(
            redact_url("postgres://u:p@db/x?sslmode=require&password=p"),
            "postgres://u:***@db/x?***"
        );
        assert_eq!(
            redact_url("http://hook.example/push?token=t"),
            "http://hook.example/push?***"
        );
        assert_eq!(redact_url("nats://n1:4222/a@b"), "nats://n1:4222/a@b");
    }

    #[test]
    fn seeds_are_made_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = RoleKeys::new(dir.path().join("keys"));
        let first = keys.ensure(Role::Edge).unwrap();
        assert!(first.starts_with('U'));
        assert_eq!(keys.ensure(Role::Edge).unwrap(), first);
        let mode = fs::metadata(keys.seed_path(Role::Edge))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_ne!(keys.ensure(Role::Admin).unwrap(), first);
    }

    #[test]
    fn a_file_without_a_seed_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.nk");
        fs::write(&path, "not-a-seed-but-secret").unwrap();
        let error = read_seed(&path, "SWITCHBOARD_NATS_NKEY").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("SWITCHBOARD_NATS_NKEY"), "{text}");
        assert!(!text.contains("not-a-seed-but-secret"), "{text}");
    }
}
