use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use url::Url;

use super::error::{self, excerpt};
use super::retry::{self, RetryPolicy};
use super::{ApiError, Listing, RestoreResponse, Snapshot, SnapshotPage, listing};
use crate::clock::SharedClock;
use crate::config::ApiSettings;
use crate::domain::{ServerId, SnapshotId};
use crate::snapshot::mark::Marker;

/// Responses larger than this are refused (a list of 5 snapshots is a few hundred bytes).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// A list never follows more pages than this.
const MAX_PAGES: usize = 1000;

/// The API client. One `reqwest::Client` (connection pool, timeouts) for every request.
/// The token never leaves it: it signs requests, keys the agent's [`Marker`], and is
/// scrubbed from every answer before anything reads it (an API may echo it back); it is
/// registered with [`crate::secrets`] too, for everything else the agent shows.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    auth: HeaderValue,
    /// The token as an answer could carry it (raw, JSON-escaped), to scrub.
    secrets: crate::secrets::Scrubber,
    marker: Marker,
    retry: RetryPolicy,
    clock: SharedClock,
    requests: AtomicU64,
}

/// One HTTP client per request timeout, for the whole process: each client reads and
/// parses the system's root certificates when built, which a daemon reloading its
/// configuration (or a test making hundreds of clients) would otherwise do every time.
fn http_client(request_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    static CLIENTS: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<Duration, reqwest::Client>>,
    > = std::sync::LazyLock::new(Default::default);
    let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = clients.get(&request_timeout) {
        return Ok(c.clone());
    }
    let client = reqwest::Client::builder()
        .user_agent(crate::identity::USER_AGENT)
        .timeout(request_timeout)
        .connect_timeout(request_timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    clients.insert(request_timeout, client.clone());
    Ok(client)
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("auth", &"[redacted]")
            .finish()
    }
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
        crate::secrets::register(token.expose_secret());
        let http = http_client(settings.request_timeout)
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
        Ok(Arc::new(Self {
            http,
            base: settings.base_url.clone(),
            auth,
            secrets: crate::secrets::Scrubber::new(
                &crate::secrets::forms_of(token.expose_secret(), true)
                    .into_iter()
                    .map(String::into_bytes)
                    .collect::<Vec<_>>(),
            ),
            marker: Marker::new(token.expose_secret().as_bytes()),
            retry: RetryPolicy::new(settings.max_retries),
            clock,
            requests: AtomicU64::new(0),
        }))
    }

    /// The agent's mark, keyed with this client's token.
    pub fn marker(&self) -> &Marker {
        &self.marker
    }

    /// `bytes` with every form of the token replaced by `[redacted]` (the token only:
    /// an answer is data the agent acts on).
    fn scrub(&self, bytes: bytes::Bytes) -> bytes::Bytes {
        match self.secrets.scrub(&bytes) {
            std::borrow::Cow::Borrowed(_) => bytes,
            std::borrow::Cow::Owned(out) => bytes::Bytes::from(out),
        }
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

    /// All snapshots, or one server's, following `next` links to the end, read as a
    /// [`Listing`] (duplicates, strangers and unreadable items set apart as anomalies).
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn list(&self, server_id: Option<ServerId>) -> Result<Listing, ApiError> {
        let mut url = self.url("snapshots/")?;
        if let Some(id) = server_id {
            url.query_pairs_mut()
                .append_pair("server_id", &id.to_string());
        }
        let what = match server_id {
            Some(id) => format!("listing snapshots of server {id}"),
            None => "listing snapshots".to_string(),
        };
        let mut reader = listing::Reader::new(server_id, self.clock.now());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..MAX_PAGES {
            let page: SnapshotPage = self.json(&Request::get(url.clone(), &what)).await?;
            for item in page.results {
                reader.item(item);
            }
            let Some(next) = page.next.filter(|n| !n.is_empty()) else {
                let out = reader.finish();
                if let Some(id) = server_id {
                    super::listed(id, &out.snapshots, self.clock.now());
                }
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
            .json(&Request::get(url, "checking the API token"))
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
        self.json(&Request::post(
            "create",
            self.url("snapshots/")?,
            &body,
            &what,
        ))
        .await
    }

    /// Deletes a snapshot. A retry that finds it gone counts as deleted; a failure after
    /// an attempt that may have been carried out is [`ApiError::OutcomeUnknown`].
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn delete(&self, snapshot_id: SnapshotId) -> Result<(), ApiError> {
        let what = format!("deleting snapshot {snapshot_id}");
        let url = self.url(&format!("snapshots/{snapshot_id}/"))?;
        let req = Request {
            endpoint: "delete",
            method: Method::DELETE,
            url,
            body: None,
            what: &what,
            idempotent: true,
        };
        match self.call(&req, |_| Ok(())).await {
            Ok(()) | Err((ApiError::NotFound { .. }, true)) => Ok(()),
            Err((e, true)) => {
                let full = e.to_string();
                let reason = full.strip_prefix(&format!("{what}: ")).unwrap_or(&full);
                Err(ApiError::OutcomeUnknown {
                    reason: reason.to_string(),
                    what,
                })
            }
            Err((e, false)) => Err(e),
        }
    }

    /// Starts a restore. Never retried once it may have reached the API.
    pub async fn restore(&self, snapshot_id: SnapshotId) -> Result<RestoreResponse, ApiError> {
        let what = format!("restoring snapshot {snapshot_id}");
        let url = self.url(&format!("snapshots/{snapshot_id}/restore/"))?;
        self.json(&Request::post(
            "restore",
            url,
            &serde_json::json!({}),
            &what,
        ))
        .await
    }

    async fn json<T: DeserializeOwned + Send>(&self, req: &Request<'_>) -> Result<T, ApiError> {
        self.call(req, parse_json).await.map_err(|(e, _)| e)
    }

    /// Sends `req` under the retry policy and reads the answer with `parse`. On error,
    /// also says whether an attempt may have been carried out (so a 404 on a retried
    /// DELETE means "already gone").
    async fn call<T: Send>(
        &self,
        req: &Request<'_>,
        parse: fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, (ApiError, bool)> {
        let tally = Tally::default();
        self.retry
            .run(&self.clock, req.what, || self.attempt(req, &tally, parse))
            .await
            .map_err(|e| (e, tally.maybe_done.load(Ordering::Relaxed)))
    }

    /// One attempt. A failure after the request may have been carried out is final for
    /// a request that must not be repeated ([`ApiError::OutcomeUnknown`]).
    async fn attempt<T: Send>(
        &self,
        req: &Request<'_>,
        tally: &Tally,
        parse: fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, ApiError> {
        let metrics = crate::metrics::global();
        if tally.attempts.load(Ordering::Relaxed) > 0 {
            metrics.api_retry(req.endpoint);
        }
        let result = self.attempt_once(req, tally, parse).await;
        metrics.api_request(req.endpoint, outcome(&result));
        result
    }

    async fn attempt_once<T: Send>(
        &self,
        req: &Request<'_>,
        tally: &Tally,
        parse: fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, ApiError> {
        let attempts = tally.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let what = req.what.to_string();
        let mut http = self
            .http
            .request(req.method.clone(), req.url.clone())
            .header(AUTHORIZATION, self.auth.clone());
        if let Some(body) = req.body {
            http = http.json(body);
        }
        let resp = match http.send().await {
            Ok(resp) => resp,
            Err(e) => {
                // A request that never connected was never sent.
                let never_sent = e.is_connect();
                let kind = format!("{} ({})", transport_kind(&e), crate::errors::of(&e));
                let err = ApiError::Transport {
                    what,
                    kind: kind.clone(),
                    attempts,
                };
                if never_sent {
                    return Err(err);
                }
                return Err(req.maybe_done(tally, err, kind));
            }
        };
        let status = resp.status();
        let wait = retry::retry_after(resp.headers());
        let bytes = match read_capped(resp).await {
            Ok(bytes) => self.scrub(bytes),
            Err(detail) => {
                let err = ApiError::Decode {
                    what,
                    detail: detail.clone(),
                };
                return Err(req.maybe_done(tally, err, detail));
            }
        };
        if !status.is_success() {
            let err = error::classify(status, &bytes, wait, req.what, attempts);
            if status.is_client_error() || err.not_handled() {
                return Err(err);
            }
            let reason = format!("server error {}: {}", status.as_u16(), excerpt(&bytes));
            return Err(req.maybe_done(tally, err, reason));
        }
        // A success we cannot read was still a success: a create happened.
        parse(&bytes).map_err(|e| {
            let detail = format!("{e} in {}", excerpt(&bytes));
            let reason = format!("malformed response: {detail}");
            req.maybe_done(tally, ApiError::Decode { what, detail }, reason)
        })
    }
}

/// One request, as every attempt sends it.
struct Request<'a> {
    /// For metrics: `list`, `create`, `delete` or `restore`.
    endpoint: &'static str,
    method: Method,
    url: Url,
    body: Option<&'a serde_json::Value>,
    what: &'a str,
    /// Safe to send again after an attempt that may have been carried out.
    idempotent: bool,
}

impl<'a> Request<'a> {
    fn get(url: Url, what: &'a str) -> Self {
        Self {
            endpoint: "list",
            method: Method::GET,
            url,
            body: None,
            what,
            idempotent: true,
        }
    }

    /// A POST: never sent again once it may have reached the API.
    fn post(endpoint: &'static str, url: Url, body: &'a serde_json::Value, what: &'a str) -> Self {
        Self {
            endpoint,
            method: Method::POST,
            url,
            body: Some(body),
            what,
            idempotent: false,
        }
    }

    /// `err` from an attempt that may have been carried out: retryable if the request
    /// is idempotent, else final as [`ApiError::OutcomeUnknown`] with `reason`.
    fn maybe_done(&self, tally: &Tally, err: ApiError, reason: String) -> ApiError {
        tally.maybe_done.store(true, Ordering::Relaxed);
        if self.idempotent {
            return err;
        }
        ApiError::OutcomeUnknown {
            what: self.what.to_string(),
            reason,
        }
    }
}

/// What the attempts of one request have learnt so far.
#[derive(Default)]
struct Tally {
    attempts: AtomicU32,
    maybe_done: AtomicBool,
}

/// An attempt's outcome, as the requests metric labels it.
fn outcome<T>(result: &Result<T, ApiError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(ApiError::RateLimited { .. }) => "rate_limited",
        Err(ApiError::Server { .. }) => "server_error",
        Err(ApiError::Transport { .. }) => "transport_error",
        Err(ApiError::Decode { .. }) => "malformed",
        Err(ApiError::OutcomeUnknown { reason, .. }) if reason.starts_with("server error") => {
            "server_error"
        }
        Err(ApiError::OutcomeUnknown { reason, .. }) if reason.starts_with("malformed") => {
            "malformed"
        }
        Err(ApiError::OutcomeUnknown { .. }) => "transport_error",
        Err(_) => "client_error",
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

fn transport_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "connection failed"
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
            Err(e) => {
                return Err(format!(
                    "reading the response failed: {}",
                    crate::errors::of(&e)
                ));
            }
        }
    }
}
