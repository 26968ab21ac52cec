use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use url::Url;

use super::{ApiError, RestoreResponse, Snapshot, SnapshotPage};
use crate::clock::SharedClock;
use crate::config::ApiSettings;
use crate::domain::{ServerId, SnapshotId};
use crate::mark::Marker;

/// Responses larger than this are refused (a list of 5 snapshots is a few hundred bytes).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// A list never follows more pages than this.
const MAX_PAGES: usize = 1000;
/// A `Retry-After` longer than this is cut to it.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
const USER_AGENT: &str = concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"));

/// How transient failures are retried: exponential backoff with jitter.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    fn backoff(&self, retry: u32) -> Duration {
        let exp = self.base.saturating_mul(2u32.saturating_pow(retry.min(16)));
        let full = exp.min(self.cap);
        // Jitter in [full/2, full]: spreads a herd of agents, never waits less than half.
        full / 2 + full.mul_f64(fastrand::f64() / 2.0)
    }
}

/// The API client. One `reqwest::Client` (connection pool, timeouts) for every request.
/// The token never leaves it: it signs requests, keys the agent's [`Marker`], and is
/// scrubbed from every answer before anything reads it (an API may echo it back).
pub struct Client {
    http: reqwest::Client,
    base: Url,
    auth: HeaderValue,
    /// The token as an answer could carry it (raw, JSON-escaped), to scrub.
    secrets: Vec<Vec<u8>>,
    marker: Marker,
    retry: RetryPolicy,
    clock: SharedClock,
    requests: AtomicU64,
}

const REDACTED: &[u8] = b"[redacted]";

/// The forms in which `token` may appear in an answer's bytes.
fn secret_forms(token: &str) -> Vec<Vec<u8>> {
    let mut forms = vec![token.to_string()];
    if let Ok(json) = serde_json::to_string(token) {
        forms.push(json.trim_matches('"').to_string());
    }
    forms.push(token.replace('/', "\\/"));
    forms.sort();
    forms.dedup();
    forms
        .into_iter()
        .filter(|f| !f.is_empty())
        .map(String::into_bytes)
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("auth", &"[redacted]")
            .finish()
    }
}

#[derive(Clone, Copy)]
enum Body<'a> {
    None,
    Json(&'a serde_json::Value),
}

impl Client {
    pub fn new(
        settings: &ApiSettings,
        token: &SecretString,
        clock: SharedClock,
    ) -> anyhow::Result<Arc<Self>> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .map_err(|_| {
                anyhow::anyhow!("the API token contains characters not allowed in an HTTP header")
            })?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
        Ok(Arc::new(Self {
            http,
            base: settings.base_url.clone(),
            auth,
            secrets: secret_forms(token.expose_secret()),
            marker: Marker::new(token.expose_secret().as_bytes()),
            retry: RetryPolicy {
                max_retries: settings.max_retries,
                base: Duration::from_millis(500),
                cap: Duration::from_secs(30),
            },
            clock,
            requests: AtomicU64::new(0),
        }))
    }

    /// The agent's mark, keyed with this client's token.
    pub fn marker(&self) -> &Marker {
        &self.marker
    }

    /// `bytes` with every form of the token replaced by `[redacted]`.
    fn scrub(&self, bytes: bytes::Bytes) -> bytes::Bytes {
        if !self.secrets.iter().any(|s| find(&bytes, s).is_some()) {
            return bytes;
        }
        let mut out = bytes.to_vec();
        for secret in &self.secrets {
            while let Some(i) = find(&out, secret) {
                out.splice(i..i + secret.len(), REDACTED.iter().copied());
            }
        }
        bytes::Bytes::from(out)
    }

    /// Requests sent so far (each retry counts).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str) -> Result<Url, ApiError> {
        self.base.join(path).map_err(|e| ApiError::Decode {
            what: path.to_string(),
            detail: e.to_string(),
        })
    }

    /// All snapshots, or one server's, following `next` links to the end.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn list(&self, server_id: Option<ServerId>) -> Result<Vec<Snapshot>, ApiError> {
        let mut url = self.url("snapshots/")?;
        if let Some(id) = server_id {
            url.query_pairs_mut()
                .append_pair("server_id", &id.to_string());
        }
        let what = match server_id {
            Some(id) => format!("listing snapshots of server {id}"),
            None => "listing snapshots".to_string(),
        };
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..MAX_PAGES {
            let page: SnapshotPage = self
                .json(Method::GET, url.clone(), Body::None, &what, true)
                .await?;
            out.extend(page.results);
            let Some(next) = page.next.filter(|n| !n.is_empty()) else {
                return Ok(out);
            };
            let next = self.base.join(&next).map_err(|e| ApiError::Decode {
                what: what.clone(),
                detail: format!("bad next link {next:?}: {e}"),
            })?;
            // The token goes only where it was configured to go.
            if next.origin() != self.base.origin() {
                return Err(ApiError::Decode {
                    what,
                    detail: format!(
                        "next link {next} points away from {}",
                        self.base.origin().ascii_serialization()
                    ),
                });
            }
            if !seen.insert(next.to_string()) {
                return Err(ApiError::Decode {
                    what,
                    detail: format!("next link {next} repeats a page already read"),
                });
            }
            url = next;
        }
        Err(ApiError::Decode {
            what,
            detail: format!("more than {MAX_PAGES} pages"),
        })
    }

    /// One page only: the cheapest authenticated request, used to check the token.
    pub async fn check_token(&self) -> Result<(), ApiError> {
        let url = self.url("snapshots/")?;
        let _: SnapshotPage = self
            .json(Method::GET, url, Body::None, "checking the API token", true)
            .await?;
        Ok(())
    }

    /// Starts a snapshot. Not retried once it may have reached the API: a lost response
    /// is [`ApiError::OutcomeUnknown`], and the caller lists before trying again.
    #[tracing::instrument(level = "debug", skip(self, description))]
    pub async fn create(
        &self,
        server_id: ServerId,
        name: &str,
        description: &str,
    ) -> Result<Snapshot, ApiError> {
        let body =
            serde_json::json!({"server_id": server_id, "name": name, "description": description});
        let what = format!("creating snapshot {name} on server {server_id}");
        self.json(
            Method::POST,
            self.url("snapshots/")?,
            Body::Json(&body),
            &what,
            false,
        )
        .await
    }

    /// Deletes a snapshot. A retry that finds it gone counts as deleted; a failure after
    /// an attempt that may have been carried out is [`ApiError::OutcomeUnknown`].
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn delete(&self, snapshot_id: SnapshotId) -> Result<(), ApiError> {
        let what = format!("deleting snapshot {snapshot_id}");
        let url = self.url(&format!("snapshots/{snapshot_id}/"))?;
        match self
            .send(Method::DELETE, url, Body::None, &what, true)
            .await
        {
            Ok(_) => Ok(()),
            Err((ApiError::NotFound { .. }, true)) => Ok(()),
            Err((e, true)) => Err(ApiError::OutcomeUnknown {
                what,
                reason: e.to_string(),
            }),
            Err((e, false)) => Err(e),
        }
    }

    /// Starts a restore. Never retried once it may have reached the API.
    pub async fn restore(&self, snapshot_id: SnapshotId) -> Result<RestoreResponse, ApiError> {
        let what = format!("restoring snapshot {snapshot_id}");
        let url = self.url(&format!("snapshots/{snapshot_id}/restore/"))?;
        self.json(
            Method::POST,
            url,
            Body::Json(&serde_json::json!({})),
            &what,
            false,
        )
        .await
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Body<'_>,
        what: &str,
        idempotent: bool,
    ) -> Result<T, ApiError> {
        let mut decode_failures = 0;
        loop {
            let bytes = self
                .send(method.clone(), url.clone(), body, what, idempotent)
                .await
                .map_err(|(e, _)| e)?;
            let err = match serde_json::from_slice(&bytes) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let detail = format!("{err} in {}", excerpt(&bytes));
            // A success we cannot read was still a success: the create happened.
            if !idempotent {
                return Err(ApiError::OutcomeUnknown {
                    what: what.to_string(),
                    reason: format!("malformed response: {detail}"),
                });
            }
            decode_failures += 1;
            if decode_failures > self.retry.max_retries {
                return Err(ApiError::Decode {
                    what: what.to_string(),
                    detail,
                });
            }
            let d = self.retry.backoff(decode_failures - 1);
            tracing::warn!(%what, "malformed response ({detail}); retrying in {d:?}");
            self.clock.sleep(d).await;
        }
    }

    /// Sends with retries. On error, also says whether an earlier attempt may have been
    /// carried out (so a 404 on a retried DELETE means "already gone").
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Body<'_>,
        what: &str,
        idempotent: bool,
    ) -> Result<bytes::Bytes, (ApiError, bool)> {
        let mut attempt: u32 = 0;
        let mut maybe_done = false;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, self.auth.clone());
            if let Body::Json(b) = body {
                req = req.json(b);
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let retries_left = attempt <= self.retry.max_retries;
            let (err, wait) = match req.send().await {
                Err(e) => {
                    let never_sent = e.is_connect();
                    let kind = if e.is_timeout() {
                        "timed out".to_string()
                    } else if never_sent {
                        "could not connect".to_string()
                    } else {
                        "connection failed".to_string()
                    };
                    if !never_sent && !idempotent {
                        return Err((
                            ApiError::OutcomeUnknown {
                                what: what.to_string(),
                                reason: format!("{kind}: {}", error_chain(&e)),
                            },
                            true,
                        ));
                    }
                    maybe_done |= !never_sent;
                    let err = ApiError::Transport {
                        what: what.to_string(),
                        kind: format!("{kind} ({})", error_chain(&e)),
                        attempts: attempt,
                    };
                    (err, None)
                }
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
                    let bytes = match read_capped(resp).await {
                        Ok(b) => self.scrub(b),
                        Err(detail) => {
                            if !idempotent {
                                return Err((
                                    ApiError::OutcomeUnknown {
                                        what: what.to_string(),
                                        reason: detail,
                                    },
                                    true,
                                ));
                            }
                            maybe_done = true;
                            let err = ApiError::Decode {
                                what: what.to_string(),
                                detail,
                            };
                            if !retries_left {
                                return Err((err, maybe_done));
                            }
                            let d = self.retry.backoff(attempt - 1);
                            tracing::warn!(%what, attempt, "{err}; retrying in {d:?}");
                            self.clock.sleep(d).await;
                            continue;
                        }
                    };
                    if status.is_success() {
                        return Ok(bytes);
                    }
                    let text = excerpt(&bytes);
                    match status {
                        StatusCode::UNAUTHORIZED => {
                            return Err((ApiError::Unauthorized, maybe_done));
                        }
                        StatusCode::NOT_FOUND => {
                            return Err((
                                ApiError::NotFound {
                                    what: what.to_string(),
                                    body: text,
                                },
                                maybe_done,
                            ));
                        }
                        StatusCode::BAD_REQUEST => {
                            return Err((
                                ApiError::BadRequest {
                                    what: what.to_string(),
                                    body: text,
                                },
                                maybe_done,
                            ));
                        }
                        StatusCode::TOO_MANY_REQUESTS => (
                            ApiError::RateLimited {
                                what: what.to_string(),
                                attempts: attempt,
                            },
                            retry_after,
                        ),
                        s if s.is_server_error() => {
                            let err = ApiError::Server {
                                what: what.to_string(),
                                status: s.as_u16(),
                                attempts: attempt,
                                body: text,
                            };
                            // 503 says the request was not handled, so even a create
                            // may be sent again; any other 5xx may follow the work.
                            let handled = s != StatusCode::SERVICE_UNAVAILABLE;
                            if handled && !idempotent {
                                return Err((
                                    ApiError::OutcomeUnknown {
                                        what: what.to_string(),
                                        reason: err.to_string(),
                                    },
                                    true,
                                ));
                            }
                            maybe_done |= handled;
                            (err, retry_after)
                        }
                        s => {
                            return Err((
                                ApiError::Status {
                                    what: what.to_string(),
                                    status: s.as_u16(),
                                    body: text,
                                },
                                maybe_done,
                            ));
                        }
                    }
                }
            };
            if !retries_left {
                return Err((err, maybe_done));
            }
            let d = wait.unwrap_or_else(|| self.retry.backoff(attempt - 1));
            tracing::warn!(%what, attempt, "{err}; retrying in {}", humantime::format_duration(d));
            self.clock.sleep(d).await;
        }
    }
}

async fn read_capped(mut resp: reqwest::Response) -> Result<bytes::Bytes, String> {
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(format!("response body larger than {} MiB", MAX_BODY >> 20));
    }
    let mut buf = bytes::BytesMut::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > MAX_BODY {
                    return Err(format!("response body larger than {} MiB", MAX_BODY >> 20));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => return Err(format!("reading the response failed: {}", error_chain(&e))),
        }
    }
}

/// The start of a body, for error messages.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_string();
    }
    let mut cut: String = text.chars().take(300).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}
