//! A socket's first and last words: waiting for `hello` on a socket that came without a
//! token, and saying `bye` and closing with the handshake completed
//! (docs/protocol.md, sections 2 and 7). Nothing here outlives the socket it is given.

use super::*;

/// Waits for a valid `hello`; answers what else arrives meanwhile. `None` when the
/// session ended (timeout, bad token, too many bad frames, socket closed).
pub(super) async fn await_hello(
    edge: &Edge,
    socket: &mut WebSocket,
    query_presence: Option<InitialPresence>,
) -> Option<(Identity, Declared)> {
    let deadline = tokio::time::Instant::now() + edge.config.hello_timeout();
    let mut bad_frames = 0;
    // Before `hello` only `hello` and `ping` are of use: anything else, and frames beyond
    // the connection's frame rate, count as bad, so a flood ends the socket quickly.
    let mut frames = TokenBucket::new(edge.config.frames_per_s, edge.config.frame_burst);
    loop {
        let incoming = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                edge.metrics.auth_failure("hello_timeout");
                say_bye(socket, ByeCode::Unauthorized).await;
                return None;
            }
            incoming = socket.recv() => incoming?,
        };
        let refusal = match incoming {
            Err(e) if is_too_big(&e) => {
                close(socket, CLOSE_TOO_BIG, "frame too large").await;
                return None;
            }
            Err(_) | Ok(Message::Close(_)) => return None,
            Ok(Message::Text(_) | Message::Binary(_)) if !frames.take() => {
                Refusal::rate_limited("too many frames before hello").frame(None)
            }
            Ok(Message::Binary(_)) => {
                Refusal::bad_request("binary frames are not supported").frame(None)
            }
            Ok(Message::Text(text)) if text.len() > edge.config.max_frame_bytes => {
                Refusal::too_large("frame larger than the limit").frame(None)
            }
            Ok(Message::Text(text)) => match Request::decode(text.as_bytes()) {
                Ok(Request {
                    frame:
                        ClientFrame::Hello {
                            token,
                            device,
                            presence,
                        },
                    id,
                }) => match Declared::new(device, presence.or_else(|| query_presence.clone())) {
                    Err(refusal) => refusal.frame(id),
                    Ok(declared) => match edge.verifier.verify(&token).await {
                        Ok(identity) => return Some((identity, declared)),
                        Err(e) => {
                            edge.metrics.auth_failure(e.reason());
                            send_now(socket, Refusal::unauthorized(e).frame(id)).await;
                            say_bye(socket, ByeCode::Unauthorized).await;
                            return None;
                        }
                    },
                },
                Ok(Request {
                    frame: ClientFrame::Ping,
                    id,
                }) => {
                    send_now(socket, ServerFrame::Pong { id }.encode()).await;
                    continue;
                }
                Ok(request) => {
                    Refusal::unauthorized("send hello with a token first").frame(request.id)
                }
                Err(e) => ServerFrame::from(&e).encode(),
            },
            Ok(_) => continue,
        };
        send_now(socket, refusal).await;
        bad_frames += 1;
        if bad_frames >= edge.config.max_bad_frames {
            say_bye(socket, ByeCode::ProtocolError).await;
            return None;
        }
    }
}

/// A device name from `hello` or `?device=`: short and printable, or ignored.
pub fn valid_device(device: &str) -> bool {
    (1..=64).contains(&device.len())
        && device
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

pub(super) async fn send_now(socket: &mut WebSocket, frame: Bytes) {
    let _ = socket.send(Message::Text(text(frame))).await;
}

pub(super) async fn say_bye(socket: &mut WebSocket, code: ByeCode) {
    send_now(socket, ServerFrame::bye(code).encode()).await;
    close(socket, code.close_code(), code.as_str()).await;
}

/// Sends a close frame and completes the closing handshake: reads (and discards) what the
/// client still sends until its own close arrives. Dropping a socket with unread input
/// makes the kernel answer with a reset, which can destroy frames the client has not read
/// yet, the `bye` among them.
pub(super) async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let sent = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })))
        .await;
    if sent.is_err() {
        return;
    }
    let handshake = async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, handshake).await;
}
