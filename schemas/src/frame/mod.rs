//! The client protocol `switchboard.v1` (docs/protocol.md, sections 4 and 5): JSON text frames over a
//! WebSocket.
//!
//! Client frames are untrusted: [`Request::decode`] turns bytes into a typed
//! [`ClientFrame`] or a [`FrameError`] that still knows the frame's `id`, and never
//! panics. Server frames are built by the edge, encoded once with
//! [`ServerFrame::encode`] or, for the hot `evt` frame, [`encode_evt`], and the same
//! bytes go to every connection.

mod client;
mod server;

pub use client::{
    ClientFrame, FrameError, FrameErrorKind, InvalidRpcMethod, InvalidSignalType, Request,
    ResumeFrom, RpcMethod, SignalType,
};
pub use server::{EvtFrame, Member, OkReply, ServerFrame, encode_evt, encode_evt_from};
