//! How transient API failures are retried: the one place the policy lives.
//!
//! Exponential backoff with jitter (each wait lies in `[d, 2d)` for `d` = 250 ms, 500 ms,
//! … up to 15 s, so a herd of agents spreads out and none waits less than half the
//! nominal delay), `max_retries` retries after the first attempt, a `Retry-After` from
//! the API honoured (cut to 5 minutes), and every wait slept on the injected clock.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::ApiError;
use crate::clock::SharedClock;
use crate::timing::Backoff;

/// A `Retry-After` longer than this is cut to it.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
pub(super) struct RetryPolicy {
    pub max_retries: u32,
    /// The nominal waits; each is drawn from `[d, 2d)`.
    pub backoff: Backoff,
}

impl RetryPolicy {
    pub fn new(max_retries: u32) -> Self {
        Self {
            max_retries,
            backoff: Backoff {
                base: Duration::from_millis(250),
                cap: Duration::from_secs(15),
            },
        }
    }

    /// Runs `attempt` until it succeeds, fails in a way not worth retrying, or the
    /// retries run out; the last error is returned.
    pub async fn run<T, F, Fut>(
        &self,
        clock: &SharedClock,
        what: &str,
        attempt: F,
    ) -> Result<T, ApiError>
    where
        T: Send,
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, ApiError>> + Send,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.backoff.base)
            .with_max_delay(self.backoff.cap)
            .with_max_times(self.max_retries as usize)
            .with_jitter();
        let clock = clock.clone();
        let retried = attempt
            .retry(backoff)
            .sleep(move |d| clock.sleep(d))
            .when(ApiError::is_retryable)
            .adjust(|e, d| d.map(|d| e.retry_after().unwrap_or(d)))
            .notify(|e, d| {
                tracing::warn!(%what, "{e}; retrying in {}", crate::human::Secs(d));
            });
        // Boxed as `Send`: the retry future holds closures over borrowed requests, which
        // the compiler cannot otherwise prove `Send` for every lifetime.
        let retried: Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + '_>> =
            Box::pin(retried);
        retried.await
    }
}

/// The `Retry-After` header in seconds, cut to [`MAX_RETRY_AFTER`].
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}
