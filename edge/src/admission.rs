//! Who gets in over HTTP: the browser origin, the token (`Authorization: Bearer` or
//! `?token=`), and a place among the user's connections on this edge
//! (docs/protocol.md, section 2). Shared by the WebSocket upgrade, SSE, long polling,
//! publishing and RPC, so every door checks the same things in the same order.
//!
//! Also the client's address: the peer, or, when the peer is a trusted proxy, the
//! nearest address in `X-Forwarded-For` that is not one (docs/protocol.md, section 8).

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use switchboard_schemas::{ErrorCode, PresenceStatus};

use crate::Edge;
use crate::auth::Identity;
use crate::limits::UserSlot;
use crate::refusal::Refusal;

/// The query of every request that opens something (a socket, an SSE stream, a poll) or
/// carries a token (publishing, RPC). `ch` may repeat; other keys are ignored.
#[derive(Debug, Default)]
pub struct OpenQuery {
    pub token: Option<String>,
    pub device: Option<String>,
    /// The connection's initial status (`online`, `away`, `busy`, `invisible`).
    pub presence: Option<String>,
    /// Channels to subscribe at once, in the order named (`ch`).
    pub channels: Vec<String>,
    /// Where an SSE stream or a poll resumes.
    pub cursor: Option<String>,
    /// How long a poll waits, in whole seconds.
    pub wait: Option<String>,
}

impl OpenQuery {
    pub fn from_pairs(pairs: Vec<(String, String)>) -> OpenQuery {
        let mut query = OpenQuery::default();
        for (key, value) in pairs {
            match key.as_str() {
                "ch" => query.channels.push(value),
                "token" => query.token = Some(value),
                "device" => query.device = Some(value),
                "presence" => query.presence = Some(value),
                "cursor" => query.cursor = Some(value),
                "wait" => query.wait = Some(value),
                _ => {}
            }
        }
        query
    }

    /// `?presence=` as a status; a value that is none is refused, not ignored.
    pub fn presence(&self) -> Result<Option<PresenceStatus>, Refusal> {
        self.presence
            .as_deref()
            .map(|text| {
                PresenceStatus::parse(text).ok_or_else(|| {
                    Refusal::bad_request("presence must be one of online, away, busy, invisible")
                })
            })
            .transpose()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for OpenQuery {
    type Rejection = QueryRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state).await?;
        Ok(OpenQuery::from_pairs(pairs))
    }
}

/// The token of an HTTP request: `Authorization: Bearer`, else `?token=`. An
/// `Authorization` header that is not a bearer token is refused, not taken for an absence.
pub fn token<'a>(
    headers: &'a HeaderMap,
    query_token: Option<&'a str>,
) -> Result<Option<&'a str>, Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(query_token);
    };
    let bearer = value.to_str().ok().and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    match bearer {
        Some(token) if !token.is_empty() => Ok(Some(token)),
        _ => Err(Refusal::new(
            ErrorCode::Unauthorized,
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

/// Refuses a browser request from an origin not in `SWITCHBOARD_ALLOWED_ORIGINS`.
pub fn check_origin(edge: &Edge, headers: &HeaderMap) -> Result<(), Refusal> {
    let allowed = &edge.config.allowed_origins;
    if allowed.is_empty() {
        return Ok(());
    }
    match headers.get(header::ORIGIN).map(|o| o.to_str()) {
        None => Ok(()),
        Some(Ok(origin)) if allowed.iter().any(|a| a == origin) => Ok(()),
        Some(_) => Err(Refusal::forbidden("origin not allowed")),
    }
}

/// Authenticates a plain HTTP request and takes a connection slot for its user.
pub async fn authenticate(
    edge: &Edge,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<(Identity, UserSlot), Refusal> {
    check_origin(edge, headers)?;
    let token = match token(headers, query_token) {
        Ok(Some(token)) => token,
        Ok(None) => {
            edge.metrics.auth_failure("missing");
            return Err(Refusal::new(ErrorCode::Unauthorized, "a token is required"));
        }
        Err(refusal) => {
            edge.metrics.auth_failure("malformed");
            return Err(refusal);
        }
    };
    let identity = edge.verifier.verify(token).await.map_err(|e| {
        edge.metrics.auth_failure(e.reason());
        Refusal::new(ErrorCode::Unauthorized, e.to_string())
    })?;
    let slot = edge.users.admit(&identity.user).ok_or_else(|| {
        Refusal::new(ErrorCode::RateLimited, "too many connections for this user")
    })?;
    Ok((identity, slot))
}

/// An address or a CIDR block of them (`10.0.0.0/8`, `::1`), for trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressBlock {
    network: IpAddr,
    prefix: u8,
}

impl AddressBlock {
    pub fn parse(text: &str) -> Result<AddressBlock, String> {
        let text = text.trim();
        let invalid = || format!("{text:?} is not an address or CIDR block (10.0.0.0/8, ::1)");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| invalid())?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(invalid)?,
            None => bits,
        };
        Ok(AddressBlock { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32)
                    == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128)
                    == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let keep = u32::from(width - prefix.min(width));
    (bits >> keep) << keep
}

/// The client's address: the peer, unless the peer is a trusted proxy; then the
/// nearest `X-Forwarded-For` entry that is not a trusted proxy (entries are appended by
/// each proxy, so the right end is the most trustworthy).
pub fn client_address(peer: SocketAddr, headers: &HeaderMap, trusted: &[AddressBlock]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|block| block.contains(ip));
    if !is_trusted(peer.ip()) {
        return peer.ip();
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip))
        .unwrap_or(peer.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in xff {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let proxy: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        let trusted = [AddressBlock::parse("10.0.0.0/8").unwrap()];
        let xff = headers(&["203.0.113.9, 10.0.0.5"]);
        assert_eq!(
            client_address(proxy, &xff, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(stranger, &xff, &trusted), stranger.ip());
        assert_eq!(client_address(proxy, &headers(&[]), &trusted), proxy.ip());
        assert_eq!(
            client_address(proxy, &headers(&["garbage"]), &trusted),
            proxy.ip()
        );
        // A client cannot hide behind entries it wrote itself, left of the proxy's.
        let spoofed = headers(&["1.1.1.1", "203.0.113.9"]);
        assert_eq!(
            client_address(proxy, &spoofed, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(proxy, &xff, &[]), proxy.ip());
    }

    #[test]
    fn address_blocks_parse_and_match() {
        let block = AddressBlock::parse("192.168.0.0/16").unwrap();
        assert!(block.contains("192.168.4.1".parse().unwrap()));
        assert!(block.contains("::ffff:192.168.4.1".parse().unwrap()));
        assert!(!block.contains("192.169.0.1".parse().unwrap()));
        assert!(
            AddressBlock::parse("::1")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(
            AddressBlock::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in ["", "10.0.0.0/33", "nope", "10.0.0.1/x", "::/129"] {
            assert!(AddressBlock::parse(bad).is_err(), "{bad}");
        }
    }
}
