//! The configuration: figment reads the TOML file, then `AGENT_`-prefixed environment
//! variables (`__` for nesting); this module walks the merged tree by hand so that it can
//! report *every* problem at once, each naming its key and where the value came from, and
//! turns it into typed, validated [`Settings`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Source};
use lettre::message::Mailbox;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::retention::{RetentionPolicy, SLOTS};
use crate::schedule::CronSpec;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/vps-snapshot-agent/config.toml";
pub const DEFAULT_DATABASE: &str = "/var/lib/vps-snapshot-agent/history.db";
pub const DEFAULT_BASE_URL: &str = "https://admin.vps.org/api/v1";
const TOP_LEVEL: [&str; 5] = ["database", "api", "defaults", "email", "jobs"];
/// Longest job name: the snapshot name adds 28 characters around it.
const MAX_JOB_NAME: usize = 40;

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the value came from: the file's path, or the environment variable.
    pub origin: String,
    /// Key path, e.g. `jobs[1].schedule`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.key, self.message)
        }
    }
}

/// Every problem found in one configuration; never empty.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "invalid configuration ({n} problem{})",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    fn single(origin: impl Into<String>, key: &str, message: impl Into<String>) -> Self {
        Self(vec![ConfigError {
            origin: origin.into(),
            key: key.to_string(),
            message: message.into(),
        }])
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_path: PathBuf,
    pub database: PathBuf,
    pub api: ApiSettings,
    pub email: Option<EmailSettings>,
    pub jobs: Vec<JobSettings>,
    /// Problems that do not stop the agent (a token file readable by others).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub base_url: Url,
    /// `None` when no source provides one; commands that talk to the API ask for it
    /// through [`ApiSettings::token`], the others (history, status) work without.
    token: Option<SecretString>,
    token_hint: String,
    pub request_timeout: Duration,
    pub max_retries: u32,
    pub max_concurrent_jobs: usize,
}

impl ApiSettings {
    pub fn new(base_url: Url, token: SecretString) -> Self {
        Self {
            base_url,
            token: Some(token),
            token_hint: String::new(),
            request_timeout: Duration::from_secs(30),
            max_retries: 5,
            max_concurrent_jobs: 8,
        }
    }

    /// The API token, or the configuration error saying how to provide one.
    pub fn token(&self) -> Result<&SecretString, ConfigErrors> {
        self.token
            .as_ref()
            .ok_or_else(|| ConfigErrors::single(&self.token_hint, "api.token", NO_TOKEN))
    }
}

const NO_TOKEN: &str = "no API token: set api.token_file, api.token, the environment variable \
AGENT_API__TOKEN, or a systemd credential named api-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    StartTls,
    Tls,
    None,
}

#[derive(Debug, Clone)]
pub struct EmailSettings {
    pub smtp_host: String,
    pub smtp_port: u16,
    pub security: Security,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub repeat_after: Duration,
    pub notify_recovery: bool,
    pub timeout: Duration,
}

/// What fires a job.
#[derive(Debug, Clone)]
pub enum Trigger {
    Schedule(CronSpec),
    /// Snapshot `lead` before each opening of the window.
    Window {
        window: CronSpec,
        lead: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct JobSettings {
    pub name: String,
    pub server_id: u64,
    pub trigger: Trigger,
    pub timezone: Tz,
    pub retention: RetentionPolicy,
    pub poll_interval: Duration,
    pub snapshot_timeout: Duration,
    /// `None` when catch-up is off.
    pub catch_up: Option<Duration>,
    pub max_deletions_per_run: u32,
    /// `None`: twice the schedule's period.
    pub stale_after: Option<Duration>,
}

/// Where to find the configuration file: `--config`, then `$AGENT_CONFIG`, then the default.
pub fn resolve_path(cli: Option<&Path>) -> PathBuf {
    cli.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("AGENT_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

impl Settings {
    /// Loads and validates the file at `path` merged with the `AGENT_` environment.
    pub fn load(path: &Path) -> Result<Settings, ConfigErrors> {
        let origin = path.display().to_string();
        if let Err(e) = std::fs::metadata(path) {
            return Err(ConfigErrors::single(
                origin,
                "",
                format!("cannot read the configuration file: {e}"),
            ));
        }
        let env = Env::prefixed("AGENT_")
            .filter(|k| {
                // Figment filters before it lowercases and splits.
                let k = k.as_str().to_ascii_lowercase().replace("__", ".");
                let top = k.split('.').next().unwrap_or_default();
                TOP_LEVEL.contains(&top) && k != "api.token" && k != "email.password"
            })
            .split("__");
        let figment = Figment::new().merge(Toml::file_exact(path)).merge(env);
        let tree: Dict = figment.extract().map_err(|e| {
            ConfigErrors(
                e.into_iter()
                    .map(|e| ConfigError {
                        origin: origin.clone(),
                        key: e.path.join("."),
                        message: e.kind.to_string(),
                    })
                    .collect(),
            )
        })?;
        let mut walk = Walk {
            figment: &figment,
            file: origin,
            errors: Vec::new(),
            warnings: Vec::new(),
            crons: BTreeMap::new(),
        };
        let settings = walk.settings(path, &tree);
        match settings {
            Some(s) if walk.errors.is_empty() => Ok(s),
            _ => Err(ConfigErrors(walk.errors)),
        }
    }

    pub fn job(&self, name: &str) -> Option<&JobSettings> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

/// Parses a humantime duration (`"90s"`, `"2h 30m"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (expected a duration like \"20s\", \"45m\" or \"2h\")"))
}

/// Checks a job name: letters, digits, `-` and `_`, at most 40 characters.
pub fn validate_job_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_JOB_NAME {
        return Err(format!("is longer than {MAX_JOB_NAME} characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "{name:?} contains {c:?}; use letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

/// `http://` is only for loopback (the simulator); anything else must be `https://`.
pub fn validate_base_url(raw: &str) -> Result<Url, String> {
    let mut url = Url::parse(raw.trim()).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if !loopback {
                return Err(format!(
                    "plain http:// is refused for {raw:?}: the API token would cross the \
                     network unencrypted; use https:// (http:// is allowed only for loopback)"
                ));
            }
        }
        other => {
            return Err(format!(
                "unsupported scheme {other:?} in {raw:?}; use https://"
            ));
        }
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(format!("{raw:?} has no host"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Reads a secret from a file: trimmed, not empty.
fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(SecretString::from(text.to_string()))
}

fn credential_path(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let p = Path::new(&dir).join(name);
    p.exists().then_some(p)
}

fn env_secret(name: &str) -> Option<SecretString> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .map(SecretString::from)
}

fn mode_warning(key: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{key}: {} is readable by group or others (mode {:o}); run chmod 600 on it",
            path.display(),
            mode & 0o777
        )
    })
}

/// A table being read: remembers which keys were asked for, so the rest are "unknown".
struct Table<'v> {
    path: String,
    dict: Option<&'v Dict>,
    seen: BTreeSet<&'static str>,
}

impl<'v> Table<'v> {
    fn new(path: impl Into<String>, dict: Option<&'v Dict>) -> Self {
        Self {
            path: path.into(),
            dict,
            seen: BTreeSet::new(),
        }
    }
    fn key(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.path)
        }
    }
    fn get(&mut self, k: &'static str) -> Option<&'v Value> {
        self.seen.insert(k);
        self.dict?.get(k)
    }
    fn has(&self, k: &str) -> bool {
        self.dict.is_some_and(|d| d.contains_key(k))
    }
}

struct Walk<'f> {
    figment: &'f Figment,
    file: String,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    /// Parsed cron expressions: croner's parser is most of a load's cost, and a config
    /// with many jobs repeats a few expressions.
    crons: BTreeMap<String, Result<CronSpec, String>>,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::String(..) | Value::Char(..) => "a string",
        Value::Bool(..) => "a boolean",
        Value::Num(..) => "a number",
        Value::Empty(..) => "nothing",
        Value::Dict(..) => "a table",
        Value::Array(..) => "an array",
    }
}

impl Walk<'_> {
    /// The file a value came from, or the environment variable that set `key`.
    fn origin(&self, v: Option<&Value>, key: &str) -> String {
        let md = v.and_then(|v| self.figment.get_metadata(v.tag()));
        match md {
            Some(md) => match &md.source {
                Some(Source::File(p)) => p.display().to_string(),
                _ => format!(
                    "environment variable AGENT_{}",
                    key.to_ascii_uppercase().replace('.', "__")
                ),
            },
            None => self.file.clone(),
        }
    }

    fn error(&mut self, key: String, v: Option<&Value>, message: impl Into<String>) {
        let origin = self.origin(v, &key);
        self.errors.push(ConfigError {
            origin,
            key,
            message: message.into(),
        });
    }

    fn finish(&mut self, t: &Table<'_>) {
        let Some(dict) = t.dict else { return };
        for (k, v) in dict {
            if !t.seen.contains(k.as_str()) {
                let expected: Vec<_> = t.seen.iter().copied().collect();
                self.error(
                    t.key(k),
                    Some(v),
                    format!("unknown key (expected one of: {})", expected.join(", ")),
                );
            }
        }
    }

    fn table<'v>(&mut self, t: &mut Table<'v>, k: &'static str) -> Table<'v> {
        let path = t.key(k);
        match t.get(k) {
            None => Table::new(path, None),
            Some(Value::Dict(_, d)) => Table::new(path, Some(d)),
            Some(v) => {
                self.error(
                    path.clone(),
                    Some(v),
                    format!("expected a table, found {}", kind(v)),
                );
                Table::new(path, None)
            }
        }
    }

    fn string(&mut self, t: &mut Table<'_>, k: &'static str) -> Option<String> {
        let v = t.get(k)?;
        match v {
            Value::String(_, s) => Some(s.clone()),
            Value::Char(_, c) => Some(c.to_string()),
            // Environment values arrive parsed; `AGENT_EMAIL__USERNAME=1234` is still text.
            Value::Bool(_, b) if self.is_env_value(v) => Some(b.to_string()),
            Value::Num(..) if self.is_env_value(v) => v
                .to_i128()
                .map(|i| i.to_string())
                .or_else(|| v.to_u128().map(|n| n.to_string())),
            _ => {
                self.error(
                    t.key(k),
                    Some(v),
                    format!("expected a string, found {}", kind(v)),
                );
                None
            }
        }
    }

    fn is_env_value(&self, v: &Value) -> bool {
        self.figment
            .get_metadata(v.tag())
            .is_some_and(|md| !matches!(md.source, Some(Source::File(_))))
    }

    fn uint(&mut self, t: &mut Table<'_>, k: &'static str, min: u64, max: u64) -> Option<u64> {
        let v = t.get(k)?;
        let n = match v {
            Value::Num(..) => v
                .to_i128()
                .or_else(|| v.to_u128().and_then(|n| i128::try_from(n).ok())),
            Value::String(_, s) if self.is_env_value(v) => s.trim().parse::<i128>().ok(),
            _ => None,
        };
        match n {
            Some(n) if n >= i128::from(min) && n <= i128::from(max) => u64::try_from(n).ok(),
            Some(n) => {
                self.error(
                    t.key(k),
                    Some(v),
                    format!("{n} is out of range ({min}..={max})"),
                );
                None
            }
            None => {
                self.error(
                    t.key(k),
                    Some(v),
                    format!("expected a whole number, found {}", kind(v)),
                );
                None
            }
        }
    }

    fn boolean(&mut self, t: &mut Table<'_>, k: &'static str) -> Option<bool> {
        let v = t.get(k)?;
        match v {
            Value::Bool(_, b) => Some(*b),
            _ => {
                self.error(
                    t.key(k),
                    Some(v),
                    format!("expected true or false, found {}", kind(v)),
                );
                None
            }
        }
    }

    fn duration(&mut self, t: &mut Table<'_>, k: &'static str) -> Option<Duration> {
        let key = t.key(k);
        let v = t.get(k)?;
        let s = match v {
            Value::String(_, s) => Some(s.clone()),
            _ => None,
        };
        match s {
            Some(s) => match parse_duration(&s) {
                Ok(d) if d.is_zero() => {
                    self.error(key, Some(v), "must be longer than zero");
                    None
                }
                Ok(d) => Some(d),
                Err(e) => {
                    self.error(key, Some(v), format!("{s:?}: {e}"));
                    None
                }
            },
            None => {
                self.error(
                    key,
                    Some(v),
                    format!("expected a duration string like \"20s\", found {}", kind(v)),
                );
                None
            }
        }
    }

    fn settings(&mut self, path: &Path, tree: &Dict) -> Option<Settings> {
        let mut root = Table::new("", Some(tree));
        let database = self
            .string(&mut root, "database")
            .map_or_else(|| PathBuf::from(DEFAULT_DATABASE), PathBuf::from);
        let api = self.api(&mut root);
        let defaults = {
            let mut t = self.table(&mut root, "defaults");
            let d = self.job_fields(&mut t, None);
            self.finish(&t);
            d
        };
        let email = self.email(&mut root);
        let jobs = self.jobs(&mut root, &defaults);
        self.finish(&root);
        if database.as_os_str().is_empty() {
            self.error("database".into(), None, "must not be empty");
        }
        // A relative path is relative to the config file, not to wherever the agent was
        // started from (`/` under systemd).
        let database = match path.parent() {
            Some(dir) if database.is_relative() => dir.join(database),
            _ => database,
        };
        Some(Settings {
            config_path: path.to_path_buf(),
            database,
            api: api?,
            email,
            jobs,
            warnings: std::mem::take(&mut self.warnings),
        })
    }

    fn api(&mut self, root: &mut Table<'_>) -> Option<ApiSettings> {
        let mut t = self.table(root, "api");
        let base_url = match self.string(&mut t, "base_url") {
            Some(s) => match validate_base_url(&s) {
                Ok(u) => Some(u),
                Err(e) => {
                    let v = t.dict.and_then(|d| d.get("base_url"));
                    self.error(t.key("base_url"), v, e);
                    None
                }
            },
            None => validate_base_url(DEFAULT_BASE_URL).ok(),
        };
        let token_inline = self.string(&mut t, "token");
        let token_file = self.string(&mut t, "token_file").map(PathBuf::from);
        let request_timeout = self
            .duration(&mut t, "request_timeout")
            .unwrap_or(Duration::from_secs(30));
        let max_retries = self.uint(&mut t, "max_retries", 0, 20).unwrap_or(5) as u32;
        let max_concurrent_jobs = self
            .uint(&mut t, "max_concurrent_jobs", 1, 1024)
            .unwrap_or(8) as usize;
        self.finish(&t);

        let token_origin = self.origin(t.dict.and_then(|d| d.get("token_file")), "api.token_file");
        // Environment, then the file's `token`, then a systemd credential (so one config
        // serves the service and an operator's shell), then `token_file`.
        let token = if let Some(tok) = env_secret("AGENT_API__TOKEN") {
            Some(tok)
        } else if let Some(tok) = token_inline.filter(|s| !s.trim().is_empty()) {
            Some(SecretString::from(tok.trim().to_string()))
        } else if let Some(file) = credential_path("api-token") {
            match read_secret_file(&file) {
                Ok(tok) => Some(tok),
                Err(e) => {
                    self.error("api.token".into(), None, format!("systemd credential: {e}"));
                    None
                }
            }
        } else if let Some(file) = &token_file {
            match read_secret_file(file) {
                Ok(tok) => {
                    self.warnings.extend(mode_warning("api.token_file", file));
                    Some(tok)
                }
                Err(e) => {
                    let v = t.dict.and_then(|d| d.get("token_file"));
                    self.error("api.token_file".into(), v, e);
                    None
                }
            }
        } else {
            None
        };
        if let Some(tok) = &token
            && reqwest::header::HeaderValue::from_str(&format!("Bearer {}", tok.expose_secret()))
                .is_err()
        {
            self.error(
                "api.token".into(),
                None,
                "the token contains characters not allowed in an HTTP header",
            );
        }
        Some(ApiSettings {
            base_url: base_url?,
            token,
            token_hint: token_origin,
            request_timeout,
            max_retries,
            max_concurrent_jobs,
        })
    }

    fn email(&mut self, root: &mut Table<'_>) -> Option<EmailSettings> {
        if !root.has("email") {
            root.get("email");
            return None;
        }
        let mut t = self.table(root, "email");
        let smtp_host = self.string(&mut t, "smtp_host");
        if smtp_host.is_none() && t.dict.is_some() {
            self.error(
                t.key("smtp_host"),
                None,
                "is required when [email] is present",
            );
        }
        let security = match self.string(&mut t, "security").as_deref() {
            None | Some("starttls") => Security::StartTls,
            Some("tls") => Security::Tls,
            Some("none") => Security::None,
            Some(other) => {
                let v = t.dict.and_then(|d| d.get("security"));
                self.error(
                    t.key("security"),
                    v,
                    format!("{other:?} is not one of starttls, tls, none"),
                );
                Security::StartTls
            }
        };
        let default_port = match security {
            Security::StartTls => 587,
            Security::Tls => 465,
            Security::None => 25,
        };
        let smtp_port = self
            .uint(&mut t, "smtp_port", 1, 65535)
            .unwrap_or(default_port) as u16;
        let username = self.string(&mut t, "username");
        let password_inline = self.string(&mut t, "password");
        let password_file = self.string(&mut t, "password_file").map(PathBuf::from);
        let password = if let Some(p) = env_secret("AGENT_EMAIL__PASSWORD") {
            Some(p)
        } else if let Some(p) = password_inline {
            Some(SecretString::from(p))
        } else if let Some(p) =
            credential_path("smtp-password").and_then(|f| read_secret_file(&f).ok())
        {
            Some(p)
        } else if let Some(file) = &password_file {
            match read_secret_file(file) {
                Ok(p) => {
                    self.warnings
                        .extend(mode_warning("email.password_file", file));
                    Some(p)
                }
                Err(e) => {
                    let v = t.dict.and_then(|d| d.get("password_file"));
                    self.error(t.key("password_file"), v, e);
                    None
                }
            }
        } else {
            None
        };
        if username.is_some() && password.is_none() {
            self.error(
                t.key("password"),
                None,
                "email.username is set but no password: set password_file, password, \
                 AGENT_EMAIL__PASSWORD or a systemd credential named smtp-password",
            );
        }
        let from = self.mailbox(&mut t, "from");
        let to = match t.get("to") {
            Some(v @ Value::Array(_, items)) => {
                if items.is_empty() {
                    self.error(t.key("to"), Some(v), "needs at least one address");
                }
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(_, s) => match s.parse::<Mailbox>() {
                            Ok(m) => out.push(m),
                            Err(e) => self.error(
                                format!("email.to[{i}]"),
                                Some(item),
                                format!("{s:?} is not an email address: {e}"),
                            ),
                        },
                        other => self.error(
                            format!("email.to[{i}]"),
                            Some(other),
                            format!("expected a string, found {}", kind(other)),
                        ),
                    }
                }
                out
            }
            Some(v @ Value::String(_, s)) => match s.parse::<Mailbox>() {
                Ok(m) => vec![m],
                Err(e) => {
                    self.error(
                        t.key("to"),
                        Some(v),
                        format!("{s:?} is not an email address: {e}"),
                    );
                    Vec::new()
                }
            },
            Some(v) => {
                self.error(
                    t.key("to"),
                    Some(v),
                    format!("expected a list of addresses, found {}", kind(v)),
                );
                Vec::new()
            }
            None => {
                self.error(t.key("to"), None, "is required when [email] is present");
                Vec::new()
            }
        };
        let repeat_after = self
            .duration(&mut t, "repeat_after")
            .unwrap_or(Duration::from_secs(6 * 3600));
        let notify_recovery = self.boolean(&mut t, "notify_recovery").unwrap_or(true);
        let timeout = self
            .duration(&mut t, "timeout")
            .unwrap_or(Duration::from_secs(30));
        self.finish(&t);
        Some(EmailSettings {
            smtp_host: smtp_host?,
            smtp_port,
            security,
            username,
            password,
            from: from?,
            to,
            repeat_after,
            notify_recovery,
            timeout,
        })
    }

    fn mailbox(&mut self, t: &mut Table<'_>, k: &'static str) -> Option<Mailbox> {
        let Some(s) = self.string(t, k) else {
            if t.dict.is_some() {
                self.error(t.key(k), None, "is required when [email] is present");
            }
            return None;
        };
        match s.parse::<Mailbox>() {
            Ok(m) => Some(m),
            Err(e) => {
                let v = t.dict.and_then(|d| d.get(k));
                self.error(t.key(k), v, format!("{s:?} is not an email address: {e}"));
                None
            }
        }
    }

    /// The keys a job shares with `[defaults]`; `base` is the defaults when reading a job.
    fn job_fields(&mut self, t: &mut Table<'_>, base: Option<&JobFields>) -> JobFields {
        let fallback = JobFields::builtin();
        let base = base.unwrap_or(&fallback);
        let timezone = match self.string(t, "timezone") {
            Some(s) => match s.trim().parse::<Tz>() {
                Ok(tz) => tz,
                Err(_) => {
                    let v = t.dict.and_then(|d| d.get("timezone"));
                    self.error(
                        t.key("timezone"),
                        v,
                        format!(
                            "{s:?} is not an IANA time zone (like \"UTC\" or \"Europe/Berlin\")"
                        ),
                    );
                    base.timezone
                }
            },
            None => base.timezone,
        };
        let mut own = RetentionPolicy::default();
        let mut any_keep = false;
        for (k, slot) in [
            ("keep_last", &mut own.last),
            ("keep_hourly", &mut own.hourly),
            ("keep_daily", &mut own.daily),
            ("keep_weekly", &mut own.weekly),
            ("keep_monthly", &mut own.monthly),
        ] {
            if t.has(k) {
                any_keep = true;
            }
            if let Some(n) = self.uint(t, k, 0, 100) {
                *slot = n as u32;
            }
        }
        if t.has("keep_within") {
            any_keep = true;
        }
        own.within = self.duration(t, "keep_within");
        // A job that sets any keep_* key replaces the defaults' retention as a whole.
        let retention = if any_keep {
            own
        } else {
            base.retention.clone()
        };
        let poll_interval = self
            .duration(t, "poll_interval")
            .unwrap_or(base.poll_interval);
        let snapshot_timeout = self
            .duration(t, "snapshot_timeout")
            .unwrap_or(base.snapshot_timeout);
        let catch_up = match t.get("catch_up") {
            None => base.catch_up,
            Some(Value::String(_, s)) if s.trim() == "off" => None,
            Some(_) => {
                // Re-read through the duration path for its error messages.
                t.seen.remove("catch_up");
                self.duration(t, "catch_up")
            }
        };
        let max_deletions_per_run = self
            .uint(t, "max_deletions_per_run", 1, 5)
            .map_or(base.max_deletions_per_run, |n| n as u32);
        let stale_after = self.duration(t, "stale_after").or(base.stale_after);
        JobFields {
            timezone,
            retention,
            poll_interval,
            snapshot_timeout,
            catch_up,
            max_deletions_per_run,
            stale_after,
        }
    }

    fn cron(&mut self, t: &mut Table<'_>, k: &'static str) -> Option<CronSpec> {
        let s = self.string(t, k)?;
        let parsed = self
            .crons
            .entry(s.clone())
            .or_insert_with(|| CronSpec::parse(&s))
            .clone();
        match parsed {
            Ok(c) => Some(c),
            Err(e) => {
                let v = t.dict.and_then(|d| d.get(k));
                self.error(t.key(k), v, e);
                None
            }
        }
    }

    fn jobs(&mut self, root: &mut Table<'_>, defaults: &JobFields) -> Vec<JobSettings> {
        let items = match root.get("jobs") {
            None => return Vec::new(),
            Some(Value::Array(_, items)) => items,
            Some(v) => {
                self.error(
                    "jobs".into(),
                    Some(v),
                    format!("expected [[jobs]] tables, found {}", kind(v)),
                );
                return Vec::new();
            }
        };
        let mut jobs = Vec::new();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("jobs[{i}]");
            let Value::Dict(_, dict) = item else {
                self.error(
                    path,
                    Some(item),
                    format!("expected a table, found {}", kind(item)),
                );
                continue;
            };
            let mut t = Table::new(path, Some(dict));
            let name = self.string(&mut t, "name");
            match &name {
                None => self.error(t.key("name"), Some(item), "is required"),
                Some(n) => {
                    if let Err(e) = validate_job_name(n) {
                        let v = dict.get("name");
                        self.error(t.key("name"), v, e);
                    } else if let Some(first) = names.insert(n.clone(), i) {
                        let v = dict.get("name");
                        self.error(
                            t.key("name"),
                            v,
                            format!("{n:?} is already the name of jobs[{first}]; job names must be unique"),
                        );
                    }
                }
            }
            let server_id = self.uint(&mut t, "server_id", 1, i64::MAX as u64);
            if server_id.is_none() && !dict.contains_key("server_id") {
                self.error(t.key("server_id"), Some(item), "is required");
            }
            let schedule = self.cron(&mut t, "schedule");
            let window = self.cron(&mut t, "maintenance_window");
            let lead = self.duration(&mut t, "lead");
            let fields = self.job_fields(&mut t, Some(defaults));
            let trigger = match (
                dict.contains_key("schedule"),
                dict.contains_key("maintenance_window"),
            ) {
                (true, true) => {
                    self.error(
                        t.key("schedule"),
                        dict.get("schedule"),
                        "a job has either schedule or maintenance_window, not both",
                    );
                    None
                }
                (false, false) => {
                    self.error(
                        t.key("schedule"),
                        Some(item),
                        "a job needs schedule (cron) or maintenance_window (cron) with lead",
                    );
                    None
                }
                (true, false) => {
                    if dict.contains_key("lead") {
                        self.error(
                            t.key("lead"),
                            dict.get("lead"),
                            "lead only applies to a maintenance_window job",
                        );
                    }
                    schedule.map(Trigger::Schedule)
                }
                (false, true) => {
                    if !dict.contains_key("lead") {
                        self.error(
                            t.key("lead"),
                            Some(item),
                            "is required with maintenance_window (how long before the window to snapshot, e.g. \"45m\")",
                        );
                    }
                    match (window, lead) {
                        (Some(window), Some(lead)) => Some(Trigger::Window { window, lead }),
                        _ => None,
                    }
                }
            };
            if let Err(e) = fields.retention.validate() {
                self.error(format!("jobs[{i}].keep_*"), Some(item), e);
            }
            if fields.snapshot_timeout < fields.poll_interval {
                self.error(
                    t.key("snapshot_timeout"),
                    dict.get("snapshot_timeout"),
                    "is shorter than poll_interval",
                );
            }
            self.finish(&t);
            if let (Some(name), Some(server_id), Some(trigger)) = (name, server_id, trigger) {
                jobs.push(JobSettings {
                    name,
                    server_id,
                    trigger,
                    timezone: fields.timezone,
                    retention: fields.retention,
                    poll_interval: fields.poll_interval,
                    snapshot_timeout: fields.snapshot_timeout,
                    catch_up: fields.catch_up,
                    max_deletions_per_run: fields.max_deletions_per_run,
                    stale_after: fields.stale_after,
                });
            }
        }
        self.check_shared_servers(&jobs, items);
        jobs
    }

    /// Jobs on one server share its 5 slots: together they may keep at most 4.
    fn check_shared_servers(&mut self, jobs: &[JobSettings], items: &[Value]) {
        let mut by_server: BTreeMap<u64, Vec<&JobSettings>> = BTreeMap::new();
        for j in jobs {
            by_server.entry(j.server_id).or_default().push(j);
        }
        for (server, js) in by_server {
            let slots: u32 = js.iter().map(|j| j.retention.bound()).sum();
            if js.len() > 1 && slots > SLOTS {
                let names: Vec<_> = js.iter().map(|j| j.name.as_str()).collect();
                self.error(
                    "jobs".into(),
                    items.first(),
                    format!(
                        "jobs {} share server {server} and together may keep {slots} snapshots; \
                         the limit of 5 leaves room for {SLOTS} (lower their keep_* values)",
                        names.join(", ")
                    ),
                );
            }
        }
    }
}

/// Keys shared by `[defaults]` and each job.
#[derive(Debug, Clone)]
struct JobFields {
    timezone: Tz,
    retention: RetentionPolicy,
    poll_interval: Duration,
    snapshot_timeout: Duration,
    catch_up: Option<Duration>,
    max_deletions_per_run: u32,
    stale_after: Option<Duration>,
}

impl JobFields {
    fn builtin() -> Self {
        Self {
            timezone: Tz::UTC,
            retention: RetentionPolicy {
                last: 3,
                ..RetentionPolicy::default()
            },
            poll_interval: Duration::from_secs(20),
            snapshot_timeout: Duration::from_secs(30 * 60),
            catch_up: Some(Duration::from_secs(2 * 3600)),
            max_deletions_per_run: 3,
            stale_after: None,
        }
    }
}
