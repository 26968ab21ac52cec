//! A simulator of the VPS.org Snapshot API, served over real HTTP on loopback. The tests,
//! `agent demo` and `agent simulate` all use it. It honours the whole contract (bearer
//! token, the limit of 5, name rules, 201/204/400/401/404 with JSON bodies, paginated lists,
//! `in_progress` → `completed` after a delay) and injects faults on request.
//!
//! `world`: the snapshots and what happens to them; `faults`: the fault menu and
//! kill points; `http`: the HTTP front.

mod faults;
mod http;
mod world;

pub use faults::{Fault, FaultKind, Glitch, Op, TripWire};
pub use world::{Event, Mode};

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::api::{Snapshot, SnapshotStatus};
use crate::clock::SharedClock;
use crate::domain::{ServerId, SnapshotId};
use faults::{Armed, Trip};
use world::World;

pub const DEFAULT_TOKEN: &str = "sim-token";

/// How long snapshots take to complete.
#[derive(Debug, Clone, Copy)]
pub enum Delay {
    Fixed(Duration),
    /// Uniform between the two bounds (seeded, so runs repeat).
    Uniform(Duration, Duration),
    /// Around a base, ± the given fraction (a server's size sets its snapshot time).
    Around(Duration, f64),
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub token: String,
    pub delay: Delay,
    pub page_size: usize,
    /// `None`: every server id exists. `Some`: only these do (others get 404).
    pub servers: Option<BTreeSet<ServerId>>,
    pub seed: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            token: DEFAULT_TOKEN.to_string(),
            delay: Delay::Fixed(Duration::from_secs(0)),
            page_size: 100,
            servers: None,
            seed: 1,
        }
    }
}

/// Requests received: in all, and by operation.
#[derive(Debug, Clone, Default)]
pub struct Requests {
    pub total: u64,
    pub by_op: HashMap<Op, u64>,
}

impl Requests {
    pub fn of(&self, op: Op) -> u64 {
        self.by_op.get(&op).copied().unwrap_or(0)
    }
}

struct Inner {
    opts: SimOptions,
    clock: SharedClock,
    world: Mutex<World>,
    armed: Mutex<Armed>,
    /// Per-server completion delays overriding the default.
    delays: Mutex<HashMap<ServerId, Delay>>,
    requests: Mutex<Requests>,
    /// Requests received and not yet carried out or answered (a slowed one sleeping).
    in_flight: std::sync::atomic::AtomicUsize,
    rng: Mutex<fastrand::Rng>,
    base_url: Mutex<String>,
}

/// The simulated API. Cheap to clone; all clones share one world.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

/// A running simulator; stops when dropped.
pub struct SimServer {
    pub sim: Simulator,
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl SimServer {
    /// `http://127.0.0.1:PORT/api/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Simulator {
    pub fn new(opts: SimOptions, clock: SharedClock) -> Self {
        let rng = fastrand::Rng::with_seed(opts.seed);
        Self {
            inner: Arc::new(Inner {
                opts,
                clock,
                world: Mutex::default(),
                armed: Mutex::default(),
                delays: Mutex::default(),
                requests: Mutex::default(),
                in_flight: std::sync::atomic::AtomicUsize::new(0),
                rng: Mutex::new(rng),
                base_url: Mutex::new(String::new()),
            }),
        }
    }

    /// Starts on a free loopback port.
    pub async fn start(opts: SimOptions, clock: SharedClock) -> std::io::Result<SimServer> {
        Self::new(opts, clock)
            .serve(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
    }

    /// The simulator's time (its clock's).
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// The world as of now: creates due to land late have landed.
    fn world(&self) -> MutexGuard<'_, World> {
        let mut w = lock(&self.inner.world);
        w.land(self.now());
        w
    }

    pub fn set_mode(&self, server: ServerId, mode: Mode) {
        self.world().modes.insert(server, mode);
    }

    pub fn set_delay(&self, server: ServerId, delay: Delay) {
        lock(&self.inner.delays).insert(server, delay);
    }

    pub fn inject(&self, fault: Fault) {
        lock(&self.inner.armed).faults.push(fault);
    }

    pub fn clear_faults(&self) {
        lock(&self.inner.armed).faults.clear();
    }

    /// Applies `glitch` to every listing from now on.
    pub fn glitch(&self, glitch: Glitch) {
        lock(&self.inner.armed).glitches.push(glitch);
    }

    pub fn clear_glitches(&self) {
        lock(&self.inner.armed).glitches.clear();
    }

    /// The next snapshot made gets id `id` (the ones after it count on, wrapping at
    /// 2^64), unless ids are past it already: ids near and above 2^63, as an API typed
    /// with integers may hand out.
    pub fn set_next_id(&self, id: u64) {
        self.world().set_next_id(id);
    }

    /// Arms a kill point on the request after the next `skip`: it is carried out or not
    /// (`carry_out`), then held without an answer until the harness releases it (having
    /// killed whoever sent it), then its connection is dropped. Replaces any armed one.
    pub fn arm_trip(&self, skip: u32, carry_out: bool) -> TripWire {
        let (tripped_tx, tripped) = tokio::sync::oneshot::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel();
        lock(&self.inner.armed).trip = Some(Trip {
            skip,
            carry_out,
            tripped: tripped_tx,
            release: release_rx,
        });
        TripWire { tripped, release }
    }

    /// Disarms the kill point, if it has not tripped.
    pub fn disarm_trip(&self) {
        lock(&self.inner.armed).trip = None;
    }

    /// Puts a snapshot in place directly (one the agent did not make, say). An
    /// `in_progress` one completes like a created one (the server's mode and delay); any
    /// other unknown status stays as it is.
    pub fn put(
        &self,
        server: ServerId,
        name: &str,
        status: SnapshotStatus,
        created_at: DateTime<Utc>,
    ) -> SnapshotId {
        self.put_described(server, name, None, status, created_at)
    }

    /// [`Simulator::put`] with a description: a snapshot made by hand in the panel, with
    /// whatever name and description its maker typed.
    pub fn put_described(
        &self,
        server: ServerId,
        name: &str,
        description: Option<&str>,
        status: SnapshotStatus,
        created_at: DateTime<Utc>,
    ) -> SnapshotId {
        let delay = self.draw_delay(server);
        self.world()
            .put(server, name, description, status, created_at, delay)
    }

    /// Deletes a snapshot behind the agent's back.
    pub fn delete_external(&self, id: SnapshotId) -> bool {
        let now = self.now();
        self.world().remove(id, true, now)
    }

    /// The server's snapshots as the API would list them.
    pub fn snapshots(&self, server: ServerId) -> Vec<Snapshot> {
        let now = self.now();
        self.world().listing(Some(server), now)
    }

    /// When snapshot `id` completes (or completed); `None` if unknown or never.
    pub fn ready_at(&self, id: SnapshotId) -> Option<DateTime<Utc>> {
        self.world()
            .get(id)
            .filter(|s| s.fate != Mode::Stuck)
            .map(|s| s.ready_at)
    }

    /// Whether everything in flight has landed: no request still being handled (a slowed
    /// one lands when its delay is over, whether or not its client still waits), no create
    /// due to land late, no snapshot still on its way to completing.
    pub fn settled(&self) -> bool {
        let now = self.now();
        self.requests_in_flight() == 0 && self.world().settled(now)
    }

    /// Requests received and not yet carried out or answered.
    pub fn requests_in_flight(&self) -> usize {
        self.inner
            .in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn events(&self) -> Vec<Event> {
        self.world().events.clone()
    }

    /// Requests received so far.
    pub fn requests(&self) -> Requests {
        lock(&self.inner.requests).clone()
    }

    fn draw_delay(&self, server: ServerId) -> chrono::Duration {
        let delay = lock(&self.inner.delays)
            .get(&server)
            .copied()
            .unwrap_or(self.inner.opts.delay);
        let mut rng = lock(&self.inner.rng);
        let d = match delay {
            Delay::Fixed(d) => d,
            Delay::Uniform(lo, hi) => {
                let span = hi.saturating_sub(lo).as_millis() as u64;
                lo + Duration::from_millis(rng.u64(0..=span))
            }
            Delay::Around(base, spread) => {
                base.mul_f64((1.0 - spread + 2.0 * spread * rng.f64()).max(0.0))
            }
        };
        chrono::Duration::from_std(d).unwrap_or_default()
    }
}
