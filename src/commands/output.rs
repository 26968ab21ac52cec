//! Plain-text tables and the shared ways of showing runs and snapshots.

use crate::db::Run;
use crate::domain::SnapshotId;
use crate::run::Outcome;

/// `status` in its colour: green for success, red for failure, yellow while running,
/// magenta when interrupted. The colour is dropped off a terminal and under `NO_COLOR`
/// (anstream, when the table is printed).
pub fn paint(status: impl std::fmt::Display) -> String {
    use anstyle::AnsiColor;
    let text = status.to_string();
    let colour = match text.as_str() {
        "succeeded" | "started" => AnsiColor::Green,
        "failed" | "STALE" | "GONE" => AnsiColor::Red,
        "running" => AnsiColor::Yellow,
        "interrupted" => AnsiColor::Magenta,
        _ => return text,
    };
    let style = anstyle::Style::new().fg_color(Some(colour.into()));
    format!("{style}{text}{style:#}")
}

/// Runs as marks, oldest first, each its own shape (so that they read without colour)
/// and colour.
pub fn timeline(runs: &[crate::db::RunStatus]) -> String {
    use crate::db::RunStatus;
    use anstyle::AnsiColor;
    if runs.is_empty() {
        return "-".into();
    }
    runs.iter()
        .map(|s| {
            let (mark, colour) = match s {
                RunStatus::Succeeded | RunStatus::Started => ('●', AnsiColor::Green),
                RunStatus::Failed => ('✗', AnsiColor::Red),
                RunStatus::Interrupted => ('○', AnsiColor::Magenta),
                RunStatus::Running => ('▶', AnsiColor::Yellow),
            };
            let style = anstyle::Style::new().fg_color(Some(colour.into()));
            format!("{style}{mark}{style:#}")
        })
        .collect()
}

/// How wide `cell` shows (its colour codes take no room); plain text is counted as is.
fn visible(cell: &str) -> usize {
    if cell.contains('\u{1b}') {
        anstream::adapter::strip_str(cell)
            .to_string()
            .chars()
            .count()
    } else {
        cell.chars().count()
    }
}

/// Prints rows under a header, columns padded to their widest cell; colour only on a
/// terminal (one stream for the whole table, so the terminal is looked at once).
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    use std::io::Write as _;
    let bold = anstyle::Style::new().bold();
    let header: Vec<String> = header
        .iter()
        .map(|h| format!("{bold}{h}{bold:#}"))
        .collect();
    let all: Vec<Vec<(&str, usize)>> = std::iter::once(&header)
        .chain(rows)
        .map(|r| r.iter().map(|c| (c.as_str(), visible(c))).collect())
        .collect();
    let mut widths = vec![0; header.len()];
    for r in &all {
        for (i, (_, w)) in r.iter().enumerate() {
            widths[i] = widths[i].max(*w);
        }
    }
    let mut out = anstream::stdout().lock();
    let mut line = String::new();
    for r in &all {
        line.clear();
        for (i, (c, w)) in r.iter().enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                line.extend(std::iter::repeat_n(' ', widths[i] - w + 2));
            }
        }
        // A closed pipe ends the output quietly (SIGPIPE is the default for tables).
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

pub fn ids(ids: &[SnapshotId]) -> String {
    if ids.is_empty() {
        "-".into()
    } else {
        ids.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub fn summary(outcomes: &[Outcome]) {
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            vec![
                o.job.clone(),
                o.server_id.to_string(),
                o.run_id.to_string(),
                o.status.to_string(),
                o.snapshot
                    .as_ref()
                    .map_or("-".into(), |(id, name)| format!("{name} ({id})")),
                ids(&o.deleted),
                crate::human::short(o.elapsed),
            ]
        })
        .collect();
    table(
        &[
            "JOB", "SERVER", "RUN", "STATUS", "SNAPSHOT", "DELETED", "TIME",
        ],
        &rows,
    );
    for o in outcomes {
        if let Some(e) = &o.error {
            println!("\n{} (run {}): {e}", o.job, o.run_id);
        }
    }
}

pub fn history(runs: &[Run]) {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.job.clone(),
                r.server_id.to_string(),
                r.kind.to_string(),
                r.trigger.to_string(),
                paint(r.status),
                r.host.clone(),
                crate::human::table_time(r.started_at),
                r.finished_at.map_or("-".into(), |f| {
                    crate::human::short((f - r.started_at).to_std().unwrap_or_default())
                }),
                r.snapshot.as_ref().map_or("-".into(), |s| {
                    s.id.map_or(s.name.clone(), |id| format!("{} ({id})", s.name))
                }),
                ids(&r.deleted_snapshot_ids),
                match (&r.error, &r.note) {
                    (Some(e), _) => e.chars().take(80).collect(),
                    (None, Some(note)) => note.clone(),
                    (None, None) => String::new(),
                },
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "JOB",
            "SERVER",
            "KIND",
            "TRIGGER",
            "STATUS",
            "HOST",
            "STARTED (UTC)",
            "TOOK",
            "SNAPSHOT",
            "DELETED",
            "ERROR / NOTE",
        ],
        &rows,
    );
}

pub use crate::snapshot::verdicts::{SnapshotRow, snapshot_rows};

/// The rows as a table; nothing at all when there are none.
pub fn snapshots(rows: &[SnapshotRow]) {
    if rows.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.name.clone(),
                r.status.clone(),
                crate::human::table_time(r.created_at),
                r.managed_text.clone(),
                if r.pinned { "yes" } else { "no" }.to_string(),
                r.verdict.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "STATUS",
            "CREATED (UTC)",
            "MANAGED",
            "PINNED",
            "VERDICT",
        ],
        &rows,
    );
}
