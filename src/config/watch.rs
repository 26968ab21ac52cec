//! What lets the agent be watched from outside: `[metrics]` (Prometheus), `[heartbeat]`
//! (a dead-man ping for the daemon itself), `[[notify]]` (alert channels besides email)
//! and a job's `ping_url`, read and checked in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::value::{Dict, Value};
use serde::Deserialize;
use url::Url;

use super::check::at;
use super::de::{self, Text};
use super::source::{Reader, noun_of};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Text>,
    textfile: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeartbeat {
    url: Option<Text>,
    #[serde(default, deserialize_with = "de::duration")]
    every: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    name: Option<Text>,
    kind: Option<NotifyKind>,
    url: Option<Text>,
    #[serde(default, deserialize_with = "de::duration")]
    timeout: Option<Duration>,
}

/// `[metrics]`: a listener for `/metrics` (and `/healthz`), a file for node_exporter's
/// textfile collector, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    pub listen: Option<SocketAddr>,
    pub textfile: Option<PathBuf>,
}

/// `[heartbeat]`: the daemon pings `url` every `every` (the Healthchecks protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatSettings {
    pub url: Url,
    pub every: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    /// A POST of the documented JSON body.
    Webhook,
    /// A Slack incoming webhook: `{"text": …}`.
    Slack,
    /// An ntfy topic URL: the alert as the message, its subject as the title.
    Ntfy,
}

impl NotifyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyKind::Webhook => "webhook",
            NotifyKind::Slack => "slack",
            NotifyKind::Ntfy => "ntfy",
        }
    }
}

/// One `[[notify]]` channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifySettings {
    /// Unique among the channels (`email` is the `[email]` channel's).
    pub name: String,
    pub kind: NotifyKind,
    pub url: Url,
    pub timeout: Duration,
}

/// How long a webhook, a Slack or ntfy post, or a ping may take.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// `raw` as a URL; what is wrong with it, in words, never quoting it (a URL's path or
/// user part is often its secret).
pub(super) fn parse_url(raw: &str) -> Result<Url, String> {
    Url::parse(raw.trim()).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => {
            "is not a URL: it has no scheme; write it with https:// in front".into()
        }
        e => format!("is not a URL: {e}"),
    })
}

/// A URL the agent posts to: http or https, with a host.
pub fn outside_url(raw: &str) -> Result<Url, String> {
    let url = parse_url(raw)?;
    if !raw.contains("://") {
        // `host:port/path` parses with the host as its scheme.
        return Err("is not a URL: it has no scheme; write it with https:// in front".into());
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "unsupported scheme {:?}; use https:// (or http://)",
            url.scheme()
        ));
    }
    if url.host().is_none() {
        return Err("the URL has no host".into());
    }
    Ok(url)
}

fn url(r: &mut Reader<'_>, key: &str, v: Option<&Value>, raw: Option<Text>) -> Option<Url> {
    let Some(raw) = raw else {
        r.error(key, v, "is required");
        return None;
    };
    outside_url(&raw.0)
        .map_err(|e| r.error(key, at(v, "url").or(v), e))
        .ok()
}

pub(super) fn metrics(r: &mut Reader<'_>, tree: &Dict) -> Option<MetricsSettings> {
    let v = r.table(tree, "metrics")?;
    let raw: RawMetrics = r.read("metrics", Some(v));
    let set = raw.listen.is_some() || raw.textfile.is_some();
    let listen = raw.listen.and_then(|t| {
        t.0.trim()
            .parse::<SocketAddr>()
            .map_err(|e| {
                let e = format!(
                    "{:?} is not an address and port like \"127.0.0.1:9464\": {e}",
                    t.0
                );
                r.error("metrics.listen", at(Some(v), "listen"), e);
            })
            .ok()
    });
    let textfile = raw.textfile.map(|t| PathBuf::from(t.0));
    if textfile.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        r.error(
            "metrics.textfile",
            at(Some(v), "textfile"),
            "must not be empty",
        );
    }
    if !set {
        r.error("metrics", Some(v), "set listen, textfile or both");
    }
    Some(MetricsSettings { listen, textfile })
}

pub(super) fn heartbeat(r: &mut Reader<'_>, tree: &Dict) -> Option<HeartbeatSettings> {
    let v = r.table(tree, "heartbeat")?;
    let raw: RawHeartbeat = r.read("heartbeat", Some(v));
    let url = url(r, "heartbeat.url", Some(v), raw.url)?;
    let every = raw.every.unwrap_or(Duration::from_secs(60));
    if every < Duration::from_secs(10) {
        r.error(
            "heartbeat.every",
            at(Some(v), "every"),
            "must be at least 10s",
        );
    }
    Some(HeartbeatSettings { url, every })
}

pub(super) fn notify(r: &mut Reader<'_>, tree: &Dict) -> Vec<NotifySettings> {
    let Some(items) = tree.get("notify") else {
        return Vec::new();
    };
    let Some(items) = items.as_array() else {
        let e = format!(
            "expected an array of tables ([[notify]]), found {}",
            noun_of(items)
        );
        r.error("notify", Some(items), e);
        return Vec::new();
    };
    let mut out: Vec<NotifySettings> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("notify[{i}]");
        let raw: RawNotify = r.read(&key, Some(item));
        let Some(kind) = raw.kind else {
            r.error(
                format!("{key}.kind"),
                Some(item),
                "is required: webhook, slack or ntfy",
            );
            continue;
        };
        let Some(url) = url(r, &format!("{key}.url"), Some(item), raw.url) else {
            continue;
        };
        let name = raw.name.map_or_else(|| kind.as_str().to_string(), |t| t.0);
        let clash = name == "email" || out.iter().any(|n| n.name == name);
        if clash || name.is_empty() {
            let e = format!(
                "{name:?}: each channel needs its own name (\"email\" is [email]'s); set name = \"…\""
            );
            r.error(
                format!("{key}.name"),
                at(Some(item), "name").or(Some(item)),
                e,
            );
            continue;
        }
        out.push(NotifySettings {
            name,
            kind,
            url,
            timeout: raw.timeout.unwrap_or(DEFAULT_HTTP_TIMEOUT),
        });
    }
    out
}

/// A job's `ping_url`, if set.
pub(super) fn ping_url(
    r: &mut Reader<'_>,
    key: &str,
    item: &Value,
    raw: Option<Text>,
) -> Option<Url> {
    let raw = raw?;
    outside_url(&raw.0)
        .map_err(|e| r.error(format!("{key}.ping_url"), at(Some(item), "ping_url"), e))
        .ok()
}
