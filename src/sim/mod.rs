//! A simulator of the VPS.org Snapshot API, served over real HTTP on loopback. The tests,
//! `agent demo` and `agent simulate` all use it. It honours the whole contract (bearer
//! token, the limit of 5, name rules, 201/204/400/401/404 with JSON bodies, paginated lists,
//! `in_progress` → `completed` after a delay) and injects faults on request: status codes
//! with `Retry-After`, dropped connections (before or after the work is done), slow
//! responses and malformed bodies.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{ServerRef, Snapshot, SnapshotStatus};
use crate::clock::SharedClock;

pub const DEFAULT_TOKEN: &str = "sim-token";
const LIMIT: usize = 5;

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
    pub servers: Option<BTreeSet<u64>>,
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

/// How a server's snapshots end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Snapshots end `failed`.
    Fail,
    /// Snapshots stay `in_progress` for ever.
    Stuck,
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    List,
    Create,
    Delete,
    Restore,
    Any,
}

#[derive(Debug, Clone)]
pub enum FaultKind {
    /// Answer with this status (and `Retry-After` seconds) without doing the work.
    Status {
        code: u16,
        retry_after: Option<u64>,
        body: String,
    },
    /// Close the connection without answering and without doing the work.
    DropBefore,
    /// Do the work, then close the connection without answering.
    DropAfter,
    /// Wait this long (real time) before handling the request normally.
    Delay(Duration),
    /// Do the work, then wait this long (real time) before answering.
    DelayAfter(Duration),
    /// Answer 200 with this body instead of doing the work.
    Body(String),
    /// Answer with this status and a JSON body that repeats the request's headers
    /// (the `Authorization` header included), without doing the work: an API whose own
    /// words carry the token.
    EchoHeaders(u16),
    /// A create only: close the connection without answering, and carry the create out
    /// this long (on the simulator's clock) later. The answer is lost and the snapshot
    /// lands after the client has stopped looking for it.
    LandLate(Duration),
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub op: Op,
    pub kind: FaultKind,
    /// How many matching requests it hits.
    pub times: u32,
    /// Probability that a matching request is hit (`None`: every one, until `times` runs out).
    pub rate: Option<f64>,
    /// Let this many matching requests through first (e.g. 1 on `List` spares the
    /// initial listing and hits the polls).
    pub skip: u32,
}

impl Fault {
    pub fn new(op: Op, kind: FaultKind, times: u32) -> Self {
        Self {
            op,
            kind,
            times,
            rate: None,
            skip: 0,
        }
    }
    pub fn status(op: Op, code: u16, times: u32) -> Self {
        Self::new(
            op,
            FaultKind::Status {
                code,
                retry_after: None,
                body: format!("<html><body><h1>{code}</h1>upstream trouble</body></html>"),
            },
            times,
        )
    }
}

/// What happened to the simulated world, for invariant checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Created {
        id: u64,
        server_id: u64,
        name: String,
    },
    Deleted {
        id: u64,
        server_id: u64,
        name: String,
        description: Option<String>,
        status: SnapshotStatus,
        /// Deleted through `delete_external`, not the API.
        external: bool,
        /// At that moment a completed snapshot of the same job (by name), on the same
        /// server and newer (by time, then id, as the agent orders them), existed: the
        /// deleted one was not the newest good one.
        newer_completed_sibling: bool,
    },
    Restored {
        id: u64,
    },
}

#[derive(Debug, Clone)]
struct Snap {
    id: u64,
    server_id: u64,
    name: String,
    description: Option<String>,
    created_at: DateTime<Utc>,
    ready_at: DateTime<Utc>,
    fate: Mode,
}

impl Snap {
    fn status(&self, now: DateTime<Utc>) -> SnapshotStatus {
        match self.fate {
            Mode::Stuck => SnapshotStatus::InProgress,
            _ if now < self.ready_at => SnapshotStatus::InProgress,
            Mode::Normal => SnapshotStatus::Completed,
            Mode::Fail => SnapshotStatus::Failed("failed".into()),
        }
    }

    fn to_api(&self, now: DateTime<Utc>) -> Snapshot {
        let status = self.status(now);
        Snapshot {
            id: self.id,
            server: ServerRef {
                id: self.server_id,
                name: Some(format!("server-{}", self.server_id)),
            },
            name: self.name.clone(),
            size_mb: (status == SnapshotStatus::Completed).then_some(5120),
            status,
            created_at: self.created_at,
            description: self.description.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    snaps: BTreeMap<u64, Snap>,
    next_id: u64,
    modes: HashMap<u64, Mode>,
    /// Per-server completion delay overriding the default.
    delays: HashMap<u64, Delay>,
    faults: Vec<Fault>,
    /// Creates accepted but not carried out yet ([`FaultKind::LandLate`]).
    late: Vec<Snap>,
    trip: Option<Trip>,
    events: Vec<Event>,
    requests: u64,
    per_op: HashMap<&'static str, u64>,
}

impl State {
    fn count(&self, server_id: u64) -> usize {
        self.snaps
            .values()
            .filter(|s| s.server_id == server_id)
            .count()
    }

    /// Carries out late creates whose time has come (while the limit allows).
    fn land(&mut self, now: DateTime<Utc>) {
        let (due, later): (Vec<Snap>, Vec<Snap>) = std::mem::take(&mut self.late)
            .into_iter()
            .partition(|s| s.created_at <= now);
        self.late = later;
        for snap in due {
            if self.count(snap.server_id) >= LIMIT {
                continue;
            }
            self.events.push(Event::Created {
                id: snap.id,
                server_id: snap.server_id,
                name: snap.name.clone(),
            });
            self.snaps.insert(snap.id, snap);
        }
    }
}

/// A kill point armed by [`Simulator::arm_trip`].
#[derive(Debug)]
struct Trip {
    /// Requests to let through first.
    skip: u32,
    carry_out: bool,
    tripped: tokio::sync::oneshot::Sender<&'static str>,
    release: tokio::sync::oneshot::Receiver<()>,
}

/// The harness's side of an armed kill point.
#[derive(Debug)]
pub struct TripWire {
    /// Resolves when the request arrives (and, if so armed, has been carried out), with
    /// what it asked for (`list`, `create`, `delete`, `restore`).
    pub tripped: tokio::sync::oneshot::Receiver<&'static str>,
    /// Send when the sender has been dealt with: the request's connection is then dropped
    /// without an answer.
    pub release: tokio::sync::oneshot::Sender<()>,
}

struct Inner {
    opts: SimOptions,
    clock: SharedClock,
    state: Mutex<State>,
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

#[derive(Debug)]
struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}
impl std::error::Error for Dropped {}

type Resp = Response<Full<Bytes>>;

fn reply(code: StatusCode, body: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

impl Simulator {
    pub fn new(opts: SimOptions, clock: SharedClock) -> Self {
        let rng = fastrand::Rng::with_seed(opts.seed);
        Self {
            inner: Arc::new(Inner {
                opts,
                clock,
                state: Mutex::new(State {
                    next_id: 800,
                    ..State::default()
                }),
                rng: Mutex::new(rng),
                base_url: Mutex::new(String::new()),
            }),
        }
    }

    /// The world as of now: creates due to land late have landed.
    fn state(&self) -> MutexGuard<'_, State> {
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.late.is_empty() {
            st.land(self.inner.clock.now());
        }
        st
    }

    /// Binds `addr` (use port 0 for any) and serves until the returned server is dropped.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<SimServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        *self
            .inner
            .base_url
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = format!("http://{addr}/api/v1/");
        let stop = CancellationToken::new();
        let sim = self.clone();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else { continue };
                let sim = sim.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let sim = sim.clone();
                        async move { sim.handle(req).await }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        () = token.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        Ok(SimServer {
            sim: self,
            addr,
            stop,
        })
    }

    /// Starts on a free loopback port.
    pub async fn start(opts: SimOptions, clock: SharedClock) -> std::io::Result<SimServer> {
        Self::new(opts, clock)
            .serve(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
    }

    pub fn set_mode(&self, server_id: u64, mode: Mode) {
        self.state().modes.insert(server_id, mode);
    }

    pub fn set_delay(&self, server_id: u64, delay: Delay) {
        self.state().delays.insert(server_id, delay);
    }

    pub fn inject(&self, fault: Fault) {
        self.state().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Arms a kill point on the request after the next `skip`: it is carried out or not
    /// (`carry_out`), then held without an answer until the harness releases it (having
    /// killed whoever sent it), then its connection is dropped. Replaces any armed one.
    pub fn arm_trip(&self, skip: u32, carry_out: bool) -> TripWire {
        let (tripped_tx, tripped) = tokio::sync::oneshot::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel();
        self.state().trip = Some(Trip {
            skip,
            carry_out,
            tripped: tripped_tx,
            release: release_rx,
        });
        TripWire { tripped, release }
    }

    /// Disarms the kill point, if it has not tripped.
    pub fn disarm_trip(&self) {
        self.state().trip = None;
    }

    /// Takes the armed trip if this request is the one it waits for.
    fn take_trip(&self) -> Option<Trip> {
        let mut st = self.state();
        let trip = st.trip.as_mut()?;
        if trip.skip > 0 {
            trip.skip -= 1;
            return None;
        }
        st.trip.take()
    }

    /// Puts a snapshot in place directly (one the agent did not make, say). An
    /// `in_progress` one completes like a created one (the server's mode and delay); any
    /// other unknown status stays as it is.
    pub fn put(
        &self,
        server_id: u64,
        name: &str,
        status: SnapshotStatus,
        created_at: DateTime<Utc>,
    ) -> u64 {
        self.put_described(server_id, name, None, status, created_at)
    }

    /// [`Simulator::put`] with a description: a snapshot made by hand in the panel, with
    /// whatever name and description its maker typed.
    pub fn put_described(
        &self,
        server_id: u64,
        name: &str,
        description: Option<&str>,
        status: SnapshotStatus,
        created_at: DateTime<Utc>,
    ) -> u64 {
        let delay = self.draw_delay(server_id);
        let mut st = self.state();
        st.next_id += 1;
        let id = st.next_id;
        let (fate, ready_at) = match status {
            SnapshotStatus::Completed => (Mode::Normal, created_at),
            SnapshotStatus::Failed(_) => (Mode::Fail, created_at),
            SnapshotStatus::InProgress => (
                st.modes.get(&server_id).copied().unwrap_or(Mode::Normal),
                created_at + chrono::Duration::from_std(delay).unwrap_or_default(),
            ),
            SnapshotStatus::Unknown(_) => (Mode::Stuck, created_at),
        };
        st.snaps.insert(
            id,
            Snap {
                id,
                server_id,
                name: name.to_string(),
                description: description.map(str::to_string),
                created_at,
                ready_at,
                fate,
            },
        );
        id
    }

    /// Deletes a snapshot behind the agent's back.
    pub fn delete_external(&self, id: u64) -> bool {
        self.remove(id, true)
    }

    /// Removes a snapshot and logs it, noting whether a newer completed sibling existed.
    fn remove(&self, id: u64, external: bool) -> bool {
        let now = self.inner.clock.now();
        let mut st = self.state();
        let Some(snap) = st.snaps.remove(&id) else {
            return false;
        };
        let job = crate::naming::parse(&snap.name).map(|p| p.job);
        let newer_completed_sibling = st.snaps.values().any(|o| {
            o.server_id == snap.server_id
                && (o.created_at, o.id) > (snap.created_at, snap.id)
                && o.status(now) == SnapshotStatus::Completed
                && job.is_some()
                && crate::naming::parse(&o.name).map(|p| p.job) == job
        });
        let status = snap.status(now);
        st.events.push(Event::Deleted {
            id,
            server_id: snap.server_id,
            name: snap.name,
            description: snap.description,
            status,
            external,
            newer_completed_sibling,
        });
        true
    }

    /// The server's snapshots as the API would list them.
    pub fn snapshots(&self, server_id: u64) -> Vec<Snapshot> {
        let now = self.inner.clock.now();
        self.state()
            .snaps
            .values()
            .filter(|s| s.server_id == server_id)
            .map(|s| s.to_api(now))
            .collect()
    }

    /// When snapshot `id` completes (or completed); `None` if unknown or never.
    pub fn ready_at(&self, id: u64) -> Option<DateTime<Utc>> {
        self.state()
            .snaps
            .get(&id)
            .filter(|s| s.fate != Mode::Stuck)
            .map(|s| s.ready_at)
    }

    pub fn events(&self) -> Vec<Event> {
        self.state().events.clone()
    }

    /// Requests received so far, in all and by operation (`list`, `create`, ...).
    pub fn requests(&self) -> (u64, HashMap<&'static str, u64>) {
        let st = self.state();
        (st.requests, st.per_op.clone())
    }

    fn draw_delay(&self, server_id: u64) -> Duration {
        let delay = self
            .state()
            .delays
            .get(&server_id)
            .copied()
            .unwrap_or(self.inner.opts.delay);
        match delay {
            Delay::Fixed(d) => d,
            Delay::Uniform(lo, hi) => {
                let mut rng = self.inner.rng.lock().unwrap_or_else(|e| e.into_inner());
                let span = hi.saturating_sub(lo).as_millis() as u64;
                lo + Duration::from_millis(rng.u64(0..=span))
            }
            Delay::Around(base, spread) => {
                let mut rng = self.inner.rng.lock().unwrap_or_else(|e| e.into_inner());
                base.mul_f64((1.0 - spread + 2.0 * spread * rng.f64()).max(0.0))
            }
        }
    }

    /// Takes the first fault matching `op`, if any fires for this request.
    fn take_fault(&self, op: Op) -> Option<FaultKind> {
        let mut st = self.state();
        let idx = st
            .faults
            .iter()
            .position(|f| f.times > 0 && (f.op == op || f.op == Op::Any))?;
        if st.faults[idx].skip > 0 {
            st.faults[idx].skip -= 1;
            return None;
        }
        if let Some(rate) = st.faults[idx].rate {
            let mut rng = self.inner.rng.lock().unwrap_or_else(|e| e.into_inner());
            if rng.f64() >= rate {
                return None;
            }
        }
        let f = &mut st.faults[idx];
        f.times -= 1;
        let kind = f.kind.clone();
        if f.times == 0 {
            st.faults.remove(idx);
        }
        Some(kind)
    }

    /// Reads a request, then handles it on a task of its own: like a real API, the
    /// simulator finishes what it received even when the client stops waiting.
    async fn handle(&self, req: Request<Incoming>) -> Result<Resp, Dropped> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let sim = self.clone();
        tokio::spawn(async move { sim.respond(parts, body).await })
            .await
            .unwrap_or(Err(Dropped))
    }

    async fn respond(
        &self,
        req: hyper::http::request::Parts,
        body: Bytes,
    ) -> Result<Resp, Dropped> {
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let query = req.uri.query().unwrap_or_default().to_string();
        let headers = req.headers;
        let authorized = headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {}", self.inner.opts.token));

        let rest = path.strip_prefix("/api/v1/snapshots/");
        let segments: Vec<&str> = rest
            .map(|r| r.split('/').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let op = match (&method, rest.is_some(), segments.as_slice()) {
            (&Method::GET, true, []) => Some((Op::List, "list")),
            (&Method::POST, true, []) => Some((Op::Create, "create")),
            (&Method::DELETE, true, [_]) => Some((Op::Delete, "delete")),
            (&Method::POST, true, [_, "restore"]) => Some((Op::Restore, "restore")),
            _ => None,
        };
        {
            let mut st = self.state();
            st.requests += 1;
            *st.per_op.entry(op.map_or("other", |o| o.1)).or_default() += 1;
        }
        let Some((op, op_name)) = op else {
            return Ok(reply(
                StatusCode::NOT_FOUND,
                json!({"detail": "Not found."}),
            ));
        };
        if let Some(trip) = self.take_trip() {
            if trip.carry_out && authorized {
                let _ = self.carry_out(op, &query, &body, &segments, None);
            }
            let _ = trip.tripped.send(op_name);
            let _ = trip.release.await;
            return Err(Dropped);
        }
        let mut drop_after = false;
        let mut delay_after = None;
        let mut land_late = None;
        if let Some(kind) = self.take_fault(op) {
            match kind {
                FaultKind::Status {
                    code,
                    retry_after,
                    body,
                } => {
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() =
                        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    if let Some(s) = retry_after
                        && let Ok(v) = hyper::header::HeaderValue::from_str(&s.to_string())
                    {
                        r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
                    }
                    return Ok(r);
                }
                FaultKind::DropBefore => return Err(Dropped),
                FaultKind::DropAfter => drop_after = true,
                FaultKind::DelayAfter(d) => delay_after = Some(d),
                FaultKind::Delay(d) => tokio::time::sleep(d).await,
                FaultKind::Body(b) => {
                    let mut r = Response::new(Full::new(Bytes::from(b)));
                    *r.status_mut() = StatusCode::OK;
                    return Ok(r);
                }
                FaultKind::EchoHeaders(code) => {
                    let echoed: serde_json::Map<String, serde_json::Value> = headers
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().to_string(),
                                json!(String::from_utf8_lossy(v.as_bytes())),
                            )
                        })
                        .collect();
                    return Ok(reply(
                        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
                        json!({"detail": "Request rejected.", "request": {"method": method.as_str(), "path": path, "headers": echoed}}),
                    ));
                }
                FaultKind::LandLate(d) if op == Op::Create => land_late = Some(d),
                FaultKind::LandLate(_) => return Err(Dropped),
            }
        }
        if !authorized {
            return Ok(reply(
                StatusCode::UNAUTHORIZED,
                json!({"detail": "Authentication credentials were not provided or are invalid."}),
            ));
        }
        let resp = self.carry_out(op, &query, &body, &segments, land_late);
        if let Some(d) = delay_after {
            tokio::time::sleep(d).await;
        }
        if drop_after || land_late.is_some() {
            Err(Dropped)
        } else {
            Ok(resp)
        }
    }

    fn carry_out(
        &self,
        op: Op,
        query: &str,
        body: &[u8],
        segments: &[&str],
        land_late: Option<Duration>,
    ) -> Resp {
        match op {
            Op::List => self.list(query),
            Op::Create => self.create(body, land_late),
            Op::Delete => self.delete(segments[0]),
            Op::Restore | Op::Any => self.restore(segments[0]),
        }
    }

    fn server_exists(&self, id: u64) -> bool {
        self.inner
            .opts
            .servers
            .as_ref()
            .is_none_or(|s| s.contains(&id))
    }

    fn list(&self, query: &str) -> Resp {
        let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let server = match params.get("server_id").map(|s| s.parse::<u64>()) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"server_id": ["A valid integer is required."]}),
                );
            }
        };
        let page = params
            .get("page")
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let now = self.inner.clock.now();
        let all: Vec<Snapshot> = self
            .state()
            .snaps
            .values()
            .filter(|s| server.is_none_or(|id| s.server_id == id))
            .map(|s| s.to_api(now))
            .collect();
        let size = self.inner.opts.page_size.max(1);
        let start = (page - 1) * size;
        let results: Vec<&Snapshot> = all.iter().skip(start).take(size).collect();
        let base = self
            .inner
            .base_url
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let link = |p: usize| {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            if let Some(id) = server {
                q.append_pair("server_id", &id.to_string());
            }
            q.append_pair("page", &p.to_string());
            format!("{base}snapshots/?{}", q.finish())
        };
        let next = (start + size < all.len()).then(|| link(page + 1));
        let previous = (page > 1).then(|| link(page - 1));
        reply(
            StatusCode::OK,
            json!({"count": all.len(), "next": next, "previous": previous, "results": results}),
        )
    }

    /// Creates a snapshot now, or `land_after` later (the answer is then dropped).
    fn create(&self, body: &[u8], land_after: Option<Duration>) -> Resp {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"detail": "JSON parse error."}),
            );
        };
        let Some(server_id) = v.get("server_id").and_then(serde_json::Value::as_u64) else {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"server_id": ["This field is required."]}),
            );
        };
        let name = v
            .get("name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        if name.is_empty()
            || name.len() > 100
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"name": ["Only letters, numbers, hyphens and underscores are allowed."]}),
            );
        }
        if !self.server_exists(server_id) {
            return reply(
                StatusCode::NOT_FOUND,
                json!({"detail": "Server not found."}),
            );
        }
        let delay = self.draw_delay(server_id);
        let now = self.inner.clock.now();
        let mut st = self.state();
        if land_after.is_none() && st.count(server_id) >= LIMIT {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"detail": format!("Snapshot limit reached: at most {LIMIT} snapshots per server.")}),
            );
        }
        st.next_id += 1;
        let id = st.next_id;
        let fate = st.modes.get(&server_id).copied().unwrap_or(Mode::Normal);
        let now = now
            + land_after.map_or(chrono::Duration::zero(), |d| {
                chrono::Duration::from_std(d).unwrap_or_default()
            });
        let snap = Snap {
            id,
            server_id,
            name: name.to_string(),
            description: v
                .get("description")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string),
            created_at: now,
            ready_at: now + chrono::Duration::from_std(delay).unwrap_or_default(),
            fate,
        };
        // A create always answers `in_progress`, however fast the snapshot will be.
        let mut shown = snap.to_api(now);
        shown.status = SnapshotStatus::InProgress;
        shown.size_mb = None;
        let mut out = serde_json::to_value(shown).unwrap_or_default();
        out["message"] = json!(
            "Snapshot is being created. This may take 3-10 minutes depending on server size."
        );
        if land_after.is_some() {
            st.late.push(snap);
        } else {
            st.events.push(Event::Created {
                id,
                server_id,
                name: name.to_string(),
            });
            st.snaps.insert(id, snap);
        }
        reply(StatusCode::CREATED, out)
    }

    fn delete(&self, id: &str) -> Resp {
        if !id.parse::<u64>().is_ok_and(|id| self.remove(id, false)) {
            return reply(
                StatusCode::NOT_FOUND,
                json!({"detail": "Snapshot not found."}),
            );
        }
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    }

    fn restore(&self, id: &str) -> Resp {
        let now = self.inner.clock.now();
        let mut st = self.state();
        let Some(snap) = id
            .parse::<u64>()
            .ok()
            .and_then(|id| st.snaps.get(&id))
            .cloned()
        else {
            return reply(
                StatusCode::NOT_FOUND,
                json!({"detail": "Snapshot not found."}),
            );
        };
        if snap.status(now) != SnapshotStatus::Completed {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"detail": "Server is not in a valid state for restoring."}),
            );
        }
        st.events.push(Event::Restored { id: snap.id });
        reply(
            StatusCode::OK,
            json!({
                "status": "success",
                "message": "Server is being restored from snapshot. This may take 5-15 minutes.",
                "snapshot": {"id": snap.id, "name": snap.name, "created_at": snap.created_at},
                "server": {"id": snap.server_id, "name": format!("server-{}", snap.server_id), "status": "restoring"}
            }),
        )
    }
}
