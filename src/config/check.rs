//! The semantic pass over what [`super::sections`] read: what values must satisfy beyond
//! their types, every problem collected, the defaults (written once, here and in
//! [`super::jobs`]), and the typed [`Settings`] they make.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::value::{Dict, Value};
use lettre::message::Mailbox;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::db::Location;

use super::de::Text;
use super::jobs;
use super::secret::{Found, Lookup};
use super::sections::{self, JobKeys};
use super::source::{Reader, at, unknown_key};
use super::watch;
use super::{
    ApiSettings, DEFAULT_BASE_URL, DEFAULT_DATABASE, EmailSettings, Security, Settings, TOP_LEVEL,
};

/// `http://` is only for loopback (the simulator); anything else must be `https://`.
pub fn validate_base_url(raw: &str) -> Result<Url, String> {
    // Messages show the URL without a user name or password, and never a URL that does
    // not parse (its text may hold one).
    let mut url = watch::parse_url(raw)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not carry a user name or password (the API token goes in api.token_file)".into(),
        );
    }
    let raw = url.as_str().to_string();
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "plain http:// is refused for {raw:?}: the API token would cross the network \
                 unencrypted; use https:// (http:// is allowed only for loopback)"
            ));
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

/// A parsed email address, or the problem recorded.
fn mailbox(r: &mut Reader<'_>, key: &str, v: Option<&Value>, text: &str) -> Option<Mailbox> {
    text.parse::<Mailbox>()
        .map_err(|e| r.error(key, v, format!("{text:?} is not an email address: {e}")))
        .ok()
}

/// Where the history database is: a path, a `sqlite:` URL of one, or a `postgres://` URL.
/// Anything else is refused by name rather than taken for a file name.
fn database_location(r: &mut Reader<'_>, text: &str) -> Result<Location, String> {
    let (scheme, rest) = match text.split_once(':') {
        Some((s, rest))
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                && (rest.starts_with("//") || s == "sqlite") =>
        {
            (s, rest)
        }
        _ => ("", text),
    };
    let path = match scheme {
        "" => text,
        "sqlite" if rest.contains('?') => {
            return Err(format!(
                "{text:?}: options in a sqlite: URL are not supported; give the file's path"
            ));
        }
        // sqlite:///abs/path, sqlite://relative/path, sqlite:relative/path
        "sqlite" => rest.strip_prefix("//").unwrap_or(rest),
        "postgres" | "postgresql" => return postgres_location(r, text),
        other => {
            return Err(format!(
                "unknown database URL scheme {other:?}: give the path of a SQLite file or a postgres:// URL"
            ));
        }
    };
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(Location::File(PathBuf::from(path)))
}

/// A PostgreSQL URL, its password taken out: from the URL itself, else `PGPASSWORD`, else
/// the systemd credential `database-password`. Messages never repeat the URL, which may
/// hold the password.
fn postgres_location(r: &mut Reader<'_>, text: &str) -> Result<Location, String> {
    let (url, in_url) = crate::db::split_password(text)?;
    let password = match in_url {
        Some(p) => Some(p),
        None => match (Lookup {
            key: "database password",
            env: "PGPASSWORD",
            inline: None,
            credential: "database-password",
            file: None,
            file_key: "database",
            file_value: None,
        })
        .find(r)
        {
            Found::Secret(s) => Some(s),
            Found::Broken | Found::Nothing => None,
        },
    };
    Ok(Location::Postgres { url, password })
}

/// The whole configuration; its problems are in `r`.
pub(super) fn settings(r: &mut Reader<'_>, path: &Path, tree: &Dict) -> Settings {
    for (k, v) in tree {
        if !TOP_LEVEL.contains(&k.as_str()) {
            r.error(k.clone(), Some(v), unknown_key(k, &TOP_LEVEL, ""));
        }
    }
    let database: Option<Text> = r.read("database", tree.get("database"));
    let database = database.map_or(DEFAULT_DATABASE.to_string(), |t| t.0);
    let database = database_location(r, &database).unwrap_or_else(|e| {
        r.error("database", tree.get("database"), e);
        Location::File(PathBuf::new())
    });
    let api_v = r.table(tree, "api");
    let raw = r.read("api", api_v);
    let api = api(r, raw, api_v);
    let defaults_v = r.table(tree, "defaults");
    let keys: JobKeys = r.read("defaults", defaults_v);
    let defaults = jobs::defaults(r, &keys, defaults_v);
    let email = tree.contains_key("email").then(|| {
        let v = r.table(tree, "email");
        let raw = r.read("email", v);
        email(r, raw, v)
    });
    let notify = watch::notify(r, tree);
    let metrics = watch::metrics(r, tree, path.parent().unwrap_or(Path::new(".")));
    let heartbeat = watch::heartbeat(r, tree);
    let jobs = jobs::jobs(r, tree.get("jobs"), &defaults);
    Settings {
        config_path: path.to_path_buf(),
        // A relative path is relative to the config file, not to wherever the agent
        // was started from (`/` under systemd).
        database: match (path.parent(), database) {
            (Some(dir), Location::File(file)) if file.is_relative() => {
                Location::File(dir.join(file))
            }
            (_, database) => database,
        },
        api,
        email: email.flatten(),
        notify,
        metrics,
        heartbeat,
        jobs,
        warnings: Vec::new(),
        included: Vec::new(),
    }
}

fn api(r: &mut Reader<'_>, raw: sections::Api, v: Option<&Value>) -> ApiSettings {
    let base = raw.base_url.map_or(DEFAULT_BASE_URL.to_string(), |t| t.0);
    let base_url = validate_base_url(&base).unwrap_or_else(|e| {
        r.error("api.base_url", at(v, "base_url"), e);
        validate_base_url(DEFAULT_BASE_URL)
            .unwrap_or_else(|_| unreachable!("the default URL is valid"))
    });
    let token = Lookup {
        key: "api.token",
        env: "AGENT_API__TOKEN",
        inline: raw.token.map(|t| t.0),
        credential: "api-token",
        file: raw.token_file.map(|t| PathBuf::from(t.0)),
        file_key: "api.token_file",
        file_value: at(v, "token_file"),
    }
    .find(r);
    let token = match token {
        Found::Secret(t) => Some(t),
        Found::Broken | Found::Nothing => None,
    };
    if let Some(t) = &token
        && reqwest::header::HeaderValue::from_str(&format!("Bearer {}", t.expose_secret())).is_err()
    {
        r.error(
            "api.token",
            None,
            "the token contains characters not allowed in an HTTP header",
        );
    }
    ApiSettings {
        base_url,
        token,
        token_hint: r.origin(at(v, "token_file"), "api.token_file"),
        request_timeout: raw.request_timeout.unwrap_or(Duration::from_secs(30)),
        max_retries: raw.max_retries.map_or(5, |n| n.0 as u32),
        max_concurrent_jobs: raw.max_concurrent_jobs.map_or(8, |n| n.0 as usize),
    }
}

fn email(r: &mut Reader<'_>, raw: sections::Email, v: Option<&Value>) -> Option<EmailSettings> {
    let required = "is required when [email] is present";
    if raw.smtp_host.is_none() {
        r.error("email.smtp_host", None, required);
    }
    if raw.from.is_none() {
        r.error("email.from", None, required);
    }
    let from = raw
        .from
        .and_then(|t| mailbox(r, "email.from", at(v, "from"), &t.0));
    let addresses = raw.to.unwrap_or_default();
    if addresses.is_empty() {
        r.error("email.to", at(v, "to"), "needs at least one address");
    }
    let to: Vec<Mailbox> = addresses
        .iter()
        .enumerate()
        .filter_map(|(i, t)| mailbox(r, &format!("email.to[{i}]"), at(v, "to"), &t.0))
        .collect();
    let security = raw.security.unwrap_or(Security::StartTls);
    let smtp_port = raw.smtp_port.map_or(
        match security {
            Security::StartTls => 587,
            Security::Tls => 465,
            Security::None => 25,
        },
        |p| p.0 as u16,
    );
    let password = Lookup {
        key: "email.password",
        env: "AGENT_EMAIL__PASSWORD",
        inline: raw.password.map(|t| t.0),
        credential: "smtp-password",
        file: raw.password_file.map(|t| PathBuf::from(t.0)),
        file_key: "email.password_file",
        file_value: at(v, "password_file"),
    }
    .find(r);
    let username = raw.username.map(|t| t.0);
    let password: Option<SecretString> = match password {
        Found::Secret(p) => Some(p),
        // The unreadable source was reported: one cause, one problem.
        Found::Broken => None,
        Found::Nothing if username.is_some() => {
            r.error(
                "email.password",
                None,
                "email.username is set but no password: set password_file, password, \
                 AGENT_EMAIL__PASSWORD or a systemd credential named smtp-password",
            );
            None
        }
        Found::Nothing => None,
    };
    Some(EmailSettings {
        smtp_host: raw.smtp_host?.0,
        smtp_port,
        security,
        username,
        password,
        from: from?,
        to,
        repeat_after: raw.repeat_after.unwrap_or(super::DEFAULT_REPEAT_AFTER),
        notify_recovery: raw.notify_recovery.unwrap_or(true),
        timeout: raw.timeout.unwrap_or(Duration::from_secs(30)),
    })
}
