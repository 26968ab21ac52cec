//! A loopback HTTP receiver standing in for Healthchecks, a webhook, Slack and ntfy: it
//! records every request and answers as planned (200, a status, or slowly).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

/// One request received.
#[derive(Debug, Clone)]
pub struct Got {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// How the next request is answered; after the plan, 200.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Status(u16),
    /// 200 after this long (not counted as received: the sender has given up).
    Slow(Duration),
    /// 200 after this long, received (a slow server the sender waits for).
    Late(Duration),
    /// This status, with a body that repeats the request's method and path (as many
    /// servers' error pages do): "Cannot POST /hooks/…".
    Echo(u16),
}

pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    plan: Arc<Mutex<VecDeque<Reply>>>,
    /// While set, every request is answered 503 (and not received).
    down: Arc<std::sync::atomic::AtomicBool>,
    /// While set, every request is answered 404 repeating its path (and not received).
    echo: Arc<std::sync::atomic::AtomicBool>,
    _stop: DropGuard,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let plan: Arc<Mutex<VecDeque<Reply>>> = Arc::default();
        let down: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let echo: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let stop = CancellationToken::new();
        let (g, p, s, d, e) = (
            got.clone(),
            plan.clone(),
            stop.clone(),
            down.clone(),
            echo.clone(),
        );
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = s.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else { continue };
                let (g, p, d, e) = (g.clone(), p.clone(), d.clone(), e.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (g, p, d, e) = (g.clone(), p.clone(), d.clone(), e.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let reply = if d.load(std::sync::atomic::Ordering::SeqCst) {
                                Some(Reply::Status(503))
                            } else if e.load(std::sync::atomic::Ordering::SeqCst) {
                                Some(Reply::Echo(404))
                            } else {
                                p.lock().unwrap().pop_front()
                            };
                            let mut text = Bytes::from_static(b"ok");
                            let (code, counts) = match reply {
                                Some(Reply::Status(c)) => (c, false),
                                Some(Reply::Echo(c)) => {
                                    // And its login, as a debugging endpoint might.
                                    let login = parts
                                        .headers
                                        .get("authorization")
                                        .and_then(|v| v.to_str().ok())
                                        .map(|v| format!(" (authorization: {v})"))
                                        .unwrap_or_default();
                                    text = Bytes::from(format!(
                                        "Cannot {} {}{login}",
                                        parts.method,
                                        parts.uri.path()
                                    ));
                                    (c, false)
                                }
                                // Answered after the sender gave up: not delivered.
                                Some(Reply::Slow(d)) => {
                                    tokio::time::sleep(d).await;
                                    (200, false)
                                }
                                Some(Reply::Late(d)) => {
                                    tokio::time::sleep(d).await;
                                    (200, true)
                                }
                                None => (200, true),
                            };
                            if counts {
                                g.lock().unwrap().push(Got {
                                    method: parts.method.to_string(),
                                    path: parts.uri.path().to_string(),
                                    headers: parts
                                        .headers
                                        .iter()
                                        .map(|(k, v)| {
                                            (k.to_string(), v.to_str().unwrap_or("").to_string())
                                        })
                                        .collect(),
                                    body: String::from_utf8_lossy(&body).into_owned(),
                                });
                            }
                            let mut r = Response::new(Full::new(text));
                            *r.status_mut() = StatusCode::from_u16(code).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            got,
            plan,
            down,
            echo,
            _stop: stop.drop_guard(),
        }
    }

    /// Answers every request 404 with its path in the body (not received), or stops.
    pub fn set_echo(&self, echo: bool) {
        self.echo.store(echo, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every request answered 200 at once, in the order received.
    pub fn all(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Takes the receiver down (every request answered 503, not received) or back up.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests so, in order.
    pub fn plan(&self, replies: &[Reply]) {
        self.plan.lock().unwrap().extend(replies.iter().copied());
    }

    /// The requests answered 200 at once whose path starts with `prefix`.
    pub fn got(&self, prefix: &str) -> Vec<Got> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.path.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Waits (up to a minute) until `n` requests under `prefix` have been received.
    pub async fn wait_for(&self, prefix: &str, n: usize) -> Vec<Got> {
        for _ in 0..600 {
            let got = self.got(prefix);
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "fewer than {n} requests to {prefix}: {:?}",
            self.got(prefix)
        );
    }
}
