//! The unary `snakepit.bridge.BridgeService/ExecuteTool` call, over the same kind of HTTP/2
//! channel as the telemetry stream: one request message out, one response message back,
//! read with the bound of `wire.rs` (a larger response is an error, never buffered whole).
//!
//! The correlation id travels as Snakepit sends it: in the `x-snakepit-correlation-id`
//! header (and, put there by the caller, in the request's `metadata["correlation_id"]`).

use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use prost::Message;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::proto::{ExecuteToolRequest, ExecuteToolResponse};
use crate::wire::{frame, Incoming, MessageReader};

const EXECUTE_TOOL: &str = "/snakepit.bridge.BridgeService/ExecuteTool";
/// The header that carries the call's correlation id (Snakepit's name).
pub const CORRELATION_HEADER: &str = "x-snakepit-correlation-id";

/// Why a call has no response.
#[derive(Debug, PartialEq, Eq)]
pub enum CallError {
    /// The worker answered with a gRPC status other than OK.
    Status { code: Code, message: String },
    /// The response is larger than the caller's bound.
    TooLarge,
    /// Connecting, the transport, or a response that is not one `ExecuteToolResponse`.
    Transport(String),
}

/// What goes with the request besides the message.
pub struct CallOptions<'a> {
    pub correlation_id: &'a str,
    /// Sent as `authorization: Bearer <token>` (a sensitive header).
    pub token: Option<&'a str>,
    /// The largest response message accepted, in bytes.
    pub max_response_bytes: usize,
}

/// Makes the call and reads its one response.
pub async fn execute_tool(
    mut channel: Channel,
    request: &ExecuteToolRequest,
    options: CallOptions<'_>,
) -> Result<ExecuteToolResponse, CallError> {
    let payload = frame(&request.encode_to_vec());
    let body =
        StreamBody::new(futures_util::stream::once(async move { Ok::<_, Status>(Frame::data(payload)) }));
    let mut builder = http::Request::builder()
        .method(http::Method::POST)
        .uri(EXECUTE_TOOL)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    let correlation = http::HeaderValue::try_from(options.correlation_id)
        .map_err(|_| CallError::Transport("the correlation id is not a valid header value".into()))?;
    builder = builder.header(CORRELATION_HEADER, correlation);
    if let Some(token) = options.token {
        let mut value = http::HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| CallError::Transport("the worker token is not a valid header value".into()))?;
        value.set_sensitive(true);
        builder = builder.header(http::header::AUTHORIZATION, value);
    }
    let http_request = builder.body(Body::new(body)).map_err(|e| CallError::Transport(e.to_string()))?;

    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| CallError::Transport(e.to_string()))?;
    let response = channel.call(http_request).await.map_err(|e| CallError::Transport(e.to_string()))?;
    if response.status() != http::StatusCode::OK {
        return Err(CallError::Transport(format!("HTTP status {} from the worker", response.status())));
    }
    // A trailers-only response (UNAUTHENTICATED, UNIMPLEMENTED, ...) has its status in the headers.
    if let Some(status) = Status::from_header_map(response.headers()) {
        if status.code() != Code::Ok {
            return Err(status_error(&status));
        }
    }

    let mut body = response.into_body();
    let mut reader = MessageReader::new(options.max_response_bytes);
    let mut messages = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|status| status_error(&status))?;
        match frame.into_data() {
            Ok(data) => reader.feed(data, &mut messages),
            Err(frame) => {
                let status = frame.into_trailers().ok().as_ref().and_then(Status::from_header_map);
                if let Some(status) = status.filter(|s| s.code() != Code::Ok) {
                    return Err(status_error(&status));
                }
            }
        }
    }
    match messages.as_slice() {
        [Incoming::Message(bytes)] => ExecuteToolResponse::decode(bytes.as_ref())
            .map_err(|e| CallError::Transport(format!("undecodable response: {e}"))),
        [Incoming::Oversize] => Err(CallError::TooLarge),
        [Incoming::Compressed] => Err(CallError::Transport("a compressed response, never asked for".into())),
        [] => Err(CallError::Transport("the worker sent no response".into())),
        _ => Err(CallError::Transport("the worker sent more than one response".into())),
    }
}

fn status_error(status: &Status) -> CallError {
    CallError::Status { code: status.code(), message: status.message().to_string() }
}
