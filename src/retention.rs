//! The retention planner: pure functions from a server's snapshots and a job's policy to a
//! verdict per snapshot. Nothing here talks to the network or the database, so every
//! safety rule is checked by property tests (`tests/retention_props.rs`).
//!
//! Semantics follow restic's `forget`: completed managed snapshots, newest first; each
//! `keep_*` rule keeps the newest snapshot of each of its N most recent non-empty buckets
//! (hour, day, ISO week, month in the job's time zone); rules are ORed; `keep_within`
//! keeps everything newer than newest-minus-duration, within the slots the limit leaves.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;

pub use crate::domain::{LIMIT, SLOTS};
use crate::domain::{SnapshotId, SnapshotStatus};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub within: Option<Duration>,
}

impl RetentionPolicy {
    /// The most completed managed snapshots this policy can keep.
    pub fn bound(&self) -> u32 {
        let counted = self.last + self.hourly + self.daily + self.weekly + self.monthly;
        if self.within.is_some() {
            SLOTS
        } else {
            counted.max(1)
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let counted = self.last + self.hourly + self.daily + self.weekly + self.monthly;
        if counted == 0 && self.within.is_none() {
            return Err("the retention policy keeps nothing; set keep_last = 1 or more".into());
        }
        if counted > SLOTS {
            return Err(format!(
                "the retention policy can need {counted} slots (keep_last {} + keep_hourly {} + \
                 keep_daily {} + keep_weekly {} + keep_monthly {}); the limit of {LIMIT} \
                 snapshots per server leaves room for {SLOTS}",
                self.last, self.hourly, self.daily, self.weekly, self.monthly
            ));
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (n, what) in [
            (self.last, "last"),
            (self.hourly, "hourly"),
            (self.daily, "daily"),
            (self.weekly, "weekly"),
            (self.monthly, "monthly"),
        ] {
            if n > 0 {
                parts.push(format!("keep_{what} = {n}"));
            }
        }
        if let Some(w) = self.within {
            parts.push(format!("keep_within = {}", crate::human::span(w)));
        }
        parts.join(", ")
    }
}

/// What the planner needs to know of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: SnapshotId,
    pub created_at: DateTime<Utc>,
    pub status: SnapshotStatus,
    /// Made by this job (recognized by name).
    pub managed: bool,
    pub pinned: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub id: SnapshotId,
    pub keep: bool,
    /// `keep: last #1`, `keep: weekly 2026-W47`, `delete next`, ...
    pub reason: String,
}

fn bucket(kind: usize, t: DateTime<Utc>, tz: Tz) -> String {
    let l = t.with_timezone(&tz);
    match kind {
        0 => format!(
            "{}-{:02}-{:02}T{:02}",
            l.year(),
            l.month(),
            l.day(),
            l.hour()
        ),
        1 => format!("{}-{:02}-{:02}", l.year(), l.month(), l.day()),
        2 => {
            let w = l.iso_week();
            format!("{}-W{:02}", w.year(), w.week())
        }
        _ => format!("{}-{:02}", l.year(), l.month()),
    }
}

/// Newest first, ties broken by id (higher first), so the plan is deterministic.
fn newest_first(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id))
}

/// Why each snapshot a rule keeps is kept (`keep: last #1, daily 2026-11-24`), by id.
type Kept = HashMap<SnapshotId, String>;
/// Why each one not kept is not: every rule that passed it over, by id.
type Passed = HashMap<SnapshotId, Vec<String>>;

/// The bucket rules' names and the periods they count, in [`bucket`]'s order.
const RULES: [&str; 4] = ["hourly", "daily", "weekly", "monthly"];
const UNITS: [&str; 4] = ["hours", "days", "weeks", "months"];

/// A verdict for every snapshot, in the order given.
pub fn plan(snaps: &[Candidate], policy: &RetentionPolicy, tz: Tz) -> Vec<Verdict> {
    let pool = pool_of(snaps);
    let (mut kept, mut passed) = keep_by_rules(&pool, policy, tz);
    if let (Some(within), Some(newest)) = (policy.within, pool.first()) {
        keep_within(&pool, newest, within, &mut kept, &mut passed);
    }
    // Belt and braces: the newest completed managed snapshot is never a victim.
    if let Some(newest) = pool.first() {
        kept.entry(newest.id)
            .or_insert_with(|| "keep: newest completed".to_string());
    }
    snaps.iter().map(|s| verdict(s, &kept, &passed)).collect()
}

/// The snapshots the rules choose among: completed, managed and not pinned, newest first.
fn pool_of(snaps: &[Candidate]) -> Vec<&Candidate> {
    let mut pool: Vec<&Candidate> = snaps
        .iter()
        .filter(|s| s.managed && !s.pinned && s.status == SnapshotStatus::Completed)
        .collect();
    pool.sort_by(|a, b| newest_first(a, b));
    pool
}

/// `keep_last` and the bucket rules over `pool` (newest first): what they keep, with
/// every rule that keeps each, and why each of the others is passed over.
fn keep_by_rules(pool: &[&Candidate], policy: &RetentionPolicy, tz: Tz) -> (Kept, Passed) {
    let mut kept = Kept::new();
    let mut passed = Passed::new();
    let mut left = [policy.hourly, policy.daily, policy.weekly, policy.monthly];
    let mut last_bucket: [Option<String>; 4] = Default::default();
    for (i, s) in pool.iter().enumerate() {
        let mut reasons = Vec::new();
        if (i as u32) < policy.last {
            reasons.push(format!("last #{}", i + 1));
        }
        for k in 0..4 {
            if left[k] == 0 {
                continue;
            }
            let b = bucket(k, s.created_at, tz);
            if last_bucket[k].as_deref() != Some(b.as_str()) {
                left[k] -= 1;
                reasons.push(format!("{} {b}", RULES[k]));
                last_bucket[k] = Some(b);
            }
        }
        if !reasons.is_empty() {
            kept.insert(s.id, format!("keep: {}", reasons.join(", ")));
            continue;
        }
        passed.insert(s.id, passed_over(s, policy, &last_bucket, tz));
    }
    (kept, passed)
}

/// Why no rule keeps `s`, given the newest bucket each rule has kept so far: beyond
/// `keep_last`, then each bucket rule that is set.
fn passed_over(
    s: &Candidate,
    policy: &RetentionPolicy,
    last_bucket: &[Option<String>; 4],
    tz: Tz,
) -> Vec<String> {
    let counts = [policy.hourly, policy.daily, policy.weekly, policy.monthly];
    let mut why = Vec::new();
    if policy.last > 0 {
        why.push(format!(
            "beyond the newest {0} (keep_last = {0})",
            policy.last
        ));
    }
    for k in (0..4).filter(|k| counts[*k] > 0) {
        // Passed over either as a later one in a period already kept, or because the
        // rule had kept all the periods it may.
        let b = bucket(k, s.created_at, tz);
        why.push(if last_bucket[k].as_deref() == Some(b.as_str()) {
            format!("not the newest of {b} (keep_{} = {})", RULES[k], counts[k])
        } else {
            format!(
                "older than the {0} {1} keep_{2} = {0} keeps",
                counts[k], UNITS[k], RULES[k]
            )
        });
    }
    why
}

/// `keep_within`: keeps, newest first, each snapshot newer than `newest` minus `within`
/// while fewer than [`SLOTS`] are kept, then tells each passed-over one why it did not.
fn keep_within(
    pool: &[&Candidate],
    newest: &Candidate,
    within: Duration,
    kept: &mut Kept,
    passed: &mut Passed,
) {
    let cutoff =
        newest.created_at - chrono::Duration::from_std(within).unwrap_or(chrono::Duration::MAX);
    for s in pool {
        if kept.len() as u32 >= SLOTS {
            break;
        }
        if s.created_at > cutoff && !kept.contains_key(&s.id) {
            kept.insert(s.id, format!("keep: within {}", crate::human::span(within)));
        }
    }
    for s in pool {
        if let Some(why) = passed.get_mut(&s.id) {
            why.push(if s.created_at > cutoff {
                format!(
                    "keep_within = {} found no room among 5",
                    crate::human::span(within)
                )
            } else {
                format!(
                    "older than keep_within = {} of the newest",
                    crate::human::span(within)
                )
            });
        }
    }
}

/// The verdict on one snapshot: kept if not managed, pinned, in progress, of unknown
/// status, or kept by a rule; otherwise deleted, saying why.
fn verdict(s: &Candidate, kept: &Kept, passed: &Passed) -> Verdict {
    let (keep, reason) = if !s.managed {
        (true, "keep: not managed".to_string())
    } else if s.pinned {
        (true, "keep: pinned".to_string())
    } else {
        match &s.status {
            SnapshotStatus::InProgress => (true, "keep: in progress".to_string()),
            SnapshotStatus::Failed(st) => (false, format!("delete: {st}")),
            SnapshotStatus::Unknown(st) => (true, format!("keep: unknown status {st:?}")),
            SnapshotStatus::Completed => match kept.get(&s.id) {
                Some(r) => (true, r.clone()),
                None => (false, deletion(passed.get(&s.id))),
            },
        }
    };
    Verdict {
        id: s.id,
        keep,
        reason,
    }
}

/// The verdict on a snapshot no rule keeps: `delete next: beyond the newest 2 (keep_last
/// = 2)`, each rule that passed it over.
fn deletion(why: Option<&Vec<String>>) -> String {
    match why {
        Some(why) if !why.is_empty() => format!("delete next: {}", why.join("; ")),
        _ => "delete next".into(),
    }
}

/// Snapshots to delete after a successful run, in the order to delete them (failed ones
/// first, then oldest first), at most `max`.
pub fn victims(snaps: &[Candidate], policy: &RetentionPolicy, tz: Tz, max: u32) -> Vec<SnapshotId> {
    let verdicts = plan(snaps, policy, tz);
    let mut out: Vec<&Candidate> = snaps
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| !v.keep)
        .map(|(s, _)| s)
        .collect();
    out.sort_by(|a, b| {
        let fa = !matches!(a.status, SnapshotStatus::Failed(_));
        let fb = !matches!(b.status, SnapshotStatus::Failed(_));
        fa.cmp(&fb)
            .then(a.created_at.cmp(&b.created_at))
            .then(a.id.cmp(&b.id))
    });
    out.into_iter().take(max as usize).map(|s| s.id).collect()
}

/// Why making room failed: every snapshot that may not be deleted, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoom {
    pub blocking: Vec<(SnapshotId, String)>,
}

impl NoRoom {
    /// The blockers as messages name them: `801 (pinned), 802 (not managed by this job)`;
    /// the first ten, and how many more (a server can hold thousands).
    pub fn list(&self) -> String {
        const SHOWN: usize = 10;
        let mut each: Vec<String> = self
            .blocking
            .iter()
            .take(SHOWN)
            .map(|(id, why)| format!("{id} ({why})"))
            .collect();
        if self.blocking.len() > SHOWN {
            each.push(format!("and {} more", self.blocking.len() - SHOWN));
        }
        each.join(", ")
    }
}

/// Before creating a snapshot on a server holding `LIMIT` or more: which managed snapshots
/// to delete so that one more fits, in order. Candidates are this job's managed snapshots
/// that are neither pinned, in progress, of unknown status, nor the newest completed one:
/// failed ones first, then those the policy would drop once the new snapshot exists, then
/// the oldest of the rest. Never more than `max`.
pub fn make_room(
    snaps: &[Candidate],
    policy: &RetentionPolicy,
    tz: Tz,
    now: DateTime<Utc>,
    max: u32,
) -> Result<Vec<SnapshotId>, NoRoom> {
    let needed = (snaps.len() + 1).saturating_sub(LIMIT as usize);
    if needed == 0 {
        return Ok(Vec::new());
    }
    let newest_completed = snaps
        .iter()
        .filter(|s| s.managed && s.status == SnapshotStatus::Completed)
        .min_by(|a, b| newest_first(a, b))
        .map(|s| s.id);
    // The policy as it will be once the new snapshot exists.
    let mut with_new = snaps.to_vec();
    let phantom = SnapshotId::new(
        snaps
            .iter()
            .map(|s| s.id.get())
            .max()
            .unwrap_or(0)
            .saturating_add(1),
    );
    with_new.push(Candidate {
        id: phantom,
        created_at: now,
        status: SnapshotStatus::Completed,
        managed: true,
        pinned: false,
    });
    let verdicts = plan(&with_new, policy, tz);
    let mut ranked: Vec<(u8, &Candidate)> = Vec::new();
    let mut blocking = Vec::new();
    for (s, v) in snaps.iter().zip(&verdicts) {
        let deletable = s.managed
            && !s.pinned
            && Some(s.id) != newest_completed
            && matches!(
                s.status,
                SnapshotStatus::Completed | SnapshotStatus::Failed(_)
            );
        if deletable {
            let rank = match (&s.status, v.keep) {
                (SnapshotStatus::Failed(_), _) => 0,
                (_, false) => 1,
                _ => 2,
            };
            ranked.push((rank, s));
        } else {
            let why = if Some(s.id) == newest_completed {
                "newest completed managed snapshot".to_string()
            } else if !s.managed {
                "not managed by this job".to_string()
            } else {
                v.reason.trim_start_matches("keep: ").to_string()
            };
            blocking.push((s.id, why));
        }
    }
    ranked.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.created_at.cmp(&b.1.created_at))
            .then(a.1.id.cmp(&b.1.id))
    });
    if ranked.len() < needed || (max as usize) < needed {
        return Err(NoRoom { blocking });
    }
    Ok(ranked.into_iter().take(needed).map(|(_, s)| s.id).collect())
}

#[cfg(test)]
mod tests;
