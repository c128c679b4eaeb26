//! Token verification: a JWT becomes an [`Identity`] once, at the boundary.
//!
//! The algorithm is pinned by configuration, never taken from the token: a token whose
//! header names another algorithm (`none`, or HS256 signed with an RSA public key as the
//! secret) is refused before any signature check.

use std::str::FromStr;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use switchboard_schemas::shapes::{Claims, Role};
use switchboard_schemas::{ChannelName, ChannelPattern, UserId};

use crate::config::EdgeConfig;

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
        }
    }
}

/// Verifies tokens with the configured key, algorithm, issuer, audience and leeway.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn from_config(config: &EdgeConfig) -> anyhow::Result<Verifier> {
        let algorithm = Algorithm::from_str(&config.jwt_alg)
            .map_err(|_| anyhow::anyhow!("unknown JWT algorithm {:?}", config.jwt_alg))?;
        let key = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let secret = config
                    .jwt_secret
                    .as_deref()
                    .ok_or_else(|| anyhow::anyhow!("{algorithm:?} needs SWITCHBOARD_JWT_SECRET"))?;
                anyhow::ensure!(
                    secret.len() >= 16,
                    "SWITCHBOARD_JWT_SECRET must be at least 16 bytes"
                );
                DecodingKey::from_secret(secret.as_bytes())
            }
            _ => {
                let path = config.jwt_public_key.as_ref().ok_or_else(|| {
                    anyhow::anyhow!("{algorithm:?} needs SWITCHBOARD_JWT_PUBLIC_KEY (a PEM file)")
                })?;
                let pem = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
                match algorithm {
                    Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
                        DecodingKey::from_rsa_pem(&pem)?
                    }
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem)?,
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem)?,
                    other => anyhow::bail!("JWT algorithm {other:?} is not supported"),
                }
            }
        };
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
        Ok(Verifier { key, validation })
    }

    /// Checks signature, algorithm, time window, issuer and audience, and returns who it is.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                    AuthError::WrongAlgorithm
                }
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                _ => AuthError::Malformed,
            },
        )?;
        let claims = data.claims;
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
}
