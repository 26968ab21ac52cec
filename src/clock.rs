//! Time as a dependency: the real wall clock, or a virtual one that tests (and the
//! simulator they share it with) advance instantly instead of sleeping.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where "now" comes from and how to wait. Everything that waits on the API's timing
/// (backoff, polling, the simulator's snapshot progress) goes through this.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    fn sleep(&self, duration: Duration) -> Sleep;
}

pub type SharedClock = Arc<dyn Clock>;

/// The wall clock and tokio's timer.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Wall time read off tokio's clock: under `tokio::time::pause()` it advances with the
/// paused clock, so scheduler tests cover days in milliseconds, in order.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base: DateTime<Utc>,
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(base: DateTime<Utc>) -> Self {
        Self {
            base,
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        self.base
            + chrono::Duration::from_std(self.origin.elapsed()).unwrap_or(chrono::Duration::MAX)
    }
    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A clock that only moves when someone sleeps on it: a sleep of `d` moves time to at
/// least `now + d` and returns at once (after yielding, so other tasks run). Lets a test
/// cover a 10-minute snapshot and a 30-minute timeout in milliseconds, deterministically.
#[derive(Debug, Clone)]
pub struct VirtualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
    slept: Arc<Mutex<Vec<Duration>>>,
}

impl VirtualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
            slept: Arc::default(),
        }
    }

    /// Moves time forward by `d` without anyone sleeping.
    pub fn advance(&self, d: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    }

    /// Every sleep requested so far, in order.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.slept.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn sleep(&self, duration: Duration) -> Sleep {
        self.slept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(duration);
        let target =
            self.now() + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX);
        let now = self.now.clone();
        Box::pin(async move {
            {
                let mut now = now.lock().unwrap_or_else(|e| e.into_inner());
                if *now < target {
                    *now = target;
                }
            }
            tokio::task::yield_now().await;
        })
    }
}

/// A duration as a person reads it in a log: `1.6s` under a minute, `4m 40s` above.
pub struct Secs(pub Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenths = (self.0.as_millis() + 50) / 100;
        if tenths < 600 {
            if tenths.is_multiple_of(10) {
                write!(f, "{}s", tenths / 10)
            } else {
                write!(f, "{}.{}s", tenths / 10, tenths % 10)
            }
        } else {
            let secs = (self.0.as_millis() + 500) / 1000;
            let secs = u64::try_from(secs).unwrap_or(u64::MAX);
            write!(
                f,
                "{}",
                humantime::format_duration(Duration::from_secs(secs))
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_rounded_for_people() {
        let s = |ms| Secs(Duration::from_millis(ms)).to_string();
        assert_eq!(s(1_641), "1.6s");
        assert_eq!(s(20_000), "20s");
        assert_eq!(s(49), "0s");
        assert_eq!(s(59_960), "1m");
        assert_eq!(s(280_400), "4m 40s");
        assert_eq!(Secs(Duration::new(1, 641_335_718)).to_string(), "1.6s");
    }
}
