//! vps-snapshot-agent: scheduled, rotation-safe snapshots of VPS.org servers, with a history
//! in SQLite (or PostgreSQL, for several agents) and alerts by mail, webhook and pings. `main.rs` only parses the command line and dispatches here.
//!
//! # Layout (one line per module, as the README's Development map)
//! - [`cli`]: the command line, as clap types only
//! - [`commands`]: one file per subcommand, and the exit codes
//! - [`config`]: figment loading, serde sections, one validation pass into [`config::Settings`]
//! - [`domain`]: what every layer shares: the limit of 5, ids, statuses, alert kinds, and
//!   the API's snapshot
//! - [`api`]: the VPS.org Snapshot API: types, client, error classes, the retry policy
//! - [`sim`]: the API simulator (world, fault menu, HTTP front) for tests, demo, `simulate`
//! - [`db`]: the history store, SQLite or PostgreSQL: runs, the run journal, pins, locks,
//!   the alert and ping outboxes, the agents' presence beats
//! - [`identity`]: the host name, the `User-Agent`, typed agent and owner identities, and
//!   whether the process behind one lives
//! - [`presence`]: this process's presence beat on the database (not the `[heartbeat]` ping)
//! - [`job_state`]: a job's last run, last success, timeline, next fire and staleness, as
//!   `status`, the page and the metrics show it
//! - [`run`]: one job run, a file per step, written as a journal ahead of its effects
//! - [`snapshot`]: the agent's snapshots: names, marks, ownership, verdicts
//! - [`retention`]: the pure retention planner (which snapshots to keep, which to delete)
//! - [`daemon`]: `agent run`: the loop, next fires, periodic checks, signals, sd-notify
//! - [`alert`]: what alerts say (`text`), when they are sent, delivery to every channel
//! - [`hooks`]: the operator's `before`/`after`/`on_failure` commands, run as processes
//! - [`metrics`]: what this process counts for Prometheus (requests, runs, deliveries)
//! - [`serve`]: what the agent serves: the HTTP listener, the status page, the metrics
//! - [`progress`]: `run-once`'s live lines on a terminal
//! - [`schedule`]: cron and maintenance-window fire times, DST-correct
//! - [`cron`]: cron expressions, parsed and evaluated in a time zone
//! - [`secrets`]: what is never shown (token, passwords, receivers' URL paths), and the scrub
//! - [`timing`]: leases, beats, checks, patience and backoffs, as one policy
//! - [`clock`]: time as a dependency (real, or virtual for tests)
//! - [`human`]: times, spans and counts as people read them
//! - [`errors`]: an error chain as one line, each cause once
//! - [`logging`]: tracing-subscriber set-up (text or JSON, filters, `-v`/`-q`)

pub mod alert;
pub mod api;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod cron;
pub mod daemon;
pub mod db;
pub mod domain;
pub mod errors;
pub mod hooks;
pub mod human;
pub mod identity;
pub mod job_state;
pub mod logging;
pub mod metrics;
pub mod presence;
pub mod progress;
pub mod retention;
pub mod run;
pub mod schedule;
pub mod secrets;
pub mod serve;
pub mod sim;
pub mod snapshot;
pub mod timing;
