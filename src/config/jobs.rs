//! The rules for `[defaults]` and `[[jobs]]`: what a job inherits (the built-in defaults
//! are written here, once), what its name and trigger need, and what jobs sharing a
//! server may keep together.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono_tz::Tz;
use figment::value::{Dict, Value};

use super::de::{Bounded, Text};
use super::sections::{JOB_OWN_KEYS, JobKeys, JobOwn};
use super::source::{Reader, at, keys_of, noun_of, unknown_key};
use super::{JobSettings, Trigger};
use crate::cron::CronSpec;
use crate::domain::ServerId;
use crate::hooks::Hooks;
use crate::retention::{RetentionPolicy, SLOTS};

/// Longest job name: the snapshot name adds 28 characters around it.
const MAX_JOB_NAME: usize = 40;

/// What a job inherits: `[defaults]` over the built-in values.
#[derive(Debug, Clone)]
pub(super) struct JobFields {
    timezone: Tz,
    retention: RetentionPolicy,
    poll_interval: Duration,
    snapshot_timeout: Duration,
    catch_up: Option<Duration>,
    max_deletions_per_run: u32,
    stale_after: Option<Duration>,
    restore_safety_keep: Duration,
    hooks: Hooks,
}

/// Checks a job name: letters, digits, `-` and `_`, at most 40 characters.
pub fn validate_job_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_JOB_NAME {
        return Err(format!("is longer than {MAX_JOB_NAME} characters"));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        Some(c) => Err(format!(
            "{name:?} contains {c:?}; use letters, digits, '-' and '_'"
        )),
        None => Ok(()),
    }
}

/// `[defaults]` (read as `keys`, found at `v`) over the built-in values.
pub(super) fn defaults(r: &mut Reader<'_>, keys: &JobKeys, v: Option<&Value>) -> JobFields {
    let builtin = JobFields {
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
        restore_safety_keep: Duration::from_secs(7 * 86_400),
        hooks: Hooks {
            timeout: crate::hooks::DEFAULT_TIMEOUT,
            ..Hooks::default()
        },
    };
    fields(r, "defaults", keys, v, &builtin)
}

/// The keys a job shares with `[defaults]` (at `prefix`), over `base`.
fn fields(
    r: &mut Reader<'_>,
    prefix: &str,
    k: &JobKeys,
    v: Option<&Value>,
    base: &JobFields,
) -> JobFields {
    let timezone = match &k.timezone {
        None => base.timezone,
        Some(Text(s)) => s.trim().parse::<Tz>().unwrap_or_else(|_| {
            let e = format!("{s:?} is not an IANA time zone (like \"UTC\" or \"Europe/Berlin\")");
            r.error(format!("{prefix}.timezone"), at(v, "timezone"), e);
            base.timezone
        }),
    };
    let n = |b: Option<Bounded<0, 100>>| b.map_or(0, |b| b.0 as u32);
    let own = RetentionPolicy {
        last: n(k.keep_last),
        hourly: n(k.keep_hourly),
        daily: n(k.keep_daily),
        weekly: n(k.keep_weekly),
        monthly: n(k.keep_monthly),
        within: k.keep_within,
    };
    JobFields {
        timezone,
        // A job that sets any keep_* key replaces the defaults' retention as a whole.
        retention: if k.sets_retention() {
            own
        } else {
            base.retention.clone()
        },
        poll_interval: k.poll_interval.unwrap_or(base.poll_interval),
        snapshot_timeout: k.snapshot_timeout.unwrap_or(base.snapshot_timeout),
        catch_up: k.catch_up.unwrap_or(base.catch_up),
        max_deletions_per_run: k
            .max_deletions_per_run
            .map_or(base.max_deletions_per_run, |b| b.0 as u32),
        stale_after: k.stale_after.or(base.stale_after),
        restore_safety_keep: k.restore_safety_keep.unwrap_or(base.restore_safety_keep),
        hooks: Hooks {
            before: k
                .before
                .clone()
                .unwrap_or_else(|| base.hooks.before.clone()),
            after: k.after.clone().unwrap_or_else(|| base.hooks.after.clone()),
            on_failure: k
                .on_failure
                .clone()
                .unwrap_or_else(|| base.hooks.on_failure.clone()),
            timeout: k.hook_timeout.unwrap_or(base.hooks.timeout),
            thaw_after: k.thaw_after.unwrap_or(base.hooks.thaw_after),
            before_failure: k.before_failure.unwrap_or(base.hooks.before_failure),
        },
    }
}

/// What the entries read so far hold: parsed cron expressions (croner's parser is most
/// of a big config's load time, and jobs repeat expressions) and the names taken.
#[derive(Default)]
struct Seen {
    crons: BTreeMap<String, Result<CronSpec, String>>,
    names: BTreeMap<String, usize>,
}

/// The `[[jobs]]` entries (`v`), each over `defaults`.
pub(super) fn jobs(
    r: &mut Reader<'_>,
    v: Option<&Value>,
    defaults: &JobFields,
) -> Vec<JobSettings> {
    let items = match v {
        None => return Vec::new(),
        Some(Value::Array(_, items)) => items,
        Some(other) => {
            let e = format!("expected [[jobs]] tables, found {}", noun_of(other));
            r.error("jobs", Some(other), e);
            return Vec::new();
        }
    };
    let mut seen = Seen::default();
    let mut jobs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("jobs[{i}]");
        let Some(dict) = item.as_dict() else {
            let e = format!("expected a table, found {}", noun_of(item));
            r.error(key, Some(item), e);
            continue;
        };
        // The entry's own keys, and those it shares with [defaults] (whose reading
        // reports a key that is neither).
        let (own, mut shared): (Dict, Dict) = dict
            .clone()
            .into_iter()
            .partition(|(k, _)| JOB_OWN_KEYS.contains(&k.as_str()));
        unknown_keys(r, &key, item, &mut shared);
        let own: JobOwn = r.read(&key, Some(&Value::Dict(item.tag(), own)));
        let keys: JobKeys = r.read(&key, Some(&Value::Dict(item.tag(), shared)));
        let fields = fields(r, &key, &keys, Some(item), defaults);
        if let Some(job) = job(r, &key, item, own, fields, (&mut seen, i)) {
            jobs.push(job);
        }
    }
    shared_servers(r, &jobs, items.first());
    jobs
}

/// Reports (and takes out of `shared`) the keys no job has, naming the job, the key it
/// likely meant and every key a job may have.
fn unknown_keys(r: &mut Reader<'_>, key: &str, item: &Value, shared: &mut Dict) {
    let known = keys_of::<JobKeys>();
    let unknown: Vec<String> = shared
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .cloned()
        .collect();
    if unknown.is_empty() {
        return;
    }
    let all: Vec<&str> = JOB_OWN_KEYS.iter().chain(known).copied().collect();
    let whose = match at(Some(item), "name").and_then(Value::as_str) {
        Some(name) => format!(" in job {name:?}"),
        None => String::new(),
    };
    for k in unknown {
        let v = shared.remove(&k);
        r.error(
            format!("{key}.{k}"),
            v.as_ref(),
            unknown_key(&k, &all, &whose),
        );
    }
}

/// One job; `None` when it has a problem (recorded).
fn job(
    r: &mut Reader<'_>,
    key: &str,
    item: &Value,
    own: JobOwn,
    fields: JobFields,
    (seen, i): (&mut Seen, usize),
) -> Option<JobSettings> {
    let v = Some(item);
    let name = own.name.clone().map(|t| t.0);
    match &name {
        None => r.error(format!("{key}.name"), v, "is required"),
        Some(n) => match validate_job_name(n) {
            Err(e) => r.error(format!("{key}.name"), at(v, "name"), e),
            Ok(()) => {
                if let Some(first) = seen.names.insert(n.clone(), i) {
                    let e = format!(
                        "{n:?} is already the name of jobs[{first}]; job names must be unique"
                    );
                    r.error(format!("{key}.name"), at(v, "name"), e);
                }
            }
        },
    }
    if at(v, "server_id").is_none() {
        r.error(format!("{key}.server_id"), v, "is required");
    }
    let trigger = trigger(r, key, item, &own, &mut seen.crons);
    let ping_url = super::watch::ping_url(r, key, item, own.ping_url.clone());
    if let Err(e) = fields.retention.validate() {
        r.error(format!("{key}.keep_*"), v, e);
    }
    if fields.snapshot_timeout < fields.poll_interval {
        let at_timeout = at(v, "snapshot_timeout");
        r.error(
            format!("{key}.snapshot_timeout"),
            at_timeout,
            "is shorter than poll_interval",
        );
    }
    if !fields.hooks.before.is_empty() && fields.hooks.after.is_empty() {
        r.warnings.push(format!(
            "{key}: before is set without after: nothing undoes what before does (a freeze stays frozen)"
        ));
    }
    Some(JobSettings {
        name: name?,
        server_id: ServerId::new(own.server_id?.0),
        trigger: trigger?,
        timezone: fields.timezone,
        retention: fields.retention,
        poll_interval: fields.poll_interval,
        snapshot_timeout: fields.snapshot_timeout,
        catch_up: fields.catch_up,
        max_deletions_per_run: fields.max_deletions_per_run,
        stale_after: fields.stale_after,
        restore_safety_keep: fields.restore_safety_keep,
        hooks: fields.hooks,
        ping_url,
        enabled: own.enabled.unwrap_or(true),
    })
}

/// A job's trigger: exactly one of `schedule` and `maintenance_window` (with `lead`).
fn trigger(
    r: &mut Reader<'_>,
    key: &str,
    item: &Value,
    own: &JobOwn,
    crons: &mut BTreeMap<String, Result<CronSpec, String>>,
) -> Option<Trigger> {
    let v = Some(item);
    let k = |name: &str| format!("{key}.{name}");
    let mut cron = |r: &mut Reader<'_>, field: &str, text: &Option<Text>| {
        let text = text.as_ref()?.0.clone();
        let parsed = crons
            .entry(text.clone())
            .or_insert_with(|| CronSpec::parse(&text))
            .clone();
        parsed.map_err(|e| r.error(k(field), at(v, field), e)).ok()
    };
    let has = |field: &str| at(v, field).is_some();
    match (has("schedule"), has("maintenance_window")) {
        (true, true) => {
            let e = "a job has either schedule or maintenance_window, not both";
            r.error(k("schedule"), at(v, "schedule"), e);
            None
        }
        (false, false) => {
            let e = "a job needs schedule (cron) or maintenance_window (cron) with lead";
            r.error(k("schedule"), v, e);
            None
        }
        (true, false) => {
            if has("lead") {
                let e = "lead only applies to a maintenance_window job";
                r.error(k("lead"), at(v, "lead"), e);
            }
            cron(r, "schedule", &own.schedule).map(Trigger::Schedule)
        }
        (false, true) => {
            if !has("lead") {
                let e = "is required with maintenance_window (how long before the window \
                         to snapshot, e.g. \"45m\")";
                r.error(k("lead"), v, e);
            }
            let window = cron(r, "maintenance_window", &own.maintenance_window);
            window
                .zip(own.lead)
                .map(|(window, lead)| Trigger::Window { window, lead })
        }
    }
}

/// Jobs on one server share its 5 slots: together they may keep at most 4.
fn shared_servers(r: &mut Reader<'_>, jobs: &[JobSettings], first: Option<&Value>) {
    let mut by_server: BTreeMap<ServerId, Vec<&JobSettings>> = BTreeMap::new();
    for j in jobs {
        by_server.entry(j.server_id).or_default().push(j);
    }
    for (server, js) in by_server {
        let slots: u32 = js.iter().map(|j| j.retention.bound()).sum();
        if js.len() > 1 && slots > SLOTS {
            let names: Vec<_> = js.iter().map(|j| j.name.as_str()).collect();
            let e = format!(
                "jobs {} share server {server} and together may keep {slots} snapshots; \
                 the limit of 5 leaves room for {SLOTS} (lower their keep_* values)",
                names.join(", ")
            );
            r.error("jobs", first, e);
        }
    }
}
