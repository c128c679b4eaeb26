//! Token verification: a JWT becomes an [`Identity`] once, at the boundary.
//!
//! Keys come from configuration: one fixed key (`SWITCHBOARD_JWT_SECRET` or
//! `SWITCHBOARD_JWT_PUBLIC_KEY`) and/or a key set the issuer publishes ([`crate::jwks`]).
//! The algorithm is pinned by the key, never taken from the token: a token whose header
//! names another algorithm (`none`, or HS256 signed with an RSA public key as the
//! secret) is refused before any signature check. Keys too weak to protect anything (a
//! short HMAC secret, or one printed in this project's own files) stop the edge at
//! start (docs/operations.md, "Token keys").

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest as _, Sha256};
use switchboard_schemas::shapes::{Claims, Role};
use switchboard_schemas::{ChannelName, ChannelPattern, UserId};

use crate::config::EdgeConfig;
use crate::jwks::{JwksError, KeySet};

/// Shortest HMAC secret accepted: 256 bits, the output size of HS256 (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// SHA-256 digests of the values written in the project's shipped files (README, docs,
/// compose files, scripts, ...), collected by `build.rs`: the binary runs without the
/// repository, and carries digests rather than the values themselves.
mod known_values {
    include!(concat!(env!("OUT_DIR"), "/known_values.rs"));
}

/// Who is on the other end of a session, as proven by their token.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: Arc<str>,
    pub role: Role,
    /// Channels the token grants beyond the namespace rules.
    pub grants: Arc<[ChannelPattern]>,
    /// Expiry, unix seconds.
    pub exp: i64,
}

impl Identity {
    /// True when the token's `channels` claim names this channel.
    pub fn is_granted(&self, channel: &ChannelName) -> bool {
        self.grants.iter().any(|p| p.matches(channel))
    }
}

/// Why a token was refused; each reason is also a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token algorithm is not the configured one")]
    WrongAlgorithm,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token is malformed or lacks a required claim")]
    Malformed,
    #[error("token names no key this edge knows")]
    UnknownKey,
}

impl AuthError {
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadSignature => "bad_signature",
            AuthError::WrongAlgorithm => "wrong_algorithm",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::Malformed => "malformed",
            AuthError::UnknownKey => "unknown_key",
        }
    }
}

/// Why the configured token keys cannot be used; each message names the setting to fix
/// and carries no key material. The edge exits with status 2 on any of them.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("SWITCHBOARD_JWT_ALG {0:?} is not a JWT algorithm the edge supports")]
    UnknownAlgorithm(String),
    #[error(
        "SWITCHBOARD_JWT_ALG {0} needs SWITCHBOARD_JWT_SECRET (or a key set: \
         SWITCHBOARD_JWT_JWKS_URL or SWITCHBOARD_JWT_JWKS_FILE)"
    )]
    MissingSecret(&'static str),
    #[error(
        "SWITCHBOARD_JWT_SECRET is {0} bytes; an HMAC secret must be at least \
         {MIN_SECRET_BYTES} random bytes (make one with `openssl rand -base64 48`)"
    )]
    ShortSecret(usize),
    #[error(
        "SWITCHBOARD_JWT_SECRET is a value written in Switchboard's own files (a compose \
         default or a documentation example), so anyone can sign tokens with it; make a \
         fresh one with `openssl rand -base64 48`"
    )]
    KnownSecret,
    #[error(
        "SWITCHBOARD_JWT_ALG {0} needs SWITCHBOARD_JWT_PUBLIC_KEY (a PEM file) or a key \
         set (SWITCHBOARD_JWT_JWKS_URL or SWITCHBOARD_JWT_JWKS_FILE)"
    )]
    MissingPublicKey(&'static str),
    #[error("SWITCHBOARD_JWT_PUBLIC_KEY: cannot read {path}: {error}")]
    ReadPublicKey { path: String, error: String },
    #[error("SWITCHBOARD_JWT_PUBLIC_KEY: {path} is not a {alg} public key in PEM form")]
    BadPublicKey { path: String, alg: &'static str },
    #[error("SWITCHBOARD_JWT_ALG {0} is not supported with a PEM key")]
    UnsupportedAlgorithm(&'static str),
    #[error("set SWITCHBOARD_JWT_JWKS_URL or SWITCHBOARD_JWT_JWKS_FILE, not both")]
    TwoSets,
    #[error(transparent)]
    JwksUrl(JwksError),
    #[error("SWITCHBOARD_JWT_JWKS_FILE: {0}")]
    JwksFile(JwksError),
}

/// Every algorithm a key may pin, each with its own [`Validation`].
const ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Verifies tokens with the configured keys, issuer, audience and leeway.
#[derive(Clone)]
pub struct Verifier {
    /// The key of `SWITCHBOARD_JWT_SECRET` / `SWITCHBOARD_JWT_PUBLIC_KEY` and the one
    /// algorithm it verifies; it serves tokens without `kid`.
    fixed: Option<(Algorithm, Arc<DecodingKey>)>,
    /// The issuer's published keys, when a key set is configured.
    set: Option<Arc<KeySet>>,
    /// One validation per algorithm, sharing issuer, audience, leeway and claims.
    validations: Arc<[(Algorithm, Validation)]>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("fixed", &self.fixed.as_ref().map(|(alg, _)| alg))
            .field("set", &self.set)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Checks every key setting and loads what can be loaded without the network (the
    /// fixed key, a key set file). `main` calls this before listening or connecting,
    /// so a weak or missing key stops the edge before it serves anything.
    pub fn from_config(config: &EdgeConfig) -> Result<Verifier, KeyError> {
        let refresh = Duration::from_secs(config.jwt_jwks_refresh_s);
        let file = config
            .jwt_jwks_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty());
        let set = match (non_empty(&config.jwt_jwks_url), file) {
            (Some(_), Some(_)) => return Err(KeyError::TwoSets),
            (Some(url), None) => Some(KeySet::from_url(url, refresh).map_err(KeyError::JwksUrl)?),
            (None, Some(path)) => {
                Some(KeySet::from_file(path.clone(), refresh).map_err(KeyError::JwksFile)?)
            }
            (None, None) => None,
        };
        let fixed = fixed_key(config, set.is_some())?;
        let validations = ALGORITHMS
            .iter()
            .map(|alg| (*alg, validation(config, *alg)))
            .collect();
        Ok(Verifier {
            fixed,
            set: set.map(Arc::new),
            validations,
        })
    }

    /// [`Verifier::from_config`], then a first fetch of a key set URL (a failure is
    /// logged and retried: the issuer being down must not keep the edge down) and the
    /// refreshes that keep the set current.
    pub async fn start(config: &EdgeConfig) -> Result<Verifier, KeyError> {
        let verifier = Verifier::from_config(config)?;
        if let Some(set) = &verifier.set {
            if set.snapshot().is_empty() {
                set.refresh_now("start").await;
            }
            set.keep_fresh();
        }
        Ok(verifier)
    }

    /// Checks signature, algorithm, time window, issuer and audience, and returns who it
    /// is. A token naming a `kid` the key set lacks may wait for one refetch of the set.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let claims = match (&self.set, &self.fixed) {
            (None, Some((alg, key))) => self.decode(token, key, *alg)?,
            (None, None) => return Err(AuthError::UnknownKey),
            (Some(set), fixed) => {
                let header =
                    jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
                match (header.kid.as_deref(), fixed) {
                    (None, Some((alg, key))) => self.decode(token, key, *alg)?,
                    (kid, _) => {
                        let key = set.find(kid).await.ok_or(AuthError::UnknownKey)?;
                        // The key decides: a header naming another algorithm (HS256
                        // keyed with an RSA key's public bytes) is refused unchecked.
                        if header.alg != key.alg {
                            return Err(AuthError::WrongAlgorithm);
                        }
                        self.decode(token, &key.decoding, key.alg)?
                    }
                }
            }
        };
        // User ids become channel ids (`user:<id>`) and KV key tokens.
        if UserId::parse(&claims.sub).is_err() {
            return Err(AuthError::Malformed);
        }
        Ok(Identity {
            user: claims.sub.into(),
            role: claims.role,
            grants: claims.channels.into(),
            exp: claims.exp,
        })
    }

    fn decode(&self, token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Claims, AuthError> {
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(AuthError::WrongAlgorithm)?;
        jsonwebtoken::decode::<Claims>(token, key, validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                    AuthError::WrongAlgorithm
                }
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                _ => AuthError::Malformed,
            })
    }
}

/// The fixed key, if configured. Without a key set it is required; with one it is
/// optional (an empty variable counts as unset, as compose files pass them).
fn fixed_key(
    config: &EdgeConfig,
    has_set: bool,
) -> Result<Option<(Algorithm, Arc<DecodingKey>)>, KeyError> {
    let algorithm = Algorithm::from_str(&config.jwt_alg)
        .map_err(|_| KeyError::UnknownAlgorithm(config.jwt_alg.clone()))?;
    let name = algorithm_name(algorithm);
    let key = match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let Some(secret) = non_empty(&config.jwt_secret) else {
                return match has_set {
                    true => Ok(None),
                    false => Err(KeyError::MissingSecret(name)),
                };
            };
            check_secret(secret)?;
            DecodingKey::from_secret(secret.as_bytes())
        }
        _ => {
            let Some(path) = config
                .jwt_public_key
                .as_ref()
                .filter(|p| !p.as_os_str().is_empty())
            else {
                return match has_set {
                    true => Ok(None),
                    false => Err(KeyError::MissingPublicKey(name)),
                };
            };
            public_key(path, algorithm, name)?
        }
    };
    Ok(Some((algorithm, Arc::new(key))))
}

fn public_key(
    path: &PathBuf,
    algorithm: Algorithm,
    name: &'static str,
) -> Result<DecodingKey, KeyError> {
    let pem = std::fs::read(path).map_err(|e| KeyError::ReadPublicKey {
        path: path.display().to_string(),
        error: e.to_string(),
    })?;
    let bad = |_| KeyError::BadPublicKey {
        path: path.display().to_string(),
        alg: name,
    };
    match algorithm {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => DecodingKey::from_rsa_pem(&pem).map_err(bad),
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem).map_err(bad),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem).map_err(bad),
        _ => Err(KeyError::UnsupportedAlgorithm(name)),
    }
}

/// An HMAC secret must be long enough to resist guessing and must not be one anybody
/// can read in this project's files.
pub fn check_secret(secret: &str) -> Result<(), KeyError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(KeyError::ShortSecret(secret.len()));
    }
    let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    if known_values::DIGESTS.binary_search(&digest).is_ok() {
        return Err(KeyError::KnownSecret);
    }
    Ok(())
}

fn validation(config: &EdgeConfig, algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = config.jwt_leeway_s;
    validation.validate_nbf = true;
    // A configured issuer or audience must be present, not merely right when present.
    let mut required = vec!["exp", "sub"];
    match &config.jwt_issuer {
        Some(iss) => {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        None => validation.iss = None,
    }
    match &config.jwt_audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        _ => "(another algorithm)",
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secrets_are_refused() {
        assert!(matches!(
            check_secret("0123456789abcdef0123456789abcde"),
            Err(KeyError::ShortSecret(31))
        ));
        assert!(check_secret("a fresh secret of more than thirty-two bytes").is_ok());
    }

    #[test]
    fn values_from_the_project_files_are_refused() {
        // docs/operations.md shows this one as the example never to use.
        assert!(matches!(
            check_secret("switchboard-docs-example-secret-do-not-use-0001"),
            Err(KeyError::KnownSecret)
        ));
    }

    #[test]
    fn no_message_carries_the_secret() {
        let secret = "switchboard-docs-example-secret-do-not-use-0001";
        let message = check_secret(secret).unwrap_err().to_string();
        assert!(!message.contains(secret), "{message}");
        assert!(message.contains("SWITCHBOARD_JWT_SECRET"), "{message}");
    }
}
