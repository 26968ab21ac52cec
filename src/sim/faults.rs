//! The simulator's fault menu, and kill points for the fault explorer.

use std::time::Duration;

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    List,
    Create,
    Delete,
    Restore,
    /// In a fault: every kind of request. In request counts: a path the API lacks.
    Any,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::List => "list",
            Op::Create => "create",
            Op::Delete => "delete",
            Op::Restore => "restore",
            Op::Any => "other",
        }
    }
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
        let body = format!("<html><body><h1>{code}</h1>upstream trouble</body></html>");
        Self::new(
            op,
            FaultKind::Status {
                code,
                retry_after: None,
                body,
            },
            times,
        )
    }
}

/// What a real API's listing does now and then, applied to every listing until cleared
/// ([`super::Simulator::glitch`]).
#[derive(Debug, Clone)]
pub enum Glitch {
    /// Snapshot `id` is listed twice, its copy right after it (what a paging glitch does
    /// when an item moves across a page boundary between two page requests).
    Duplicate(crate::domain::SnapshotId),
    /// An extra item at the end of every listing, as raw JSON: another server's snapshot
    /// in a server's listing, or an item that cannot be read.
    Extra(serde_json::Value),
}

/// A kill point armed by [`super::Simulator::arm_trip`].
#[derive(Debug)]
pub(super) struct Trip {
    /// Requests to let through first.
    pub skip: u32,
    pub carry_out: bool,
    pub tripped: tokio::sync::oneshot::Sender<&'static str>,
    pub release: tokio::sync::oneshot::Receiver<()>,
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

/// The faults and the kill point armed now.
#[derive(Debug, Default)]
pub(super) struct Armed {
    pub faults: Vec<Fault>,
    pub trip: Option<Trip>,
    pub glitches: Vec<Glitch>,
}

impl Armed {
    /// The first fault for `op` that fires for this request (`draw` gives the chance).
    pub fn take(&mut self, op: Op, draw: impl FnOnce() -> f64) -> Option<FaultKind> {
        let idx = self
            .faults
            .iter()
            .position(|f| f.times > 0 && (f.op == op || f.op == Op::Any))?;
        let f = &mut self.faults[idx];
        if f.skip > 0 {
            f.skip -= 1;
            return None;
        }
        if f.rate.is_some_and(|rate| draw() >= rate) {
            return None;
        }
        f.times -= 1;
        let kind = f.kind.clone();
        if f.times == 0 {
            self.faults.remove(idx);
        }
        Some(kind)
    }

    /// The armed trip, if this request is the one it waits for.
    pub fn take_trip(&mut self) -> Option<Trip> {
        let trip = self.trip.as_mut()?;
        if trip.skip > 0 {
            trip.skip -= 1;
            return None;
        }
        self.trip.take()
    }
}
