//! Web Push to browsers (docs/operations.md §4): the VAPID key, the subscriptions'
//! checks, payload encryption, and one request to a push service.
//!
//! - **Encryption** is RFC 8291 (`aes128gcm`, RFC 8188 with one record): an ephemeral
//!   P-256 key agrees a secret with the subscription's `p256dh` key, HKDF-SHA-256 mixes
//!   in its `auth` secret, AES-128-GCM seals the payload. It is assembled here from the
//!   RustCrypto crates (`p256`, `hkdf`, `aes-gcm`) because the one maintained Rust
//!   implementation, Mozilla's `ece` (and `web-push`, built on it), has only an OpenSSL
//!   backend, which this build keeps out (rustls with ring everywhere). The test suite
//!   decrypts with the Python reference implementation (`http-ece`).
//! - **VAPID** is RFC 8292: an ES256 JWT (`aud` the push service's origin, `exp` 12 h,
//!   `sub` the operator's contact) in `Authorization: vapid t=<jwt>, k=<public key>`.
//! - **Headers** `TTL` and `Urgency` (RFC 8030 §5.2, §5.3).
//!
//! A push service answering 404 or 410 has dropped the subscription: the caller deletes
//! it. This module owns no table; secrets never leave it in a message.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePrivateKey;
use p256::{PublicKey, SecretKey};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use switchboard_bus::traces;
use switchboard_schemas::shapes::Priority;

use super::settings::{http_client, send_traced};

/// RFC 8291 §4: the record size advertised in the header; one record holds it all.
const RECORD_SIZE: u32 = 4096;
/// The largest payload (before encryption) a push service must accept: 4096 bytes of
/// body minus the 86-byte header, the 16-byte tag and the delimiter (RFC 8291 §4).
pub const MAX_PAYLOAD: usize = 3993;
/// How long a VAPID token is valid (RFC 8292 §2: at most 24 h).
const VAPID_VALIDITY: Duration = Duration::from_secs(12 * 3600);

/// The operator's VAPID key pair and contact.
#[derive(Clone)]
pub struct Vapid {
    signing: SigningKey,
    /// The uncompressed public point, base64url: what `push.vapid` hands browsers as
    /// `applicationServerKey`.
    public: String,
    subject: String,
}

impl fmt::Debug for Vapid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vapid")
            .field("public", &self.public)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VapidError {
    #[error(
        "SWITCHBOARD_VAPID_PRIVATE_KEY is neither a P-256 private key in PEM (PKCS#8 or SEC1) \
         nor 32 bytes in base64url (make a pair with `switchboard vapid`)"
    )]
    Key,
    #[error(
        "SWITCHBOARD_VAPID_SUBJECT must be a mailto: or https: URL the push services can \
         reach the operator at"
    )]
    Subject,
    #[error("SWITCHBOARD_VAPID_SUBJECT is required with SWITCHBOARD_VAPID_PRIVATE_KEY")]
    NoSubject,
}

impl Vapid {
    /// The key from its PEM (PKCS#8 or SEC1) or the base64url raw 32 bytes.
    pub fn new(key: &str, subject: &str) -> Result<Vapid, VapidError> {
        let key = key.trim();
        let secret = if key.starts_with("-----BEGIN") {
            SecretKey::from_pkcs8_pem(key)
                .or_else(|_| SecretKey::from_sec1_pem(key))
                .map_err(|_| VapidError::Key)?
        } else {
            let raw = URL_SAFE_NO_PAD
                .decode(key.trim_end_matches('='))
                .map_err(|_| VapidError::Key)?;
            if raw.len() != 32 {
                return Err(VapidError::Key);
            }
            SecretKey::from_slice(&raw).map_err(|_| VapidError::Key)?
        };
        let subject = subject.trim();
        let reachable = subject
            .strip_prefix("mailto:")
            .is_some_and(|address| address.contains('@'))
            || subject
                .strip_prefix("https://")
                .is_some_and(|rest| !rest.is_empty());
        if !reachable || subject.chars().any(char::is_control) {
            return Err(VapidError::Subject);
        }
        Ok(Vapid {
            public: URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes()),
            signing: SigningKey::from(secret),
            subject: subject.to_string(),
        })
    }

    /// base64url of the uncompressed P-256 point.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// `vapid t=<jwt>, k=<public key>` for a push service at `origin`.
    fn authorization(&self, origin: &str, now: u64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({
            "aud": origin,
            "exp": now + VAPID_VALIDITY.as_secs(),
            "sub": self.subject,
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{claims}");
        let signature: Signature = self.signing.sign(signed.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(signature.to_bytes());
        format!("vapid t={signed}.{signature}, k={}", self.public)
    }
}

/// A new VAPID key pair: (private key base64url raw 32 bytes, public key base64url).
pub fn generate_vapid_pair() -> (String, String) {
    let secret = SecretKey::random(&mut OsRng);
    (
        URL_SAFE_NO_PAD.encode(secret.to_bytes()),
        URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes()),
    )
}

/// A browser's subscription, checked: where to send and the keys to encrypt for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub endpoint: reqwest::Url,
    /// The user agent's P-256 public key, uncompressed (65 bytes).
    pub p256dh: Vec<u8>,
    /// The 16-byte authentication secret.
    pub auth: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    #[error("endpoint is not an https URL")]
    Endpoint,
    #[error("endpoint host is not a known push service (SWITCHBOARD_PUSH_ENDPOINT_HOSTS)")]
    Host,
    #[error("keys.p256dh is not a base64url P-256 public key")]
    P256dh,
    #[error("keys.auth is not 16 bytes of base64url")]
    Auth,
}

/// The push services' hosts endpoints may name: the hosts Chrome, Firefox, Edge and
/// Safari subscribe on. `.suffix` entries match any subdomain.
pub const DEFAULT_ENDPOINT_HOSTS: &str =
    "fcm.googleapis.com,updates.push.services.mozilla.com,.notify.windows.com,web.push.apple.com";

/// `SWITCHBOARD_PUSH_ENDPOINT_HOSTS`: host names and `.suffix`es.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointHosts(Vec<String>);

impl EndpointHosts {
    pub fn parse(text: &str) -> EndpointHosts {
        EndpointHosts(
            text.split(',')
                .map(|host| host.trim().to_ascii_lowercase())
                .filter(|host| !host.is_empty())
                .collect(),
        )
    }

    pub fn allows(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.0
            .iter()
            .any(|allowed| match allowed.strip_prefix('.') {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|head| head.ends_with('.')),
                None => *allowed == host,
            })
    }

    /// Whether the list names a loopback address: only tests do, and only then is plain
    /// `http://` accepted (to a push service on this machine).
    fn loopback(&self, host: &str) -> bool {
        matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1")
    }
}

impl Subscription {
    /// Checks a browser's `PushSubscription` parts against `hosts`.
    pub fn parse(
        endpoint: &str,
        p256dh: &str,
        auth: &str,
        hosts: &EndpointHosts,
    ) -> Result<Subscription, SubscriptionError> {
        let endpoint = reqwest::Url::parse(endpoint).map_err(|_| SubscriptionError::Endpoint)?;
        let host = endpoint
            .host_str()
            .ok_or(SubscriptionError::Endpoint)?
            .to_string();
        let scheme_ok =
            endpoint.scheme() == "https" || (endpoint.scheme() == "http" && hosts.loopback(&host));
        if !scheme_ok || !endpoint.username().is_empty() || endpoint.password().is_some() {
            return Err(SubscriptionError::Endpoint);
        }
        if !hosts.allows(&host) {
            return Err(SubscriptionError::Host);
        }
        let p256dh = decode(p256dh).ok_or(SubscriptionError::P256dh)?;
        if p256dh.len() != 65 || PublicKey::from_sec1_bytes(&p256dh).is_err() {
            return Err(SubscriptionError::P256dh);
        }
        let auth = decode(auth)
            .filter(|a| a.len() == 16)
            .ok_or(SubscriptionError::Auth)?;
        Ok(Subscription {
            endpoint,
            p256dh,
            auth,
        })
    }
}

/// base64url with or without padding (browsers send it without).
fn decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

/// Encrypts `payload` for the subscription's keys (RFC 8291 §3-4): the request body.
pub fn encrypt(payload: &[u8], p256dh: &[u8], auth: &[u8]) -> Result<Vec<u8>, PushError> {
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    let ephemeral = SecretKey::random(&mut OsRng);
    encrypt_with(payload, p256dh, auth, &ephemeral, salt)
}

fn encrypt_with(
    payload: &[u8],
    p256dh: &[u8],
    auth: &[u8],
    ephemeral: &SecretKey,
    salt: [u8; 16],
) -> Result<Vec<u8>, PushError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(PushError::TooLarge(payload.len()));
    }
    let ua_public = PublicKey::from_sec1_bytes(p256dh).map_err(|_| PushError::Keys)?;
    let shared = p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), ua_public.as_affine());
    let as_public = ephemeral.public_key().to_encoded_point(false);

    // IKM = HKDF(auth, ecdh_secret, "WebPush: info" || 0x00 || ua_public || as_public, 32)
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(p256dh);
    key_info.extend_from_slice(as_public.as_bytes());
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .map_err(|_| PushError::Keys)?;

    let prk = Hkdf::<Sha256>::new(Some(&salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .and_then(|()| prk.expand(b"Content-Encoding: nonce\0", &mut nonce))
        .map_err(|_| PushError::Keys)?;

    // One record: the payload, then the last-record delimiter 0x02, no padding.
    let mut plaintext = Vec::with_capacity(payload.len() + 1);
    plaintext.extend_from_slice(payload);
    plaintext.push(2);
    let cipher = Aes128Gcm::new_from_slice(&cek).map_err(|_| PushError::Keys)?;
    let sealed = cipher
        .encrypt(&Nonce::from(nonce), plaintext.as_slice())
        .map_err(|_| PushError::Keys)?;

    let mut body = Vec::with_capacity(16 + 4 + 1 + 65 + sealed.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public.as_bytes());
    body.extend_from_slice(&sealed);
    Ok(body)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD} a push service must take")]
    TooLarge(usize),
    #[error("the subscription's keys are unusable")]
    Keys,
    #[error("push service request failed: {0}")]
    Request(String),
}

/// `Urgency` for a notification's priority (docs/operations.md §4).
pub fn urgency(priority: Priority) -> &'static str {
    match priority {
        Priority::Low => "low",
        Priority::Normal => "normal",
        Priority::High | Priority::Urgent => "high",
    }
}

/// Sends encrypted payloads to push services.
#[derive(Debug, Clone)]
pub struct WebPush {
    vapid: Vapid,
    client: reqwest::Client,
    ttl: Duration,
}

impl WebPush {
    pub fn new(vapid: Vapid, ttl: Duration, timeout: Duration) -> Result<WebPush, PushError> {
        // The process-wide rustls provider, as for the webhook (ring).
        let client = http_client(timeout, Duration::from_secs(60))
            .build()
            .map_err(|e| PushError::Request(e.without_url().to_string()))?;
        Ok(WebPush { vapid, client, ttl })
    }

    pub fn vapid(&self) -> &Vapid {
        &self.vapid
    }

    /// Encrypts and posts `payload`; the push service's status code.
    pub async fn send(
        &self,
        subscription: &Subscription,
        payload: &[u8],
        priority: Priority,
        traceparent: Option<&str>,
    ) -> Result<u16, PushError> {
        let body = encrypt(payload, &subscription.p256dh, &subscription.auth)?;
        let origin = subscription.endpoint.origin().ascii_serialization();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let request = self
            .client
            .post(subscription.endpoint.clone())
            .header("Content-Encoding", "aes128gcm")
            .header("Content-Type", "application/octet-stream")
            .header("TTL", self.ttl.as_secs().to_string())
            .header("Urgency", urgency(priority))
            .header("Authorization", self.vapid.authorization(&origin, now));
        let span = traces::span(|| tracing::info_span!("push", trace_id = tracing::field::Empty));
        let response = send_traced(request.body(body), span, traceparent)
            .await
            // The endpoint's path is the subscription's capability: never in a message.
            .map_err(|e| PushError::Request(e.without_url().to_string()))?;
        Ok(response.status().as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vapid_keys_come_as_raw_base64url_or_pem_and_subjects_are_contacts() {
        let (private, public) = generate_vapid_pair();
        let vapid = Vapid::new(&private, "mailto:ops@example.com").unwrap();
        assert_eq!(vapid.public_key(), public);
        assert_eq!(URL_SAFE_NO_PAD.decode(&public).unwrap().len(), 65);
        assert!(!format!("{vapid:?}").contains(&private));

        use p256::pkcs8::EncodePrivateKey;
        let secret = SecretKey::from_slice(&URL_SAFE_NO_PAD.decode(&private).unwrap()).unwrap();
        let pem = secret.to_pkcs8_pem(Default::default()).unwrap();
        let from_pem = Vapid::new(&pem, "https://example.com/contact").unwrap();
        assert_eq!(from_pem.public_key(), public);

        for bad in [
            "",
            "abc",
            "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----",
        ] {
            assert_eq!(
                Vapid::new(bad, "mailto:a@b.c").unwrap_err(),
                VapidError::Key
            );
        }
        for bad in ["", "ops@example.com", "mailto:", "http://example.com"] {
            assert_eq!(Vapid::new(&private, bad).unwrap_err(), VapidError::Subject);
        }
    }

    #[test]
    fn endpoint_hosts_match_names_and_suffixes() {
        let hosts = EndpointHosts::parse(DEFAULT_ENDPOINT_HOSTS);
        assert!(hosts.allows("fcm.googleapis.com"));
        assert!(hosts.allows("wns2-by3p.notify.windows.com"));
        assert!(!hosts.allows("notify.windows.com.evil.example"));
        assert!(!hosts.allows("evilnotify.windows.com"));
        assert!(!hosts.allows("127.0.0.1"));
    }

    #[test]
    fn subscriptions_are_checked() {
        let hosts = EndpointHosts::parse("push.example.com,127.0.0.1");
        let key = SecretKey::random(&mut OsRng);
        let p256dh = URL_SAFE_NO_PAD.encode(key.public_key().to_encoded_point(false).as_bytes());
        let auth = URL_SAFE_NO_PAD.encode([7u8; 16]);
        let ok = |endpoint: &str| Subscription::parse(endpoint, &p256dh, &auth, &hosts);
        assert!(ok("https://push.example.com/s/abc").is_ok());
        assert!(ok("http://127.0.0.1:9/s/abc").is_ok());
        assert_eq!(
            ok("http://push.example.com/s").unwrap_err(),
            SubscriptionError::Endpoint
        );
        assert_eq!(
            ok("https://other.example.com/s").unwrap_err(),
            SubscriptionError::Host
        );
        assert_eq!(ok("not a url").unwrap_err(), SubscriptionError::Endpoint);
        assert_eq!(
            ok("https://u:p@push.example.com/s").unwrap_err(),
            SubscriptionError::Endpoint
        );
        let endpoint = "https://push.example.com/s";
        for bad in ["", "AAAA", &URL_SAFE_NO_PAD.encode([4u8; 65])] {
            assert_eq!(
                Subscription::parse(endpoint, bad, &auth, &hosts).unwrap_err(),
                SubscriptionError::P256dh
            );
        }
        assert_eq!(
            Subscription::parse(endpoint, &p256dh, "AAAA", &hosts).unwrap_err(),
            SubscriptionError::Auth
        );
    }

    /// RFC 8291 Appendix A: the example's keys and salt give the example's body.
    #[test]
    fn encryption_matches_rfc_8291_appendix_a() {
        let d = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap();
        let plaintext = b"When I grow up, I want to be a watermelon";
        let ua_public = d(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        );
        let auth = d("BTBZMqHH6r4Tts7J_aSIgg");
        let as_private = d("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw");
        let salt: [u8; 16] = d("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        let ephemeral = SecretKey::from_slice(&as_private).unwrap();
        let body = encrypt_with(plaintext, &ua_public, &auth, &ephemeral, salt).unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }

    #[test]
    fn vapid_tokens_are_es256_over_the_origin() {
        let (private, public) = generate_vapid_pair();
        let vapid = Vapid::new(&private, "mailto:ops@example.com").unwrap();
        let header = vapid.authorization("https://push.example.com", 1_000);
        let (token, key) = header
            .strip_prefix("vapid t=")
            .unwrap()
            .split_once(", k=")
            .unwrap();
        assert_eq!(key, public);
        let parts: Vec<&str> = token.split('.').collect();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({"aud":"https://push.example.com","exp":1_000 + 12 * 3600,"sub":"mailto:ops@example.com"})
        );
        use p256::ecdsa::VerifyingKey;
        use p256::ecdsa::signature::Verifier;
        let verifying =
            VerifyingKey::from_sec1_bytes(&URL_SAFE_NO_PAD.decode(key).unwrap()).unwrap();
        let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        verifying
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .unwrap();
    }
}
