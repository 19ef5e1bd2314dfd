//! STUB: replaced by the codec helper's implementation (branch wip/codec). Only the parts the
//! store trait needs to compile are here.

/// A validated session id (1..=128 chars of `[A-Za-z0-9_-]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    /// The id as stored and sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
