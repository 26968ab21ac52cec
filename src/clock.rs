//! Time as a dependency: the real wall clock, or a virtual one that tests (and the
//! simulator they share it with) advance instantly instead of sleeping.

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
    /// The monotonic time beside the wall time, when the clock has one: what a step of the
    /// wall clock (NTP, an operator's `date -s`, a suspend) is measured against
    /// ([`StepWatch`]). A virtual clock, which moves only when slept on, has none.
    fn monotonic(&self) -> Option<tokio::time::Instant> {
        None
    }
    /// Wall and monotonic time read together: a clock that other tasks move (a virtual
    /// one) reads both at one instant, so that time passing between the two reads is
    /// never taken for a step.
    fn read(&self) -> (DateTime<Utc>, Option<tokio::time::Instant>) {
        (self.now(), self.monotonic())
    }
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
    fn monotonic(&self) -> Option<tokio::time::Instant> {
        Some(tokio::time::Instant::now())
    }
}

pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Wall time read off tokio's clock: under `tokio::time::pause()` it advances with the
/// paused clock, so scheduler tests cover days of schedule in milliseconds, in order.
/// [`TokioClock::step`] moves the wall time alone, as NTP or a suspend does.
#[derive(Debug, Clone)]
pub struct TokioClock {
    base: DateTime<Utc>,
    origin: tokio::time::Instant,
    stepped: Arc<Mutex<chrono::Duration>>,
}

impl TokioClock {
    pub fn starting_at(base: DateTime<Utc>) -> Self {
        Self {
            base,
            origin: tokio::time::Instant::now(),
            stepped: Arc::new(Mutex::new(chrono::Duration::zero())),
        }
    }

    /// Steps the wall clock by `by` (back when negative); monotonic time is untouched.
    pub fn step(&self, by: chrono::Duration) {
        *self.stepped.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let stepped = *self.stepped.lock().unwrap_or_else(|e| e.into_inner());
        self.base
            + chrono::Duration::from_std(self.origin.elapsed()).unwrap_or(chrono::Duration::MAX)
            + stepped
    }
    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
    fn monotonic(&self) -> Option<tokio::time::Instant> {
        Some(tokio::time::Instant::now())
    }
}

/// A wall-clock step smaller than this is jitter (a busy machine, a slow tick), not a step.
pub const STEP_THRESHOLD: chrono::Duration = chrono::Duration::seconds(2);

/// Notices when the wall clock moves apart from monotonic time: a step by NTP or by
/// hand, either way, or a suspend (monotonic time stops, wall time does not). Looked at
/// every second or so by the daemon, whose schedule follows the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct StepWatch {
    wall: DateTime<Utc>,
    mono: tokio::time::Instant,
}

impl StepWatch {
    /// A watch on `clock`, or `None` for a clock without monotonic time.
    pub fn new(clock: &dyn Clock) -> Option<Self> {
        let (wall, mono) = clock.read();
        Some(Self { wall, mono: mono? })
    }

    /// How far the wall clock stepped since the last look (forward when positive), when
    /// it did by [`STEP_THRESHOLD`] or more.
    pub fn look(&mut self, clock: &dyn Clock) -> Option<chrono::Duration> {
        let (wall, mono) = clock.read();
        let mono = mono?;
        let elapsed = chrono::Duration::from_std(mono - self.mono).unwrap_or_default();
        let step = wall - (self.wall + elapsed);
        *self = Self { wall, mono };
        (step.abs() >= STEP_THRESHOLD).then_some(step)
    }
}

/// A clock that only moves when someone sleeps on it: a sleep of `d` moves time to at
/// least `now + d` and returns at once (after yielding, so other tasks run). Lets a test
/// cover a 10-minute snapshot and a 30-minute timeout in milliseconds, deterministically.
/// Its monotonic side moves with it, except when the wall clock is stepped or the box
/// sleeps ([`VirtualClock::step`], [`VirtualClock::suspend`]); the world's own time, which
/// others (the API) go by, is [`VirtualClock::unstepped`].
#[derive(Debug, Clone)]
pub struct VirtualClock {
    now: Arc<Mutex<Times>>,
    origin: tokio::time::Instant,
    slept: Arc<Mutex<Vec<Duration>>>,
}

/// The box's wall time, how far its monotonic time moved since the clock was made, and
/// the world's time (which a step of the box's clock leaves alone).
#[derive(Debug, Clone, Copy)]
struct Times {
    wall: DateTime<Utc>,
    mono: Duration,
    world: DateTime<Utc>,
}

impl Times {
    /// Moves all three forward to `wall`, when it is ahead.
    fn forward_to(&mut self, wall: DateTime<Utc>) {
        if let Ok(ahead) = (wall - self.wall).to_std() {
            self.wall = wall;
            self.mono += ahead;
            self.world += chrono::Duration::from_std(ahead).unwrap_or(chrono::Duration::MAX);
        }
    }
}

impl VirtualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Arc::new(Mutex::new(Times {
                wall: start,
                mono: Duration::ZERO,
                world: start,
            })),
            origin: tokio::time::Instant::now(),
            slept: Arc::default(),
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves time forward by `d` without anyone sleeping.
    pub fn advance(&self, d: Duration) {
        let mut t = self.times();
        let to = t.wall + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        t.forward_to(to);
    }

    /// Steps the box's wall clock by `by` (back when negative), as NTP or `date -s` do:
    /// monotonic time and the world's time untouched.
    pub fn step(&self, by: chrono::Duration) {
        self.times().wall += by;
    }

    /// The box sleeps for `d`: the world's time and the box's wall clock move on, its
    /// monotonic time does not.
    pub fn suspend(&self, d: Duration) {
        let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        let mut t = self.times();
        t.wall += d;
        t.world += d;
    }

    /// How far the box's wall clock is from the world's (ahead when positive).
    pub fn off_by(&self) -> chrono::Duration {
        let t = self.times();
        t.wall - t.world
    }

    /// The world's time, as a party whose clock is not the box's sees it (the API's
    /// servers): the box's steps leave it alone.
    pub fn unstepped(&self) -> Unstepped {
        Unstepped(self.clone())
    }

    /// Every sleep requested so far, in order.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.slept.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// [`VirtualClock::unstepped`].
#[derive(Debug, Clone)]
pub struct Unstepped(VirtualClock);

impl Clock for Unstepped {
    fn now(&self) -> DateTime<Utc> {
        self.0.times().world
    }
    fn sleep(&self, duration: Duration) -> Sleep {
        self.0.sleep(duration)
    }
    fn monotonic(&self) -> Option<tokio::time::Instant> {
        self.0.monotonic()
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> DateTime<Utc> {
        self.times().wall
    }
    fn monotonic(&self) -> Option<tokio::time::Instant> {
        Some(self.origin + self.times().mono)
    }
    fn read(&self) -> (DateTime<Utc>, Option<tokio::time::Instant>) {
        let t = *self.times();
        (t.wall, Some(self.origin + t.mono))
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
            now.lock()
                .unwrap_or_else(|e| e.into_inner())
                .forward_to(target);
            tokio::task::yield_now().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_step_of_the_wall_clock_is_noticed_either_way_and_jitter_is_not() {
        let clock = TokioClock::starting_at(DateTime::from_timestamp(1_800_000_000, 0).unwrap());
        let mut watch = StepWatch::new(&clock).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(watch.look(&clock), None, "time passing is not a step");
        clock.step(chrono::Duration::hours(-1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(watch.look(&clock), Some(chrono::Duration::hours(-1)));
        clock.step(chrono::Duration::milliseconds(900));
        assert_eq!(watch.look(&clock), None, "under a second or two: jitter");
        clock.step(chrono::Duration::minutes(30));
        assert_eq!(watch.look(&clock), Some(chrono::Duration::minutes(30)));
    }

    #[test]
    fn a_virtual_clock_steps_its_wall_time_alone() {
        let clock = VirtualClock::new(DateTime::from_timestamp(1_800_000_000, 0).unwrap());
        let mut watch = StepWatch::new(&clock).unwrap();
        clock.advance(Duration::from_secs(3600));
        assert_eq!(watch.look(&clock), None, "time passing is not a step");
        clock.step(chrono::Duration::minutes(-90));
        assert_eq!(watch.look(&clock), Some(chrono::Duration::minutes(-90)));
        clock.advance(Duration::from_secs(60));
        assert_eq!(watch.look(&clock), None);
        clock.step(chrono::Duration::hours(5));
        assert_eq!(watch.look(&clock), Some(chrono::Duration::hours(5)));
        let api = clock.unstepped();
        let world = DateTime::from_timestamp(1_800_000_000 + 3600 + 60, 0).unwrap();
        assert_eq!(api.now(), world, "the steps are the box's alone");
        assert_eq!(clock.off_by(), chrono::Duration::minutes(210));
        clock.suspend(Duration::from_secs(600));
        assert_eq!(watch.look(&clock), Some(chrono::Duration::minutes(10)));
        assert_eq!(api.now(), world + chrono::Duration::minutes(10));
    }
}
