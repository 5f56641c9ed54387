//! When to try again after a stream fails to open or is lost: capped exponential backoff with
//! jitter, so workers that restart together are not all reconnected in the same instant.
//!
//! Attempt `n` (1 for the first retry) waits a uniformly random time in
//! `[d / 2, d]`, where `d = min(max, initial * 2^(n - 1))`.

use std::time::Duration;

use crate::settings::Sampler;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl BackoffPolicy {
    /// The delay before retry number `attempt` (1-based); `random` draws the jitter.
    pub fn delay(&self, attempt: u32, random: &mut Sampler) -> Duration {
        let cap = self.max.max(self.initial);
        let doubling = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        let full = self.initial.saturating_mul(doubling).min(cap);
        let half = full / 2;
        half + half.mul_f64(random.next_unit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy { initial: Duration::from_millis(100), max: Duration::from_millis(2_000) }
    }

    #[test]
    fn doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut random = Sampler::new(7);
        for (attempt, full_ms) in
            [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1_600), (6, 2_000), (40, 2_000)]
        {
            let full = Duration::from_millis(full_ms);
            for _ in 0..200 {
                let delay = policy().delay(attempt, &mut random);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "attempt {attempt}: {delay:?} outside [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let mut random = Sampler::new(1);
        let delays: std::collections::HashSet<_> = (0..50).map(|_| policy().delay(3, &mut random)).collect();
        assert!(delays.len() > 40, "only {} distinct delays in 50", delays.len());
    }

    #[test]
    fn a_cap_below_initial_is_the_initial_delay_and_huge_attempts_do_not_overflow() {
        let mut random = Sampler::new(3);
        let odd = BackoffPolicy { initial: Duration::from_millis(500), max: Duration::from_millis(10) };
        assert!(odd.delay(u32::MAX, &mut random) <= Duration::from_millis(500));
        let wide = BackoffPolicy { initial: Duration::from_secs(u64::MAX / 4), max: Duration::MAX };
        assert!(wide.delay(u32::MAX, &mut random) > Duration::ZERO);
    }
}
