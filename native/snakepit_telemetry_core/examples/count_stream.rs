//! The bare-client baseline of `bench/stream_throughput.exs`: drain StreamTelemetry from one
//! or more workers with nothing but this crate's tonic client, and count the messages.
//!
//! ```text
//! cargo build --release --example count_stream -p snakepit_telemetry_core
//! target/release/examples/count_stream --count 100000 [--timeout-ms 120000] [--batched] 127.0.0.1:PORT [...]
//! target/release/examples/count_stream --until-end [--batched] 127.0.0.1:PORT [...]
//!     [--spin-reader-ns N] [--spin-sink-ns M]
//! ```
//!
//! With `--batched` it opens StreamTelemetryBatched and counts the events in each message
//! (split, not decoded); without, StreamTelemetry, one event per message.
//!
//! All streams are read concurrently (on a tokio multi-thread runtime with one thread per
//! core), each until it has delivered `--count` messages. No control message is sent and no
//! message is decoded: this is the least any client of the Python worker's gRPC server does.
//! With `--until-end` (and no `--count`) each stream is read until the worker ends the call
//! with status OK (`bench/tool_throughput.exs` closes the worker's stream when its tool is
//! done), and the line `count_stream open` is printed (and flushed) once every stream is
//! open, so that a caller can start the worker's tool only then.
//!
//! `--spin-reader-ns` / `--spin-sink-ns` make it a stand-in for a consumer that costs more per
//! event, with nothing else different (`bench/tool_throughput.exs --spin`): for each message
//! of k events, the reading task spins k × N ns of its thread's CPU before it reads on (as the
//! NIF's thread checks and copies events), and a sink thread of its own, woken once per
//! message through a channel, spins k × M ns of its CPU (as a Dispatcher makes terms and runs
//! handlers on a scheduler). The run ends once the sink has caught up too, and the spun CPU
//! counts in `cpu_ns`.
//!
//! On success it prints one line and exits 0:
//!
//! ```text
//! count_stream streams=S events=E elapsed_ns=T cpu_ns=C
//! ```
//!
//! `elapsed_ns` runs from just before the first connect until the last stream has its count (or
//! has ended, with `--until-end`);
//! `cpu_ns` is the CPU time of this process's threads over the whole run (from
//! `/proc/self/task/*/schedstat`, 0 where that is unavailable). A stream that fails or ends
//! early, or the timeout passing, prints the reason on stderr and exits 1.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use snakepit_telemetry_core::batch;
use snakepit_telemetry_core::client::{open_stream, Protocol, StreamEnd, WorkerAddress};
use snakepit_telemetry_core::wire::Incoming;

struct Args {
    /// `None` with `--until-end`: read each stream until the worker ends it.
    count: Option<u64>,
    timeout: Duration,
    protocol: Protocol,
    endpoints: Vec<WorkerAddress>,
    spin_reader_ns: u64,
    spin_sink_ns: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut count = None;
    let mut timeout = Duration::from_secs(120);
    let mut endpoints = Vec::new();
    let mut protocol = Protocol::Single;
    let mut until_end = false;
    let (mut spin_reader_ns, mut spin_sink_ns) = (0, 0);
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
            "--until-end" => until_end = true,
            "--spin-reader-ns" => {
                spin_reader_ns =
                    value("--spin-reader-ns")?.parse().map_err(|e| format!("--spin-reader-ns: {e}"))?
            }
            "--spin-sink-ns" => {
                spin_sink_ns = value("--spin-sink-ns")?.parse().map_err(|e| format!("--spin-sink-ns: {e}"))?
            }
            endpoint => {
                endpoints.push(WorkerAddress::parse(endpoint).map_err(|e| format!("{endpoint}: {e}"))?)
            }
        }
    }
    let count = match (count, until_end) {
        (None, true) => None,
        (Some(n), false) if n > 0 => Some(n),
        _ => return Err("give either --count N (N > 0) or --until-end".into()),
    };
    if endpoints.is_empty() {
        return Err("give at least one endpoint (host:port)".into());
    }
    Ok(Args { count, timeout, protocol, endpoints, spin_reader_ns, spin_sink_ns })
}

/// Connects, opens the stream and counts events until `count` (or, with `None`, until the
/// worker ends the call with status OK); `opened` is told once the stream is open. Returns
/// how many arrived.
async fn drain(
    address: WorkerAddress,
    protocol: Protocol,
    count: Option<u64>,
    opened: std::sync::Arc<OpenStreams>,
    spin: Spin,
) -> Result<u64, String> {
    let channel = address.connect(std::time::Duration::from_secs(5)).await?;
    // Kept open and empty: the request stream stays up and carries nothing.
    let controls = futures_util::stream::pending();
    let mut events = open_stream(channel, protocol, controls, usize::MAX, None)
        .await
        .map_err(|e| format!("{e:?}"))?
        .events;
    opened.one_more();
    let mut received = 0;
    while count.is_none_or(|count| received < count) {
        match events.next().await {
            Ok(Incoming::Message(bytes)) if protocol == Protocol::Batched => {
                let n = batch::events(&bytes).map_err(|_| "a malformed batch")?.len() as u64;
                spin.spend(n);
                received += n
            }
            Ok(_message) => {
                spin.spend(1);
                received += 1
            }
            Err(StreamEnd::Closed) => match count {
                None => return Ok(received),
                Some(count) => return Err(format!("stream ended after {received} of {count} messages")),
            },
            Err(StreamEnd::Failed(status)) => return Err(format!("after {received} messages: {status}")),
        }
    }
    Ok(received)
}

/// The extra CPU per event of `--spin-reader-ns` / `--spin-sink-ns`.
#[derive(Clone)]
struct Spin {
    reader_ns: u64,
    /// To the sink thread: the events of one message (`None` without `--spin-sink-ns`).
    sink: Option<std::sync::mpsc::Sender<u64>>,
}

impl Spin {
    fn spend(&self, events: u64) {
        spin_thread_cpu(events * self.reader_ns);
        if let Some(sink) = &self.sink {
            // Cannot fail: the sink thread runs until the last sender is gone.
            let _ = sink.send(events);
        }
    }
}

/// Starts the sink thread of `--spin-sink-ns`; it ends once every sender is gone and it has
/// spun for every event sent, and returns the CPU time it took (an ended thread is no longer
/// in `/proc/self/task`).
fn start_sink(sink_ns: u64) -> (std::sync::mpsc::Sender<u64>, std::thread::JoinHandle<u64>) {
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let sink = std::thread::spawn(move || {
        while let Ok(events) = rx.recv() {
            spin_thread_cpu(events * sink_ns);
        }
        thread_cpu_ns()
    });
    (tx, sink)
}

/// This thread's CPU time, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec for the call to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Keeps this thread busy until it has used `ns` more of CPU time (wall time it spends
/// preempted does not count).
fn spin_thread_cpu(ns: u64) {
    if ns == 0 {
        return;
    }
    let until = thread_cpu_ns() + ns;
    while thread_cpu_ns() < until {
        std::hint::spin_loop();
    }
}

/// Counts open streams and prints `count_stream open` when the last one opens.
struct OpenStreams {
    open: std::sync::atomic::AtomicUsize,
    total: usize,
}

impl OpenStreams {
    fn one_more(&self) {
        use std::io::Write;
        if self.open.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1 == self.total {
            let mut stdout = std::io::stdout().lock();
            // A caller that is gone cannot be told; the count still follows.
            let _ = writeln!(stdout, "count_stream open").and_then(|()| stdout.flush());
        }
    }
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
    let opened = std::sync::Arc::new(OpenStreams { open: 0.into(), total: streams });
    let (sink, sink_thread) = match args.spin_sink_ns {
        0 => (None, None),
        ns => {
            let (sink, thread) = start_sink(ns);
            (Some(sink), Some(thread))
        }
    };
    let spin = Spin { reader_ns: args.spin_reader_ns, sink };
    let outcome = runtime.block_on(async {
        let tasks: Vec<_> = args
            .endpoints
            .into_iter()
            .map(|a| tokio::spawn(drain(a, args.protocol, args.count, opened.clone(), spin.clone())))
            .collect();
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
    // A consumer is done when its sink has caught up too (as the full path is when its
    // handler has seen every event): the readers' senders are gone with their tasks.
    drop(spin);
    let sink_cpu_ns = match (&outcome, sink_thread) {
        (Ok(_), Some(thread)) => thread.join().unwrap_or(0),
        _ => 0,
    };
    let elapsed = started.elapsed();
    let cpu_ns = process_cpu_ns().saturating_sub(cpu_before) + sink_cpu_ns;
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
