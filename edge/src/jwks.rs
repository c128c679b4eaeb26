//! JSON Web Key Sets: the public keys tokens are checked against when the issuer
//! publishes them (`SWITCHBOARD_JWT_JWKS_URL` or `SWITCHBOARD_JWT_JWKS_FILE`), kept fresh
//! so that keys rotate without a restart (docs/operations.md, "Token keys").
//!
//! This module owns reading, parsing and refreshing the set; [`crate::auth`] owns what a
//! token must satisfy. Each key's algorithm comes from the key itself (its `alg`, else
//! its type and curve), never from a token. A fetch that fails for any reason (the
//! source unreachable, not JSON, no usable key) keeps the last good set and says why in
//! the log; it never widens what is accepted. Nothing here logs key material: keys are
//! named by `kid` only, and a URL is shown without credentials or query.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use switchboard_bus::logging::error_chain;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// At most one refetch per this interval is caused by tokens naming a `kid` the set
/// lacks, so a flood of made-up kids cannot turn the edge into a flood of fetches.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// A fetch that takes longer than this counts as failed.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Key sets are a few KiB; anything near this is not one.
const MAX_SET_BYTES: usize = 1024 * 1024;

/// Redirects followed per fetch (each must pass the same scheme rule as the URL).
const MAX_REDIRECTS: usize = 5;

/// After a failed fetch, retries start this soon and back off to at most a minute (or
/// the refresh period, when shorter).
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// RSA moduli below 2048 bits are refused (NIST SP 800-131A).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// Why a key set could not be read or used. Messages carry no key material.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("SWITCHBOARD_JWT_JWKS_URL is not a valid URL")]
    InvalidUrl,
    #[error(
        "SWITCHBOARD_JWT_JWKS_URL must use https (plain http only to a loopback address \
         such as 127.0.0.1, [::1] or localhost); got {0}"
    )]
    InsecureUrl(String),
    #[error("cannot set up the HTTP client for SWITCHBOARD_JWT_JWKS_URL: {0}")]
    Client(String),
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: String },
    #[error("fetch failed: {0}")]
    Fetch(String),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("the key set is larger than {MAX_SET_BYTES} bytes")]
    TooLarge,
    #[error("not a JSON Web Key Set: {0}")]
    Malformed(String),
    #[error("no usable signing key in the set ({0})")]
    NoUsableKey(String),
}

/// Where the set comes from.
enum Source {
    Url {
        url: reqwest::Url,
        client: reqwest::Client,
    },
    File(PathBuf),
}

impl Source {
    /// How the source appears in logs and errors: a URL without credentials or query.
    fn describe(&self) -> String {
        match self {
            Source::Url { url, .. } => redacted(url),
            Source::File(path) => path.display().to_string(),
        }
    }
}

/// One usable verification key.
pub struct Key {
    pub kid: Option<String>,
    /// The only algorithm this key verifies.
    pub alg: Algorithm,
    pub decoding: DecodingKey,
}

/// The keys of one successfully read set.
#[derive(Default)]
pub struct Keys {
    keys: Vec<Arc<Key>>,
}

impl Keys {
    /// The key a token's header points at: the one its `kid` names, or, for a token
    /// without `kid`, the set's only key.
    pub fn find(&self, kid: Option<&str>) -> Option<&Arc<Key>> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn kids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("(no kid)"))
            .collect()
    }
}

/// A key set that refreshes itself, shared by every session of the edge.
pub struct KeySet {
    source: Source,
    current: RwLock<Arc<Keys>>,
    /// When tokens last caused a refetch. Held across that fetch, so that tokens
    /// arriving meanwhile wait for its result instead of fetching again.
    last_refetch: tokio::sync::Mutex<Option<Instant>>,
    refresh: Duration,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("source", &self.source.describe())
            .field("keys", &self.snapshot().kids())
            .finish_non_exhaustive()
    }
}

impl KeySet {
    /// A set fetched from `url`; nothing is fetched yet. Refused unless the URL is https,
    /// or http to a loopback address (a key set read over plain HTTP from elsewhere could
    /// be replaced by anyone on the path, and with it every identity).
    pub fn from_url(url: &str, refresh: Duration) -> Result<KeySet, JwksError> {
        let url = reqwest::Url::parse(url).map_err(|_| JwksError::InvalidUrl)?;
        if !scheme_allowed(&url) {
            return Err(JwksError::InsecureUrl(redacted(&url)));
        }
        // reqwest built without a bundled provider uses the process default; ring is
        // the provider the rest of the edge's rustls already uses. An error means one is
        // installed already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS || !scheme_allowed(attempt.url()) {
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            }));
        if is_loopback(&url) {
            // A proxy from the environment must not see (or answer for) a local issuer.
            client = client.no_proxy();
        }
        let client = client
            .build()
            .map_err(|e| JwksError::Client(error_chain(&e)))?;
        Ok(KeySet::new(Source::Url { url, client }, refresh))
    }

    /// A set read from a file, read now: at start, a file that cannot be used is a
    /// deployment error to fix, not something to wait out.
    pub fn from_file(path: PathBuf, refresh: Duration) -> Result<KeySet, JwksError> {
        let bytes = std::fs::read(&path).map_err(|e| JwksError::Read {
            path: path.display().to_string(),
            error: e.to_string(),
        })?;
        let keys = parse(&bytes)?;
        let set = KeySet::new(Source::File(path), refresh);
        set.install(keys);
        Ok(set)
    }

    fn new(source: Source, refresh: Duration) -> KeySet {
        KeySet {
            source,
            current: RwLock::new(Arc::new(Keys::default())),
            last_refetch: tokio::sync::Mutex::new(None),
            refresh,
        }
    }

    /// The keys as last read successfully (empty before the first success).
    pub fn snapshot(&self) -> Arc<Keys> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The key a token points at; when the set lacks it, refetches once (rate-limited
    /// by [`REFETCH_INTERVAL`] across the edge) and looks again.
    pub async fn find(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        let keys = self.snapshot();
        if let Some(key) = keys.find(kid) {
            return Some(key.clone());
        }
        // A token without `kid` facing a set of several keys is not helped by a fetch.
        if kid.is_some() || keys.is_empty() {
            self.refetch().await;
        }
        self.snapshot().find(kid).cloned()
    }

    async fn refetch(&self) {
        let mut last = self.last_refetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < REFETCH_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        self.refresh_now("a token named a key the set lacks").await;
    }

    /// Reads the set again; on failure the last good set stays. True on success.
    pub async fn refresh_now(&self, why: &str) -> bool {
        match self.fetch().await {
            Ok(keys) => {
                let changed = self.snapshot().kids() != keys.kids();
                if changed {
                    tracing::info!(
                        source = %self.source.describe(),
                        kids = ?keys.kids(),
                        why,
                        "token key set loaded"
                    );
                } else {
                    tracing::debug!(source = %self.source.describe(), why, "token key set unchanged");
                }
                self.install(keys);
                true
            }
            Err(e) => {
                tracing::warn!(
                    source = %self.source.describe(),
                    error = %e,
                    kept = ?self.snapshot().kids(),
                    why,
                    "token key set not refreshed; keeping the last good set"
                );
                false
            }
        }
    }

    fn install(&self, keys: Keys) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }

    async fn fetch(&self) -> Result<Keys, JwksError> {
        match &self.source {
            Source::File(path) => {
                let bytes = tokio::fs::read(path).await.map_err(|e| JwksError::Read {
                    path: path.display().to_string(),
                    error: e.to_string(),
                })?;
                parse(&bytes)
            }
            Source::Url { url, client } => {
                // The source (redacted) is logged beside the error; the error itself
                // leaves the URL out.
                let failed = |e: reqwest::Error| JwksError::Fetch(error_chain(&e.without_url()));
                let mut response = client.get(url.clone()).send().await.map_err(failed)?;
                if !response.status().is_success() {
                    return Err(JwksError::Status(response.status().as_u16()));
                }
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(failed)? {
                    if body.len() + chunk.len() > MAX_SET_BYTES {
                        return Err(JwksError::TooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                parse(&body)
            }
        }
    }

    /// Refreshes the set every period for as long as it is in use; after a failure,
    /// retries sooner (backing off) so an issuer that was down is picked up quickly.
    pub fn keep_fresh(self: &Arc<Self>) {
        let set = Arc::downgrade(self);
        let period = self.refresh;
        let mut wait = if self.snapshot().is_empty() {
            RETRY_FIRST.min(period)
        } else {
            period
        };
        tokio::spawn(async move {
            let mut backoff = RETRY_FIRST;
            loop {
                tokio::time::sleep(wait).await;
                let Some(set) = set.upgrade() else { break };
                if set.refresh_now("periodic refresh").await {
                    backoff = RETRY_FIRST;
                    wait = period;
                } else {
                    wait = jitter(backoff.min(period));
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        });
    }
}

/// Parses a JWK Set and keeps the keys the edge can verify with. Keys for encryption
/// are left out silently; unusable signing keys are left out with a warning; a set
/// with no usable key at all is an error (the caller keeps its previous set).
pub fn parse(bytes: &[u8]) -> Result<Keys, JwksError> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet =
        serde_json::from_slice(bytes).map_err(|e| JwksError::Malformed(e.to_string()))?;
    let mut keys: Vec<Arc<Key>> = Vec::with_capacity(raw.keys.len());
    let mut refused = Vec::new();
    for value in raw.keys {
        let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let name = kid.as_deref().unwrap_or("(no kid)").to_owned();
        match usable(value) {
            Ok(Some(key)) if keys.iter().any(|k| k.kid.is_some() && k.kid == key.kid) => {
                refused.push(format!("{name}: kid appears twice"));
            }
            Ok(Some(key)) => keys.push(Arc::new(key)),
            Ok(None) => {}
            Err(why) => refused.push(format!("{name}: {why}")),
        }
    }
    if !refused.is_empty() {
        tracing::warn!(refused = ?refused, "token key set: keys left out");
    }
    if keys.is_empty() {
        let why = if refused.is_empty() {
            "it holds no signing key".to_owned()
        } else {
            refused.join("; ")
        };
        return Err(JwksError::NoUsableKey(why));
    }
    Ok(Keys { keys })
}

/// One JWK as a verification key: `Ok(None)` for a key not meant for signatures,
/// `Err` (a reason without key material) for a signing key the edge will not use.
fn usable(value: serde_json::Value) -> Result<Option<Key>, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|_| "not a valid JWK".to_owned())?;
    match &jwk.common.public_key_use {
        Some(PublicKeyUse::Signature) | None => {}
        Some(_) => return Ok(None),
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Ok(None);
    }
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(alg) => Some(
            Algorithm::try_from(alg).map_err(|_| format!("algorithm {alg} is not supported"))?,
        ),
    };
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let n = b64(&rsa.n).ok_or("RSA modulus is not base64url")?;
            let modulus_bytes = n.iter().skip_while(|b| **b == 0).count();
            if modulus_bytes < MIN_RSA_MODULUS_BYTES {
                return Err("RSA key shorter than 2048 bits".into());
            }
            if b64(&rsa.e).is_none_or(|e| e.is_empty()) {
                return Err("RSA exponent is missing or not base64url".into());
            }
            let alg = declared.unwrap_or(Algorithm::RS256);
            const RSA: [Algorithm; 6] = [
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ];
            if !RSA.contains(&alg) {
                return Err(format!("an RSA key cannot verify {alg:?}"));
            }
            alg
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            let (alg, size) = match ec.curve {
                EllipticCurve::P256 => (Algorithm::ES256, 32),
                EllipticCurve::P384 => (Algorithm::ES384, 48),
                _ => return Err(format!("curve {:?} is not supported", ec.curve)),
            };
            if declared.is_some_and(|d| d != alg) {
                return Err(format!(
                    "curve {:?} does not go with {declared:?}",
                    ec.curve
                ));
            }
            let coordinate = |c: &str| b64(c).is_some_and(|c| c.len() == size);
            if !coordinate(&ec.x) || !coordinate(&ec.y) {
                return Err("EC point has the wrong size for its curve".into());
            }
            alg
        }
        AlgorithmParameters::OctetKeyPair(okp) => {
            if okp.curve != EllipticCurve::Ed25519 {
                return Err(format!("curve {:?} cannot sign", okp.curve));
            }
            if declared.is_some_and(|d| d != Algorithm::EdDSA) {
                return Err(format!("an Ed25519 key cannot verify {declared:?}"));
            }
            if b64(&okp.x).is_none_or(|x| x.len() != 32) {
                return Err("Ed25519 key has the wrong size".into());
            }
            Algorithm::EdDSA
        }
        // A shared secret published in a key set is no secret; HS* keys come from
        // SWITCHBOARD_JWT_SECRET only.
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are not accepted from a key set".into());
        }
        _ => return Err("key type is not supported".into()),
    };
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|_| "key does not load".to_owned())?;
    Ok(Some(Key {
        kid: jwk.common.key_id,
        alg,
        decoding,
    }))
}

fn b64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()
}

/// https anywhere; http only to a loopback address.
fn scheme_allowed(url: &reqwest::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => is_loopback(url),
        _ => false,
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    // IPv6 hosts come bracketed (`[::1]`).
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// The URL as logs may show it: scheme, host, port and path, without user, password,
/// query or fragment (any of which may carry a credential).
fn redacted(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// Up to a quarter more, so edges restarted together do not retry in step.
fn jitter(wait: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    wait + wait.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsa_n() -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xc5u8; 256])
    }

    #[test]
    fn a_key_set_keeps_usable_keys_and_leaves_out_the_rest() {
        let set = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r", "n": rsa_n(), "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": rsa_n(), "e": "AQAB"},
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "confused", "alg": "HS256", "n": rsa_n(), "e": "AQAB"},
            {"kty": "RSA", "kid": "short", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "OKP", "kid": "x", "crv": "Ed25519", "x": "AA"},
        ]});
        let keys = parse(set.to_string().as_bytes()).unwrap();
        assert_eq!(keys.kids(), ["r"]);
        assert_eq!(keys.find(Some("r")).unwrap().alg, Algorithm::RS256);
        // A set of one key serves tokens without kid.
        assert!(keys.find(None).is_some());
        assert!(keys.find(Some("h")).is_none());
    }

    #[test]
    fn a_set_without_usable_keys_or_not_json_is_an_error() {
        for bad in [
            &b"not json"[..],
            br#"{"keys": []}"#,
            br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
            br#"{"nokeys": 1}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_set_of_several_keys_serves_no_token_without_kid() {
        let set = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "a", "n": rsa_n(), "e": "AQAB"},
            {"kty": "RSA", "kid": "b", "alg": "PS256", "n": rsa_n(), "e": "AQAB"},
        ]});
        let keys = parse(set.to_string().as_bytes()).unwrap();
        assert!(keys.find(None).is_none());
        assert_eq!(keys.find(Some("b")).unwrap().alg, Algorithm::PS256);
    }

    #[test]
    fn plain_http_is_allowed_to_loopback_only() {
        let allowed = |u: &str| scheme_allowed(&reqwest::Url::parse(u).unwrap());
        assert!(allowed("https://issuer.example/jwks"));
        assert!(allowed("http://127.0.0.1:9000/jwks"));
        assert!(allowed("http://127.8.0.1/jwks"));
        assert!(allowed("http://[::1]:9000/jwks"));
        assert!(allowed("http://localhost/jwks"));
        assert!(!allowed("http://issuer.example/jwks"));
        assert!(!allowed("http://10.0.0.1/jwks"));
        assert!(!allowed("http://localhost.issuer.example/jwks"));
        assert!(!allowed("file:///etc/jwks.json"));
    }

    #[test]
    fn urls_are_shown_without_credentials_or_query() {
        let url = reqwest::Url::parse("https://user:pw@issuer.example/jwks?token=abc#x").unwrap();
        assert_eq!(redacted(&url), "https://issuer.example/jwks");
    }
}
