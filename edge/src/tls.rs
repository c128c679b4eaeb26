//! TLS at the edge: the certificate and key files (`SWITCHBOARD_TLS_CERT`,
//! `SWITCHBOARD_TLS_KEY`), the rustls configuration built from them, and the watch that
//! puts replaced files in service without a restart (docs/operations.md, section 9).
//!
//! This module owns reading and checking the PEM files and choosing the certificate each
//! new handshake gets. Accepting connections, and the limits that hold while a handshake
//! runs (header timeout, connection cap), belong to [`server`](crate::server).
//!
//! One rustls `ServerConfig` lives as long as the process; its certificate resolver hands
//! each handshake the certificate current at that moment. A renewal swaps one `Arc`:
//! connections already open keep the session they have, and the session cache survives.
//! A replacement that does not load (unreadable, not PEM, a key that is not the
//! certificate's) is refused and logged once; the previous certificate stays in service.
//!
//! rustls is built here with the `ring` provider and without TLS 1.2, as the NATS client
//! already uses it: clients need TLS 1.3, which every maintained browser and TLS library
//! speaks.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_util::sync::CancellationToken;

use crate::config::EdgeConfig;

const CERT_VAR: &str = "SWITCHBOARD_TLS_CERT";
const KEY_VAR: &str = "SWITCHBOARD_TLS_KEY";

/// How often the files are read for changes. A change is put in service once two reads
/// in a row agree, so a replacement is live 2 to 4 s after it was written, and a pair
/// written one file after the other is not judged half-written.
const POLL: Duration = Duration::from_secs(2);

/// Why a certificate or key cannot be used. The message names the variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{set} is set but {missing} is not: TLS needs both a certificate and its key")]
    Half {
        set: &'static str,
        missing: &'static str,
    },
    #[error("{var} ({}): {reason}", path.display())]
    File {
        var: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "{CERT_VAR} ({}) and {KEY_VAR} ({}) do not go together: {reason}",
        cert.display(),
        key.display()
    )]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The certificate and key files, and the rustls configuration serving them.
pub struct Tls {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// `None` when neither variable is set (plain HTTP); an error when only one is, or
    /// when the files do not load, so a bad deployment fails before it listens.
    pub fn from_config(config: &EdgeConfig) -> Result<Option<Tls>, TlsError> {
        let set = |path: &Option<PathBuf>| path.clone().filter(|p| !p.as_os_str().is_empty());
        match (
            set(&config.listener_tls_cert),
            set(&config.listener_tls_key),
        ) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(TlsError::Half {
                set: CERT_VAR,
                missing: KEY_VAR,
            }),
            (None, Some(_)) => Err(TlsError::Half {
                set: KEY_VAR,
                missing: CERT_VAR,
            }),
            (Some(cert), Some(key)) => Tls::load(cert, key).map(Some),
        }
    }

    fn load(cert_path: PathBuf, key_path: PathBuf) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = Files::read(&cert_path, &key_path);
        let certified = files.certified_key(&cert_path, &key_path, &provider)?;
        let current = Arc::new(Current(RwLock::new(Arc::new(certified))));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pair {
                cert: cert_path.clone(),
                key: key_path.clone(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // The router speaks HTTP/1.1 only; saying so lets a browser that offers h2 settle
        // on HTTP/1.1 instead of failing after the handshake.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            cert_path,
            key_path,
            provider,
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Handshakes with the certificate current when each handshake starts.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Reads the files every [`POLL`] until `stop` is cancelled, putting a changed pair
    /// in service once it loads, and saying once per change why one does not.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        // What the files held when last judged (put in service, or refused), and what
        // the latest read saw if it differs and has not been stable for a poll yet.
        let mut judged = self.read().await;
        let mut settling: Option<Files> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            let seen = self.read().await;
            if seen == judged {
                settling = None;
                continue;
            }
            if settling.as_ref() != Some(&seen) {
                settling = Some(seen);
                continue;
            }
            match seen.certified_key(&self.cert_path, &self.key_path, &self.provider) {
                Ok(certified) => {
                    *self.current.0.write().unwrap_or_else(|e| e.into_inner()) =
                        Arc::new(certified);
                    tracing::info!(
                        cert = %self.cert_path.display(),
                        "TLS certificate replaced; new connections get the new one"
                    );
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "replaced TLS certificate or key refused; the previous certificate stays in service"
                ),
            }
            judged = seen;
            settling = None;
        }
    }

    async fn read(&self) -> Files {
        let (cert, key) = (self.cert_path.clone(), self.key_path.clone());
        tokio::task::spawn_blocking(move || Files::read(&cert, &key))
            .await
            .unwrap_or_else(|e| Files {
                cert: Err(e.to_string()),
                key: Err(e.to_string()),
            })
    }
}

/// The contents of both files at one read; a read error is kept as its message, so
/// that a file that stays missing is one change, not one per poll.
#[derive(PartialEq, Eq)]
struct Files {
    cert: Result<Vec<u8>, String>,
    key: Result<Vec<u8>, String>,
}

impl Files {
    fn read(cert: &Path, key: &Path) -> Files {
        let read = |path: &Path| std::fs::read(path).map_err(|e| e.to_string());
        Files {
            cert: read(cert),
            key: read(key),
        }
    }

    fn certified_key(
        &self,
        cert_path: &Path,
        key_path: &Path,
        provider: &CryptoProvider,
    ) -> Result<CertifiedKey, TlsError> {
        let cert_error = |reason: String| TlsError::File {
            var: CERT_VAR,
            path: cert_path.to_path_buf(),
            reason,
        };
        let key_error = |reason: String| TlsError::File {
            var: KEY_VAR,
            path: key_path.to_path_buf(),
            reason,
        };
        let cert_pem = self.cert.as_ref().map_err(|e| cert_error(e.clone()))?;
        let key_pem = self.key.as_ref().map_err(|e| key_error(e.clone()))?;
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_error(format!("not a PEM certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(cert_error("no CERTIFICATE block in the file".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            pem::Error::NoItemsFound => key_error("no PRIVATE KEY block in the file".into()),
            e => key_error(format!("not a PEM private key: {e}")),
        })?;
        CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::Pair {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
                reason: "the key is not the certificate's".into(),
            },
            e => TlsError::Pair {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
                reason: e.to_string(),
            },
        })
    }
}

/// The certificate new handshakes get; replaced whole by [`Tls::watch`].
struct Current(RwLock<Arc<CertifiedKey>>);

impl fmt::Debug for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Current(..)")
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(cert: &[u8], key: &[u8]) -> String {
        let files = Files {
            cert: Ok(cert.to_vec()),
            key: Ok(key.to_vec()),
        };
        let provider = rustls::crypto::ring::default_provider();
        match files.certified_key(Path::new("c.pem"), Path::new("k.pem"), &provider) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn refusals_name_the_variable_to_fix() {
        let garbage = error(b"garbage", b"garbage");
        assert!(
            garbage.starts_with("SWITCHBOARD_TLS_CERT (c.pem)"),
            "{garbage}"
        );
        let block = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let no_key = error(block, b"garbage");
        assert!(
            no_key.starts_with("SWITCHBOARD_TLS_KEY (k.pem)"),
            "{no_key}"
        );
        let missing = Files {
            cert: Err("No such file or directory (os error 2)".into()),
            key: Ok(Vec::new()),
        };
        let provider = rustls::crypto::ring::default_provider();
        let e = missing
            .certified_key(Path::new("c.pem"), Path::new("k.pem"), &provider)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("SWITCHBOARD_TLS_CERT") && e.contains("No such file"),
            "{e}"
        );
    }
}
