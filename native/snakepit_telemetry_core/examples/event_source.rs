//! A stand-in *source* of telemetry for the NIF-path benchmarks and the HTTP/2 tests: an
//! HTTP/2 server that answers `StreamTelemetry` / `StreamTelemetryBatched` with pre-encoded
//! events, as fast as flow control lets it, with no Python in the way.
//!
//! ```text
//! cargo build --release --example event_source -p snakepit_telemetry_core
//! target/release/examples/event_source [--events N] [--protocol single|batched] [--batch K]
//! ```
//!
//! It listens on 127.0.0.1 (an ephemeral port) and prints one line,
//! `event_source listening=127.0.0.1:PORT`, then serves any number of streams until its
//! stdin closes (so a BEAM port that started it ends it). Every stream gets `--events` copies
//! of one `tool.execution.stop` event (`duration`, metadata `tool` and `operation`) and then
//! stays open, sending nothing more, so a client does not reconnect. `--events 0` gives idle
//! streams.
//!
//! * `--protocol single` (default): one event per gRPC message on `StreamTelemetry`, **each
//!   message its own HTTP/2 DATA frame** (the smallest frames a sender can make, which is
//!   what h2's small-frame budget counts). `StreamTelemetryBatched` answers `UNIMPLEMENTED`,
//!   as a Snakepit worker does.
//! * `--protocol batched`: `StreamTelemetryBatched` with `--batch` events (default 512) per
//!   message; `StreamTelemetry` is served too, one event per message.
//!
//! The control stream the client sends is read and discarded.

use std::convert::Infallible;
use std::io::Read;
use std::process::ExitCode;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;

use snakepit_telemetry_core::proto::{telemetry_value, TelemetryEvent, TelemetryValue};
use snakepit_telemetry_core::wire::frame;

const SINGLE_PATH: &str = "/snakepit.bridge.BridgeService/StreamTelemetry";
const BATCHED_PATH: &str = "/snakepit.bridge.BridgeService/StreamTelemetryBatched";
const GRPC_UNIMPLEMENTED: &str = "12";

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Single,
    Batched,
}

#[derive(Clone)]
struct Source {
    events: u64,
    protocol: Protocol,
    batch: u64,
    /// One `TelemetryEvent`, framed as a one-event gRPC message.
    single_message: Bytes,
    /// The same event as a `TelemetryEventBatch` entry (field 1, length-delimited).
    batch_entry: Bytes,
}

fn parse_args() -> Result<(u64, Protocol, u64), String> {
    let (mut events, mut protocol, mut batch) = (100_000, Protocol::Single, 512);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--events" => events = value("--events")?.parse().map_err(|e| format!("--events: {e}"))?,
            "--batch" => batch = value("--batch")?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--protocol" => {
                protocol = match value("--protocol")?.as_str() {
                    "single" => Protocol::Single,
                    "batched" => Protocol::Batched,
                    other => return Err(format!("--protocol single|batched, not {other}")),
                }
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if batch == 0 {
        return Err("--batch must be > 0".into());
    }
    Ok((events, protocol, batch))
}

fn event() -> Vec<u8> {
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    TelemetryEvent {
        event_parts: vec!["tool".into(), "execution".into(), "stop".into()],
        measurements: [(
            "duration".to_string(),
            TelemetryValue { value: Some(telemetry_value::Value::IntValue(123_456)) },
        )]
        .into(),
        metadata: [("tool".to_string(), "resize".to_string()), ("operation".to_string(), "run".to_string())]
            .into(),
        timestamp_ns: now_ns,
        correlation_id: String::new(),
    }
    .encode_to_vec()
}

fn batch_entry(event: &[u8]) -> Bytes {
    let mut entry = BytesMut::with_capacity(event.len() + 6);
    entry.extend_from_slice(&[0x0a]);
    let mut len = event.len() as u64;
    while len >= 0x80 {
        entry.extend_from_slice(&[(len as u8 & 0x7f) | 0x80]);
        len >>= 7;
    }
    entry.extend_from_slice(&[len as u8]);
    entry.extend_from_slice(event);
    entry.freeze()
}

type Body = BoxBody<Bytes, Infallible>;

/// The response body: the stream's events, then nothing, never ending.
fn events_body(source: &Source, batched_rpc: bool) -> Body {
    let messages: Box<dyn Iterator<Item = Bytes> + Send + Sync> = if batched_rpc {
        let (full, rest) = (source.events / source.batch, source.events % source.batch);
        let message = |n: u64| {
            let payload: Vec<u8> = (0..n).flat_map(|_| source.batch_entry.iter().copied()).collect();
            frame(&payload)
        };
        let full_message = message(source.batch);
        let last = (rest > 0).then(|| message(rest));
        Box::new(std::iter::repeat_n(full_message, full as usize).chain(last))
    } else {
        Box::new(std::iter::repeat_n(source.single_message.clone(), source.events as usize))
    };
    let frames =
        stream::iter(messages).map(|bytes| Ok::<_, Infallible>(Frame::data(bytes))).chain(stream::pending());
    BodyExt::boxed(StreamBody::new(frames))
}

fn unimplemented() -> Response<Body> {
    let mut response = Response::new(BodyExt::boxed(http_body_util::Empty::new()));
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static(GRPC_UNIMPLEMENTED));
    response
}

async fn serve(source: Source, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let batched_rpc = match request.uri().path() {
        SINGLE_PATH => false,
        BATCHED_PATH if source.protocol == Protocol::Batched => true,
        _ => return Ok(unimplemented()),
    };
    // Read the control stream and throw it away, so it never holds the connection up.
    let mut controls = request.into_body();
    tokio::spawn(async move { while let Some(Ok(_)) = controls.frame().await {} });
    let mut response = Response::new(events_body(&source, batched_rpc));
    *response.status_mut() = StatusCode::OK;
    let headers: &mut HeaderMap = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    Ok(response)
}

fn main() -> ExitCode {
    let (events, protocol, batch) = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("event_source: {message}");
            return ExitCode::from(2);
        }
    };
    let event = event();
    let source =
        Source { events, protocol, batch, single_message: frame(&event), batch_entry: batch_entry(&event) };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("event_source: no tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Stop when stdin closes: the BEAM port (or shell) that started us is gone.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let outcome: Result<(), String> = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        println!("event_source listening={address}");
        loop {
            let (socket, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let _ = socket.set_nodelay(true);
            let source = source.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| serve(source.clone(), request));
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("event_source: {message}");
            ExitCode::FAILURE
        }
    }
}
