//! When to try the Manager again: exponential backoff with jitter.
//!
//! After a Manager restart every agent of a fleet loses its connection at the
//! same moment; the jitter spreads their reconnects so they do not arrive in
//! lockstep. The delay doubles after each failed attempt up to a cap, and
//! starts again from the beginning after a successful handshake.

use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};

/// Backoff bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The ceiling of the first delay.
    pub initial: Duration,
    /// The ceiling no delay exceeds.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// Reconnect delays: attempt `n` waits a uniformly random time between half
/// and all of `min(max, initial * 2^n)` ("equal jitter"), so no delay is
/// near zero and no two agents keep the same rhythm.
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    /// Delays drawn from the operating system's randomness.
    #[must_use]
    pub fn new(config: BackoffConfig) -> Self {
        Self::with_rng(config, StdRng::from_os_rng())
    }

    /// Delays drawn from a seeded generator, for tests.
    #[cfg(any(test, feature = "test-backend"))]
    #[must_use]
    pub fn seeded(config: BackoffConfig, seed: u64) -> Self {
        Self::with_rng(config, StdRng::seed_from_u64(seed))
    }

    fn with_rng(config: BackoffConfig, rng: StdRng) -> Self {
        Self {
            config,
            attempt: 0,
            rng,
        }
    }

    /// The ceiling of the next delay.
    #[must_use]
    pub fn ceiling(&self) -> Duration {
        let factor = 1_u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.config
            .initial
            .saturating_mul(factor)
            .min(self.config.max)
    }

    /// The delay before the next attempt; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from(ceiling.saturating_sub(half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(self.rng.random_range(0..=spread))
    }

    /// Starts again from the initial delay, after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}
