//! The gRPC client side of one worker's stream: parse the endpoint, connect, open
//! `snakepit.bridge.BridgeService/StreamTelemetry` over tonic's HTTP/2 channel. The gRPC
//! framing of the response is read by `wire.rs`, which bounds every message before it is
//! buffered, and each message is handed over as raw bytes, so `translate.rs` decodes it and
//! one bad message cannot end the stream.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::net::UnixStream;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use crate::proto::TelemetryControl;
use crate::transit::SentReport;
use crate::wire::{frame, Incoming, MessageReader};

const STREAM_TELEMETRY: &str = "/snakepit.bridge.BridgeService/StreamTelemetry";
const STREAM_TELEMETRY_BATCHED: &str = "/snakepit.bridge.BridgeService/StreamTelemetryBatched";

/// Which telemetry RPC a stream uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `StreamTelemetryBatched`: many events per message (this project's workers).
    Batched,
    /// `StreamTelemetry`: one event per message (Snakepit's protocol).
    Single,
}

/// Why a stream did not open.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// The worker does not serve this RPC (gRPC UNIMPLEMENTED): try the other one.
    Unimplemented,
    Failed(String),
}
/// Response header by which a worker says what it honours (comma-separated tokens: sampling
/// patterns, `settings.rs`; restated drop totals, `source_drops.rs`).
pub const CAPABILITIES_HEADER: &str = "x-snakepit-telemetry-capabilities";

/// Whether a worker's capabilities header value holds `token`.
pub fn has_capability(capabilities: &str, token: &str) -> bool {
    capabilities.split(',').any(|c| c.trim() == token)
}
/// Request header: the longest response message this client reads (a decimal byte count),
/// so that a worker sizes its batches to fit; longer messages are skipped as oversize.
pub const MAX_MESSAGE_HEADER: &str = "x-snakepit-max-message-bytes";
/// Response headers: the worker stream's identity and how many events it has handed to calls
/// (`transit.rs`).
pub const STREAM_ID_HEADER: &str = "x-snakepit-telemetry-stream-id";
pub const SENT_HEADER: &str = "x-snakepit-telemetry-sent";
/// HTTP/2 receive windows: what a worker may send before the stream task reads it.
///
/// The stream window bounds the unread bytes per stream (the stream task stops reading while
/// its buffer is full, so a worker that keeps sending fills it). The connection window is
/// there for h2's small-frame budget: h2 charges every unread DATA frame under 256 bytes
/// `256 - size` against half the *connection* window and sends `GOAWAY ENHANCE_YOUR_CALM`
/// when that runs out. A full stream window of 1-byte frames costs `255 * STREAM_WINDOW`
/// (65 MiB), so a budget of 128 MiB can never run out for the telemetry stream, with room
/// for a tool call's stream on the same connection. A window is a limit, not an allocation.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 256 * 1024 * 1024;

/// Where a worker serves: `host:port`, `http://host:port` or `unix:/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerAddress {
    Tcp(String),
    Unix(String),
}

impl WorkerAddress {
    pub fn parse(endpoint: &str) -> Result<WorkerAddress, String> {
        let endpoint = endpoint.trim();
        if let Some(path) = endpoint.strip_prefix("unix:") {
            let path = path.trim_start_matches("//");
            if path.is_empty() {
                return Err("unix endpoint without a path".into());
            }
            return Ok(WorkerAddress::Unix(path.to_string()));
        }
        let authority = endpoint.strip_prefix("http://").unwrap_or(endpoint).trim_end_matches('/');
        if authority.contains("://") {
            return Err("only http://, unix: and host:port endpoints are supported".into());
        }
        let (host, port) = authority.rsplit_once(':').ok_or("endpoint has no port")?;
        if host.is_empty() || port.parse::<u16>().is_err() || authority.contains('/') {
            return Err("expected host:port".into());
        }
        let uri = format!("http://{authority}");
        uri.parse::<Uri>().map_err(|e| e.to_string())?;
        Ok(WorkerAddress::Tcp(uri))
    }

    /// Connects (TCP or Unix socket, then HTTP/2), failing after `timeout`.
    pub async fn connect(&self, timeout: Duration) -> Result<Channel, String> {
        match self {
            WorkerAddress::Tcp(uri) => Endpoint::from_shared(uri.clone())
                .map_err(|e| e.to_string())?
                .connect_timeout(timeout)
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|e| error_chain(&e)),
            WorkerAddress::Unix(path) => {
                let path = path.clone();
                // The authority is unused: the connector below decides where to go.
                Endpoint::from_static("http://localhost")
                    .connect_timeout(timeout)
                    .initial_stream_window_size(STREAM_WINDOW)
                    .initial_connection_window_size(CONNECTION_WINDOW)
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move { UnixStream::connect(path).await.map(TokioIo::new) }
                    }))
                    .await
                    .map_err(|e| error_chain(&e))
            }
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// An opened telemetry stream: the worker's events, read message by message.
pub struct OpenStream {
    pub events: EventStream,
    /// What the worker said it honours, from its response headers (empty for Snakepit's own).
    pub capabilities: String,
    /// How many events the worker had handed to calls when this one opened (None for
    /// Snakepit's own, which does not say).
    pub sent: Option<SentReport>,
}

/// How a stream ended, as seen by its reader.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The worker ended the call with status OK (or without a status).
    Closed,
    /// A gRPC status other than OK, or a transport error.
    Failed(String),
}

/// The response body of a StreamTelemetry call, split into messages by [`MessageReader`].
pub struct EventStream {
    body: Body,
    reader: MessageReader,
    ready: std::vec::IntoIter<Incoming>,
    end: Option<StreamEnd>,
}

impl EventStream {
    fn new(body: Body, max_message: usize, end: Option<StreamEnd>) -> EventStream {
        EventStream { body, reader: MessageReader::new(max_message), ready: Vec::new().into_iter(), end }
    }

    /// The next message, or how the stream ended. Cancel-safe: everything read is kept in
    /// `self` between awaits, so it may be raced in `select!`.
    pub async fn next(&mut self) -> Result<Incoming, StreamEnd> {
        loop {
            if let Some(incoming) = self.ready.next() {
                return Ok(incoming);
            }
            if let Some(end) = self.end.take() {
                self.end = Some(StreamEnd::Closed);
                return Err(end);
            }
            match self.body.frame().await {
                None => self.end = Some(StreamEnd::Closed),
                Some(Err(status)) => self.end = Some(StreamEnd::Failed(status_text(&status))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let mut out = Vec::new();
                        self.reader.feed(data, &mut out);
                        self.ready = out.into_iter();
                    }
                    Err(frame) => {
                        let trailers = frame.into_trailers().ok();
                        let status = trailers.as_ref().and_then(Status::from_header_map);
                        self.end = Some(match status {
                            Some(status) if status.code() != Code::Ok => {
                                StreamEnd::Failed(status_text(&status))
                            }
                            _ => StreamEnd::Closed,
                        });
                    }
                },
            }
        }
    }
}

/// `Code: message` of a gRPC status, then its causes (for a broken connection, the HTTP/2
/// error that broke it: "error reading a body from connection" alone says nothing).
pub fn status_text(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Opens StreamTelemetry; `controls` is the request stream (every control message for the
/// stream's lifetime). No deadline is set: the stream lives until either side ends it.
/// Messages longer than `max_message` bytes are skipped and reported, never buffered;
/// `max_message` is also sent to the worker (`MAX_MESSAGE_HEADER`). `token` goes in an `authorization: Bearer` header, marked sensitive.
pub async fn open_stream(
    mut channel: Channel,
    protocol: Protocol,
    controls: impl Stream<Item = TelemetryControl> + Send + 'static,
    max_message: usize,
    token: Option<&str>,
) -> Result<OpenStream, OpenError> {
    let path = match protocol {
        Protocol::Batched => STREAM_TELEMETRY_BATCHED,
        Protocol::Single => STREAM_TELEMETRY,
    };
    let failed = OpenError::Failed;
    let frames = controls.map(|control| Ok::<_, Status>(Frame::data(frame(&control.encode_to_vec()))));
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(MAX_MESSAGE_HEADER, max_message);
    if let Some(token) = token {
        // Checked by the Elixir layer (visible ASCII); the error never repeats the value.
        let mut value = http::HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| failed("the worker token is not a valid header value".to_string()))?;
        value.set_sensitive(true);
        request = request.header(http::header::AUTHORIZATION, value);
    }
    let request = request.body(Body::new(StreamBody::new(frames))).map_err(|e| failed(e.to_string()))?;
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.map_err(|e| failed(error_chain(&e)))?;
    let response = channel.call(request).await.map_err(|e| failed(error_chain(&e)))?;
    if response.status() != http::StatusCode::OK {
        return Err(failed(format!("HTTP status {} from the worker", response.status())));
    }
    // A trailers-only response (UNIMPLEMENTED, for example) carries its status in the headers.
    let end = match Status::from_header_map(response.headers()) {
        Some(status) if status.code() == Code::Unimplemented => return Err(OpenError::Unimplemented),
        Some(status) if status.code() != Code::Ok => return Err(failed(status_text(&status))),
        Some(_) => Some(StreamEnd::Closed),
        None => None,
    };
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
    let capabilities = header(CAPABILITIES_HEADER).unwrap_or("").to_string();
    let sent = SentReport::parse(header(STREAM_ID_HEADER), header(SENT_HEADER));
    Ok(OpenStream { events: EventStream::new(response.into_body(), max_message, end), capabilities, sent })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            WorkerAddress::parse("127.0.0.1:50051"),
            Ok(WorkerAddress::Tcp("http://127.0.0.1:50051".into()))
        );
        assert_eq!(
            WorkerAddress::parse("http://localhost:1"),
            Ok(WorkerAddress::Tcp("http://localhost:1".into()))
        );
        assert_eq!(WorkerAddress::parse("[::1]:9"), Ok(WorkerAddress::Tcp("http://[::1]:9".into())));
        assert_eq!(WorkerAddress::parse("unix:/tmp/w.sock"), Ok(WorkerAddress::Unix("/tmp/w.sock".into())));
        for bad in ["", "localhost", "host:notaport", "https://h:1", "unix:", "h:1/path", ":80", "h:70000"] {
            assert!(WorkerAddress::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
