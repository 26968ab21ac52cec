//! What an outsider's attack on `prune`, `enabled` and `include` found, through the
//! binary: each test failed on the tree before its fix, with the symptom in its name.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use vps_snapshot_agent::api::SnapshotStatus;
use vps_snapshot_agent::sim::Glitch;

use crate::cli::{BIN, agent, config, sim, text};
use crate::helpers::{ServerId, SnapshotId, TOKEN};

fn job(name: &str, server: u64, extra: &str) -> String {
    format!(
        "[[jobs]]\nname = \"{name}\"\nserver_id = {server}\nschedule = \"0 30 2 * * *\"\n{extra}"
    )
}

fn on(
    s: &vps_snapshot_agent::sim::SimServer,
    server: u64,
) -> Vec<vps_snapshot_agent::api::Snapshot> {
    s.sim.snapshots(ServerId::new(server))
}

async fn history(cfg: &Path) -> Vec<serde_json::Value> {
    let o = agent(cfg, &["history", "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_made_snapshot_under_a_name_the_agent_once_used_is_never_deleted() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), &job("web", 5, "keep_last = 1\n"));
    let o = agent(&cfg, &["run-once"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let made = on(&s, 5).remove(0);
    // Someone deletes it in the panel and makes one by hand under the same name.
    assert!(s.sim.delete_external(made.id));
    let by_hand = s.sim.put_described(
        ServerId::new(5),
        &made.name,
        Some("MANUAL before upgrade - keep!"),
        SnapshotStatus::Completed,
        Utc::now() - chrono::Duration::hours(1),
    );

    let o = agent(&cfg, &["snapshots", "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = listed[0]["snapshots"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == by_hand.get()))
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(row["managed"], false, "{row}");

    for args in [&["run-once"][..], &["prune"][..], &["run-once"][..]] {
        let o = agent(&cfg, args).await;
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        assert!(
            on(&s, 5).iter().any(|x| x.id == by_hand),
            "{args:?} deleted the hand-made snapshot named like the agent's: {}",
            text(&o)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_included_file_whose_jobs_are_not_job_tables_is_an_error_not_fewer_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("jobs.d")).unwrap();
    let cfg = config(
        d,
        "http://127.0.0.1:9/api/v1",
        &format!("include = [\"jobs.d/*.toml\"]\n{}", job("a", 1, "")),
    );
    // `include` must come before the tables: rewrite with it first.
    let text_ = std::fs::read_to_string(&cfg).unwrap();
    let text_ = format!(
        "include = [\"jobs.d/*.toml\"]\n{}",
        text_.replace("include = [\"jobs.d/*.toml\"]\n", "")
    );
    std::fs::write(&cfg, text_).unwrap();
    for (file, body) in [
        (
            "b.toml",
            "[jobs]\nname = \"b\"\nserver_id = 2\nschedule = \"0 0 3 * * *\"\n",
        ),
        ("c.toml", "jobs = 5\n"),
    ] {
        std::fs::write(d.join("jobs.d").join(file), body).unwrap();
        let o = agent(&cfg, &["check", "--offline"]).await;
        assert_eq!(o.status.code(), Some(78), "{file}: {}", text(&o));
        assert!(
            text(&o).contains(&format!("jobs.d/{file}: jobs: expected [[jobs]] tables")),
            "{file}: {}",
            text(&o)
        );
        std::fs::remove_file(d.join("jobs.d").join(file)).unwrap();
    }
    std::os::unix::fs::symlink(d.join("nowhere.toml"), d.join("jobs.d/e.toml")).unwrap();
    let o = agent(&cfg, &["check", "--offline"]).await;
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(
        text(&o).contains("jobs.d/e.toml: a symlink to nothing"),
        "{}",
        text(&o)
    );
    std::fs::remove_file(d.join("jobs.d/e.toml")).unwrap();

    // A glob in the main file's own directory, the config named without a directory:
    // the main file is not included again.
    let here = d.join("here");
    std::fs::create_dir(&here).unwrap();
    std::fs::write(
        here.join("agent.toml"),
        format!(
            "include = [\"*.toml\"]\ndatabase = \"h.db\"\n{}",
            job("main", 1, "")
        ),
    )
    .unwrap();
    std::fs::write(here.join("more.toml"), job("more", 2, "")).unwrap();
    let o = tokio::process::Command::new(BIN)
        .current_dir(&here)
        .args(["--config", "agent.toml", "check", "--offline"])
        .env("AGENT_API__TOKEN", TOKEN)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("valid, 2 jobs"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_prune_does_not_silence_the_next_failed_snapshots_alert() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let a = vps_snapshot_agent::snapshot::naming::new_name(
        "web",
        Utc::now() - chrono::Duration::hours(5),
    );
    let first = s.sim.put(
        ServerId::new(5),
        &a,
        SnapshotStatus::Completed,
        Utc::now() - chrono::Duration::hours(5),
    );
    let mail = "[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = 9\nsecurity = \"none\"\nfrom = \"a@example.com\"\nto = [\"ops@example.com\"]\n";
    let cfg = config(
        dir.path(),
        &s.base_url(),
        &format!("{mail}{}", job("web", 5, "keep_last = 1\n")),
    );
    s.sim.glitch(Glitch::Duplicate(first));
    let o = agent(&cfg, &["prune"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    s.sim.clear_glitches();
    s.sim
        .set_mode(ServerId::new(5), vps_snapshot_agent::sim::Mode::Fail);
    let o = agent(&cfg, &["run-once"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!text(&o).contains("alert suppressed"), "{}", text(&o));
    let o = agent(&cfg, &["status", "--json"]).await;
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let pending = st["pending_alerts"].as_array().unwrap();
    assert_eq!(
        pending.len(),
        2,
        "the prune's and the snapshot's alerts: {st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_urls_login_is_never_shown_even_when_the_receiver_echoes_it() {
    let s = sim().await;
    let r = crate::receiver::Receiver::start().await;
    r.set_echo(true);
    let dir = tempfile::tempdir().unwrap();
    let url = r
        .url("/hook")
        .replace("http://", "http://alerts:S3CRETpw0rd@");
    let cfg = config(
        dir.path(),
        &s.base_url(),
        &format!(
            "[[notify]]\nkind = \"webhook\"\nurl = \"{url}\"\n{}",
            job("web", 5, "")
        ),
    );
    let check = agent(&cfg, &["check", "--send-test-alert"]).await;
    assert_ne!(check.status.code(), Some(0), "{}", text(&check));
    let status = agent(&cfg, &["status", "--json"]).await;
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("alerts:S3CRETpw0rd");
    for (what, t) in [("check", text(&check)), ("status --json", text(&status))] {
        assert!(
            !t.contains(&basic),
            "{what} shows the login as base64:\n{t}"
        );
        assert!(!t.contains("S3CRETpw0rd"), "{what}:\n{t}");
    }
    assert!(
        text(&check).contains("Cannot POST"),
        "the echo arrived: {}",
        text(&check)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_pasted_where_its_file_goes_is_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let pasted = "tok-SECRET-abcdef123456";
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!("[api]\ntoken_file = \"{pasted}\"\n{}", job("web", 5, "")),
    )
    .unwrap();
    let o = tokio::process::Command::new(BIN)
        .args(["--config"])
        .arg(&cfg)
        .args(["check", "--offline"])
        .env_remove("AGENT_API__TOKEN")
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(
        text(&o).contains("api.token_file: cannot read the file it names"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains(pasted), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_named_twice_runs_once_and_prunes_within_its_cap() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &s.base_url(),
        &job("web", 5, "keep_last = 1\nmax_deletions_per_run = 1\n"),
    );
    let o = agent(&cfg, &["run-once", "--job", "web", "--job", "web"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(on(&s, 5).len(), 1, "one snapshot, not two");
    assert_eq!(history(&cfg).await.len(), 1);

    for h in [50, 40, 30] {
        marked(&s, 5, "web", h);
    }
    let o = agent(&cfg, &["prune", "--job", "web", "--job", "web"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        on(&s, 5).len(),
        3,
        "one deletion (the cap), not two: {}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_killed_mid_delete_is_finished_by_the_next_prune() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), &job("web", 5, "keep_last = 1\n"));
    let mut ids: Vec<SnapshotId> = Vec::new();
    for h in [50, 40] {
        ids.push(marked(&s, 5, "web", h));
    }
    // The first request is the listing, the second the delete: carried out, then the
    // process is killed before its answer.
    let wire = s.sim.arm_trip(1, true);
    let mut child = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("prune")
        .env("AGENT_API__TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let op = tokio::time::timeout(Duration::from_secs(30), wire.tripped)
        .await
        .expect("the delete arrived")
        .unwrap();
    assert_eq!(op, "delete");
    child.kill().await.unwrap();
    let _ = wire.release.send(());
    s.sim.disarm_trip();

    let o = agent(&cfg, &["prune"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("marking run interrupted: the agent stopped during this prune"),
        "{}",
        text(&o)
    );
    let runs = history(&cfg).await;
    let first = runs.iter().find(|r| r["id"] == 1).unwrap();
    assert_eq!(first["status"], "interrupted", "{first}");
    assert_eq!(first["kind"], "prune", "{first}");
    assert_eq!(
        first["deleted_snapshot_ids"],
        serde_json::json!([ids[0].get()]),
        "{first}"
    );
    assert!(on(&s, 5).iter().all(|x| x.id != ids[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_history_ranges_and_a_disabled_jobs_old_failure_say_what_they_mean() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), &job("web", 5, ""));
    for args in [
        &["history", "--limit", "0"][..],
        &["history", "--since", "1d", "--until", "2d"][..],
    ] {
        let o = agent(&cfg, args).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
    }
    let o = agent(&cfg, &["history", "--since", "1d", "--until", "2d"]).await;
    assert!(text(&o).contains("--since"), "{}", text(&o));

    // web fails, then is switched off: monitoring no longer reports it.
    s.sim
        .set_mode(ServerId::new(5), vps_snapshot_agent::sim::Mode::Fail);
    assert_eq!(agent(&cfg, &["run-once"]).await.status.code(), Some(1));
    let cfg = config(
        dir.path(),
        &s.base_url(),
        &job("web", 5, "enabled = false\n"),
    );
    let o = agent(&cfg, &["status", "--check"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).starts_with("OK: 1 job(s) (1 disabled)"),
        "{}",
        text(&o)
    );
    let o = agent(&cfg, &["check", "--offline"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        !text(&o).contains("next:"),
        "a job that never fires has no next time: {}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_textfile_is_beside_the_config_not_where_the_agent_started() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &s.base_url(),
        &format!(
            "[metrics]\ntextfile = \"agent.prom\"\n{}",
            job("web", 5, "")
        ),
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let o = tokio::process::Command::new(BIN)
        .current_dir(elsewhere.path())
        .arg("--config")
        .arg(&cfg)
        .arg("run-once")
        .env("AGENT_API__TOKEN", TOKEN)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(dir.path().join("agent.prom").exists(), "beside the config");
    assert!(!elsewhere.path().join("agent.prom").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_on_delete_stops_the_prune_and_exits_78() {
    use vps_snapshot_agent::sim::{Fault, Op};
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), &job("web", 5, "keep_last = 1\n"));
    for h in [50, 40, 30, 20] {
        marked(&s, 5, "web", h);
    }
    s.sim.inject(Fault::status(Op::Delete, 401, 10));
    let o = agent(&cfg, &["prune"]).await;
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(
        out.matches("rejected the token").count(),
        1,
        "said once: {out}"
    );
    assert_eq!(on(&s, 5).len(), 4);
}

/// A snapshot `job` made `hours` ago on `server`, named and marked as the agent makes them.
fn marked(
    s: &vps_snapshot_agent::sim::SimServer,
    server: u64,
    job: &str,
    hours: i64,
) -> SnapshotId {
    let at = Utc::now() - chrono::Duration::hours(hours);
    let name = vps_snapshot_agent::snapshot::naming::new_name(job, at);
    let desc = crate::helpers::marker().description(
        job,
        ServerId::new(server),
        crate::helpers::RunId::new(0),
        &name,
    );
    s.sim.put_described(
        ServerId::new(server),
        &name,
        Some(&desc),
        SnapshotStatus::Completed,
        at,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_never_deletes_the_snapshot_it_goes_back_to_to_make_room() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), &job("web", 5, "keep_last = 4\n"));
    let oldest = marked(&s, 5, "web", 96);
    for h in [72, 48, 24] {
        marked(&s, 5, "web", h);
    }
    s.sim.put(
        ServerId::new(5),
        "by-hand",
        SnapshotStatus::Completed,
        Utc::now() - chrono::Duration::hours(100),
    );
    let dry = agent(&cfg, &["restore", &oldest.to_string(), "--dry-run"]).await;
    assert!(
        !text(&dry).contains(&format!("make room: {oldest}")),
        "{}",
        text(&dry)
    );
    let o = agent(&cfg, &["restore", &oldest.to_string(), "--yes"]).await;
    assert!(
        on(&s, 5).iter().any(|x| x.id == oldest),
        "the restore deleted its own target: {}",
        text(&o)
    );
    let runs = history(&cfg).await;
    assert!(
        runs.iter().all(|r| !r["deleted_snapshot_ids"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(oldest.get()))),
        "{runs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marked_copy_of_a_snapshot_the_agent_deleted_is_not_the_agents() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), &job("web", 5, "keep_last = 1\n"));
    assert_eq!(agent(&cfg, &["run-once"]).await.status.code(), Some(0));
    let first = on(&s, 5).remove(0);
    assert_eq!(agent(&cfg, &["run-once"]).await.status.code(), Some(0));
    assert!(on(&s, 5).iter().all(|x| x.id != first.id), "rotated out");
    // Someone makes a snapshot by hand with the deleted one's name and description.
    let copy = s.sim.put_described(
        ServerId::new(5),
        &first.name,
        first.description.as_deref(),
        SnapshotStatus::Completed,
        Utc::now() - chrono::Duration::hours(1),
    );
    let o = agent(&cfg, &["snapshots", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = listed[0]["snapshots"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == copy.get()))
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(row["managed"], false, "{row}");
    assert!(
        row["reason"].as_str().unwrap().starts_with("a copy"),
        "{row}"
    );
    for args in [&["prune"][..], &["run-once"][..]] {
        let o = agent(&cfg, args).await;
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        assert!(
            on(&s, 5).iter().any(|x| x.id == copy),
            "{args:?} deleted the copy"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_in_any_encoding_an_api_answer_may_carry_is_never_shown() {
    use base64::Engine as _;
    use vps_snapshot_agent::sim::{Fault, FaultKind, Op};
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), &job("web", 5, ""));
    let b64 = base64::engine::general_purpose::STANDARD;
    let (head, tail) = TOKEN.split_at(TOKEN.len() / 2);
    let escaped: String = TOKEN
        .chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect();
    let lower_pct: String = TOKEN
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect();
    let forms = [
        b64.encode(TOKEN),
        b64.encode(format!("Bearer {TOKEN}")),
        format!("{head}\n{tail}"),
        escaped,
        lower_pct,
        TOKEN.to_uppercase(),
    ];
    for form in &forms {
        s.sim.clear_faults();
        s.sim.inject(Fault::new(
            Op::Create,
            FaultKind::Status {
                code: 400,
                retry_after: None,
                body: format!("{{\"detail\": \"bad token {form}\"}}"),
            },
            1,
        ));
        let o = agent(&cfg, &["run-once"]).await;
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let h = agent(&cfg, &["history", "--json", "--limit", "1"]).await;
        for (what, t) in [("run-once", text(&o)), ("history", text(&h))] {
            for piece in [head, tail] {
                assert!(
                    !t.to_lowercase().contains(&piece.to_lowercase()),
                    "{what} shows {form:?} in part: {t}"
                );
            }
            assert!(!t.contains(form.as_str()), "{what} shows {form:?}: {t}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_commands_never_create_a_database_where_none_is() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), &job("web", 5, ""));
    let text_ = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("history.db", "nodir/sub/history.db");
    std::fs::write(&cfg, text_).unwrap();
    for args in [
        &["history"][..],
        &["status"][..],
        &["status", "--json"][..],
        &["unpin", "5"][..],
    ] {
        let o = agent(&cfg, args).await;
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains("no history yet") && text(&o).contains("nodir/sub/history.db"),
            "{args:?}: {}",
            text(&o)
        );
        assert!(
            !dir.path().join("nodir").exists(),
            "{args:?} made the directory"
        );
    }
}
