//! The configuration: figment merges the TOML file and `AGENT_`-prefixed environment
//! variables (`__` for nesting); each section and each `[[jobs]]` entry is deserialized
//! on its own into serde structs (`sections`, read by `source`), then one pass
//! (`check`, and `jobs` for the jobs) collects every semantic problem and builds the
//! typed [`Settings`]; `secret` finds the token and the SMTP password alike. Every problem names its key path
//! and where the value came from (the file, or the environment variable).

mod check;
mod de;
mod include;
mod jobs;
mod secret;
mod sections;
mod source;
mod watch;

pub use check::validate_base_url;
pub use jobs::validate_job_name;
pub use watch::{
    DEFAULT_HTTP_TIMEOUT, HeartbeatSettings, MetricsSettings, NotifyKind, NotifySettings, TlsFiles,
    is_bcrypt_hash,
};

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use figment::value::Dict;
use lettre::message::Mailbox;
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::cron::CronSpec;
use crate::domain::ServerId;
use crate::hooks::Hooks;
use crate::retention::RetentionPolicy;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/vps-snapshot-agent/config.toml";
pub const DEFAULT_DATABASE: &str = "/var/lib/vps-snapshot-agent/history.db";
/// How long a failing job's alert is not repeated (on every channel).
pub const DEFAULT_REPEAT_AFTER: Duration = Duration::from_secs(6 * 3600);
pub const DEFAULT_BASE_URL: &str = "https://admin.vps.org/api/v1";
const TOP_LEVEL: [&str; 9] = [
    "include",
    "database",
    "api",
    "defaults",
    "email",
    "notify",
    "metrics",
    "heartbeat",
    "jobs",
];

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
    pub fn single(origin: impl Into<String>, key: &str, message: impl Into<String>) -> Self {
        Self(vec![ConfigError {
            origin: origin.into(),
            key: key.to_string(),
            message: message.into(),
        }])
    }
}

/// A parser's message without the lines of the file it quotes (`24 | url = "…`, and
/// the `^` under it): a broken line may hold a secret (a webhook's path, a password).
/// The line and column are still named.
fn without_source(message: &str) -> String {
    let quoted = |l: &str| {
        let t = l.trim_start();
        let after_number = t
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start();
        after_number.starts_with('|') || (!t.is_empty() && t.chars().all(|c| c == '^' || c == '~'))
    };
    message
        .lines()
        .filter(|l| !quoted(l) && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_path: PathBuf,
    pub database: crate::db::Location,
    pub api: ApiSettings,
    pub email: Option<EmailSettings>,
    /// Alert channels besides email.
    pub notify: Vec<NotifySettings>,
    pub metrics: Option<MetricsSettings>,
    pub heartbeat: Option<HeartbeatSettings>,
    pub jobs: Vec<JobSettings>,
    /// Problems that do not stop the agent (a token file readable by others).
    pub warnings: Vec<String>,
    /// The files `include` added jobs from, in the order read.
    pub included: Vec<PathBuf>,
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
        self.token.as_ref().ok_or_else(|| {
            ConfigErrors::single(
                &self.token_hint,
                "api.token",
                "no API token: set api.token_file, api.token, the environment variable \
                 AGENT_API__TOKEN, or a systemd credential named api-token",
            )
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
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
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    Schedule(CronSpec),
    /// Snapshot `lead` before each opening of the window.
    Window {
        window: CronSpec,
        lead: Duration,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobSettings {
    pub name: String,
    pub server_id: ServerId,
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
    /// How long the safety snapshot taken before a restore stays pinned.
    pub restore_safety_keep: Duration,
    /// Commands run around the snapshot.
    pub hooks: Hooks,
    /// A Healthchecks-style check pinged at each run's start and end.
    pub ping_url: Option<Url>,
    /// `enabled = false`: the job never fires (nor catches up, nor goes stale); `run-once`
    /// runs it only when named; its snapshots stay its own.
    pub enabled: bool,
}

impl Trigger {
    /// The trigger with its expression parsed, for several evaluations in a row.
    pub fn parsed(&self) -> Trigger {
        match self {
            Trigger::Schedule(c) => Trigger::Schedule(c.parsed()),
            Trigger::Window { window, lead } => Trigger::Window {
                window: window.parsed(),
                lead: *lead,
            },
        }
    }

    fn compact(&mut self) {
        match self {
            Trigger::Schedule(c) | Trigger::Window { window: c, .. } => c.compact(),
        }
    }
}

/// Where to find the configuration file: `--config`, then `$AGENT_CONFIG`, then the default.
pub fn resolve_path(cli: Option<&Path>) -> PathBuf {
    cli.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("AGENT_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

impl Settings {
    /// Drops the jobs' parsed cron expressions (5 KiB each; parsed again, about 25 µs,
    /// when next needed): what a daemon that has armed its jobs does to stay small.
    pub fn compact(&mut self) {
        for j in &mut self.jobs {
            j.trigger.compact();
        }
    }

    /// [`Settings::load`], its warnings logged: what every command but `check` (which
    /// prints them) and the daemon's reload read the configuration with.
    pub fn load_logged(path: &Path) -> Result<Settings, ConfigErrors> {
        let settings = Self::load(path)?;
        for w in &settings.warnings {
            tracing::warn!("{w}");
        }
        Ok(settings)
    }

    /// Loads and validates the file at `path` merged with the `AGENT_` environment.
    pub fn load(path: &Path) -> Result<Settings, ConfigErrors> {
        let origin = path.display().to_string();
        if let Err(e) = std::fs::metadata(path) {
            let message = format!("cannot read the configuration file: {e}");
            return Err(ConfigErrors::single(origin, "", message));
        }
        // Only variables for a real top-level key (CI systems set unrelated AGENT_*
        // ones); secrets are read by the secret lookup, not merged into the tree.
        let env = Env::prefixed("AGENT_")
            .filter(|k| {
                let k = k.as_str().to_ascii_lowercase().replace("__", ".");
                let top = k.split('.').next().unwrap_or_default();
                TOP_LEVEL.contains(&top) && k != "api.token" && k != "email.password"
            })
            .split("__");
        let included = include::files(path)?;
        let figment =
            include::add(Figment::new().merge(Toml::file_exact(path)), &included)?.merge(env);
        let tree: Dict = figment.extract().map_err(|e| {
            ConfigErrors(
                e.into_iter()
                    .map(|e| ConfigError {
                        origin: origin.clone(),
                        key: e.path.join("."),
                        message: without_source(&e.kind.to_string()),
                    })
                    .collect(),
            )
        })?;
        let mut reader = source::Reader::new(&figment, origin);
        let settings = check::settings(&mut reader, path, &tree);
        if reader.errors.is_empty() {
            let settings = Settings {
                warnings: reader.warnings,
                included,
                ..settings
            };
            settings.register_secrets();
            Ok(settings)
        } else {
            Err(ConfigErrors(reader.errors))
        }
    }

    /// Tells [`crate::secrets`] what of this configuration must never be shown: the
    /// token, the SMTP and database passwords, and the path and query of every URL the
    /// agent posts to.
    pub fn register_secrets(&self) {
        use secrecy::ExposeSecret as _;
        let passwords = [
            self.api.token.as_ref(),
            self.email.as_ref().and_then(|e| e.password.as_ref()),
            match &self.database {
                crate::db::Location::Postgres { password, .. } => password.as_ref(),
                crate::db::Location::File(_) => None,
            },
        ];
        for p in passwords.into_iter().flatten() {
            crate::secrets::register(p.expose_secret());
        }
        if let Some(e) = &self.email
            && let (Some(user), Some(pass)) = (&e.username, &e.password)
        {
            crate::secrets::register_smtp_login(user, pass.expose_secret());
        }
        let urls = self
            .notify
            .iter()
            .map(|n| &n.url)
            .chain(self.heartbeat.iter().map(|h| &h.url))
            .chain(self.jobs.iter().filter_map(|j| j.ping_url.as_ref()));
        for url in urls {
            crate::secrets::register_url(url);
        }
        for n in self.notify.iter().filter(|n| n.kind == NotifyKind::Ntfy) {
            crate::secrets::register_topic(&n.url);
        }
    }

    pub fn job(&self, name: &str) -> Option<&JobSettings> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// For `run` and `check`: a configuration without jobs (an empty or truncated file)
    /// is a mistake, not an idle schedule.
    pub fn require_jobs(&self) -> Result<(), ConfigErrors> {
        if self.jobs.is_empty() {
            return Err(ConfigErrors::single(
                self.config_path.display().to_string(),
                "jobs",
                "no [[jobs]]: nothing to do (is the file empty or cut short?)",
            ));
        }
        Ok(())
    }

    /// The keys read only when the agent starts that `new` changes: a reload cannot
    /// apply them, and says so.
    pub fn start_only_changes(&self, new: &Settings) -> Vec<&'static str> {
        let listen = |s: &Settings| s.metrics.as_ref().and_then(|m| m.listen);
        let mut keys = Vec::new();
        if self.database.to_string() != new.database.to_string() {
            keys.push("database");
        }
        if listen(self) != listen(new) {
            keys.push("metrics.listen");
        }
        keys
    }

    /// What `new` changes in the jobs, in words: "added a; removed b; changed c (schedule)".
    pub fn job_changes(&self, new: &Settings) -> String {
        let mut added = Vec::new();
        let mut changed = Vec::new();
        for j in &new.jobs {
            match self.job(&j.name) {
                None => added.push(j.name.as_str()),
                Some(old) if old != j => changed.push(j.name.as_str()),
                Some(_) => {}
            }
        }
        let removed: Vec<&str> = self
            .jobs
            .iter()
            .filter(|j| new.job(&j.name).is_none())
            .map(|j| j.name.as_str())
            .collect();
        let parts: Vec<String> = [("added", added), ("removed", removed), ("changed", changed)]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(what, v)| format!("{what} {}", v.join(", ")))
            .collect();
        if parts.is_empty() {
            "no job changed".into()
        } else {
            parts.join("; ")
        }
    }
}
