//! The new owner's fresh upstream, read ahead to its first event before the old owner is fenced.
//!
//! Many apps ignore `Last-Event-ID` and stream a shared sequence from "now": the fresh stream
//! then starts wherever the app is when it opens. Fencing the old owner at that moment would lose
//! what it captured but had not yet recorded. So the new owner reads the fresh stream's head up to
//! its first event's id, lets the old owner (still recording) reach that id in the store, and only
//! then takes the lease: the two streams overlap, and the overlap is dropped by app id.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, BodyStream, StreamBody};
use hyper::body::{Frame, Incoming};

use crate::http::body::{BoxError, ProxyBody};
use crate::sse::SseParser;

/// The most bytes read ahead looking for the first event (an app that sends a large preamble
/// falls back to the takeover without overlap).
const MAX_HEAD_BYTES: usize = 256 * 1024;

/// The fresh stream with its head read ahead.
pub struct Fresh {
    head: Vec<Bytes>,
    first_id: Option<String>,
    rest: Option<Incoming>,
}

impl Fresh {
    /// Read `body` until its first event is complete (at most `wait` and [`MAX_HEAD_BYTES`]).
    pub async fn read_ahead(mut body: Incoming, wait: Duration, max_event_bytes: usize) -> Self {
        let mut parser = SseParser::new(max_event_bytes);
        let mut head = Vec::new();
        let mut frames = Vec::new();
        let mut read = 0usize;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, body.frame()).await;
            let Ok(Some(Ok(frame))) = next else {
                // Out of time (keep the body), or it ended or failed (nothing more to read).
                let rest = next.is_err().then_some(body);
                return Fresh {
                    head,
                    first_id: None,
                    rest,
                };
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            read += data.len();
            parser.push(&data, &mut frames);
            head.push(data);
            if frames
                .iter()
                .any(|f| matches!(f, crate::sse::Frame::Event(_)))
            {
                // The id the recorder records the first event with: the app's last id after it.
                let id = first_event_id(&frames, &parser);
                return Fresh {
                    head,
                    first_id: id,
                    rest: Some(body),
                };
            }
            frames.clear();
            if read >= MAX_HEAD_BYTES {
                return Fresh {
                    head,
                    first_id: None,
                    rest: Some(body),
                };
            }
        }
    }

    /// The app id of the fresh stream's first event, if it has one.
    pub fn first_id(&self) -> Option<&str> {
        self.first_id.as_deref()
    }

    /// The whole stream again: the head read ahead, then the rest.
    pub fn into_body(self) -> ProxyBody {
        let head = futures::stream::iter(
            self.head
                .into_iter()
                .map(|b| Ok::<_, BoxError>(Frame::data(b))),
        );
        match self.rest {
            Some(rest) => {
                let rest = BodyStream::new(rest).map(|r| r.map_err(BoxError::from));
                StreamBody::new(head.chain(rest)).boxed_unsync()
            }
            None => StreamBody::new(head).boxed_unsync(),
        }
    }
}

/// The sticky id of the first event among `frames`: the id it set, or the one before it.
fn first_event_id(frames: &[crate::sse::Frame], parser: &SseParser) -> Option<String> {
    let mut sticky: Option<String> = None;
    for f in frames {
        match f {
            crate::sse::Frame::SetId(id) => sticky = Some(id.clone()),
            crate::sse::Frame::Event(e) => {
                if let Some(id) = &e.id {
                    sticky = Some(id.clone());
                }
                return sticky.filter(|s| !s.is_empty());
            }
            _ => {}
        }
    }
    Some(parser.last_event_id().to_string()).filter(|s| !s.is_empty())
}
