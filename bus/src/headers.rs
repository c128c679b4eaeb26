//! Header names on NATS messages. `Nats-*` headers are JetStream's own.

/// Event id; JetStream drops a second message with the same id inside the duplicate window.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// Event type, so consumers filter without decoding the payload.
pub const RT_TYPE: &str = "Rt-Type";
/// The authenticated user on an RPC request; set by the edge, never by a client.
pub const RT_USER: &str = "Rt-User";
/// The caller's role on an RPC request (`user` or `service`, the token's `role`); set by
/// the edge, never by a client. Absent means `user`.
pub const RT_ROLE: &str = "Rt-Role";
/// W3C Trace Context of the request that made the message (docs/operations.md, section 7).
pub const TRACEPARENT: &str = "traceparent";
/// Present with `application/json` when the payload is a JSON envelope, absent for postcard.
pub const CONTENT_TYPE: &str = "Content-Type";
pub const JSON: &str = "application/json";
/// Stream sequence of a republished message.
pub const NATS_SEQUENCE: &str = "Nats-Sequence";
/// Sequence of the previous message on the same subject (0 for the first), on republish.
pub const NATS_LAST_SEQUENCE: &str = "Nats-Last-Sequence";
/// Store time of a republished message.
pub const NATS_TIME_STAMP: &str = "Nats-Time-Stamp";
/// Per-message time to live, in whole seconds (KV entries of the presence bucket).
pub const NATS_TTL: &str = "Nats-TTL";
