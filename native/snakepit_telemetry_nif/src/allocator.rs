//! The NIF's Rust allocations go to mimalloc rather than the C library's malloc (the BEAM's
//! own memory is not affected: it has its own allocators).
//!
//! Chosen by measurement on 2 cores (`bench/stream_churn.exs`, `bench/nif_path.exs`; see
//! `bench/RESULTS.md`): after 5,000 connected streams were unregistered, glibc malloc kept
//! about 215 MiB of the BEAM's RSS through every later round of 1,000 streams, mimalloc gave
//! most of it back (rounds at about 145 MiB instead of 250–290 MiB); and the batched NIF path
//! delivered about 13 % more events/s at 0.70 instead of 0.79 µs of runtime CPU per event.
//! The price: a connected idle stream peaks at about 61 KiB instead of 44 KiB.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
