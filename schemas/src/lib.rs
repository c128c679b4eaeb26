//! The language every Switchboard process speaks.
//!
//! The edge, the workers, the CLI and the tests never agree on anything except
//! through this crate: it owns the event envelope, channel names and their NATS
//! subjects, the client protocol frames, and the data shapes that cross process
//! boundaries. It does no I/O (no sockets, no NATS, no SQL, no async runtime), so any
//! of them can use it, and everything here is a pure function of its input.
//!
//! # Parse, don't validate
//!
//! Untrusted text (a WebSocket frame, a NATS payload, a token claim) becomes a typed
//! value here, once: [`ChannelName`], [`EventId`], [`EventType`], [`Timestamp`],
//! [`RawJson`], [`Request`]. Each checks its grammar when it is built and cannot be
//! built otherwise, so code that holds one never checks again, and every refusal is an
//! error value with a message fit for the client, never a panic.
//!
//! # Events and their two forms
//!
//! An [`Envelope`] is one event (docs/protocol.md, section 10.2). It has two encodings:
//!
//! - **JSON**, the public form: what clients receive inside `evt` frames and what
//!   non-Rust backends may publish (with `Content-Type: application/json`).
//! - **Postcard**, what Rust processes store in JetStream: compact and fast to decode.
//!   It starts with a format version byte, so the envelope can grow without making
//!   stored events unreadable.
//!
//! In both, the event's `data` is carried as JSON text ([`RawJson`]) and never parsed
//! into a tree: the edge splices it into outgoing frames as it is.
//!
//! # Channels and subjects
//!
//! A channel is `<namespace>:<id>` with an id of `[A-Za-z0-9_-]{1,128}`, plus two
//! aliases of a user's own channel (`user:<id>:notifications`, `user:<id>:messages`).
//! The grammar has no room for NATS wildcards or separators, so the mapping to
//! subjects (`rt.<ns>.<id>` stored, `live.<ns>.<id>` republished, `sig.<ns>.<id>`
//! ephemeral) is total and reversible: see [`channel`].
//!
//! # Modules
//!
//! - [`event`]: the envelope, ids, types and type filters, timestamps.
//! - [`channel`]: namespaces, channel names, subjects, token channel patterns.
//! - [`frame`]: the `switchboard.v1` client protocol, both directions.
//! - [`presence`]: the statuses a device sets and the ones others see.
//! - [`shapes`]: token claims and the `data` of the events workers handle.
//! - [`error`]: the codes a client can see (`err`, `bye`, `unsubbed`).
//! - [`json`]: [`RawJson`], JSON carried as checked text.
//! - [`membership`]: user ids and the keys of the `members` bucket.

pub mod channel;
pub mod error;
pub mod event;
pub mod frame;
pub mod json;
pub mod membership;
pub mod presence;
pub mod shapes;
pub mod trace;

pub use channel::{ChannelError, ChannelName, ChannelPattern, Namespace, SubjectKind, UserAlias};
pub use error::{ByeCode, ErrorCode, UnsubCode};
pub use event::{
    Actor, Envelope, EnvelopeError, EventFieldError, EventId, EventType, Metadata, Timestamp,
    TypeFilter, TypeFilters,
};
pub use frame::{
    ClientFrame, EvtFrame, FrameError, OkReply, Request, ResumeFrom, ServerFrame, encode_evt,
    encode_evt_from,
};
pub use json::RawJson;
pub use membership::{Membership, UserId};
pub use presence::{InitialPresence, PresenceStatus, VisibleStatus};
pub use trace::TraceParent;
