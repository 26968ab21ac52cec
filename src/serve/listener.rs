//! The HTTP listener at `[metrics] listen`: `GET /metrics` (the Prometheus text format), `GET /healthz`
//! (200 while the daemon's loop is turning, 503 when it has stopped) and the status page
//! (`/`, [`crate::serve::page`]). Read-only: any other method is refused, any other path is 404;
//! every answer carries a strict Content-Security-Policy. Behind TLS and basic auth when
//! `[metrics]` asks for them ([`super::access`]).

pub use super::access::{Access, AccessError};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::Settings;
use crate::db::Database;
use crate::snapshot::mark::Marker;

/// When the daemon's loop last turned, for `/healthz`.
#[derive(Clone)]
pub struct Health {
    origin: Instant,
    last: Arc<AtomicU64>,
    /// Longer than this without a turn is unhealthy.
    pub max_silence: Duration,
}

impl Health {
    pub fn new(max_silence: Duration) -> Self {
        Self {
            origin: Instant::now(),
            last: Arc::default(),
            max_silence,
        }
    }

    /// The loop turned.
    pub fn beat(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    pub fn alive(&self) -> bool {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last) <= self.max_silence
    }
}

/// What a request is answered from.
#[derive(Clone)]
pub struct Source {
    pub db: Database,
    pub settings: watch::Receiver<Arc<Settings>>,
    pub clock: SharedClock,
    pub health: Health,
    /// Tells the agent's snapshots from others on the status page.
    pub marker: Arc<Marker>,
    /// TLS and credentials, replaced on SIGHUP; a connection keeps the one it began with.
    pub access: watch::Receiver<Arc<Access>>,
}

type Resp = Response<Full<Bytes>>;

fn text(code: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(crate::serve::page::CSP),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";

impl Source {
    async fn answer(&self, req: Request<Incoming>, access: &Arc<Access>, peer: IpAddr) -> Resp {
        if !access
            .allows(req.uri().path(), peer, req.headers().get(AUTHORIZATION))
            .await
        {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                PLAIN,
                "unauthorized: give a user and password from [metrics] basic_auth_users\n",
            );
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"vps-snapshot-agent\", charset=\"UTF-8\""),
            );
            // A guesser opens a new connection (and a new handshake) for each try.
            r.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                PLAIN,
                "read-only: GET only\n",
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match req.uri().path() {
            "/metrics" => {
                let settings = self.settings.borrow().clone();
                match crate::serve::metrics::render(&self.db, &settings, self.clock.now()).await {
                    Ok(body) => text(
                        StatusCode::OK,
                        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                        body,
                    ),
                    Err(e) => {
                        tracing::warn!("/metrics: {e}");
                        text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{e}\n"))
                    }
                }
            }
            "/" => {
                let settings = self.settings.borrow().clone();
                let now = self.clock.now();
                match crate::serve::page::render(&self.db, &settings, &self.marker, now).await {
                    Ok(html) => text(StatusCode::OK, "text/html; charset=utf-8", html),
                    Err(e) => {
                        let e = crate::errors::line(&e);
                        tracing::warn!("status page: {e}");
                        text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{e}\n"))
                    }
                }
            }
            "/status.css" => text(
                StatusCode::OK,
                "text/css; charset=utf-8",
                crate::serve::page::CSS,
            ),
            "/healthz" if self.health.alive() => text(StatusCode::OK, PLAIN, "ok\n"),
            "/healthz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                "the scheduler loop has stopped turning\n",
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                PLAIN,
                "not found: try /, /metrics or /healthz\n",
            ),
        }
    }
}

/// At most this many connections are served at once (fewer under a low descriptor
/// limit: a quarter of it), so that a flood of idle connections can slow the page but
/// never take the descriptors the database, the API and the hooks need.
const MAX_CONNECTIONS: usize = 256;
/// At most this many of them from one address: one host holding idle connections
/// cannot shut Prometheus (or a health check from elsewhere) out.
const PER_PEER: usize = 16;
/// How long a client may take to finish its TLS handshake, then to send a request's
/// headers (a scraper takes milliseconds).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open, idle or not (a scrape takes milliseconds;
/// Prometheus opens a new connection when one was closed).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// The longest pause after a failed accept (out of descriptors, say): the loop backs off
/// instead of spinning.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How many connections to serve at once under the process's descriptor limit.
fn connection_cap() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    (soft / 4).clamp(4, MAX_CONNECTIONS)
}

/// Binds `addr` and serves `source` until `stop`; the address bound is returned (port 0
/// picks one).
pub async fn serve(
    addr: SocketAddr,
    source: Source,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics.listen: cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let permits = Arc::new(tokio::sync::Semaphore::new(connection_cap()));
    let peers = Peers::default();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(10);
        loop {
            // A connection is accepted only when it can be served: the rest wait in the
            // kernel's backlog rather than holding descriptors here.
            let permit = tokio::select! {
                () = stop.cancelled() => return,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => {
                    backoff = Duration::from_millis(10);
                    a
                }
                Err(e) => {
                    tracing::warn!(
                        "metrics listener: cannot accept a connection ({e}); trying again in {}",
                        crate::human::Secs(backoff)
                    );
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            let Some(held) = peers.enter(peer.ip()) else {
                tracing::debug!("metrics listener: {peer} holds {PER_PEER} connections already");
                continue;
            };
            let (source, stop) = (source.clone(), stop.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let _held = held;
                connection(stream, peer, source, stop).await;
            });
        }
    });
    Ok(bound)
}

/// Serves one accepted connection, through TLS when the access settings ask for it,
/// until it closes, outlives [`CONNECTION_LIFETIME`], or `stop`.
async fn connection(stream: TcpStream, peer: SocketAddr, source: Source, stop: CancellationToken) {
    let access = source.access.borrow().clone();
    let served = async {
        match access.tls() {
            // A client that does not finish its handshake in time, or speaks
            // plain HTTP to the TLS port, is dropped.
            Some(tls) => match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => serve_one(stream, source, access, peer.ip()).await,
                Ok(Err(e)) => {
                    tracing::debug!("metrics listener: TLS handshake with {peer} failed: {e}")
                }
                Err(_) => tracing::debug!("metrics listener: no TLS handshake from {peer} in time"),
            },
            None => serve_one(stream, source, access, peer.ip()).await,
        }
    };
    tokio::select! {
        () = stop.cancelled() => {}
        _ = tokio::time::timeout(CONNECTION_LIFETIME, served) => {}
    }
}

/// How many connections each address holds.
#[derive(Clone, Default)]
struct Peers(Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>);

/// One connection counted against its address until dropped.
struct Held {
    peers: Peers,
    ip: IpAddr,
}

impl Peers {
    /// A place for one more connection from `ip`, unless it holds [`PER_PEER`] already.
    fn enter(&self, ip: IpAddr) -> Option<Held> {
        let ip = ip.to_canonical();
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(ip).or_default();
        if *n >= PER_PEER {
            return None;
        }
        *n += 1;
        Some(Held {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut m = self
            .peers
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Serves the requests of one connection (plain or TLS) until the client closes it.
async fn serve_one<S>(stream: S, source: Source, access: Arc<Access>, peer: IpAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let (source, access) = (source.clone(), access.clone());
        async move { Ok::<_, std::convert::Infallible>(source.answer(req, &access, peer).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = conn.await {
        tracing::debug!("metrics listener: connection from {peer}: {e}");
    }
}
