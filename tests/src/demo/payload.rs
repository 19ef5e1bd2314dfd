//! The JSON payloads the demo app puts in `data:`. The tests verify delivery by these payloads,
//! never by the wire `id:`, because the sidecar rewrites ids into its own cursors.

use serde::{Deserialize, Serialize};

/// One chat-room event of `/events`: `seq` is the global sequence (the Redis Stream id), the same
/// on every pod, so a client can prove it saw every event exactly once whichever pod served it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatEvent {
    /// Global sequence number, 1-based, dense.
    pub seq: u64,
    /// The pod that delivered it (shows handoffs in a test's output).
    pub pod: String,
}

/// One token of a finite `/answer` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerToken {
    /// 1-based position of the token in the answer.
    pub token: u32,
    /// Length of the whole answer.
    pub n: u32,
    /// The pod that produced it.
    pub pod: String,
}

/// The reply to a `POST /messages`, sent on the session's `/sse` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpReply {
    /// The request body, echoed so the client can match reply to request.
    pub echo: String,
    /// The pod whose memory holds the session.
    pub pod: String,
}
