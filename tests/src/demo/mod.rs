//! The demo SSE app the data-plane and node tests put behind the sidecar (and `make demo` shows).
//!
//! It plays the part of an *unchanged* third-party service, so it behaves like real ones do: a
//! chat room fed from a shared Redis Stream (`/events`), an MCP-style transport whose sessions live
//! only in this process's memory (`/sse` + `/messages`), a finite LLM-style answer
//! (`/answer`), a shared sequence that follows the wall clock and ignores `Last-Event-ID`
//! (`/clock`), and an OpenAI-compatible streaming chat completion (`POST /v1/chat/completions`). Its HTTP plumbing, its SSE writer and the streams that exist only to feed the
//! proxy bad input (`/testing/*`) are the test kit's fake app ([`ssekeeper_testkit::app`]).

pub mod answer;
pub mod clock;
pub mod completions;
pub mod events;
pub mod mcp;
pub mod payload;
pub mod publisher;
pub mod server;
