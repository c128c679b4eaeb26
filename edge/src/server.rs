//! Accepting connections: the HTTP/1 server under the router, and the limits that hold
//! before any request has been read.
//!
//! `axum::serve` gives a connection all the time it wants to send its request and takes
//! as many connections as the kernel hands over: a peer that opens sockets and sends its
//! request head a byte at a time, or never, holds them (and their buffers) for good. Here:
//!
//! - a request head must be complete within `SWITCHBOARD_HEADER_TIMEOUT_MS` of the
//!   connection opening, and again of each response on a kept-alive connection;
//! - it may be at most `SWITCHBOARD_MAX_REQUEST_HEAD_BYTES` long (HTTP 431 beyond), which
//!   also bounds the buffer a connection holds while its head arrives;
//! - at most `SWITCHBOARD_MAX_HTTP_CONNECTIONS` connections speak plain HTTP at once:
//!   those before their WebSocket upgrade, SSE streams, long polls and other requests. An
//!   upgraded socket leaves the count at the upgrade, when hyper hands it to the session.
//!   A connection beyond the limit gets HTTP 503 and is closed at once, so a flood costs
//!   a file descriptor for an instant only.
//!
//! With TLS ([`crate::tls`]) the same limits hold from the first byte: a connection is
//! counted from its accept, through its handshake, and the handshake must finish within
//! the header timeout (which then starts again for the request head). The handshake runs
//! in the connection's own task, never in the accept loop. A plain connection is served
//! on the bare `TcpStream`, as without TLS: the two kinds are separate tasks, so a plain
//! one carries no room for a TLS session.
//!
//! The listening socket queues up to [`LISTEN_BACKLOG`] connections the accept loop has
//! not taken yet ([`listen`]).
//!
//! Shutdown: when `stop` is cancelled the listener closes, every HTTP connection is
//! asked to finish its current response and close, and [`run`] returns once all have.
//! Upgraded sockets are not this module's: the edge drains its sessions itself.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::util::MapRequest;

use crate::Edge;
use crate::tls::Tls;

/// Connections the kernel holds for the accept loop (capped by `net.core.somaxconn`).
/// A storm of connections, every client of a restarted edge reconnecting at once, waits
/// there for its turn: past the queue the kernel drops the SYN, and the client waits a
/// second (then three, ...) before it tries again. The 128 of a plain `bind` overflowed
/// with 256 clients connecting at once on a 2-core machine (docs/operations.md, section 9).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `addr` with a queue of [`LISTEN_BACKLOG`].
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As a plain `bind` does: a restarted edge takes its port back at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// hyper's smallest allowed connection buffer.
const MIN_HEAD_BYTES: usize = 8 * 1024;

/// The whole answer to a connection beyond the limit; it goes out without reading the
/// request, so it must not depend on it.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
connection: close\r\n\
content-length: 79\r\n\
\r\n\
{\"code\":\"unavailable\",\"message\":\"this edge has too many open HTTP connections\"}";

/// Serves `router` on `listener` until `stop` is cancelled; over TLS when `tls` is given.
pub async fn run(
    edge: Arc<Edge>,
    listener: TcpListener,
    router: Router,
    tls: Option<Tls>,
    stop: CancellationToken,
) {
    let config = &edge.config;
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout())
        .max_buf_size(config.max_request_head_bytes.max(MIN_HEAD_BYTES));
    let http = Arc::new(http);
    let acceptor = tls.map(|tls| {
        let tls = Arc::new(tls);
        tokio::spawn(tls.clone().watch(stop.clone()));
        tls.acceptor()
    });
    let permits = Arc::new(Semaphore::new(config.max_http_connections));
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            edge.metrics.count(&edge.metrics.http_refused, 1);
            refuse(stream, acceptor.is_none());
            continue;
        };
        // Frames are small and written whole: Nagle's algorithm would hold one back until
        // the client's (delayed) ACK of the previous one, up to 40 ms on Linux.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let slot = Slot::take(edge.clone(), permit);
        let (http, stop) = (http.clone(), stop.clone());
        let router = router.clone();
        match &acceptor {
            None => {
                let socket = Some(Socket(stream.as_raw_fd()));
                connections.spawn(serve(slot, http, stream, peer, socket, router, stop))
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    if let Some(stream) = handshake(&slot, acceptor, stream, &stop).await {
                        serve(slot, http, stream, peer, None, router, stop).await;
                    }
                })
            }
        };
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// A connection's place under the cap, held from its accept until hyper lets go of it
/// (closed, or upgraded to a WebSocket).
struct Slot {
    edge: Arc<Edge>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    fn take(edge: Arc<Edge>, permit: OwnedSemaphorePermit) -> Slot {
        edge.metrics.gauge(&edge.metrics.http_connections, 1);
        Slot {
            edge,
            _permit: permit,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.edge
            .metrics
            .gauge(&self.edge.metrics.http_connections, -1);
    }
}

/// The TLS handshake, within the header timeout: a peer that never finishes it is a
/// slow loris like one that never finishes its request head, and is counted as one.
async fn handshake(
    slot: &Slot,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    stop: &CancellationToken,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let metrics = &slot.edge.metrics;
    let timeout = slot.edge.config.header_timeout();
    tokio::select! {
        _ = stop.cancelled() => None,
        done = tokio::time::timeout(timeout, acceptor.accept(stream)) => match done {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                metrics.count(&metrics.header_timeouts, 1);
                None
            }
        },
    }
}

/// Serves HTTP/1 on one connection until it closes, is upgraded, or `stop` asks it to
/// finish its current response.
async fn serve<S>(
    slot: Slot,
    http: Arc<http1::Builder>,
    stream: S,
    peer: SocketAddr,
    socket: Option<Socket>,
    router: Router,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // Every request carries the peer's address (`ConnectInfo<SocketAddr>`): the
    // per-address limits and trusted proxies need it. Over plain TCP it carries the
    // socket too, for the WebSocket upgrade ([`Socket`]).
    let router = MapRequest::new(router, move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        if let Some(socket) = socket {
            request.extensions_mut().insert(socket);
        }
        request
    });
    let connection = http
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
        .with_upgrades();
    let mut connection = pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if ended.is_err_and(|e| e.is_timeout()) {
        slot.edge
            .metrics
            .count(&slot.edge.metrics.header_timeouts, 1);
    }
}

/// A plain TCP connection's socket, as the WebSocket handler sees it. An upgrade with a
/// valid token holds its `101` back until the session has written `welcome`, so that the
/// two leave in one segment: on loopback and in virtual machines, every segment is a
/// wake-up of the client and a send path through the kernel, and a connection's set-up is
/// mostly those (BENCHMARKS.md, "Where a connection's set-up goes"). Over TLS rustls
/// writes its own records, and nothing is held.
#[derive(Clone, Copy, Debug)]
pub struct Socket(RawFd);

impl Socket {
    /// Holds back what is written from now on (`TCP_CORK`), until [`release`](Self::release)
    /// or for at most 200 ms, the kernel's limit.
    pub fn hold(self) {
        self.cork(1);
    }

    /// Sends what was held, now.
    pub fn release(self) {
        self.cork(0);
    }

    fn cork(self, on: libc::c_int) {
        // SAFETY: `setsockopt` with a `c_int` from the stack and its size. The descriptor
        // is open: `hold` is called while its request is being answered, `release` by the
        // session that owns the upgraded socket.
        let set = unsafe {
            libc::setsockopt(
                self.0,
                libc::IPPROTO_TCP,
                libc::TCP_CORK,
                (&raw const on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "cannot set TCP_CORK");
        }
    }
}

/// Answers 503 and closes, without waiting on the peer: whatever of the request already
/// arrived is read first, so that closing does not reset the connection under the answer.
/// Over TLS the refusal is the close alone: a 503 would need a handshake first, the very
/// work a flood must not cost.
fn refuse(stream: TcpStream, answer: bool) {
    let mut scratch = [0u8; 4096];
    for _ in 0..4 {
        match stream.try_read(&mut scratch) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    if answer {
        let _ = stream.try_write(REFUSAL);
    }
}

/// Connection-level failures concern one peer; anything else (out of file descriptors,
/// most likely) pauses accepting briefly rather than spinning.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[cfg(test)]
mod tests {
    use super::REFUSAL;

    #[test]
    fn the_refusal_declares_its_body_length() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["code"], "unavailable");
    }
}
