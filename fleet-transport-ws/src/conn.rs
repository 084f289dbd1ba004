//! The per-connection driver both sides share: one task reads frames, writes
//! the connection's bounded queue, and runs the ping/pong keepalive.

use std::future::Future;
use std::time::Duration;

use fleet_core::protocol::{DecodeError, encode};
use fleet_core::transport::TransportError;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsProtoError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::config::{WsConfig, close_code};

/// A close code and reason to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CloseReason {
    pub(crate) code: u16,
    pub(crate) reason: String,
}

impl CloseReason {
    pub(crate) fn new(code: u16, reason: impl Into<String>) -> CloseReason {
        let mut reason = reason.into();
        // A close frame's reason must fit in 123 bytes.
        if reason.len() > 120 {
            let mut end = 120;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        CloseReason { code, reason }
    }

    pub(crate) fn frame(&self) -> Message {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(self.code),
            reason: self.reason.as_str().into(),
        }))
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// This side closed it with this reason.
    Local(CloseReason),
    /// The peer sent a close frame (code 1005 when it carried none).
    Remote(CloseReason),
    /// The stream ended or failed without a close frame.
    Lost(String),
}

/// What a frame handler wants next.
pub(crate) enum Flow {
    Continue,
    Close(CloseReason),
}

/// Receives each data frame of a connection.
pub(crate) trait Handler: Send {
    fn on_frame(&mut self, data: Bytes) -> impl Future<Output = Flow> + Send;
}

/// The tungstenite settings for a connection: size limits from the config,
/// small buffers (an idle agent connection must cost little memory).
///
/// The read buffer is the most read from the TLS layer per call and is
/// kept for the connection's life: 256 B holds a heartbeat frame and saved
/// ~0.5 KB per connection over 1 KiB. A larger frame still gets its whole
/// length reserved up front by tungstenite, only read in more calls.
pub(crate) fn ws_config(cfg: &WsConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(0)
        .max_write_buffer_size(cfg.max_message_bytes.saturating_mul(2).max(64 * 1024))
        .max_message_size(Some(cfg.max_message_bytes))
        .max_frame_size(Some(cfg.max_message_bytes))
}

/// One message in a server connection's send queue.
///
/// Boxed because tokio's bounded channel allocates its first block of 32
/// slots when the channel is created: with [`Message`] by value (56 bytes)
/// every idle agent connection carried ~1.8 KB of empty slots; boxed, the
/// block is ~0.3 KB, for one small allocation per message sent (rare to
/// agents: a command now and then).
#[derive(Debug)]
pub(crate) struct Queued(Box<Message>);

impl From<Message> for Queued {
    fn from(m: Message) -> Queued {
        Queued(Box::new(m))
    }
}

impl From<Queued> for Message {
    fn from(q: Queued) -> Message {
        *q.0
    }
}

/// Encodes a message in the versioned envelope as a text frame, refusing
/// what no peer would accept.
pub(crate) fn to_message<T: Serialize>(msg: &T, max: usize) -> Result<Message, TransportError> {
    let bytes = encode(msg).map_err(|e| TransportError::Io(e.to_string()))?;
    if bytes.len() > max {
        return Err(TransportError::Decode(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        }));
    }
    let text = String::from_utf8(bytes).map_err(|e| TransportError::Io(e.to_string()))?;
    Ok(Message::text(text))
}

/// Maps a queue error to the transport's.
pub(crate) fn queue_error<T>(e: mpsc::error::TrySendError<T>, who: &str) -> TransportError {
    match e {
        mpsc::error::TrySendError::Full(_) => TransportError::Backpressure(who.to_owned()),
        mpsc::error::TrySendError::Closed(_) => TransportError::NoPeer(who.to_owned()),
    }
}

pub(crate) fn close_for(e: &WsProtoError) -> Option<CloseReason> {
    match e {
        WsProtoError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            Some(CloseReason::new(
                close_code::TOO_BIG,
                format!("message of {size} bytes; limit {max_size}"),
            ))
        }
        WsProtoError::Capacity(_) => Some(CloseReason::new(close_code::TOO_BIG, "too big")),
        WsProtoError::Utf8(_) => Some(CloseReason::new(
            close_code::INVALID_PAYLOAD,
            "invalid UTF-8",
        )),
        WsProtoError::Protocol(p) => Some(CloseReason::new(close_code::PROTOCOL, p.to_string())),
        _ => None,
    }
}

/// Runs a connection until it closes: data frames go to `handler`, `out`
/// is written in order, a ping goes out every `ping_interval` and the
/// connection is closed (4005) when nothing at all was heard for
/// `ping_interval + pong_timeout`. A `close` signal closes it with its
/// reason. Writes that stall that long also end it.
///
/// Not an `async fn`: the stream is split (moved into the halves' shared
/// allocation) before the future exists, so the future holds two pointers
/// instead of a dead by-value copy of the whole stream (~1.5 KB with TLS),
/// which an `async fn` argument would keep for the connection's life.
pub(crate) fn drive<'a, S, H, M>(
    ws: WebSocketStream<S>,
    out: mpsc::Receiver<M>,
    close: oneshot::Receiver<CloseReason>,
    cfg: &'a WsConfig,
    handler: &'a mut H,
) -> impl Future<Output = Ending> + Send + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'a,
    H: Handler,
    M: Into<Message> + Send + 'a,
{
    let (sink, stream) = ws.split();
    drive_split(sink, stream, out, close, cfg, handler)
}

/// [`drive`] on a stream already split.
pub(crate) async fn drive_split<S, H, M>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut stream: SplitStream<WebSocketStream<S>>,
    mut out: mpsc::Receiver<M>,
    mut close: oneshot::Receiver<CloseReason>,
    cfg: &WsConfig,
    handler: &mut H,
) -> Ending
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
    M: Into<Message> + Send,
{
    let dead_after = cfg.ping_interval + cfg.pong_timeout;
    let write_timeout = dead_after;
    let mut tick = tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut close_open = true;

    let ending = loop {
        tokio::select! {
            // Close first: a replaced session's queue is dropped right after
            // its close signal, and the signal's code must win.
            biased;
            reason = &mut close, if close_open => match reason {
                Ok(reason) => break Ending::Local(reason),
                // The signal's owner is gone; keep running on the other inputs.
                Err(_) => close_open = false,
            },
            _ = tick.tick() => {
                if last_heard.elapsed() >= dead_after {
                    break Ending::Local(CloseReason::new(close_code::KEEPALIVE_TIMEOUT, "keepalive timeout"));
                }
                match Box::pin(timeout(write_timeout, sink.send(Message::Ping(Bytes::new())))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Ending::Lost(e.to_string()),
                    Err(_) => break Ending::Local(CloseReason::new(close_code::KEEPALIVE_TIMEOUT, "ping stalled")),
                }
            }
            next = out.recv() => match next {
                // Boxed, like every wait below that is not the loop's
                // own: a timer and a message by value (~0.2 KB each) would
                // otherwise be reserved in every idle connection's task.
                Some(msg) => match Box::pin(timeout(write_timeout, sink.send(msg.into()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Ending::Lost(e.to_string()),
                    Err(_) => break Ending::Local(CloseReason::new(close_code::SLOW_CONSUMER, "write stalled")),
                },
                None => break Ending::Local(CloseReason::new(close_code::NORMAL, "closed")),
            },
            incoming = stream.next() => match incoming {
                None => break Ending::Lost("connection ended".to_owned()),
                Some(Err(e)) => match close_for(&e) {
                    Some(reason) => break Ending::Local(reason),
                    None => break Ending::Lost(e.to_string()),
                },
                Some(Ok(msg)) => {
                    last_heard = Instant::now();
                    let data = match msg {
                        Message::Text(t) => Bytes::from(t),
                        Message::Binary(b) => b,
                        Message::Close(frame) => {
                            let reason = match frame {
                                Some(f) => CloseReason::new(u16::from(f.code), f.reason.as_str()),
                                None => CloseReason::new(1005, ""),
                            };
                            // tungstenite answers the close itself; flush it.
                            let _ = Box::pin(timeout(Duration::from_secs(1), sink.close())).await;
                            return Ending::Remote(reason);
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                    };
                    if let Flow::Close(reason) = handler.on_frame(data).await {
                        break Ending::Local(reason);
                    }
                }
            },
        }
    };
    if let Ending::Local(reason) = &ending {
        // Best effort: a dead peer will not read it, so do not wait long.
        let _ = Box::pin(timeout(Duration::from_secs(1), async {
            let _ = sink.send(reason.frame()).await;
            let _ = sink.close().await;
        }))
        .await;
    }
    ending
}
