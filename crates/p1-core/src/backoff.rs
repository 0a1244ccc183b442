//! Capped exponential backoff with jitter, for the reader's reconnects and every sink's
//! delivery retries.
//!
//! The n-th delay (counting from 0 since the last [`Backoff::reset`]) is drawn uniformly from
//! `[max(min, c/2), c]` where `c = min(max, min · 2ⁿ)`. So the first delay is exactly `min`,
//! delays roughly double, never fall below `min` nor exceed `max`, and gateways restarted by the
//! same power cut do not hammer a broker in step. The random source is a small xorshift64*
//! generator: no dependency, and [`Backoff::with_seed`] makes tests deterministic.
//!
//! Time comes from `tokio::time` ([`Backoff::wait`]), so paused-time tests control it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

#[cfg(test)]
mod tests;

/// The smallest `min` used: a zero `min` would make a retry loop spin.
pub const MIN_FLOOR: Duration = Duration::from_millis(1);

/// Capped exponential backoff with jitter. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// Backoff between `min` and `max`, seeded from the clock (each instance differs).
    ///
    /// `min` is raised to [`MIN_FLOOR`]; a `max` below `min` is raised to `min`.
    #[must_use]
    pub fn new(min: Duration, max: Duration) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()) ^ d.as_secs());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self::with_seed(min, max, nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Like [`Backoff::new`] with a fixed seed: the same seed gives the same delays.
    #[must_use]
    pub fn with_seed(min: Duration, max: Duration, seed: u64) -> Self {
        let min = min.max(MIN_FLOOR);
        Self {
            min,
            max: max.max(min),
            attempt: 0,
            // xorshift has one forbidden state: zero.
            rng: if seed == 0 {
                0x2545_F491_4F6C_DD1D
            } else {
                seed
            },
        }
    }

    /// The delay before the next retry; each call counts one more attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let low = (ceiling / 2).max(self.min);
        let span = nanos(ceiling).saturating_sub(nanos(low));
        // `span + 1` cannot overflow: span < u64::MAX because low >= 1 ms.
        let jitter = self.next_random() % (span + 1);
        low + Duration::from_nanos(jitter)
    }

    /// Sleep for [`Backoff::next_delay`] on tokio's clock.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe; the attempt is counted even if the sleep is cancelled.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Start again from `min` (call after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Delays handed out since the last reset.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// `min(max, min · 2^attempt)`, without overflow.
    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// xorshift64* (Vigna): fast, decent, not for secrets.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
