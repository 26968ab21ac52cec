//! The channels reached over HTTP (webhook, Slack, ntfy) and the Healthchecks-style
//! pings: what each is sent, and what counts as delivered (a 2xx answer).

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde_json::json;
use url::Url;

use super::DeliveryError;
use crate::config::{NotifyKind, NotifySettings};
use crate::db::{PendingAlert, PingKind};
use crate::domain::AlertKind;

/// ntfy turns a longer message into an attachment; the text is cut to fit.
const NTFY_MAX: usize = 3900;
/// Slack cuts messages at 40,000 characters.
const SLACK_MAX: usize = 35_000;

/// The client every HTTP channel and ping shares: rustls, no redirects (a ping or an
/// alert goes where it was configured to go), a short connect timeout.
pub fn client() -> anyhow::Result<reqwest::Client> {
    // Built once per process (it parses the system's root certificates).
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    let c = build()?;
    Ok(CLIENT.get_or_init(|| c).clone())
}

fn build() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .user_agent(crate::identity::USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .build()?)
}

/// `text` cut to at most `max` bytes on a character boundary, saying so.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n[… cut: the whole text is in `agent status` and by email]",
        &text[..end]
    )
}

/// ntfy's priority (1–5) for an alert of `kind`.
fn ntfy_priority(kind: AlertKind) -> u8 {
    match kind {
        AlertKind::Failed
        | AlertKind::NoRoom
        | AlertKind::Stale
        | AlertKind::NotReadyBeforeWindow
        | AlertKind::AgentGone => 4,
        AlertKind::Hook | AlertKind::Drift | AlertKind::Restored => 3,
        AlertKind::Recovered => 2,
    }
}

fn ntfy_tag(priority: u8) -> &'static str {
    if priority >= 4 {
        "warning"
    } else {
        "information_source"
    }
}

/// A header value from free text: visible ASCII only (ntfy's titles).
fn header_text(text: &str) -> HeaderValue {
    let ascii: String = text
        .chars()
        .map(|c| match c {
            '…' => '.',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .collect();
    HeaderValue::from_str(&ascii).unwrap_or_else(|_| HeaderValue::from_static("vps-snapshot-agent"))
}

/// The documented webhook body: the composed text, and each alert as data.
pub fn webhook_body(
    due: &[PendingAlert],
    subject: &str,
    text: &str,
    host: &str,
) -> serde_json::Value {
    let alerts: Vec<serde_json::Value> = due
        .iter()
        .map(|a| {
            json!({
                "id": a.id,
                "kind": a.kind,
                "job": a.job,
                "server_id": a.server_id,
                "run_id": a.run_id,
                "subject": a.subject,
                "body": a.body,
                "created_at": a.created_at,
            })
        })
        .collect();
    json!({
        "agent": {"host": host, "version": env!("CARGO_PKG_VERSION")},
        "subject": subject,
        "text": text,
        "alerts": alerts,
    })
}

/// Posts `due` (composed as `subject` and `text`) to the channel `n`.
pub async fn post_alerts(
    http: &reqwest::Client,
    n: &NotifySettings,
    due: &[PendingAlert],
    subject: &str,
    text: &str,
    host: &str,
) -> Result<(), DeliveryError> {
    let req = http.post(n.url.clone()).timeout(n.timeout);
    let req = match n.kind {
        NotifyKind::Webhook => req.json(&webhook_body(due, subject, text, host)),
        NotifyKind::Slack => {
            req.json(&json!({"text": cut(&format!("*{subject}*\n```\n{text}\n```"), SLACK_MAX)}))
        }
        NotifyKind::Ntfy => {
            let priority = due.iter().map(|a| ntfy_priority(a.kind)).max().unwrap_or(3);
            req.header("Title", header_text(subject))
                .header("Priority", priority.to_string())
                .header("Tags", ntfy_tag(priority))
                .header(CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(cut(text, NTFY_MAX))
        }
    };
    let what = format!(
        "{} channel {} ({})",
        n.kind.as_str(),
        n.name,
        crate::secrets::host_of(&n.url)
    );
    send(req, &what).await
}

/// The Healthchecks URL for a ping of `kind` on the check at `base`.
pub fn ping_url(base: &Url, kind: PingKind) -> Url {
    let suffix = match kind {
        PingKind::Start => "start",
        PingKind::Fail => "fail",
        PingKind::Success | PingKind::Heartbeat => return base.clone(),
    };
    let mut url = base.clone();
    let path = format!("{}/{suffix}", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

/// One ping: a POST with `body` (the error, for `/fail`).
pub async fn ping(
    http: &reqwest::Client,
    url: &Url,
    body: &str,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let req = http
        .post(url.clone())
        .timeout(timeout)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(cut(body, 10_000));
    send(req, &format!("ping to {}", crate::secrets::host_of(url))).await
}

async fn send(req: reqwest::RequestBuilder, what: &str) -> Result<(), DeliveryError> {
    let resp = req.send().await.map_err(|e| DeliveryError::Unreachable {
        what: crate::secrets::scrub(what).into_owned(),
        detail: crate::errors::of(&e.without_url()),
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    // A receiver may echo the request (its secret path) in its answer: scrubbed whole
    // before it is cut, and again at the cut.
    let body = resp.text().await.unwrap_or_default();
    let body = crate::secrets::scrub(&body);
    let excerpt: String = body.chars().take(200).collect();
    Err(DeliveryError::Refused {
        what: crate::secrets::scrub(what).into_owned(),
        status: status.as_u16(),
        excerpt: crate::secrets::scrub_cut(excerpt.trim()),
    })
}
