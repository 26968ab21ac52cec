//! vps-snapshot-agent: scheduled, rotation-safe snapshots of VPS.org servers, with a SQLite
//! history and email alerts. `main.rs` only parses the command line and dispatches here.
//!
//! # Layout
//! - [`config`]: figment loading and validation into typed [`config::Settings`]
//! - [`api`]: the VPS.org Snapshot API client (retries, pagination, typed errors)
//! - [`sim`]: the API simulator used by tests, `agent demo` and `agent simulate`
//! - [`retention`]: the pure retention planner (which snapshots to keep, which to delete)
//! - [`naming`]: snapshot names that say which job made them and when
//! - [`mark`]: the agent's mark on its snapshots (an HMAC keyed with the token)
//! - [`ownership`]: which snapshots are the agent's (name, and a mark or the journal)
//! - [`schedule`]: cron and maintenance-window fire times, DST-correct
//! - [`clock`]: time as a dependency (real, or virtual for tests)

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
pub mod logging;
pub mod mark;
pub mod naming;
pub mod ownership;
pub mod retention;
pub mod run;
pub mod schedule;
pub mod sim;
