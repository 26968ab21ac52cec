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
    assert_eq!(s.database.shown(), dir.path().join("state/history.db"));
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
fn environment_overrides_nested_keys() {
    if !with_env(&[
        ("AGENT_API__MAX_RETRIES", "9"),
        ("AGENT_DEFAULTS__POLL_INTERVAL", "7s"),
    ]) {
        return;
    }
    let s = load(BASE).unwrap();
    assert_eq!(s.api.max_retries, 9);
    assert_eq!(s.jobs[0].poll_interval, Duration::from_secs(7));
}

#[test]
fn a_bad_value_from_the_environment_is_named_by_its_variable() {
    if !with_env(&[("AGENT_DEFAULTS__SNAPSHOT_TIMEOUT", "whenever")]) {
        return;
    }
    let e = load(BASE).unwrap_err().to_string();
    assert!(
        e.contains("defaults.snapshot_timeout") && e.contains("environment"),
        "{e}"
    );
}

/// The config without an inline token, and with a token file; the file.
fn token_configs(dir: &tempfile::TempDir) -> (String, String) {
    let file = write(dir, "token", "file-token-77\n");
    let no_inline = BASE.replace("token = \"inline-token-1234\"\n", "");
    let with_file = no_inline.replace(
        "[api]\n",
        &format!("[api]\ntoken_file = \"{}\"\n", file.display()),
    );
    (no_inline, with_file)
}

#[test]
fn the_token_from_the_environment_comes_before_the_file() {
    if !with_env(&[("AGENT_API__TOKEN", "env-token-88")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, with_file) = token_configs(&dir);
    let s = load(&with_file).unwrap();
    assert_eq!(s.api.token().unwrap().expose_secret(), "env-token-88");
}

#[test]
fn the_token_from_a_systemd_credential_comes_before_the_file() {
    let creds = tempfile::tempdir().unwrap();
    write(&creds, "api-token", "cred-token-99");
    if !with_env(&[("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap())]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (no_inline, with_file) = token_configs(&dir);
    for text in [no_inline, with_file] {
        let s = load(&text).unwrap();
        assert_eq!(s.api.token().unwrap().expose_secret(), "cred-token-99");
    }
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

    // The environment and a systemd credential: the two tests above.
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
fn the_example_config_validates_unchanged_with_a_token_from_the_environment() {
    if !with_env(&[("AGENT_API__TOKEN", "env-token")]) {
        return;
    }
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let s = Settings::load(std::path::Path::new(example)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.jobs.len(), 2);
    assert!(matches!(s.jobs[1].trigger, Trigger::Window { .. }));
    assert_eq!(s.jobs[1].retention.weekly, 2);
    assert!(
        s.email.is_none(),
        "site-specific sections ship commented out"
    );
    assert_eq!(s.api.token().unwrap().expose_secret(), "env-token");
}

#[test]
fn the_example_configs_commented_settings_are_real_keys_once_uncommented() {
    let _g = env_lock();
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let token = write(&dir, "token", "example-token");
    let pass = write(&dir, "smtp-password", "example-password");
    let text: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace(
            "/etc/vps-snapshot-agent/token",
            &token.display().to_string(),
        )
        .replace(
            "/etc/vps-snapshot-agent/smtp-password",
            &pass.display().to_string(),
        );
    let path = write(&dir, "config.toml", &text);
    let missing = Settings::load(&path).map(|_| ()).unwrap_err().to_string();
    assert!(
        missing.contains("include: \"jobs.d/*.toml\": no directory"),
        "{missing}"
    );
    std::fs::create_dir(dir.path().join("jobs.d")).unwrap();
    let s = Settings::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let email = s.email.unwrap();
    assert_eq!(email.smtp_port, 587);
    assert_eq!(email.to.len(), 1);
    assert_eq!(s.api.token().unwrap().expose_secret(), "example-token");
}

#[test]
fn one_bad_value_from_the_environment_gives_one_error() {
    if !with_env(&[("AGENT_DEFAULTS__KEEP_LAST", "abc")]) {
        return;
    }
    let errs = load(BASE).map(|_| ()).unwrap_err();
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].key, "defaults.keep_last");
    assert!(
        errs.0[0].origin.contains("AGENT_DEFAULTS__KEEP_LAST"),
        "{errs}"
    );
}

#[test]
fn one_bad_value_gives_one_error() {
    let _g = env_lock();
    // An unreadable password file is the one problem, not also "no password".
    let errs = errors(&format!(
        "{BASE}[email]\nsmtp_host = \"h\"\nfrom = \"a@b.c\"\nto = \"o@b.c\"\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n"
    ));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with("email.password_file: cannot read"),
        "{errs:#?}"
    );
}

#[test]
fn a_bad_cron_field_or_catch_up_says_what_is_expected() {
    let _g = env_lock();
    for (expr, want) in [
        ("0 30 25 * * *", "hour 25 is out of range (0-23)"),
        ("0 61 2 * * *", "minute 61 is out of range (0-59)"),
        ("30 2 32 * *", "day-of-month 32 is out of range (1-31)"),
        ("0 0 2 * 13 *", "month 13 is out of range (1-12)"),
        ("0 0 2 * * 8", "day-of-week 8 is out of range (0-7)"),
        ("0 0 1-30 * * *", "hour 30 is out of range (0-23)"),
    ] {
        let e = vps_snapshot_agent::cron::CronSpec::parse(expr).unwrap_err();
        assert!(e.contains(want), "{expr}: {e}");
    }
    assert_error(
        &BASE.replace("0 30 2 * * *", "0 30 25 * * *"),
        "jobs[0].schedule",
        "hour 25 is out of range (0-23)",
    );
    let errs = errors(&format!("{BASE}catch_up = \"no\"\n"));
    assert_eq!(
        errs,
        ["jobs[0].catch_up: \"no\": expected \"off\" (skip missed runs) or a duration like \"2h\""]
    );
}
