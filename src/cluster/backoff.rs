//! How long a crashing slot waits before its next restart.

use std::time::Duration;

/// Restart delays: the first restart is immediate, then `step`, doubling up to `cap`. A worker
/// that was ready for `stable` before it exited resets its slot's count: it served, and its
/// restart is immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the second restart in a row.
    pub step: Duration,
    /// The longest delay.
    pub cap: Duration,
    /// How long a worker must have been ready for its exit not to count against the slot.
    pub stable: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            step: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            // Long enough that a worker crashing on its first requests backs off; short enough
            // that one killed from outside (an OOM killer) every second or so never waits.
            stable: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The delay before the restart that follows `failures` failures in a row (1 = the first).
    #[must_use]
    pub fn delay(&self, failures: u32) -> Duration {
        match failures {
            0 | 1 => Duration::ZERO,
            n => {
                let doublings = (n - 2).min(31);
                self.step.saturating_mul(1 << doublings).min(self.cap)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_restart_is_immediate_then_doubles_to_the_cap() {
        let backoff = Backoff::default();
        let delays: Vec<u128> = (1..=10).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(
            delays,
            [0, 100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        assert_eq!(backoff.delay(u32::MAX), backoff.cap);
    }
}
