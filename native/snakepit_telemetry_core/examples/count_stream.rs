//! The bare-client baseline of `bench/stream_throughput.exs`: drain StreamTelemetry from one
//! or more workers with nothing but this crate's tonic client, and count the messages.
//!
//! ```text
//! cargo build --release --example count_stream -p snakepit_telemetry_core
//! target/release/examples/count_stream --count 100000 [--timeout-ms 120000] [--batched] 127.0.0.1:PORT [...]
//! ```
//!
//! With `--batched` it opens StreamTelemetryBatched and counts the events in each message
//! (split, not decoded); without, StreamTelemetry, one event per message.
//!
//! All streams are read concurrently (on a tokio multi-thread runtime with one thread per
//! core), each until it has delivered `--count` messages. No control message is sent and no
//! message is decoded: this is the least any client of the Python worker's gRPC server does.
//! On success it prints one line and exits 0:
//!
//! ```text
//! count_stream streams=S events=E elapsed_ns=T cpu_ns=C
//! ```
//!
//! `elapsed_ns` runs from just before the first connect until the last stream has its count;
//! `cpu_ns` is the CPU time of this process's threads over the whole run (from
//! `/proc/self/task/*/schedstat`, 0 where that is unavailable). A stream that fails or ends
//! early, or the timeout passing, prints the reason on stderr and exits 1.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use snakepit_telemetry_core::batch;
use snakepit_telemetry_core::client::{open_stream, Protocol, StreamEnd, WorkerAddress};
use snakepit_telemetry_core::wire::Incoming;

struct Args {
    count: u64,
    timeout: Duration,
    protocol: Protocol,
    endpoints: Vec<WorkerAddress>,
}

fn parse_args() -> Result<Args, String> {
    let mut count = None;
    let mut timeout = Duration::from_secs(120);
    let mut endpoints = Vec::new();
    let mut protocol = Protocol::Single;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--count" => count = Some(value("--count")?.parse::<u64>().map_err(|e| format!("--count: {e}"))?),
            "--timeout-ms" => {
                let ms = value("--timeout-ms")?.parse::<u64>().map_err(|e| format!("--timeout-ms: {e}"))?;
                timeout = Duration::from_millis(ms);
            }
            "--batched" => protocol = Protocol::Batched,
            endpoint => {
                endpoints.push(WorkerAddress::parse(endpoint).map_err(|e| format!("{endpoint}: {e}"))?)
            }
        }
    }
    let count = count.filter(|&n| n > 0).ok_or("--count N (N > 0) is required")?;
    if endpoints.is_empty() {
        return Err("give at least one endpoint (host:port)".into());
    }
    Ok(Args { count, timeout, protocol, endpoints })
}

/// Connects, opens the stream and counts messages until `count`. Returns how many arrived.
async fn drain(address: WorkerAddress, protocol: Protocol, count: u64) -> Result<u64, String> {
    let channel = address.connect(std::time::Duration::from_secs(5)).await?;
    // Kept open and empty: the request stream stays up and carries nothing.
    let controls = futures_util::stream::pending();
    let mut events = open_stream(channel, protocol, controls, usize::MAX, None)
        .await
        .map_err(|e| format!("{e:?}"))?
        .events;
    let mut received = 0;
    while received < count {
        match events.next().await {
            Ok(Incoming::Message(bytes)) if protocol == Protocol::Batched => {
                received += batch::events(&bytes).map_err(|_| "a malformed batch")?.len() as u64
            }
            Ok(_message) => received += 1,
            Err(StreamEnd::Closed) => {
                return Err(format!("stream ended after {received} of {count} messages"))
            }
            Err(StreamEnd::Failed(status)) => return Err(format!("after {received} messages: {status}")),
        }
    }
    Ok(received)
}

/// CPU time of all threads of this process so far, in nanoseconds.
fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("count_stream: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let streams = args.endpoints.len();
    let cpu_before = process_cpu_ns();
    let started = Instant::now();
    let outcome = runtime.block_on(async {
        let tasks: Vec<_> =
            args.endpoints.into_iter().map(|a| tokio::spawn(drain(a, args.protocol, args.count))).collect();
        tokio::time::timeout(args.timeout, async {
            let mut total = 0;
            for task in tasks {
                total += task.await.map_err(|e| e.to_string())??;
            }
            Ok::<u64, String>(total)
        })
        .await
        .map_err(|_| format!("timed out after {:?}", args.timeout))?
    });
    let elapsed = started.elapsed();
    let cpu_ns = process_cpu_ns().saturating_sub(cpu_before);
    runtime.shutdown_background();
    match outcome {
        Ok(events) => {
            println!(
                "count_stream streams={streams} events={events} elapsed_ns={} cpu_ns={cpu_ns}",
                elapsed.as_nanos()
            );
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("count_stream: {message}");
            ExitCode::FAILURE
        }
    }
}
