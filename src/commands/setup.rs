//! What most commands need: the settings, the database, an API client, a runner.

use std::path::Path;
use std::sync::Arc;

use crate::api::Client;
use crate::clock::SharedClock;
use crate::config::{JobSettings, Settings};
use crate::db::Database;

use super::UsageError;

/// The database could not be opened at start: a setup problem (path, permissions, the
/// user the command runs as), so it exits 78 like a broken config and systemd does not
/// restart the service into the same wall.
#[derive(Debug, thiserror::Error)]
#[error("{error}{hint}")]
pub struct UnusableDatabase {
    error: crate::db::DbError,
    hint: String,
}

pub async fn open_db(settings: &Settings) -> anyhow::Result<Database> {
    open_at(&settings.database).await
}

/// For commands that only read the history (`status`, `history`, `unpin`): a SQLite
/// file that does not exist is not created where `database` may point by mistake; they
/// read an empty history instead (a throwaway database, dropped with the guard), and
/// say so, naming the file.
pub async fn open_to_read(
    settings: &Settings,
) -> anyhow::Result<(Database, Option<tempfile::TempDir>)> {
    match &settings.database {
        crate::db::Location::File(path) if !path.exists() && creatable(path) => {
            eprintln!(
                "agent: no history yet: {} does not exist (the first run creates it; if runs \
                 were made, is `database` in {} right?)",
                path.display(),
                settings.config_path.display()
            );
            let dir = tempfile::tempdir()?;
            let db = open_at(&crate::db::Location::File(dir.path().join("empty.db"))).await?;
            Ok((db, Some(dir)))
        }
        _ => Ok((open_db(settings).await?, None)),
    }
}

/// The database at `location`, or an [`UnusableDatabase`] (exit 78) saying why not; its
/// agents on the timing of `AGENT_TIMING`, when a test sets it.
pub async fn open_at(location: &crate::db::Location) -> anyhow::Result<Database> {
    let timing = crate::timing::Timing::from_env().map_err(UsageError)?;
    let db = Database::open_at(location).await.map_err(|error| {
        let hint = match location {
            crate::db::Location::File(path) => owner_hint(path).unwrap_or_default(),
            crate::db::Location::Postgres { .. } => String::new(),
        };
        UnusableDatabase { error, hint }
    })?;
    Ok(db.with_timing(timing))
}

/// Whether this user could create `path` (its nearest existing ancestor is a directory it
/// may write); one it could not is opened, to fail as unusable with the reason.
fn creatable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Some(dir) = path.ancestors().skip(1).find(|p| p.exists()) else {
        return false;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) reads the NUL-terminated path it is given.
    dir.is_dir() && unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0
}

/// When the database (or the nearest directory that exists on its path) belongs to
/// another user: whose it is, and the ways out (run as that user, hand the file or
/// directory to the user who runs agent, or another path).
fn owner_hint(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let (found, meta) = path
        .ancestors()
        .find_map(|p| std::fs::metadata(p).ok().map(|m| (p, m)))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() == me {
        return None;
    }
    let owner = user_name(meta.uid()).unwrap_or_else(|| format!("uid {}", meta.uid()));
    let run_as =
        (meta.uid() != 0).then(|| format!("run agent as {owner} (`sudo -u {owner} agent …`)"));
    let elsewhere = "set `database` to a path you can write".to_string();
    let ways: Vec<String> = if found == path {
        let give = format!(
            "give it to the user that runs agent (`sudo chown {SERVICE_USER}: {}` for the service)",
            path.display()
        );
        run_as.into_iter().chain([give, elsewhere]).collect()
    } else {
        let dir = path.parent().unwrap_or(found);
        let make = if dir == found {
            format!(
                "let the user that runs agent write {} (`sudo chown {SERVICE_USER}: {}` for the \
                 service)",
                dir.display(),
                dir.display()
            )
        } else {
            format!(
                "create {} for the user that runs agent (`sudo install -d -o {SERVICE_USER} {}` \
                 for the service; the unit's StateDirectory= does this itself)",
                dir.display(),
                dir.display()
            )
        };
        run_as.into_iter().chain([make, elsewhere]).collect()
    };
    Some(format!(
        " ({} belongs to {owner}: {})",
        found.display(),
        ways.join("; or ")
    ))
}

/// The user the packaged systemd unit runs as.
const SERVICE_USER: &str = "vps-snapshot-agent";

/// The name /etc/passwd gives `uid`.
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id = f.nth(1)?.parse::<u32>().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

pub fn client(settings: &Settings, clock: SharedClock) -> anyhow::Result<Arc<Client>> {
    let token = settings.api.token()?;
    Client::new(&settings.api, token, clock)
}

/// The named jobs (all when none), or a usage error naming the unknown one.
pub fn select_jobs(settings: &Settings, names: &[String]) -> anyhow::Result<Vec<JobSettings>> {
    if names.is_empty() {
        return Ok(settings.jobs.clone());
    }
    named_jobs(settings, names)
}

/// What `run-once` and `prune` act on: the named jobs (a disabled one too: it was asked
/// for), or every enabled job, saying which disabled ones are left out.
pub fn jobs_to_run(settings: &Settings, names: &[String]) -> anyhow::Result<Vec<JobSettings>> {
    if !names.is_empty() {
        return named_jobs(settings, names);
    }
    for j in settings.jobs.iter().filter(|j| !j.enabled) {
        println!(
            "{}: disabled (enabled = false): not run; name it with --job to run it",
            j.name
        );
    }
    Ok(settings
        .jobs
        .iter()
        .filter(|j| j.enabled)
        .cloned()
        .collect())
}

fn named_jobs(settings: &Settings, names: &[String]) -> anyhow::Result<Vec<JobSettings>> {
    // `--job web --job web` is one job run once: twice would take two snapshots, or
    // prune past the deletion cap.
    let mut seen = std::collections::HashSet::new();
    names
        .iter()
        .filter(|n| seen.insert(n.as_str()))
        .map(|n| {
            settings.job(n).cloned().ok_or_else(|| {
                let known: Vec<_> = settings.jobs.iter().map(|j| j.name.as_str()).collect();
                UsageError(format!(
                    "no job named {n:?} in {} (jobs: {})",
                    settings.config_path.display(),
                    known.join(", ")
                ))
                .into()
            })
        })
        .collect()
}

pub fn config_settings(path: &Path) -> anyhow::Result<Settings> {
    Ok(Settings::load_logged(path)?)
}
