//! The configuration's sections as written: every key optional, only types checked here.
//! What the values must satisfy beyond their types is [`super::check`]'s business.

use std::time::Duration;

use serde::Deserialize;

use super::Security;
use super::de::{self, Bounded, Text};
use crate::hooks::{BeforeFailure, Command, ThawAfter};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    pub base_url: Option<Text>,
    pub token: Option<Text>,
    pub token_file: Option<Text>,
    #[serde(default, deserialize_with = "de::duration")]
    pub request_timeout: Option<Duration>,
    pub max_retries: Option<Bounded<0, 20>>,
    pub max_concurrent_jobs: Option<Bounded<1, 1024>>,
}

/// The keys a job shares with `[defaults]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobKeys {
    pub timezone: Option<Text>,
    pub keep_last: Option<Bounded<0, 100>>,
    pub keep_hourly: Option<Bounded<0, 100>>,
    pub keep_daily: Option<Bounded<0, 100>>,
    pub keep_weekly: Option<Bounded<0, 100>>,
    pub keep_monthly: Option<Bounded<0, 100>>,
    #[serde(default, deserialize_with = "de::duration")]
    pub keep_within: Option<Duration>,
    #[serde(default, deserialize_with = "de::duration")]
    pub poll_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de::duration")]
    pub snapshot_timeout: Option<Duration>,
    /// `Some(None)`: "off".
    #[serde(default, deserialize_with = "de::catch_up")]
    pub catch_up: Option<Option<Duration>>,
    pub max_deletions_per_run: Option<Bounded<1, 5>>,
    #[serde(default, deserialize_with = "de::duration")]
    pub stale_after: Option<Duration>,
    #[serde(default, deserialize_with = "de::duration")]
    pub restore_safety_keep: Option<Duration>,
    #[serde(default, deserialize_with = "de::commands")]
    pub before: Option<Vec<Command>>,
    #[serde(default, deserialize_with = "de::commands")]
    pub after: Option<Vec<Command>>,
    #[serde(default, deserialize_with = "de::commands")]
    pub on_failure: Option<Vec<Command>>,
    #[serde(default, deserialize_with = "de::duration")]
    pub hook_timeout: Option<Duration>,
    pub thaw_after: Option<ThawAfter>,
    pub before_failure: Option<BeforeFailure>,
}

impl JobKeys {
    /// Whether any `keep_*` key is set (a job's retention then replaces the defaults').
    pub fn sets_retention(&self) -> bool {
        self.keep_last.is_some()
            || self.keep_hourly.is_some()
            || self.keep_daily.is_some()
            || self.keep_weekly.is_some()
            || self.keep_monthly.is_some()
            || self.keep_within.is_some()
    }
}

/// The keys only a `[[jobs]]` entry has.
pub const JOB_OWN_KEYS: [&str; 7] = [
    "name",
    "enabled",
    "ping_url",
    "server_id",
    "schedule",
    "maintenance_window",
    "lead",
];

#[derive(Debug, Default, Deserialize)]
pub struct JobOwn {
    pub name: Option<Text>,
    pub server_id: Option<Bounded<1, { i64::MAX as u64 }>>,
    pub schedule: Option<Text>,
    pub maintenance_window: Option<Text>,
    #[serde(default, deserialize_with = "de::duration")]
    pub lead: Option<Duration>,
    pub ping_url: Option<Text>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Email {
    pub smtp_host: Option<Text>,
    pub smtp_port: Option<Bounded<1, 65_535>>,
    pub security: Option<Security>,
    pub username: Option<Text>,
    pub password: Option<Text>,
    pub password_file: Option<Text>,
    pub from: Option<Text>,
    #[serde(default, deserialize_with = "de::addresses")]
    pub to: Option<Vec<Text>>,
    #[serde(default, deserialize_with = "de::duration")]
    pub repeat_after: Option<Duration>,
    pub notify_recovery: Option<bool>,
    #[serde(default, deserialize_with = "de::duration")]
    pub timeout: Option<Duration>,
}
