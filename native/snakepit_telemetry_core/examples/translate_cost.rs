//! What checking one event costs the stream task, alone: `translate` (read the message in
//! place, check it against the catalog, make its record) and buffering the record, over the
//! 1,024 `tool.execution.stop` variants `event_source` sends (`duration` and timestamp
//! differ; metadata `tool` and `operation`). No I/O and no BEAM: the steadiest figure for an
//! A/B of the checking code on a shared machine (the NIF path benchmark moves by ±10 %).
//!
//! ```text
//! cargo run --release --example translate_cost -p snakepit_telemetry_core [-- --quick]
//! ```
//!
//! Prints the fastest of 24 rounds of 1,000,000 events, in ns per event (`--quick`: 3 rounds
//! of 100,000, for CI).

use std::time::Instant;

use snakepit_telemetry_core::catalog::{Catalog, CatalogSpec, WorkerEventSpec};
use snakepit_telemetry_core::pending::{BufferLimits, Pending};
use snakepit_telemetry_core::translate::{translate, EventLimits, EventNames, NativeTime};

#[path = "shared/variant_event.rs"]
mod variant_event;
use variant_event::variant_event;

const VARIANTS: u64 = 1024;

/// The NIF's allocator (`allocator.rs` in the NIF crate): records allocate as they do there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn catalog() -> Catalog {
    let events = ["tool.execution.start", "tool.execution.stop", "tool.result_size", "python.call.start"];
    let spec = CatalogSpec {
        measurement_keys: vec![("duration".into(), true), ("count".into(), false)],
        metadata_keys: ["tool", "operation", "worker_id", "node", "timestamp_ns", "correlation_id"]
            .map(String::from)
            .to_vec(),
        events: events
            .iter()
            .map(|name| WorkerEventSpec {
                worker_name: name.to_string(),
                event: format!("snakepit.python.{name}").split('.').map(String::from).collect(),
                measurements: Vec::new(),
            })
            .collect(),
    };
    match Catalog::new(&spec) {
        Ok(catalog) => catalog,
        Err(e) => panic!("the benchmark's catalog is invalid: {e:?}"),
    }
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let (rounds, events_per_round) = if quick { (3, 100_000) } else { (24, 1_000_000) };
    let catalog = catalog();
    let events: Vec<Vec<u8>> = (0..VARIANTS).map(|n| variant_event(1_764_000_000_000_000_000, n)).collect();
    let limits = EventLimits { native_time: NativeTime::new(1_000_000_000), max_metadata_keys: 64 };
    let buffer = BufferLimits {
        max_buffer: usize::MAX,
        max_buffer_bytes: usize::MAX,
        max_batch: 512,
        max_batch_bytes: usize::MAX,
    };
    let mut names = EventNames::default();
    let mut pending = Pending::new(buffer);
    let mut fastest = f64::MAX;
    // Round 0 warms up.
    for round in 0..=rounds {
        let started = Instant::now();
        for (i, bytes) in events.iter().cycle().take(events_per_round).enumerate() {
            let checked = translate(&catalog, limits, bytes, &mut names, |_| Ok(()))
                .and_then(|record| pending.push_from_batch(record, 512 - i % 512));
            assert!(checked.is_ok(), "a benchmark event was refused: {checked:?}");
            if i % 512 == 511 {
                let batch = pending.take_batch();
                assert_eq!(batch.len(), 512);
            }
        }
        let ns = started.elapsed().as_nanos() as f64 / events_per_round as f64;
        if round > 0 {
            fastest = fastest.min(ns);
        }
    }
    println!(
        "translate and buffer: {fastest:.1} ns per event (fastest of {rounds} rounds of {events_per_round})"
    );
}
