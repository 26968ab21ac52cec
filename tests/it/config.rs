use std::time::Duration;

use secrecy::ExposeSecret;
use vps_snapshot_agent::config::{ConfigErrors, Settings, Trigger};

use crate::helpers::*;

const BASE: &str = r#"
database = "/tmp/agent-test.db"
[api]
base_url = "http://127.0.0.1:9/api/v1"
token = "inline-token-1234"
[[jobs]]
name = "web-01-nightly"
server_id = 12345
schedule = "0 30 2 * * *"
"#;

fn load(text: &str) -> Result<Settings, ConfigErrors> {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "config.toml", text);
    Settings::load(&path)
}

/// Every error for `text`, as "key: message" lines.
fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => {
            e.0.iter()
                .map(|e| format!("{}: {}", e.key, e.message))
                .collect()
        }
    }
}

fn assert_error(text: &str, key: &str, needle: &str) {
    let errs = errors(text);
    assert!(
        errs.iter()
            .any(|e| e.starts_with(&format!("{key}: ")) && e.contains(needle)),
        "no error for {key} containing {needle:?}: {errs:#?}"
    );
}

#[test]
fn a_minimal_config_gets_the_documented_defaults() {
    let _g = env_lock();
    let s = load(BASE).unwrap();
    let j = &s.jobs[0];
    assert_eq!(j.name, "web-01-nightly");
    assert_eq!(j.retention.last, 3);
    assert_eq!(j.poll_interval, Duration::from_secs(20));
    assert_eq!(j.snapshot_timeout, Duration::from_secs(1800));
    assert_eq!(j.catch_up, Some(Duration::from_secs(7200)));
    assert_eq!(j.max_deletions_per_run, 3);
    assert_eq!(s.api.max_retries, 5);
    assert_eq!(s.api.max_concurrent_jobs, 8);
    assert!(s.email.is_none());
    assert_eq!(s.api.token().unwrap().expose_secret(), "inline-token-1234");
}

#[test]
fn jobs_inherit_defaults_and_keep_keys_replace_retention_whole() {
    let _g = env_lock();
    let s = load(&format!(
        "{BASE}\n[[jobs]]\nname = \"db\"\nserver_id = 2\nmaintenance_window = \"0 0 4 * * Sun\"\nlead = \"45m\"\nkeep_weekly = 2\n\
         [defaults]\ntimezone = \"Europe/Berlin\"\nkeep_last = 2\nkeep_daily = 1\npoll_interval = \"5s\"\ncatch_up = \"off\"\n"
    ))
    .unwrap();
    let web = &s.jobs[0];
    assert_eq!(web.timezone, chrono_tz::Europe::Berlin);
    assert_eq!((web.retention.last, web.retention.daily), (2, 1));
    assert_eq!(web.poll_interval, Duration::from_secs(5));
    assert_eq!(web.catch_up, None);
    let db = &s.jobs[1];
    assert_eq!(
        (db.retention.last, db.retention.daily, db.retention.weekly),
        (0, 0, 2)
    );
    assert!(
        matches!(db.trigger, Trigger::Window { lead, .. } if lead == Duration::from_secs(2700))
    );
}

#[test]
fn unknown_keys_are_errors_naming_the_key_and_file() {
    let _g = env_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "c.toml", &format!("{BASE}keep_lsat = 2\n"));
    let e = Settings::load(&path).unwrap_err();
    let shown = e.to_string();
    assert!(shown.contains("jobs[0].keep_lsat: unknown key"), "{shown}");
    assert!(shown.contains(&path.display().to_string()), "{shown}");
}

#[test]
fn every_error_is_reported_at_once() {
    let _g = env_lock();
    let errs = errors(
        r#"
[api]
base_url = "ftp://x"
token = "t"
max_retries = -1
[[jobs]]
name = "a b"
server_id = "x"
schedule = "61 * * * * *"
[[jobs]]
name = "ok"
server_id = 1
schedule = "* * * * *"
timezone = "Nowhere/Land"
"#,
    );
    assert!(errs.len() >= 5, "{errs:#?}");
}

#[test]
fn schedule_rules() {
    let _g = env_lock();
    let job = |extra: &str| {
        format!(
            "[api]\nbase_url = \"http://localhost:1/\"\ntoken = \"t\"\n[[jobs]]\nname = \"j\"\nserver_id = 1\n{extra}\n"
        )
    };
    assert_error(&job(""), "jobs[0].schedule", "needs schedule");
    assert_error(
        &job("schedule = \"0 0 1 * * *\"\nmaintenance_window = \"0 0 4 * * Sun\"\nlead = \"1h\""),
        "jobs[0].schedule",
        "not both",
    );
    assert_error(
        &job("maintenance_window = \"0 0 4 * * Sun\""),
        "jobs[0].lead",
        "required",
    );
    assert_error(
        &job("schedule = \"0 0 1 * * *\"\nlead = \"1h\""),
        "jobs[0].lead",
        "only applies",
    );
    assert_error(
        &job("schedule = \"0 0 1 * *  * 2026\""),
        "jobs[0].schedule",
        "fields",
    );
    assert_error(
        &job("schedule = \"0 0 25 * * *\""),
        "jobs[0].schedule",
        "not a valid cron",
    );
    assert_error(
        &job("schedule = \"0 0 0 30 2 *\""),
        "jobs[0].schedule",
        "never fires",
    );
    // Five fields are accepted: seconds are 0.
    let s = load(&job("schedule = \"30 2 * * *\"")).unwrap();
    let next = vps_snapshot_agent::schedule::next_fire(&s.jobs[0], chrono::Utc::now()).unwrap();
    assert_eq!(next.format("%M:%S").to_string(), "30:00");
}

#[test]
fn names_time_zones_and_durations_are_checked() {
    let _g = env_lock();
    assert_error(
        &BASE.replace("web-01-nightly", "web 01"),
        "jobs[0].name",
        "contains ' '",
    );
    assert_error(
        &format!(
            "{BASE}[[jobs]]\nname = \"web-01-nightly\"\nserver_id = 2\nschedule = \"* * * * *\"\n"
        ),
        "jobs[1].name",
        "already the name of jobs[0]",
    );
    assert_error(
        &format!("{BASE}timezone = \"Mars/Base\"\n"),
        "jobs[0].timezone",
        "IANA",
    );
    assert_error(
        &format!("{BASE}poll_interval = \"soon\"\n"),
        "jobs[0].poll_interval",
        "duration",
    );
    assert_error(
        &format!("{BASE}poll_interval = 20\n"),
        "jobs[0].poll_interval",
        "found a number",
    );
    assert_error(
        &format!("{BASE}server_id = 0\n").replace("server_id = 12345\n", ""),
        "jobs[0].server_id",
        "out of range",
    );
}

#[test]
fn retention_that_needs_more_than_four_slots_is_rejected() {
    let _g = env_lock();
    assert_error(
        &format!("{BASE}keep_last = 3\nkeep_daily = 2\n"),
        "jobs[0].keep_*",
        "5 slots",
    );
    assert_error(
        &format!("{BASE}keep_last = 0\n"),
        "jobs[0].keep_*",
        "keeps nothing",
    );
    // Two jobs on one server share its slots.
    assert_error(
        &format!(
            "{BASE}[[jobs]]\nname = \"two\"\nserver_id = 12345\nschedule = \"* * * * *\"\nkeep_last = 2\n"
        ),
        "jobs",
        "share server 12345",
    );
}

#[test]
fn a_relative_database_path_is_relative_to_the_config_file() {
    let _g = env_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "config.toml",
        &BASE.replace("/tmp/agent-test.db", "state/history.db"),
    );
    let s = Settings::load(&path).unwrap();
    assert_eq!(s.database, dir.path().join("state/history.db"));
}

#[test]
fn plain_http_is_refused_unless_loopback() {
    let _g = env_lock();
    assert_error(
        &BASE.replace("127.0.0.1:9", "10.0.0.5"),
        "api.base_url",
        "plain http:// is refused",
    );
    for ok in [
        "http://localhost:8089/api/v1",
        "http://[::1]:1/",
        "https://admin.vps.org/api/v1",
    ] {
        let s = load(&BASE.replace("http://127.0.0.1:9/api/v1", ok)).unwrap();
        assert!(s.api.base_url.as_str().ends_with('/'));
    }
}

#[test]
fn email_addresses_are_validated() {
    let _g = env_lock();
    let text = format!(
        "{BASE}[email]\nsmtp_host = \"localhost\"\nfrom = \"not an address\"\nto = [\"ops@example.com\", \"@@\"]\nsecurity = \"ssl\"\n"
    );
    assert_error(&text, "email.from", "not an email address");
    assert_error(&text, "email.to[1]", "not an email address");
    assert_error(&text, "email.security", "starttls, tls, none");
}

#[test]
fn environment_overrides_nested_keys_and_is_named_in_errors() {
    let _g = env_lock();
    unsafe { std::env::set_var("AGENT_API__MAX_RETRIES", "9") };
    unsafe { std::env::set_var("AGENT_DEFAULTS__POLL_INTERVAL", "7s") };
    let s = load(BASE);
    unsafe { std::env::set_var("AGENT_DEFAULTS__SNAPSHOT_TIMEOUT", "whenever") };
    let e = load(BASE);
    for k in [
        "AGENT_API__MAX_RETRIES",
        "AGENT_DEFAULTS__POLL_INTERVAL",
        "AGENT_DEFAULTS__SNAPSHOT_TIMEOUT",
    ] {
        unsafe { std::env::remove_var(k) };
    }
    let s = s.unwrap();
    assert_eq!(s.api.max_retries, 9);
    assert_eq!(s.jobs[0].poll_interval, Duration::from_secs(7));
    let e = e.unwrap_err().to_string();
    assert!(
        e.contains("defaults.snapshot_timeout") && e.contains("environment"),
        "{e}"
    );
}

#[test]
fn token_comes_from_each_source_in_order() {
    let _g = env_lock();
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "token", "file-token-77\n");
    let no_inline = BASE.replace("token = \"inline-token-1234\"\n", "");
    let with_file = no_inline.replace(
        "[api]\n",
        &format!("[api]\ntoken_file = \"{}\"\n", file.display()),
    );

    let s = load(&with_file).unwrap();
    assert_eq!(s.api.token().unwrap().expose_secret(), "file-token-77");
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("readable by group or others")),
        "{:?}",
        s.warnings
    );

    unsafe { std::env::set_var("AGENT_API__TOKEN", "env-token-88") };
    let s = load(&with_file);
    unsafe { std::env::remove_var("AGENT_API__TOKEN") };
    assert_eq!(
        s.unwrap().api.token().unwrap().expose_secret(),
        "env-token-88"
    );

    let creds = tempfile::tempdir().unwrap();
    write(&creds, "api-token", "cred-token-99");
    unsafe { std::env::set_var("CREDENTIALS_DIRECTORY", creds.path()) };
    let s = load(&no_inline);
    unsafe { std::env::remove_var("CREDENTIALS_DIRECTORY") };
    assert_eq!(
        s.unwrap().api.token().unwrap().expose_secret(),
        "cred-token-99"
    );

    let none = load(&no_inline).unwrap();
    let e = none.api.token().unwrap_err().to_string();
    assert!(e.contains("api.token") && e.contains("no API token"), "{e}");

    let missing = no_inline.replace("[api]\n", "[api]\ntoken_file = \"/nonexistent/token\"\n");
    assert_error(&missing, "api.token_file", "cannot read /nonexistent/token");
}

#[test]
fn no_error_or_debug_output_shows_the_token() {
    let _g = env_lock();
    let s = load(BASE).unwrap();
    assert!(!format!("{s:?}").contains("inline-token-1234"));
    let bad = format!("{BASE}bogus = 1\n");
    let e = load(&bad).unwrap_err();
    assert!(!format!("{e}{e:?}").contains("inline-token-1234"));
}

#[test]
fn a_missing_or_broken_file_is_named() {
    let _g = env_lock();
    let e = Settings::load(std::path::Path::new("/nonexistent/agent.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/nonexistent/agent.toml") && e.contains("cannot read"),
        "{e}"
    );
    let e = load("[api\nbase_url = 1").unwrap_err().to_string();
    assert!(e.contains("config.toml"), "{e}");
}

#[test]
fn the_example_config_parses_and_validates() {
    let _g = env_lock();
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
        .unwrap();
    // Point the file references at files that exist here; keep everything else as shipped.
    let token = write(&dir, "token", "example-token");
    let pass = write(&dir, "smtp-password", "example-password");
    let text = text
        .replace(
            "/etc/vps-snapshot-agent/token",
            &token.display().to_string(),
        )
        .replace(
            "/etc/vps-snapshot-agent/smtp-password",
            &pass.display().to_string(),
        );
    let path = write(&dir, "config.toml", &text);
    let s = Settings::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.jobs.len(), 2);
    assert!(matches!(s.jobs[1].trigger, Trigger::Window { .. }));
    assert_eq!(s.jobs[1].retention.weekly, 2);
    let email = s.email.unwrap();
    assert_eq!(email.smtp_port, 587);
    assert_eq!(email.to.len(), 1);
    // And with the token supplied by the environment instead of the file.
    let no_file = text.replace(&format!("token_file = \"{}\"", token.display()), "");
    let path = write(&dir, "config2.toml", &no_file);
    unsafe { std::env::set_var("AGENT_API__TOKEN", "env-token") };
    let s = Settings::load(&path);
    unsafe { std::env::remove_var("AGENT_API__TOKEN") };
    assert_eq!(s.unwrap().api.token().unwrap().expose_secret(), "env-token");
}
