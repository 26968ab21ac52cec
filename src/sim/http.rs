//! The simulator's HTTP front: routing, the bearer token, faults and kill points, and the
//! API's answers (statuses and JSON bodies) to what the world does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::world::Refusal;
use super::{FaultKind, Glitch, Op, SimServer, Simulator, lock};
use crate::api::{Snapshot, SnapshotStatus};
use crate::domain::{LIMIT, ServerId, SnapshotId};

#[derive(Debug)]
pub(super) struct Dropped;
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

fn raw(code: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    r
}

/// What a fault leaves a request to do around its work.
#[derive(Default)]
struct After {
    /// Wait this long (real time) before the work.
    delay_before: Option<Duration>,
    /// Wait this long (real time) after the work, before answering.
    delay_after: Option<Duration>,
    /// Do the work, then drop the connection without an answer.
    drop: bool,
    /// A create carried out this long later (simulator clock); the answer is dropped.
    land_late: Option<Duration>,
}

/// What a fault does to a request.
enum Effect {
    /// Carry it out, with these around it.
    Proceed(After),
    /// Answer this instead of doing the work.
    Answer(Resp),
    /// Drop the connection without doing the work.
    Drop,
}

/// A request, as routed.
struct Call<'a> {
    op: Op,
    query: &'a str,
    body: &'a [u8],
    /// The path's snapshot id segment (delete, restore).
    id: Option<&'a str>,
}

impl Simulator {
    /// Binds `addr` (use port 0 for any) and serves until the returned server is dropped.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<SimServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        *lock(&self.inner.base_url) = format!("http://{addr}/api/v1/");
        let stop = CancellationToken::new();
        let (sim, token) = (self.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else { continue };
                let (sim, token) = (sim.clone(), token.clone());
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
        let in_flight = InFlight::new(self.clone());
        tokio::spawn(async move {
            let _in_flight = in_flight;
            sim.respond(parts, body).await
        })
        .await
        .unwrap_or(Err(Dropped))
    }

    async fn respond(&self, req: Parts, body: Bytes) -> Result<Resp, Dropped> {
        let path = req.uri.path().to_string();
        let rest = path.strip_prefix("/api/v1/snapshots/");
        let segments: Vec<&str> = rest
            .map(|r| r.split('/').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let op = match (&req.method, rest.is_some(), segments.as_slice()) {
            (&Method::GET, true, []) => Op::List,
            (&Method::POST, true, []) => Op::Create,
            (&Method::DELETE, true, [_]) => Op::Delete,
            (&Method::POST, true, [_, "restore"]) => Op::Restore,
            _ => Op::Any,
        };
        {
            let mut counts = lock(&self.inner.requests);
            counts.total += 1;
            *counts.by_op.entry(op).or_default() += 1;
        }
        if op == Op::Any {
            return Ok(reply(
                StatusCode::NOT_FOUND,
                json!({"detail": "Not found."}),
            ));
        }
        let call = Call {
            op,
            query: req.uri.query().unwrap_or_default(),
            body: &body,
            id: segments.first().copied(),
        };
        let authorized = req
            .headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {}", self.inner.opts.token));
        let trip = lock(&self.inner.armed).take_trip();
        if let Some(trip) = trip {
            if trip.carry_out && authorized {
                let _ = self.carry_out(&call, None);
            }
            let _ = trip.tripped.send(op.name());
            let _ = trip.release.await;
            return Err(Dropped);
        }
        let after = match self.fault(op, &req) {
            Effect::Proceed(after) => after,
            Effect::Answer(r) => return Ok(r),
            Effect::Drop => return Err(Dropped),
        };
        if let Some(d) = after.delay_before {
            tokio::time::sleep(d).await;
        }
        if !authorized {
            let detail = "Authentication credentials were not provided or are invalid.";
            return Ok(reply(StatusCode::UNAUTHORIZED, json!({"detail": detail})));
        }
        let resp = self.carry_out(&call, after.land_late);
        if let Some(d) = after.delay_after {
            tokio::time::sleep(d).await;
        }
        if after.drop || after.land_late.is_some() {
            Err(Dropped)
        } else {
            Ok(resp)
        }
    }

    /// The fault (if one fires) for a request.
    fn fault(&self, op: Op, req: &Parts) -> Effect {
        let kind = {
            let mut rng = lock(&self.inner.rng);
            lock(&self.inner.armed).take(op, || rng.f64())
        };
        let code = |c: u16| StatusCode::from_u16(c).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match kind {
            None => Effect::Proceed(After::default()),
            Some(FaultKind::Status {
                code: c,
                retry_after,
                body,
            }) => {
                let mut r = raw(code(c), body);
                if let Some(s) = retry_after
                    && let Ok(v) = hyper::header::HeaderValue::from_str(&s.to_string())
                {
                    r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
                }
                Effect::Answer(r)
            }
            Some(FaultKind::DropBefore) => Effect::Drop,
            Some(FaultKind::DropAfter) => Effect::Proceed(After {
                drop: true,
                ..After::default()
            }),
            Some(FaultKind::Delay(d)) => Effect::Proceed(After {
                delay_before: Some(d),
                ..After::default()
            }),
            Some(FaultKind::DelayAfter(d)) => Effect::Proceed(After {
                delay_after: Some(d),
                ..After::default()
            }),
            Some(FaultKind::Body(b)) => Effect::Answer(raw(StatusCode::OK, b)),
            Some(FaultKind::EchoHeaders(c)) => {
                let headers: serde_json::Map<String, serde_json::Value> = req
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
                    .collect();
                let echo = json!({"method": req.method.as_str(), "path": req.uri.path(), "headers": headers});
                let body = json!({"detail": "Request rejected.", "request": echo});
                Effect::Answer(reply(code(c), body))
            }
            Some(FaultKind::LandLate(d)) if op == Op::Create => Effect::Proceed(After {
                land_late: Some(d),
                ..After::default()
            }),
            Some(FaultKind::LandLate(_)) => Effect::Drop,
        }
    }

    fn carry_out(&self, call: &Call<'_>, land_late: Option<Duration>) -> Resp {
        let id = || call.id.and_then(|i| i.parse::<SnapshotId>().ok());
        match call.op {
            Op::List => self.list(call.query),
            Op::Create => self.create(call.body, land_late),
            Op::Delete => self.delete(id()),
            Op::Restore | Op::Any => self.restore(id()),
        }
    }

    fn server_exists(&self, id: ServerId) -> bool {
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
        let server = match params.get("server_id").map(|s| s.parse::<ServerId>()) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => {
                let e = json!({"server_id": ["A valid integer is required."]});
                return reply(StatusCode::BAD_REQUEST, e);
            }
        };
        let page = params
            .get("page")
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let now = self.now();
        let listed = self.world().listing(server, now);
        let all = self.glitched(listed);
        let size = self.inner.opts.page_size.max(1);
        let start = (page - 1) * size;
        let results: Vec<_> = all.iter().skip(start).take(size).collect();
        let base = lock(&self.inner.base_url).clone();
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
        let body =
            json!({"count": all.len(), "next": next, "previous": previous, "results": results});
        reply(StatusCode::OK, body)
    }

    /// A listing's items as JSON, with the armed glitches applied.
    fn glitched(&self, listed: Vec<Snapshot>) -> Vec<serde_json::Value> {
        let glitches = lock(&self.inner.armed).glitches.clone();
        let mut all = Vec::with_capacity(listed.len() + glitches.len());
        for s in listed {
            let v = serde_json::to_value(&s).unwrap_or_default();
            let twice = glitches
                .iter()
                .any(|g| matches!(g, Glitch::Duplicate(id) if *id == s.id));
            if twice {
                all.push(v.clone());
            }
            all.push(v);
        }
        all.extend(glitches.into_iter().filter_map(|g| match g {
            Glitch::Extra(v) => Some(v),
            Glitch::Duplicate(_) => None,
        }));
        all
    }

    /// Creates a snapshot now, or `land_after` later (the answer is then dropped).
    fn create(&self, body: &[u8], land_after: Option<Duration>) -> Resp {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"detail": "JSON parse error."}),
            );
        };
        let Some(server) = v.get("server_id").and_then(serde_json::Value::as_u64) else {
            let e = json!({"server_id": ["This field is required."]});
            return reply(StatusCode::BAD_REQUEST, e);
        };
        let server = ServerId::new(server);
        let name = v
            .get("name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if name.is_empty() || name.len() > 100 || !name.chars().all(valid) {
            let e =
                json!({"name": ["Only letters, numbers, hyphens and underscores are allowed."]});
            return reply(StatusCode::BAD_REQUEST, e);
        }
        if !self.server_exists(server) {
            return reply(
                StatusCode::NOT_FOUND,
                json!({"detail": "Server not found."}),
            );
        }
        let description = v
            .get("description")
            .and_then(|d| d.as_str())
            .map(str::to_string);
        let delay = self.draw_delay(server);
        let at = self.now()
            + land_after.map_or(chrono::Duration::zero(), |d| {
                chrono::Duration::from_std(d).unwrap_or_default()
            });
        let made = self
            .world()
            .create(server, name, description, at, delay, land_after.is_some());
        let snap = match made {
            Ok(snap) => snap,
            Err(Refusal::AtLimit) => {
                let e = format!("Snapshot limit reached: at most {LIMIT} snapshots per server.");
                return reply(StatusCode::BAD_REQUEST, json!({"detail": e}));
            }
        };
        // A create always answers `in_progress`, however fast the snapshot will be.
        let mut shown = snap.to_api(at);
        shown.status = SnapshotStatus::InProgress;
        shown.size_mb = None;
        let mut out = serde_json::to_value(shown).unwrap_or_default();
        out["message"] = json!(
            "Snapshot is being created. This may take 3-10 minutes depending on server size."
        );
        reply(StatusCode::CREATED, out)
    }

    fn delete(&self, id: Option<SnapshotId>) -> Resp {
        let now = self.now();
        if !id.is_some_and(|id| self.world().remove(id, false, now)) {
            return reply(
                StatusCode::NOT_FOUND,
                json!({"detail": "Snapshot not found."}),
            );
        }
        raw(StatusCode::NO_CONTENT, Bytes::new())
    }

    fn restore(&self, id: Option<SnapshotId>) -> Resp {
        let now = self.now();
        let mut world = self.world();
        let Some(snap) = id.and_then(|id| world.get(id)).cloned() else {
            return reply(
                StatusCode::NOT_FOUND,
                json!({"detail": "Snapshot not found."}),
            );
        };
        if snap.status(now) != SnapshotStatus::Completed {
            let e = json!({"detail": "Server is not in a valid state for restoring."});
            return reply(StatusCode::BAD_REQUEST, e);
        }
        world.restore(snap.id);
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

/// Counts a request as in flight until it is carried out or answered (or dropped).
struct InFlight(Simulator);

impl InFlight {
    fn new(sim: Simulator) -> Self {
        sim.inner
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(sim)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .inner
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
