//! What a NIF on a normal scheduler tells the VM about the time it took, so that a process
//! calling it many times in a row is preempted like any other (`enif_consume_timeslice`).

use std::time::Instant;

use rustler::Env;

/// Charges the time since `started` to the calling process's time slice, taken as about
/// 1 ms (10 µs is 1 %, at least 1 % and at most all of it).
pub fn charge_since(env: Env, started: Instant) {
    let percent = (started.elapsed().as_micros() / 10).clamp(1, 100) as i32;
    rustler::schedule::consume_timeslice(env, percent);
}
