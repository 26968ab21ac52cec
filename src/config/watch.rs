//! What lets the agent be watched from outside: `[metrics]` (Prometheus), `[heartbeat]`
//! (a dead-man ping for the daemon itself), `[[notify]]` (alert channels besides email)
//! and a job's `ping_url`, read and checked in one place.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::value::{Dict, Value};
use serde::Deserialize;
use url::Url;

use super::de::{self, Text};
use super::source::{Reader, at, noun_of};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Text>,
    textfile: Option<Text>,
    tls_cert: Option<Text>,
    tls_key: Option<Text>,
    client_ca: Option<Text>,
    tls_min_version: Option<Text>,
    basic_auth_users: Option<BTreeMap<String, Text>>,
    healthz_open_on_loopback: Option<bool>,
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
    /// The listener speaks TLS with these files (re-read on SIGHUP).
    pub tls: Option<TlsFiles>,
    /// User name → bcrypt hash: every path asks for one of them (HTTP basic auth).
    pub basic_auth_users: BTreeMap<String, String>,
    /// `/healthz` answers a client on this host without credentials.
    pub healthz_open_on_loopback: bool,
}

/// The listener's certificate and key, and the CA its clients' certificates must come
/// from (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where the key came from, to name it in an error: `metrics.tls_key` or the
    /// systemd credential.
    pub key_origin: &'static str,
    pub client_ca: Option<PathBuf>,
    /// TLS 1.3 only, or 1.2 and 1.3.
    pub tls13_only: bool,
}

/// The systemd credential the listener's key is read from when it is set
/// (`LoadCredential=metrics-tls-key:/etc/…`).
pub const TLS_KEY_CREDENTIAL: &str = "metrics-tls-key";

/// The cost a bcrypt-shaped hash names (`$2y$10$…` → 10).
fn bcrypt_cost(h: &str) -> Option<u32> {
    if !(h.starts_with("$2a$") || h.starts_with("$2b$") || h.starts_with("$2y$")) {
        return None;
    }
    h.get(4..6)?.parse().ok()
}

/// A bcrypt hash as htpasswd, Python's bcrypt and `agent hash-password` write it:
/// `$2y$10$` then 53 characters of bcrypt's base64.
pub fn is_bcrypt_hash(h: &str) -> bool {
    let b = h.as_bytes();
    h.len() == 60
        && (h.starts_with("$2a$") || h.starts_with("$2b$") || h.starts_with("$2y$"))
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && (4..=31).contains(&((b[4] - b'0') * 10 + (b[5] - b'0')))
        && b[6] == b'$'
        && b[7..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/')
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

pub(super) fn metrics(r: &mut Reader<'_>, tree: &Dict, dir: &Path) -> Option<MetricsSettings> {
    let v = r.table(tree, "metrics")?;
    let raw: RawMetrics = r.read("metrics", Some(v));
    let set = raw.listen.is_some() || raw.textfile.is_some();
    let listen = listen_addr(r, &raw, v);
    // Relative to the config file, like the database (not to wherever the agent started).
    let textfile = raw.textfile.as_ref().map(|t| dir.join(&t.0));
    if raw.textfile.as_ref().is_some_and(|t| t.0.trim().is_empty()) {
        r.error(
            "metrics.textfile",
            at(Some(v), "textfile"),
            "must not be empty",
        );
    }
    if !set {
        r.error("metrics", Some(v), "set listen, textfile or both");
    }
    let tls = tls_files(r, &raw, v, dir);
    let basic_auth_users = basic_auth_users(r, &raw, v);
    warn_mixed_costs(r, &basic_auth_users);
    check_guards(r, v, listen, tls.as_ref(), &basic_auth_users);
    Some(MetricsSettings {
        listen,
        textfile,
        tls,
        basic_auth_users,
        healthz_open_on_loopback: raw.healthz_open_on_loopback.unwrap_or(false),
    })
}

/// `listen` as an address and port; what is wrong with it is reported.
fn listen_addr(r: &mut Reader<'_>, raw: &RawMetrics, v: &Value) -> Option<SocketAddr> {
    raw.listen.as_ref().and_then(|t| {
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
    })
}

/// `basic_auth_users`: the users whose hash is a bcrypt hash of a sane cost, each other
/// one reported (never quoting what may be a password).
fn basic_auth_users(r: &mut Reader<'_>, raw: &RawMetrics, v: &Value) -> BTreeMap<String, String> {
    let mut basic_auth_users = BTreeMap::new();
    for (user, hash) in raw.basic_auth_users.clone().unwrap_or_default() {
        let key = format!("metrics.basic_auth_users.{user}");
        let value = at(at(Some(v), "basic_auth_users"), &user);
        if user.is_empty() || user.contains(':') {
            // Not named: `user:password` pasted as the key would show the password.
            r.error(
                "metrics.basic_auth_users",
                value,
                "a user name is empty or has ':' in it (not shown: it may hold a password); \
                 write `name = \"bcrypt hash\"`",
            );
        } else if let Some(cost) = bcrypt_cost(hash.0.trim()).filter(|c| !(4..=16).contains(c)) {
            r.error(
                &key,
                value,
                format!(
                    "a bcrypt cost of {cost} is outside 4 to 16 (each login would take {}); \
                     10 to 12 is usual",
                    if cost < 4 {
                        "less than bcrypt allows"
                    } else {
                        "minutes to days"
                    }
                ),
            );
        } else if !is_bcrypt_hash(hash.0.trim()) {
            // Never quoted: what is here may be the password itself.
            r.error(
                &key,
                value,
                "is not a bcrypt hash (\"$2y$10$…\", 60 characters): write the hash, never \
                 the password; `agent hash-password` makes one",
            );
        } else {
            basic_auth_users.insert(user, hash.0.trim().to_string());
        }
    }
    basic_auth_users
}

/// Warns when the users' hashes have different costs: how fast a wrong password is
/// refused would tell a user with a cheaper hash from an unknown one.
fn warn_mixed_costs(r: &mut Reader<'_>, basic_auth_users: &BTreeMap<String, String>) {
    let costs: std::collections::BTreeSet<u32> = basic_auth_users
        .values()
        .filter_map(|h| bcrypt_cost(h))
        .collect();
    if costs.len() > 1 {
        r.warnings.push(format!(
            "metrics.basic_auth_users: the hashes have different costs ({}): a user with a \
             cheaper hash can be told from an unknown one by how fast a wrong password is \
             refused; give every user the same cost",
            costs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
}

/// TLS and basic auth guard only a listener: an error when they are set without one, and
/// a warning for each guard a listener reachable from other hosts goes without.
fn check_guards(
    r: &mut Reader<'_>,
    v: &Value,
    listen: Option<SocketAddr>,
    tls: Option<&TlsFiles>,
    basic_auth_users: &BTreeMap<String, String>,
) {
    if (tls.is_some() || !basic_auth_users.is_empty()) && listen.is_none() {
        r.error(
            "metrics",
            Some(v),
            "tls_cert and basic_auth_users guard the listener: set listen too",
        );
    }
    if let Some(a) = listen.filter(|a| !a.ip().to_canonical().is_loopback()) {
        let mut missing = Vec::new();
        if tls.is_none() {
            missing.push("TLS (metrics.tls_cert and tls_key): everything it serves, credentials included, crosses the network in clear");
        }
        if basic_auth_users.is_empty() && tls.is_none_or(|t| t.client_ca.is_none()) {
            missing.push("authentication (metrics.basic_auth_users or metrics.client_ca): anyone who can reach the port reads server ids, job and snapshot names, errors and queued alerts");
        }
        for m in missing {
            r.warnings.push(format!(
                "metrics.listen: {a} is reachable from other hosts without {m}"
            ));
        }
    }
}

/// `tls_cert`, `tls_key` (or the systemd credential), `client_ca` and `tls_min_version`,
/// relative paths taken from the config file's directory.
fn tls_files(r: &mut Reader<'_>, raw: &RawMetrics, v: &Value, dir: &Path) -> Option<TlsFiles> {
    let path = |t: &Option<Text>| t.as_ref().map(|t| dir.join(t.0.trim()));
    let credential = std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(|d| Path::new(&d).join(TLS_KEY_CREDENTIAL))
        .filter(|p| p.exists());
    let tls13_only = match raw.tls_min_version.as_ref().map(|t| t.0.trim()) {
        None | Some("1.2" | "TLS12") => false,
        Some("1.3" | "TLS13") => true,
        Some(_) => {
            r.error(
                "metrics.tls_min_version",
                at(Some(v), "tls_min_version"),
                "expected \"1.2\" or \"1.3\"",
            );
            false
        }
    };
    let Some(cert) = path(&raw.tls_cert) else {
        for (key, set) in [
            ("tls_key", raw.tls_key.is_some()),
            ("client_ca", raw.client_ca.is_some()),
            ("tls_min_version", raw.tls_min_version.is_some()),
        ] {
            if set {
                r.error(
                    format!("metrics.{key}"),
                    at(Some(v), key),
                    "needs metrics.tls_cert (the listener's certificate)",
                );
            }
        }
        return None;
    };
    let (key, key_origin) = match (credential, path(&raw.tls_key)) {
        (Some(c), file) => {
            if let Some(file) = file {
                r.warnings.push(format!(
                    "metrics.tls_key: the systemd credential metrics-tls-key is used, not {}",
                    file.display()
                ));
            }
            (c, "systemd credential metrics-tls-key")
        }
        (None, Some(k)) => (k, "metrics.tls_key"),
        (None, None) => {
            r.error(
                "metrics.tls_key",
                Some(v),
                "is required with tls_cert (or the systemd credential metrics-tls-key)",
            );
            return None;
        }
    };
    Some(TlsFiles {
        cert,
        key,
        key_origin,
        client_ca: path(&raw.client_ca),
        tls13_only,
    })
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
