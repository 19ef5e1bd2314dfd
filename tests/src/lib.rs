//! Shared helpers for the integration and end-to-end tests.
//!
//! The data plane is tested against real parts: `demo` is the SSE app put behind the sidecar,
//! `mcp` is a client of its MCP transport, `verify` checks what clients received, `harness` runs
//! real Redis, HAProxy and sidecar + app "pods" terminated in the kubelet's order, and `scenario`
//! holds what several tests share (a crowd of chat clients, metric reading); `sdk` runs the official
//! SDKs (`openai`, `mcp`) as clients and servers; `promql` lists the metric names the chart's
//! dashboard and alerts use, for the tests that hold them to real `/metrics`. What is not about the
//! demo app (the HTTP and EventSource client, the Redis launcher, bounded waits, child processes)
//! is the workspace's one test kit, `ssekeeper_testkit`.
//!
//! Running the data-plane tests (`tests/dataplane_*.rs`):
//!
//! ```text
//! apt-get install -y redis-server haproxy        # found on PATH or in /usr/sbin
//! cargo build -p ssekeeper-sidecar               # same profile as the tests; never built by them
//! cargo test -p ssekeeper-tests --test 'dataplane*' -- --test-threads=1 --nocapture
//! ```
//!
//! The sidecar binary is looked for next to `demo-app` in the target directory (or at
//! `$SSEKEEPER_SIDECAR_BIN`). Pods live on 127.0.0.(10+n), clients bind 127.0.1.x; ports are
//! whatever the kernel hands out, so parallel runs do not collide. A failing test keeps its
//! scratch directory (configs and every process's log) and prints its path;
//! `SSEKEEPER_KEEP_LOGS=1` keeps it always. `RUST_LOG` is passed on to the sidecars.

pub mod demo;
pub mod harness;
pub mod mcp;
pub mod promql;
pub mod scenario;
pub mod sdk;
pub mod verify;
