//! The gRPC client side of one worker's stream: parse the endpoint, connect, open
//! `snakepit.bridge.BridgeService/StreamTelemetry`. The codec hands each response message
//! over as raw bytes, so `translate.rs` decodes it and one bad message cannot end the stream.

use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::Stream;
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::net::UnixStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Status};

use crate::proto::TelemetryControl;

const STREAM_TELEMETRY: &str = "/snakepit.bridge.BridgeService/StreamTelemetry";
/// Response header by which a worker says it applies sampling patterns itself.
pub const CAPABILITIES_HEADER: &str = "x-snakepit-telemetry-capabilities";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One telemetry event is small; a message this large is hostile or broken.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

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

    pub async fn connect(&self) -> Result<Channel, String> {
        match self {
            WorkerAddress::Tcp(uri) => Endpoint::from_shared(uri.clone())
                .map_err(|e| e.to_string())?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|e| error_chain(&e)),
            WorkerAddress::Unix(path) => {
                let path = path.clone();
                // The authority is unused: the connector below decides where to go.
                Endpoint::from_static("http://localhost")
                    .connect_timeout(CONNECT_TIMEOUT)
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

/// An opened telemetry stream.
pub struct OpenStream {
    pub events: Streaming<Bytes>,
    /// What the worker said it honours, from its response headers (empty for Snakepit's own).
    pub capabilities: String,
}

/// Opens StreamTelemetry; `controls` is the request stream (every control message for the
/// stream's lifetime). No deadline is set: the stream lives until either side ends it.
pub async fn open_stream(
    channel: Channel,
    controls: impl Stream<Item = TelemetryControl> + Send + 'static,
) -> Result<OpenStream, Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    grpc.ready().await.map_err(|e| Status::unavailable(error_chain(&e)))?;
    let path = PathAndQuery::from_static(STREAM_TELEMETRY);
    let response = grpc.streaming(Request::new(controls), path, RawEventCodec).await?;
    let capabilities =
        response.metadata().get(CAPABILITIES_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    Ok(OpenStream { events: response.into_inner(), capabilities })
}

/// Encodes control messages with prost; passes event messages through as bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawEventCodec;

impl Codec for RawEventCodec {
    type Encode = TelemetryControl;
    type Decode = Bytes;
    type Encoder = RawEventCodec;
    type Decoder = RawEventCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for RawEventCodec {
    type Item = TelemetryControl;
    type Error = Status;

    fn encode(&mut self, item: TelemetryControl, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for RawEventCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
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
