//! The demo SSE app the data-plane tests put behind the sidecar.
//!
//! It plays the part of an *unchanged* third-party service, so it behaves like real ones do: a
//! chat room fed from a shared Redis Stream (`/events`), an MCP-style transport whose sessions live
//! only in this process's memory (`/sse` + `/messages`), and a finite LLM-style answer
//! (`/answer`). A few endpoints exist only to feed the proxy bad input (`testing`).

pub mod answer;
pub mod events;
pub mod mcp;
pub mod payload;
pub mod publisher;
pub mod server;
pub mod testing;
pub mod wire;
