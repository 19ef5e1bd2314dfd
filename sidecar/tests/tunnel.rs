//! What the sidecar does not parse still passes: a WebSocket on the same port as the SSE routes,
//! with a real WebSocket client (tokio-tungstenite), tunnelled byte for byte to the app, counted,
//! left open by the drain and closed at its request deadline.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{args, memory_store, start_sidecar};
use futures::{SinkExt as _, StreamExt as _};
use ssekeeper_testkit::app::{Feeds, TestApp};
use ssekeeper_testkit::tokio_tungstenite::connect_async;
use ssekeeper_testkit::tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);

async fn echo<S>(ws: &mut S, text: &str) -> String
where
    S: futures::Sink<Message>
        + futures::Stream<
            Item = Result<Message, ssekeeper_testkit::tokio_tungstenite::tungstenite::Error>,
        > + Unpin,
    <S as futures::Sink<Message>>::Error: std::fmt::Debug,
{
    ws.send(Message::text(text)).await.expect("send");
    match tokio::time::timeout(T, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("no echo: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_tunnelled_and_outlives_the_drain_window() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let mut a = args(app.addr, "pod-a");
    a.drain_seconds = 1;
    a.handover_margin_seconds = 1;
    a.request_seconds = 3;
    let sc = start_sidecar(a, memory_store()).await;
    let (mut ws, resp) = connect_async(format!("ws://{}/ws", sc.sse))
        .await
        .expect("the handshake passes through the sidecar");
    assert_eq!(resp.status(), 101);
    assert_eq!(echo(&mut ws, "hello").await, "app: hello");
    assert_eq!(sc.shared.metrics.tunnels.get(), 1);
    assert_eq!(sc.shared.metrics.active_tunnels.get(), 1);
    // SSE on the same port still works next to it.
    let (status, _, _) = ssekeeper_testkit::client::fetch(sc.sse, "GET", "/plain", &[], None).await;
    assert_eq!(status, 200);

    let t = Instant::now();
    sc.terminate();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        echo(&mut ws, "after the window").await,
        "app: after the window",
        "a tunnel is not closed by the drain window"
    );
    // Closed at the request deadline: the next read ends.
    let end = tokio::time::timeout(T, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return t.elapsed(),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("closed by the deadline");
    println!("tunnel closed {end:?} after SIGTERM (request deadline 3 s)");
    assert!(
        end >= Duration::from_millis(2900) && end < Duration::from_secs(5),
        "{end:?}"
    );
    sc.wait_finished(T).await;
    ssekeeper_testkit::eventually_true("the tunnel gauge drops", T, || {
        sc.shared.metrics.active_tunnels.get() == 0
    })
    .await;
}
