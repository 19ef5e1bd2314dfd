//! A thread of its own for the store's Redis connections.
//!
//! Why: the redis crate drives each multiplexed connection with one task that moves requests
//! from a channel to the socket and replies back. On the proxy's runtime that task is one of
//! thousands of runnable stream tasks and waits its turn like them: at 5,000 streams × 10
//! events/s on two cores it was polled so rarely that requests sat in its channel past their
//! deadline, and the crate skips a request whose caller gave up. Redis then saw no command for
//! seconds while every call timed out and the store was reported down (issue 8, bug 2, measured
//! by sampling Redis's command counter during the bench). Here the connections are created and
//! driven on a current-thread runtime in a dedicated OS thread, so the kernel schedules their I/O
//! apart from the streams' work; a call moves one cloned command across and awaits the reply.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::contract::redis::conn::AnyConn;

/// The store's I/O thread; stops (dropping its connections) when this is dropped.
pub(crate) struct IoThread {
    handle: Handle,
    _stop: oneshot::Sender<()>,
}

impl IoThread {
    /// Start the thread (named `name`) with its runtime.
    pub(crate) fn start(name: &str) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Ends when the sender is dropped; the runtime and its tasks go with it.
                let _ = rt.block_on(stopped);
            })?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }

    /// Run `fut` on the I/O thread (connecting, resolving a Sentinel master) and await it here.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, RedisError>> + Send + 'static,
    ) -> Result<T, RedisError> {
        Joined(self.handle.spawn(fut)).await
    }

    /// The thread's runtime, for a task that lives there (the append pipeline).
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// `conn`'s commands, sent from the I/O thread.
    pub(crate) fn wrap(&self, conn: AnyConn) -> IoConn {
        IoConn {
            conn,
            io: self.handle.clone(),
        }
    }
}

/// A connection whose every command runs on the [`IoThread`].
#[derive(Clone)]
pub(crate) struct IoConn {
    conn: AnyConn,
    io: Handle,
}

impl ConnectionLike for IoConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let (mut conn, cmd) = (self.conn.clone(), cmd.clone());
        Box::pin(Joined(
            self.io
                .spawn(async move { conn.req_packed_command(&cmd).await }),
        ))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let (mut conn, pipeline) = (self.conn.clone(), pipeline.clone());
        Box::pin(Joined(self.io.spawn(async move {
            conn.req_packed_commands(&pipeline, offset, count).await
        })))
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// A task on the I/O thread, awaited from elsewhere; aborted when the caller gives up (a call
/// past its deadline), so a request whose caller is gone is not sent, as on the caller's runtime.
struct Joined<T>(JoinHandle<Result<T, RedisError>>);

impl<T> Future for Joined<T> {
    type Output = Result<T, RedisError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| {
            r.unwrap_or_else(|e| {
                Err(RedisError::from(std::io::Error::other(format!(
                    "the store's I/O thread dropped the call: {e}"
                ))))
            })
        })
    }
}

impl<T> Drop for Joined<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_runs_on_the_io_thread_and_an_abandoned_one_is_aborted() {
        let io = IoThread::start("test-io").unwrap();
        let name = io
            .run(async { Ok(std::thread::current().name().map(str::to_string)) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("test-io"));
        let (tx, rx) = oneshot::channel::<()>();
        let pending = io.run(async move {
            let _keep = tx;
            std::future::pending::<Result<(), RedisError>>().await
        });
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), pending)
                .await
                .is_err()
        );
        // Dropping the caller aborted the task: its captured sender is gone.
        assert!(rx.await.is_err());
    }
}
