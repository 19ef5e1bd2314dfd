//! The pieces on the wire: bodies (and the bounded queue to a client), headers, the client to the
//! app and to peers, session keys as requests and responses carry them, and the bound on open
//! client streams. Nothing here knows about sessions or the store.

pub mod body;
pub mod client;
pub mod headers;
pub mod kind;
pub mod session_key;
pub mod streams;
