//! `before`, `after` and `on_failure` hooks through the binary, as real processes: small
//! scripts that log their phase, time and environment, fail, sleep, ignore SIGTERM, leave
//! children behind, or print megabytes. Their timestamps are set against the
//! simulator's own record of the snapshot (created, completed).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use vps_snapshot_agent::db::{Database, RunStatus};
use vps_snapshot_agent::sim::{Delay, Fault, Mode, Op};

use crate::cli::{BIN, agent, config, sim, text};
use crate::helpers::{Inbox, ServerId, TOKEN};
use crate::newcomer::{exit_code, signal, spawn};

/// Appends one line per call to `$1`: phase, time (ns), run facts, error; dumps the
/// environment beside it; exits `$2` (default 0).
const HOOK: &str = r#"#!/bin/sh
printf '%s %s run=%s job=%s server=%s trigger=%s id=%s name=%s err=%s\n' \
  "$VPS_SNAPSHOT_PHASE" "$(date +%s%N)" "$VPS_SNAPSHOT_RUN_ID" "$VPS_SNAPSHOT_JOB" \
  "$VPS_SNAPSHOT_SERVER_ID" "$VPS_SNAPSHOT_TRIGGER" "$VPS_SNAPSHOT_ID" "$VPS_SNAPSHOT_NAME" \
  "$VPS_SNAPSHOT_ERROR" >> "$1"
env >> "$1.env"
[ -n "$3" ] && echo "$3"
exit "${2:-0}"
"#;

struct Hooked {
    dir: tempfile::TempDir,
    log: PathBuf,
    script: PathBuf,
}

impl Hooked {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hook.sh");
        std::fs::write(&script, HOOK).unwrap();
        set_executable(&script);
        let log = dir.path().join("hooks.log");
        Self { dir, log, script }
    }

    /// A hook key: the script logging to the shared log, exiting `code`, printing `say`.
    fn hook(&self, key: &str, code: i32, say: &str) -> String {
        format!(
            "{key} = [[\"{}\", \"{}\", \"{code}\", \"{say}\"]]\n",
            self.script.display(),
            self.log.display()
        )
    }

    /// The logged lines of `phase`, as (time ns, the rest).
    fn lines(&self, phase: &str) -> Vec<(i128, String)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ' ');
                (parts.next()? == phase)
                    .then(|| Some((parts.next()?.parse().ok()?, parts.next()?.to_string())))?
            })
            .collect()
    }

    fn config(&self, base_url: &str, job_extra: &str, tail: &str) -> PathBuf {
        let job = format!(
            "[[jobs]]\nname = \"db\"\nserver_id = 5\nschedule = \"0 30 2 * * *\"\nkeep_last = 2\n{job_extra}{tail}"
        );
        config(self.dir.path(), base_url, &job)
    }

    fn db_path(&self) -> PathBuf {
        self.dir.path().join("history.db")
    }
}

fn set_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn email(port: u16) -> String {
    format!(
        "[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nsecurity = \"none\"\nfrom = \"agent@example.com\"\nto = [\"ops@example.com\"]\ntimeout = \"3s\"\n"
    )
}

/// Every mail received, quoted-printable soft breaks and `=3D` undone.
fn mail(inbox: &Inbox) -> String {
    inbox
        .messages()
        .join("\n")
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}

fn ns(t: chrono::DateTime<chrono::Utc>) -> i128 {
    i128::from(t.timestamp_nanos_opt().unwrap())
}

async fn history(h: &Hooked) -> Vec<serde_json::Value> {
    let cfg = h.dir.path().join("config.toml");
    let o = agent(&cfg, &["history", "--json"]).await;
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_runs_before_the_create_and_after_once_right_after_it() {
    let s = sim().await;
    s.sim
        .set_delay(ServerId::new(5), Delay::Fixed(Duration::from_secs(4)));
    let h = Hooked::new();
    let hooks = h.hook("before", 0, "frozen") + &h.hook("after", 0, "thawed");
    let cfg = h.config(&s.base_url(), &hooks, "");
    // The token reaches the agent through its own variable and a copy under another name.
    let o = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("run-once")
        .env("AGENT_API__TOKEN", TOKEN)
        .env("SOME_COPY_OF_IT", format!("Bearer {TOKEN}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let snap = s.sim.snapshots(ServerId::new(5)).remove(0);
    let before = h.lines("before");
    let after = h.lines("after");
    assert_eq!((before.len(), after.len()), (1, 1), "{before:?} {after:?}");
    assert!(
        before[0].0 < ns(snap.created_at),
        "before ran before the create"
    );
    assert!(
        after[0].0 >= ns(snap.created_at),
        "after ran after the create"
    );
    let ready = s.sim.ready_at(snap.id).unwrap();
    assert!(
        after[0].0 < ns(ready),
        "thaw_after = \"created\" (the default) does not wait for completion"
    );
    assert_eq!(
        before[0].1, "run=1 job=db server=5 trigger=manual id= name= err=",
        "the snapshot is not known yet"
    );
    assert_eq!(
        after[0].1,
        format!(
            "run=1 job=db server=5 trigger=manual id={} name={} err=",
            snap.id, snap.name
        )
    );
    let env = std::fs::read_to_string(h.log.with_extension("log.env")).unwrap();
    assert!(
        !env.contains(TOKEN),
        "a hook is never given the token:\n{env}"
    );
    assert!(!env.contains("AGENT_"), "nor the agent's settings:\n{env}");
    assert!(env.contains("PATH="), "the rest of the environment is kept");

    let runs = history(&h).await;
    let hooks = runs[0]["hooks"].as_array().unwrap();
    let phases: Vec<&str> = hooks.iter().map(|h| h["phase"].as_str().unwrap()).collect();
    assert_eq!(
        phases,
        ["before", "after"],
        "in the order they ran, though after is journaled (owed) first"
    );
    for hook in hooks {
        assert_eq!(hook["state"], "ok");
        assert_eq!(hook["command"][0], h.script.display().to_string());
        let result = hook["result"].as_str().unwrap();
        assert!(result.starts_with("exit 0 after"), "{result}");
    }
    assert!(hooks[0]["result"].as_str().unwrap().ends_with("frozen"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thaw_after_completed_waits_for_the_snapshot_to_complete() {
    let s = sim().await;
    s.sim
        .set_delay(ServerId::new(5), Delay::Fixed(Duration::from_secs(1)));
    let h = Hooked::new();
    let hooks = h.hook("before", 0, "") + &h.hook("after", 0, "") + "thaw_after = \"completed\"\n";
    let cfg = h.config(&s.base_url(), &hooks, "");
    let o = agent(&cfg, &["run-once"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let snap = s.sim.snapshots(ServerId::new(5)).remove(0);
    let after = h.lines("after");
    assert_eq!(after.len(), 1);
    assert!(after[0].0 >= ns(s.sim.ready_at(snap.id).unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_before_skips_the_snapshot_still_thaws_and_tells_on_failure_and_the_alert() {
    let s = sim().await;
    let (inbox, port) = Inbox::start(0);
    let h = Hooked::new();
    let hooks = h.hook("before", 3, "cannot-flush-tables")
        + &h.hook("after", 0, "")
        + &h.hook("on_failure", 0, "");
    let cfg = h.config(&s.base_url(), &hooks, &email(port));
    let o = agent(&cfg, &["run-once"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    assert_eq!(
        s.sim.requests().of(Op::Create),
        0,
        "no snapshot was asked for"
    );
    assert_eq!(h.lines("after").len(), 1, "what before began is undone");
    let failed = h.lines("on_failure");
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0].1.contains("err=before hook") && failed[0].1.contains("exit 3"),
        "{failed:?}"
    );
    let (b, a, f) = (h.lines("before")[0].0, h.lines("after")[0].0, failed[0].0);
    assert!(b < a && a < f, "on_failure runs after everything else");

    let mail = mail(&inbox);
    assert!(mail.contains("FAILED db"), "{mail}");
    assert!(
        mail.contains("cannot-flush-tables"),
        "the hook's output: {mail}"
    );
    assert!(mail.contains("before_failure = \"skip\""), "{mail}");
    let runs = history(&h).await;
    assert_eq!(runs[0]["status"], "failed");
    assert_eq!(runs[0]["step"], "before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_anyway_takes_a_crash_consistent_snapshot_and_says_so() {
    let s = sim().await;
    let (inbox, port) = Inbox::start(0);
    let h = Hooked::new();
    let hooks = h.hook("before", 1, "")
        + &h.hook("after", 0, "")
        + "before_failure = \"snapshot-anyway\"\n";
    let cfg = h.config(&s.base_url(), &hooks, &email(port));
    let o = agent(&cfg, &["run-once"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(s.sim.snapshots(ServerId::new(5)).len(), 1);
    assert_eq!(h.lines("after").len(), 1);
    let runs = history(&h).await;
    assert_eq!(runs[0]["status"], "succeeded");
    assert!(
        runs[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("crash-consistent: before hook"),
        "{}",
        runs[0]
    );
    let mail = mail(&inbox);
    assert!(
        mail.contains("HOOK db") && mail.contains("crash-consistent"),
        "{mail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_create_and_a_failed_snapshot_still_thaw_once() {
    for (case, thaw) in [("refused", "created"), ("failed", "completed")] {
        let s = sim().await;
        match case {
            "refused" => s.sim.inject(Fault::status(Op::Create, 400, 1)),
            _ => s.sim.set_mode(ServerId::new(5), Mode::Fail),
        }
        let h = Hooked::new();
        let hooks = h.hook("before", 0, "")
            + &h.hook("after", 0, "")
            + &format!("thaw_after = \"{thaw}\"\n");
        let cfg = h.config(&s.base_url(), &hooks, "");
        let o = agent(&cfg, &["run-once"]).await;
        assert_eq!(o.status.code(), Some(1), "{case}: {}", text(&o));
        assert_eq!(h.lines("after").len(), 1, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_past_its_timeout_is_killed_with_every_child_it_left() {
    let s = sim().await;
    let h = Hooked::new();
    let pids = h.dir.path().join("pids");
    let stubborn = h.dir.path().join("stubborn.sh");
    std::fs::write(
        &stubborn,
        format!(
            "#!/bin/sh\ntrap '' TERM\n(trap '' TERM; exec sleep 300) &\necho $! >> {p}\necho $$ >> {p}\nsleep 300\n",
            p = pids.display()
        ),
    )
    .unwrap();
    set_executable(&stubborn);
    let hooks = format!(
        "before = [[\"{}\"]]\n{}hook_timeout = \"1s\"\n",
        stubborn.display(),
        h.hook("after", 0, "")
    );
    let cfg = h.config(&s.base_url(), &hooks, "");
    let o = agent(&cfg, &["run-once"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(h.lines("after").len(), 1);
    let runs = history(&h).await;
    let before = &runs[0]["hooks"][0];
    assert_eq!(before["phase"], "before", "listed in the order they ran");
    assert!(
        before["result"]
            .as_str()
            .unwrap()
            .starts_with("timed out after 1s; its process group was killed"),
        "{before}"
    );
    for pid in std::fs::read_to_string(&pids).unwrap().lines() {
        let pid: i32 = pid.parse().unwrap();
        let mut gone = false;
        for _ in 0..100 {
            // SAFETY: signal 0 only asks whether the process exists.
            if unsafe { libc::kill(pid, 0) } != 0 {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone, "process {pid} of the hook outlived its timeout");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_printing_megabytes_keeps_only_its_end() {
    let s = sim().await;
    let h = Hooked::new();
    let hooks = "before = \"head -c 5000000 /dev/zero | tr '\\\\0' x; echo; echo THE-END\"\n";
    let cfg = h.config(&s.base_url(), hooks, "");
    let o = agent(&cfg, &["run-once"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let runs = history(&h).await;
    let result = runs[0]["hooks"][0]["result"].as_str().unwrap();
    assert!(
        result.contains("printed 5000009 bytes, the last 4096 kept"),
        "{}",
        &result[..200]
    );
    assert!(result.ends_with("THE-END"));
    assert!(result.len() < 4096 + 200, "{}", result.len());
}

/// Waits (bounded) until the simulator has made a snapshot.
async fn wait_for_create(s: &vps_snapshot_agent::sim::SimServer) {
    for _ in 0..400 {
        if s.sim.requests().of(Op::Create) > 0 {
            // Let the agent record the answer before anything happens to it.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no snapshot was asked for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_thaws_before_the_agent_exits() {
    let s = sim().await;
    s.sim
        .set_delay(ServerId::new(5), Delay::Fixed(Duration::from_secs(8)));
    let h = Hooked::new();
    let hooks = h.hook("before", 0, "") + &h.hook("after", 0, "") + "thaw_after = \"completed\"\n";
    let cfg = h.config(&s.base_url(), &hooks, "");
    let mut child = spawn(&cfg, &["run-once"], &h.dir.path().join("first.log"));
    wait_for_create(&s).await;
    assert!(h.lines("after").is_empty());
    signal(&child, libc::SIGTERM);
    assert_eq!(
        exit_code(&mut child, Duration::from_secs(30)).await,
        Some(143)
    );
    assert_eq!(h.lines("after").len(), 1, "thawed before exiting");

    // The next start finishes the run and does not thaw again.
    let o = agent(&cfg, &["run-once"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let after: Vec<_> = h
        .lines("after")
        .into_iter()
        .filter(|(_, l)| l.starts_with("run=1 "))
        .collect();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(s.sim.snapshots(ServerId::new(5)).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_before_runs_asks_for_no_snapshot_and_thaws() {
    let s = sim().await;
    let h = Hooked::new();
    let started = h.dir.path().join("before-started");
    let slow = h.dir.path().join("slow.sh");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh
touch {}
sleep 2
",
            started.display()
        ),
    )
    .unwrap();
    set_executable(&slow);
    let hooks = format!(
        "before = [[\"{}\"]]\n{}",
        slow.display(),
        h.hook("after", 0, "")
    );
    let cfg = h.config(&s.base_url(), &hooks, "");
    let mut child = spawn(&cfg, &["run-once"], &h.dir.path().join("first.log"));
    for _ in 0..400 {
        if started.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(started.exists(), "before never started");
    signal(&child, libc::SIGTERM);
    assert_eq!(
        exit_code(&mut child, Duration::from_secs(30)).await,
        Some(143)
    );
    assert_eq!(
        s.sim.requests().of(Op::Create),
        0,
        "no snapshot asked for after the stop"
    );
    assert_eq!(h.lines("after").len(), 1, "what before did is undone");
    let runs = history(&h).await;
    assert_eq!(runs[0]["status"], "interrupted", "{}", runs[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_before_the_next_start_thaws_once_and_says_it_had_to() {
    let s = sim().await;
    s.sim
        .set_delay(ServerId::new(5), Delay::Fixed(Duration::from_secs(8)));
    let (inbox, port) = Inbox::start(0);
    let h = Hooked::new();
    let hooks = h.hook("before", 0, "") + &h.hook("after", 0, "") + "thaw_after = \"completed\"\n";
    let cfg = h.config(&s.base_url(), &hooks, &email(port));
    let mut child = spawn(&cfg, &["run-once"], &h.dir.path().join("first.log"));
    wait_for_create(&s).await;
    child.kill().unwrap();
    let _ = child.wait();
    assert!(h.lines("after").is_empty(), "killed before it could thaw");

    let o = agent(&cfg, &["run-once"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let thawed = h.lines("after");
    assert!(
        thawed.first().is_some_and(|(_, l)| l.starts_with("run=1 ")),
        "the first thing the next start did: {thawed:?}"
    );
    let first_of_run_2 = h
        .lines("before")
        .into_iter()
        .find(|(_, l)| l.starts_with("run=2 "));
    assert!(first_of_run_2.is_none_or(|(t, _)| t > thawed[0].0));
    let mail = mail(&inbox);
    assert!(
        mail.contains("HOOK db") && mail.contains("were run when the agent started again"),
        "{mail}"
    );

    // Once: a third start does not thaw run 1 again.
    let o = agent(&cfg, &["run-once"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let of_run_1 = h
        .lines("after")
        .into_iter()
        .filter(|(_, l)| l.starts_with("run=1 "))
        .count();
    assert_eq!(of_run_1, 1);
    let db = Database::open(&h.db_path()).await.unwrap();
    let runs = db.history(None, 10).await.unwrap();
    assert!(
        runs.iter().all(|r| r.status != RunStatus::Running),
        "{runs:?}"
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_dry_run_show_the_hooks_and_check_finds_one_that_cannot_start() {
    let s = sim().await;
    let h = Hooked::new();
    let good = h.hook("before", 0, "") + &h.hook("after", 0, "") + "on_failure = \"echo failed\"\n";
    let cfg = h.config(&s.base_url(), &good, "");
    let o = agent(&cfg, &["check", "--offline"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("hooks: thaw_after = created, before_failure = skip, hook_timeout = 1m"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("on_failure: sh -c \"echo failed\""),
        "{}",
        text(&o)
    );
    let dry = agent(&cfg, &["run-once", "--dry-run"]).await;
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let out = String::from_utf8_lossy(&dry.stdout);
    assert!(out.contains("would run before: "), "{out}");
    assert!(
        out.contains("would run after (once the create is accepted"),
        "{out}"
    );
    assert!(h.lines("before").is_empty(), "a dry run runs nothing");

    let bad = "before = [[\"/nonexistent/freeze\", \"-f\"]]\nafter = \"fsfreeze -u / &&\"\non_failure = [[\"no-such-program-here\"]]\n";
    let cfg = h.config(&s.base_url(), bad, "");
    let o = agent(&cfg, &["check", "--offline"]).await;
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("jobs[0].before: `/nonexistent/freeze -f`: /nonexistent/freeze does not exist"),
        "{t}"
    );
    assert!(
        t.contains("jobs[0].after: `sh -c \"fsfreeze -u / &&\"`: sh cannot parse it"),
        "{t}"
    );
    assert!(
        t.contains(
            "jobs[0].on_failure: `no-such-program-here`: no-such-program-here is not found on PATH"
        ),
        "{t}"
    );

    let ambiguous = "before = [\"fsfreeze\", \"-f\", \"/srv\"]\n";
    let cfg = h.config(&s.base_url(), ambiguous, "");
    let o = agent(&cfg, &["check", "--offline"]).await;
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(
        text(&o).contains("jobs[0].before") && text(&o).contains("list of argv arrays"),
        "{}",
        text(&o)
    );
}
