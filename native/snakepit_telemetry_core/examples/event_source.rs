//! A stand-in *source* of telemetry for the NIF-path benchmarks and the HTTP/2 tests: an
//! HTTP/2 server that answers `StreamTelemetry` / `StreamTelemetryBatched` with pre-encoded
//! events, as fast as flow control lets it, with no Python in the way.
//!
//! ```text
//! cargo build --release --example event_source -p snakepit_telemetry_core
//! target/release/examples/event_source [--events N] [--protocol single|batched] [--batch K]
//!                                        [--variants V] [--rate R]
//! ```
//!
//! It listens on 127.0.0.1 (an ephemeral port) and prints one line,
//! `event_source listening=127.0.0.1:PORT`, then serves any number of streams until its
//! stdin closes (so a BEAM port that started it ends it). Every stream gets `--events`
//! `tool.execution.stop` events (`duration`, metadata `tool` and `operation`) and then stays
//! open, sending nothing more, so a client does not reconnect. `--events 0` gives idle
//! streams. The events cycle through `--variants` (default 1) pre-encoded ones that differ in
//! `timestamp_ns` and `duration`, as a tool's events do; with 1 every event is the same.
//!
//! * `--protocol single` (default): one event per gRPC message on `StreamTelemetry`, **each
//!   message its own HTTP/2 DATA frame** (the smallest frames a sender can make, which is
//!   what h2's small-frame budget counts). `StreamTelemetryBatched` answers `UNIMPLEMENTED`,
//!   as a Snakepit worker does.
//! * `--protocol batched`: `StreamTelemetryBatched` with `--batch` events (default 512) per
//!   message; `StreamTelemetry` is served too, one event per message.
//!
//! `--rate R` (default 0: as fast as flow control allows) sends each stream's messages at R
//! per second, evenly spaced on a schedule that does not drift (a thread per stream), as a
//! worker emitting at a steady pace does.
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

use snakepit_telemetry_core::wire::frame;

#[path = "shared/variant_event.rs"]
mod variant_event;
use variant_event::variant_event;

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
    /// Messages per second per stream; 0: as fast as flow control allows.
    rate: u64,
    /// Each variant's `TelemetryEvent`, framed as a one-event gRPC message.
    single_messages: Vec<Bytes>,
    /// The same events as `TelemetryEventBatch` entries (field 1, length-delimited).
    batch_entries: Vec<Bytes>,
}

struct Args {
    events: u64,
    protocol: Protocol,
    batch: u64,
    variants: u64,
    rate: u64,
}

fn parse_args() -> Result<Args, String> {
    let (mut events, mut protocol, mut batch, mut variants, mut rate) =
        (100_000, Protocol::Single, 512, 1, 0);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--events" => events = value("--events")?.parse().map_err(|e| format!("--events: {e}"))?,
            "--batch" => batch = value("--batch")?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--rate" => rate = value("--rate")?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--variants" => {
                variants = value("--variants")?.parse().map_err(|e| format!("--variants: {e}"))?
            }
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
    if batch == 0 || variants == 0 || variants > 1 << 16 {
        return Err("--batch must be > 0 and --variants in 1..=65536".into());
    }
    Ok(Args { events, protocol, batch, variants, rate })
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
    let variants = source.single_messages.len() as u64;
    let messages: Box<dyn Iterator<Item = Bytes> + Send + Sync> = if batched_rpc {
        let (full, rest) = (source.events / source.batch, source.events % source.batch);
        // Message `m` carries the variants from (m * batch) on: the full messages repeat
        // after `cycle` of them, so only those are built.
        let message = |m: u64, n: u64| {
            let entries = (0..n).map(|j| &source.batch_entries[((m * source.batch + j) % variants) as usize]);
            frame(&entries.flat_map(|entry| entry.iter().copied()).collect::<Vec<u8>>())
        };
        let cycle = variants / gcd(variants, source.batch);
        let full_messages: Vec<Bytes> =
            (0..cycle.min(full.max(1))).map(|m| message(m, source.batch)).collect();
        let last = (rest > 0).then(|| message(full, rest));
        let fulls = (0..full as usize).map(move |m| full_messages[m % full_messages.len()].clone());
        Box::new(fulls.chain(last))
    } else {
        let singles = source.single_messages.clone();
        Box::new((0..source.events as usize).map(move |n| singles[n % singles.len()].clone()))
    };
    let frames: Box<dyn futures_util::Stream<Item = Bytes> + Send + Sync + Unpin> = match source.rate {
        0 => Box::new(stream::iter(messages)),
        rate => Box::new(paced(messages, rate)),
    };
    let frames = frames.map(|bytes| Ok::<_, Infallible>(Frame::data(bytes))).chain(stream::pending());
    BodyExt::boxed(StreamBody::new(frames))
}

/// The messages at `rate` per second: message n is due at start + n / rate. A thread of its
/// own sleeps until each is due (tokio's timer has a 1 ms grain, which would send them in
/// bursts) and hands it to the connection.
fn paced(
    messages: Box<dyn Iterator<Item = Bytes> + Send + Sync>,
    rate: u64,
) -> impl futures_util::Stream<Item = Bytes> + Send + Sync + Unpin {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(1024);
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        for (n, bytes) in (0u64..).zip(messages) {
            let due = start + std::time::Duration::from_nanos(n.saturating_mul(1_000_000_000) / rate);
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
            if sender.blocking_send(bytes).is_err() {
                return; // the stream is gone
            }
        }
    });
    Box::pin(stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|bytes| (bytes, receiver))
    }))
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
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
    let Args { events, protocol, batch, variants, rate } = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("event_source: {message}");
            return ExitCode::from(2);
        }
    };
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let events_bytes: Vec<Vec<u8>> = (0..variants).map(|n| variant_event(now_ns, n)).collect();
    let source = Source {
        events,
        protocol,
        batch,
        rate,
        single_messages: events_bytes.iter().map(|event| frame(event)).collect(),
        batch_entries: events_bytes.iter().map(|event| batch_entry(event)).collect(),
    };
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
