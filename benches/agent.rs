//! The benchmark harness: `cargo bench --bench agent`. Every number in the README's
//! Benchmarks section comes from one run of this. It prints a table and writes
//! `target/bench-results.json`. Everything runs on loopback.
//!
//! Knobs (environment): BENCH_JOBS (1000), BENCH_PEER_JOBS (200), BENCH_PEER_ROUNDS (5),
//! BENCH_IDLE_SECS (60),
//! BENCH_RUNS (1000000), BENCH_SCALE_JOBS (10000), BENCH_SCALE_RUN_JOBS (5000), BENCH_SKIP
//! (comma list of: run_once,floor,peer,idle,scale,history,lateness,polling,pg); the `pg`
//! bench's knobs are on [`bench_pg_lateness`].

use std::io::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use vps_snapshot_agent::clock::{self, VirtualClock};
use vps_snapshot_agent::config::Settings;
use vps_snapshot_agent::db::{Database, RunTrigger};
use vps_snapshot_agent::domain::ServerId;
use vps_snapshot_agent::run::Runner;
use vps_snapshot_agent::sim::{Delay, SimOptions, SimServer, Simulator};

const BIN: &str = env!("CARGO_BIN_EXE_agent");
const TOKEN: &str = "bench-token";

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn skipped(what: &str) -> bool {
    std::env::var("BENCH_SKIP").is_ok_and(|s| s.split(',').any(|x| x.trim() == what))
}

/// CPU time (user + system) of `who` (`RUSAGE_SELF`, or `RUSAGE_CHILDREN`: all children
/// waited for so far).
fn cpu_of(who: libc::c_int) -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn children_cpu() -> Duration {
    cpu_of(libc::RUSAGE_CHILDREN)
}

/// The size of the binary as shipped. The one this bench runs is built with the
/// dev-dependencies' features too (tokio's test-util among them), half a MiB larger, so
/// the shipped one is built apart, in a target directory of its own.
fn shipped_size() -> u64 {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/target/size-check");
    let built = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--quiet",
            "--bin",
            "agent",
        ])
        .args(["--target-dir", dir])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(built, "cargo build --release failed");
    std::fs::metadata(format!("{dir}/release/agent"))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// CPU (user+sys) this process has used.
fn self_cpu() -> Duration {
    cpu_of(libc::RUSAGE_SELF)
}

/// The floor under the CPU per job: what one statement and one transaction cost through
/// sqlx's SQLite worker thread (the agent's settings: WAL, synchronous NORMAL), in this
/// process, one after another as a run makes them.
async fn bench_floor(r: &mut Report) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(&dir.path().join("history.db"))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE floor (x INTEGER)")
        .execute(db.sqlite_pool().unwrap())
        .await
        .unwrap();
    let n = 20_000u32;
    let cpu0 = self_cpu();
    for i in 0..n {
        sqlx::query("INSERT INTO floor (x) VALUES (?)")
            .bind(i64::from(i))
            .execute(db.sqlite_pool().unwrap())
            .await
            .unwrap();
    }
    let statement = (self_cpu() - cpu0).as_secs_f64() * 1e6 / f64::from(n);
    let cpu0 = self_cpu();
    for i in 0..n / 4 {
        let mut tx = db.sqlite_pool().unwrap().begin().await.unwrap();
        sqlx::query("INSERT INTO floor (x) VALUES (?)")
            .bind(i64::from(i))
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let transaction = (self_cpu() - cpu0).as_secs_f64() * 1e6 / f64::from(n / 4);
    // A read of one row by its key: through the pool (a connection taken and handed
    // back, which sqlx tests with one more hop) and on a connection kept, as the
    // agent's readers do.
    let pool = db.sqlite_pool().unwrap();
    let read = "SELECT x FROM floor WHERE rowid = ?";
    let cpu0 = self_cpu();
    for i in 1..=n {
        let _: (i64,) = sqlx::query_as(read)
            .bind(i64::from(i))
            .fetch_one(pool)
            .await
            .unwrap();
    }
    let read_pool = (self_cpu() - cpu0).as_secs_f64() * 1e6 / f64::from(n);
    let mut kept = pool.acquire().await.unwrap();
    let cpu0 = self_cpu();
    for i in 1..=n {
        let _: (i64,) = sqlx::query_as(read)
            .bind(i64::from(i))
            .fetch_one(&mut *kept)
            .await
            .unwrap();
    }
    let read_kept = (self_cpu() - cpu0).as_secs_f64() * 1e6 / f64::from(n);
    drop(kept);
    db.close().await;
    r.add(
        "floor_statement_us",
        "one INSERT through sqlx (autocommit): CPU",
        statement,
        "us",
        "",
    );
    r.add(
        "floor_transaction_us",
        "one INSERT in a transaction (BEGIN, INSERT, COMMIT): CPU",
        transaction,
        "us",
        "",
    );
    r.add(
        "floor_read_pool_us",
        "one SELECT by key through the pool (connection handed back after): CPU",
        read_pool,
        "us",
        "",
    );
    r.add(
        "floor_read_kept_us",
        "one SELECT by key on a connection kept: CPU",
        read_kept,
        "us",
        "",
    );
}

/// CPU time and RSS of a running process, from /proc.
fn proc_cpu_rss(pid: u32) -> (Duration, u64) {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|x| x.1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let t = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu = Duration::from_millis((t(11) + t(12)) * 1000 / ticks.max(1));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, rss_kib)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

struct Report {
    rows: Vec<(String, String, String)>,
    json: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    fn add(&mut self, key: &str, label: &str, value: f64, unit: &str, target: &str) {
        let shown = if value.abs() >= 100.0 {
            format!("{value:.0} {unit}")
        } else {
            format!("{value:.3} {unit}")
        };
        println!("  {label:<58} {shown:>16}   {target}");
        self.rows
            .push((label.to_string(), shown, target.to_string()));
        self.json.insert(
            key.to_string(),
            serde_json::json!({"value": value, "unit": unit, "target": target}),
        );
    }
}

fn write_config(dir: &Path, base_url: &str, jobs: &str, extra: &str) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(
        &p,
        format!(
            "database = \"{}\"\n[api]\nbase_url = \"{base_url}\"\ntoken = \"{TOKEN}\"\n{extra}\n{jobs}",
            dir.join("history.db").display()
        ),
    )
    .unwrap();
    p
}

/// N jobs on servers `first_server`.., one each.
fn jobs_toml(n: u64, first_server: u64, schedule: impl Fn(u64) -> String) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[jobs]]\nname = \"job-{i}\"\nserver_id = {}\nschedule = \"{}\"\n",
                first_server + i,
                schedule(i)
            )
        })
        .collect()
}

async fn sim(delay: Delay) -> SimServer {
    Simulator::start(
        SimOptions {
            token: TOKEN.into(),
            delay,
            ..SimOptions::default()
        },
        clock::system(),
    )
    .await
    .unwrap()
}

/// `agent run-once` over N jobs on N servers, instant completion; the report's keys begin
/// with `prefix`.
async fn bench_run_once(r: &mut Report, n: u64, prefix: &str) {
    let s = sim(Delay::Fixed(Duration::ZERO)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &s.base_url(),
        &jobs_toml(n, 1000, |_| "0 30 2 * * *".into()),
        "max_concurrent_jobs = 64\n[defaults]\npoll_interval = \"1ms\"\nkeep_last = 2\n",
    );
    let run_once = || async {
        let st = tokio::process::Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .args(["-qq", "run-once"])
            .stdout(Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(st.success(), "run-once failed");
    };
    // Two rounds so that rotation deletes in the next ones; then the median of five (one
    // round on this VM varies by a fifth from the next).
    for _ in 0..2 {
        run_once().await;
    }
    const ROUNDS: usize = 5;
    let req0 = s.sim.requests().total;
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let cpu0 = children_cpu();
        let t0 = Instant::now();
        run_once().await;
        walls.push(t0.elapsed().as_secs_f64());
        cpus.push((children_cpu() - cpu0).as_secs_f64());
    }
    let req1 = s.sim.requests().total;
    let wall = Duration::from_secs_f64(percentile(&mut walls, 50.0));
    let per_job_cpu = percentile(&mut cpus, 50.0) * 1000.0 / n as f64;
    let scaled = !prefix.is_empty();
    r.add(
        &format!("{prefix}run_once_wall_s"),
        &format!("run-once, {n} jobs on {n} servers, median of 5: wall time"),
        wall.as_secs_f64(),
        "s",
        if scaled { "" } else { "<= 1.5 s" },
    );
    r.add(
        &format!("{prefix}run_once_cpu_per_job_ms"),
        &format!("run-once, {n} jobs, median of 5: CPU (user+sys) per job"),
        per_job_cpu,
        "ms",
        if scaled { "" } else { "<= 1.5 ms" },
    );
    if scaled {
        return;
    }
    r.add(
        "run_once_requests_per_job",
        "run-once: API requests per job (1 poll, 1 delete)",
        (req1 - req0) as f64 / (ROUNDS as u64 * n) as f64,
        "req",
        "<= 2 + polls + deletions = 4",
    );
    // Where the CPU goes besides work: threads waiting on each other (futex) and SQLite's
    // busy handler sleeping (clock_nanosleep), counted by strace over one more round.
    match syscalls_of(&cfg).await {
        Some((futex, sleeps, yields)) => {
            r.add(
                "run_once_futex_per_job",
                "run-once: futex calls per job (strace -f)",
                futex as f64 / n as f64,
                "calls",
                "",
            );
            r.add(
                "run_once_sleeps",
                &format!(
                    "run-once, {n} jobs: busy-handler sleeps (clock_nanosleep of 1 ms or more)"
                ),
                sleeps as f64,
                "calls",
                "0",
            );
            r.add(
                "run_once_yields",
                &format!("run-once, {n} jobs: WAL read retries (clock_nanosleep of 1 µs)"),
                yields as f64,
                "calls",
                "",
            );
        }
        None => println!("  (strace not found: futex and sleep counts not measured)"),
    }
    // What each hop is for: the statements a run sends to the store (sqlx's own log of
    // one more round; `BEGIN` and `COMMIT` are not in it).
    let (reads, writes) = statements_of(&cfg).await;
    r.add(
        "run_once_reads_per_job",
        "run-once: SQL reads per job (sqlx's log)",
        reads as f64 / n as f64,
        "statements",
        "",
    );
    r.add(
        "run_once_writes_per_job",
        "run-once: SQL writes per job (sqlx's log; commits not counted)",
        writes as f64 / n as f64,
        "statements",
        "",
    );
}

/// The statements one `run-once` of `cfg` ran, by sqlx's log: reads (`SELECT`) and writes.
async fn statements_of(cfg: &Path) -> (u64, u64) {
    let out = tokio::process::Command::new(BIN)
        .env("RUST_LOG", "sqlx=debug")
        .arg("--config")
        .arg(cfg)
        .args(["--log-format", "json", "run-once"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "run-once failed");
    let (mut reads, mut writes) = (0, 0);
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(sql) = v["fields"]["summary"].as_str() else {
            continue;
        };
        match sql.trim_start().to_ascii_uppercase().starts_with("SELECT") {
            true => reads += 1,
            false => writes += 1,
        }
    }
    (reads, writes)
}

/// One `run-once` under strace: its futex calls (`strace -f -c`), then, in another round,
/// its `clock_nanosleep` calls split by length: SQLite's busy handler sleeps 1 ms or more
/// (`sqliteDefaultBusyCallback`), while a reader that finds the WAL index changing under it
/// retries after 1 µs, "more of a scheduler yield than an actual delay" (`walTryBeginRead`).
/// `None` without strace.
async fn syscalls_of(cfg: &Path) -> Option<(u64, u64, u64)> {
    // What strace wrote of one run-once under `args`.
    let traced = |args: &'static [&'static str]| async move {
        let out = tempfile::NamedTempFile::new().ok()?;
        let st = tokio::process::Command::new("strace")
            .args(args)
            .arg(out.path())
            .arg(BIN)
            .arg("--config")
            .arg(cfg)
            .args(["-qq", "run-once"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .ok()?;
        match st.success() {
            true => std::fs::read_to_string(out.path()).ok(),
            false => None,
        }
    };
    let futex = traced(&["-f", "-c", "-e", "trace=futex", "-o"])
        .await?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.last() == Some(&"futex")).then(|| f.get(3)?.parse::<u64>().ok())?
        })
        .sum::<u64>();
    let text = traced(&["-f", "-e", "trace=clock_nanosleep", "-o"]).await?;
    let field = |l: &str, name: &str| -> u64 {
        l.split(name)
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .unwrap_or(0)
    };
    let (mut sleeps, mut yields) = (0, 0);
    for l in text.lines().filter(|l| l.contains("clock_nanosleep(")) {
        match field(l, "tv_sec=") > 0 || field(l, "tv_nsec=") >= 1_000_000 {
            true => sleeps += 1,
            false => yields += 1,
        }
    }
    Some((futex, sleeps, yields))
}

/// The agent and the curl + jq script side by side, as whole processes against one
/// `agent simulate` (the fake neither is part of): `n` jobs each (the agent's `run-once`
/// of `n` jobs; the script over `n` servers in turn), two rounds each to reach the steady
/// state (rotation deletes), then `rounds` rounds alternating; medians of CPU (user+sys of
/// the process and its children) and wall time, and their ratios.
async fn bench_side_by_side(r: &mut Report, n: u64, rounds: usize) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut simulate = Command::new(BIN)
        .args([
            "simulate",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--token",
            TOKEN,
            "--completion",
            "0s",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &api,
        &jobs_toml(n, 5000, |_| "0 30 2 * * *".into()),
        "max_concurrent_jobs = 64\n[defaults]\npoll_interval = \"1ms\"\nkeep_last = 2\n",
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/baseline/snapshot.sh");
    let servers: Vec<String> = (0..n).map(|i| (6000 + i).to_string()).collect();
    // CPU and wall time of one round.
    let agent = || {
        let (cpu0, t0) = (children_cpu(), Instant::now());
        let st = Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .args(["-qq", "run-once"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "run-once failed");
        (children_cpu() - cpu0, t0.elapsed())
    };
    let peer = || {
        let (cpu0, t0) = (children_cpu(), Instant::now());
        let st = Command::new("bash")
            .arg(script)
            .args(&servers)
            .env("API", &api)
            .env("TOKEN", TOKEN)
            .env("KEEP", "2")
            .env("POLL", "0.001")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "the peer script failed");
        (children_cpu() - cpu0, t0.elapsed())
    };
    for _ in 0..2 {
        agent();
        peer();
    }
    let (mut a_cpu, mut a_wall, mut p_cpu, mut p_wall) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let (c, w) = agent();
        a_cpu.push(c.as_secs_f64());
        a_wall.push(w.as_secs_f64());
        let (c, w) = peer();
        p_cpu.push(c.as_secs_f64());
        p_wall.push(w.as_secs_f64());
    }
    let _ = simulate.kill();
    let _ = simulate.wait();
    let (a_cpu, a_wall) = (percentile(&mut a_cpu, 50.0), percentile(&mut a_wall, 50.0));
    let (p_cpu, p_wall) = (percentile(&mut p_cpu, 50.0), percentile(&mut p_wall, 50.0));
    let per_job = |s: f64| s * 1000.0 / n as f64;
    r.add(
        "side_agent_cpu_per_job_ms",
        &format!("side by side, {n} jobs, median of {rounds}: the agent's CPU per job"),
        per_job(a_cpu),
        "ms",
        "",
    );
    r.add(
        "side_agent_wall_s",
        &format!("side by side, {n} jobs: the agent's wall time"),
        a_wall,
        "s",
        "",
    );
    r.add(
        "peer_cpu_per_job_ms",
        &format!("side by side, {n} servers: the script's (bash+curl+jq) CPU per job"),
        per_job(p_cpu),
        "ms",
        "",
    );
    r.add(
        "peer_wall_s",
        &format!("side by side, {n} servers: the script's wall time"),
        p_wall,
        "s",
        "",
    );
    r.add(
        "cpu_ratio_peer_over_agent",
        "CPU, script / agent",
        p_cpu / a_cpu,
        "x",
        ">= 100x",
    );
    r.add(
        "wall_ratio_peer_over_agent",
        "wall time, script / agent",
        p_wall / a_wall,
        "x",
        ">= 25x",
    );
}

/// A socket at `path` for a daemon's sd_notify messages.
fn notify_socket(path: &Path) -> UnixDatagram {
    let sock = UnixDatagram::bind(path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    sock
}

/// `agent run` on `cfg`, quiet, told to notify `sock` (bound at `sock_path`), once it has
/// said READY=1.
fn start_daemon(cfg: &Path, sock_path: &Path, sock: &UnixDatagram) -> std::process::Child {
    let child = Command::new(BIN)
        .arg("--config")
        .arg(cfg)
        .args(["-q", "run"])
        .env("NOTIFY_SOCKET", sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_ready(sock), "{}: no READY=1", sock_path.display());
    child
}

fn wait_ready(sock: &UnixDatagram) -> bool {
    let mut buf = [0u8; 4096];
    for _ in 0..600 {
        if let Ok(n) = sock.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n]).contains("READY=1")
        {
            return true;
        }
    }
    false
}

/// Start-up to READY and the idle daemon with N jobs armed; keys begin with `prefix`.
async fn bench_idle(r: &mut Report, n: u64, secs: u64, prefix: &str) {
    let s = sim(Delay::Fixed(Duration::ZERO)).await;
    let dir = tempfile::tempdir().unwrap();
    // Daily jobs at times that do not come up during the measurement.
    let now = Utc::now();
    let hour = (now + chrono::Duration::hours(12)).format("%H").to_string();
    let cfg = write_config(
        dir.path(),
        &s.base_url(),
        &jobs_toml(n, 1000, |i| {
            format!("{} {} {hour} * * *", i % 60, (i / 60) % 60)
        }),
        "",
    );
    let sock_path = dir.path().join("notify");
    let sock = notify_socket(&sock_path);
    // Migrate the database first so start-up measures the daemon, not schema creation.
    Database::open(&dir.path().join("history.db"))
        .await
        .unwrap()
        .close()
        .await;
    let t0 = Instant::now();
    let mut child = start_daemon(&cfg, &sock_path, &sock);
    let ready = t0.elapsed();
    let scaled = !prefix.is_empty();
    r.add(
        &format!("{prefix}ready_ms"),
        &format!("daemon start-up to READY=1, {n} jobs"),
        ready.as_secs_f64() * 1000.0,
        "ms",
        if scaled { "" } else { "<= 100 ms" },
    );
    // Let start-up work settle, then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, _) = proc_cpu_rss(child.id());
    let t1 = Instant::now();
    let mut peak_rss = 0;
    while t1.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak_rss = peak_rss.max(proc_cpu_rss(child.id()).1);
    }
    let (cpu1, _) = proc_cpu_rss(child.id());
    let pct = (cpu1 - cpu0).as_secs_f64() * 100.0 / t1.elapsed().as_secs_f64();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    r.add(
        &format!("{prefix}idle_rss_mib"),
        &format!("idle daemon, {n} jobs armed: peak RSS over {secs} s"),
        peak_rss as f64 / 1024.0,
        "MiB",
        if scaled { "" } else { "<= 16 MiB" },
    );
    r.add(
        &format!("{prefix}idle_cpu_percent"),
        &format!("idle daemon, {n} jobs: CPU over {secs} s"),
        pct,
        "%",
        if scaled { "" } else { "<= 0.05 %" },
    );
}

/// `history --limit 50` and `status` on a database with many runs.
async fn bench_history(r: &mut Report, runs: u64) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(&dir.path().join("history.db"))
        .await
        .unwrap();
    let t0 = Instant::now();
    let sql = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {runs}) \
         INSERT INTO runs (job, server_id, kind, trigger, status, started_at, finished_at, owner, step, \
           snapshot_name, snapshot_id, snapshot_status, snapshot_created_at, snapshot_completed_at) \
         SELECT 'job-' || (i % 1000), 1000 + i % 1000, 'snapshot', 'schedule', \
           CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'succeeded' END, \
           1700000000000 + i * 60000, 1700000000000 + i * 60000 + 300000, 'bench/1/1/x', 'done', \
           'agent-job-' || (i % 1000) || '-20261128T000000Z-abcdef', i, 'completed', \
           1700000000000 + i * 60000, 1700000000000 + i * 60000 + 300000 FROM n"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(db.sqlite_pool().unwrap())
        .await
        .unwrap();
    let sql = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {runs}) \
         INSERT INTO journal (run_id, server_id, at, resolved_at, action, snapshot_id, state, detail) \
         SELECT i, 1000 + i % 1000, 1700000000000 + i * 60000, 1700000000000 + i * 60000, \
           'delete', i - 3, 'ok', 'rotation' FROM n"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(db.sqlite_pool().unwrap())
        .await
        .unwrap();
    sqlx::query("ANALYZE")
        .execute(db.sqlite_pool().unwrap())
        .await
        .unwrap();
    println!(
        "  (generated {runs} runs and {runs} journal entries in {:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    let mut inproc = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let h = db.history(None, 50).await.unwrap();
        inproc.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(h.len(), 50);
    }
    db.close().await;
    let cfg = write_config(
        dir.path(),
        "http://127.0.0.1:9/api/v1",
        &jobs_toml(1000, 1000, |_| "0 30 2 * * *".into()),
        "",
    );
    let time_cmd = |args: &[&str]| {
        let mut v = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let st = Command::new(BIN)
                .arg("--config")
                .arg(&cfg)
                .args(args)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
            v.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        percentile(&mut v, 50.0)
    };
    r.add(
        "history_query_ms",
        &format!("history --limit 50 query, {runs} runs (in process, p50)"),
        percentile(&mut inproc, 50.0),
        "ms",
        "",
    );
    r.add(
        "history_cmd_ms",
        &format!("`agent history --limit 50`, {runs} runs (whole process, p50)"),
        time_cmd(&["history", "--limit", "50"]),
        "ms",
        "<= 30 ms",
    );
    r.add(
        "status_cmd_ms",
        &format!("`agent status`, 1000 jobs, {runs} runs (whole process, p50)"),
        time_cmd(&["status"]),
        "ms",
        "<= 50 ms",
    );
    r.add(
        "status_job_cmd_ms",
        &format!("`agent status --job job-7`, {runs} runs (whole process, p50)"),
        time_cmd(&["status", "--job", "job-7"]),
        "ms",
        "",
    );
    // What one scrape of /metrics costs the daemon: the database's part and the encoding.
    let settings = Settings::load(&cfg).unwrap();
    let db = Database::open_at(&settings.database).await.unwrap();
    let mut scrapes = Vec::new();
    let mut size = 0;
    for _ in 0..20 {
        let t = Instant::now();
        let text = vps_snapshot_agent::serve::metrics::render(&db, &settings, Utc::now())
            .await
            .unwrap();
        scrapes.push(t.elapsed().as_secs_f64() * 1000.0);
        size = text.len();
    }
    db.close().await;
    r.add(
        "metrics_render_ms",
        &format!(
            "/metrics body, 1000 jobs, {runs} runs ({} KiB; in process, p50)",
            size / 1024
        ),
        percentile(&mut scrapes, 50.0),
        "ms",
        "",
    );
}

/// Schedule lateness of the real daemon (tokio-cron-scheduler one-shots): started_at minus
/// scheduled_for for every scheduled run.
async fn bench_lateness(r: &mut Report) {
    let s = sim(Delay::Fixed(Duration::ZERO)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &s.base_url(),
        &jobs_toml(20, 1000, |_| "*/2 * * * * *".into()),
        "max_concurrent_jobs = 32\n[defaults]\npoll_interval = \"5ms\"\ncatch_up = \"off\"\n",
    );
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["-q", "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(15)).await;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let db = Database::open(&dir.path().join("history.db"))
        .await
        .unwrap();
    let rows: Vec<(i64, i64)> = sqlx::query_as("SELECT started_at, scheduled_for FROM runs WHERE trigger = 'schedule' AND scheduled_for IS NOT NULL")
        .fetch_all(db.sqlite_pool().unwrap())
        .await
        .unwrap();
    let mut late: Vec<f64> = rows.iter().map(|(s, f)| (s - f) as f64).collect();
    r.add(
        "lateness_p50_ms",
        &format!("schedule lateness over {} fires, p50", late.len()),
        percentile(&mut late, 50.0),
        "ms",
        "< 1000 ms",
    );
    r.add(
        "lateness_p99_ms",
        "schedule lateness, p99",
        percentile(&mut late, 99.0),
        "ms",
        "< 1000 ms",
    );
}

/// Several daemons on one PostgreSQL database, every job firing in the same second: how
/// late each fire starts (claimed by one of them). Needs `AGENT_TEST_POSTGRES_URL`
/// (`scripts/test-postgres`); says so when it is missing. BENCH_PG_JOBS (1000),
/// BENCH_PG_DAEMONS (3), BENCH_PG_SLOTS (each daemon's `max_concurrent_jobs`, 400).
async fn bench_pg_lateness(r: &mut Report) {
    let Ok(url) = std::env::var("AGENT_TEST_POSTGRES_URL") else {
        println!("  (AGENT_TEST_POSTGRES_URL not set: PostgreSQL lateness not measured)");
        return;
    };
    let (jobs, daemons, slots) = (
        knob("BENCH_PG_JOBS", 1000),
        knob("BENCH_PG_DAEMONS", 3),
        knob("BENCH_PG_SLOTS", 400),
    );
    let sep = if url.contains('?') { '&' } else { '?' };
    let admin = sqlx::PgPool::connect(&format!("{url}{sep}sslmode=disable"))
        .await
        .unwrap();
    let schema = format!("bench_{}", std::process::id());
    let ddl = |sql: String| sqlx::query(sqlx::AssertSqlSafe(sql));
    ddl(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    ddl(format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let s = sim(Delay::Fixed(Duration::ZERO)).await;
    let dir = tempfile::tempdir().unwrap();
    // Every job at :00 and :30 of each minute.
    let cfg = write_config(
        dir.path(),
        &s.base_url(),
        &jobs_toml(jobs, 1000, |_| "*/30 * * * * *".into()),
        &format!(
            "max_concurrent_jobs = {slots}\n[defaults]\npoll_interval = \"100ms\"\ncatch_up = \"off\"\nkeep_last = 2\n"
        ),
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    let db_url = format!("{url}{sep}options=-c%20search_path%3D{schema}");
    let text = text.replacen(
        &format!("database = \"{}\"", dir.path().join("history.db").display()),
        &format!("database = \"{db_url}\""),
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let mut children = Vec::new();
    for i in 0..daemons {
        let sock_path = dir.path().join(format!("notify-{i}"));
        children.push(start_daemon(&cfg, &sock_path, &notify_socket(&sock_path)));
    }
    let ready = Utc::now().timestamp_millis();
    // Two fires after every daemon is ready, and time for the second to finish.
    let first = (ready / 30_000 + 1) * 30_000;
    let last = first + 30_000;
    let stop = last + 20_000;
    tokio::time::sleep(Duration::from_millis((stop - ready) as u64)).await;
    for c in &children {
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    for mut c in children {
        let _ = c.wait();
    }
    let rows: Vec<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT started_at, scheduled_for FROM {schema}.runs \
         WHERE trigger = 'schedule' AND scheduled_for BETWEEN {first} AND {last}"
    )))
    .fetch_all(&admin)
    .await
    .unwrap();
    ddl(format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let mut late: Vec<f64> = rows.iter().map(|(s, f)| (s - f) as f64).collect();
    let label =
        format!("{daemons} daemons on PostgreSQL, {jobs} jobs firing at once, {slots} slots each");
    r.add(
        "pg_fires_started",
        &format!("{label}: fires started of {}", 2 * jobs),
        late.len() as f64,
        "fires",
        &format!("{}", 2 * jobs),
    );
    r.add(
        "pg_lateness_p50_ms",
        &format!("{label}: lateness p50"),
        percentile(&mut late, 50.0),
        "ms",
        "",
    );
    r.add(
        "pg_lateness_p99_ms",
        &format!("{label}: lateness p99"),
        percentile(&mut late, 99.0),
        "ms",
        "<= 1000 ms",
    );
}

/// Learned polling on realistic durations: each server's snapshots take 3-10 minutes
/// (fixed per server, ±10 %), 20 s poll interval, in virtual time.
async fn bench_polling(r: &mut Report) {
    let start = Utc.with_ymd_and_hms(2026, 11, 1, 2, 30, 0).unwrap();
    let vclock = VirtualClock::new(start);
    let shared: clock::SharedClock = Arc::new(vclock.clone());
    let server = Simulator::start(
        SimOptions {
            token: TOKEN.into(),
            seed: 7,
            ..SimOptions::default()
        },
        shared.clone(),
    )
    .await
    .unwrap();
    let mut rng = fastrand::Rng::with_seed(42);
    let servers = 100u64;
    for i in 0..servers {
        let base = Duration::from_secs(180 + rng.u64(0..=420));
        server
            .sim
            .set_delay(ServerId::new(2000 + i), Delay::Around(base, 0.1));
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &server.base_url(),
        &jobs_toml(servers, 2000, |_| "0 30 2 * * *".into()),
        "",
    );
    let settings = Settings::load(&cfg).unwrap();
    let db = Database::open(&dir.path().join("history.db"))
        .await
        .unwrap();
    let token = settings.api.token().unwrap().clone();
    let client =
        vps_snapshot_agent::api::Client::new(&settings.api, &token, shared.clone()).unwrap();
    let runner = Runner::from_settings(&settings, db.clone(), client, shared);
    let (mut first, mut learned, mut late) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..15 {
        for job in &settings.jobs {
            let o = runner.run_job(job, RunTrigger::Manual, None).await.unwrap();
            assert_eq!(o.status, vps_snapshot_agent::db::RunStatus::Succeeded);
            let (id, _) = o.snapshot.unwrap();
            let run = db.run(o.run_id).await.unwrap().unwrap();
            let ready = server.sim.ready_at(id).unwrap();
            let done: (Option<vps_snapshot_agent::db::StoredTime>,) =
                sqlx::query_as("SELECT snapshot_completed_at FROM runs WHERE id = ?")
                    .bind(run.id)
                    .fetch_one(db.sqlite_pool().unwrap())
                    .await
                    .unwrap();
            let noticed = done.0.unwrap().0;
            late.push((noticed - ready).num_milliseconds() as f64 / 1000.0);
            if round < 3 {
                first.push(f64::from(o.polls))
            } else {
                learned.push(f64::from(o.polls))
            }
        }
        vclock.advance(Duration::from_secs(86_400));
    }
    r.add(
        "polls_fixed_median",
        "polls per run before any history (fixed 20 s), median",
        percentile(&mut first, 50.0),
        "polls",
        "",
    );
    r.add(
        "polls_learned_median",
        "polls per run with learned polling, median",
        percentile(&mut learned, 50.0),
        "polls",
        "<= 4",
    );
    r.add(
        "polls_learned_p95",
        "polls per run with learned polling, p95",
        percentile(&mut learned, 95.0),
        "polls",
        "",
    );
    let over = late.iter().filter(|d| **d > 20.0).count() as f64 * 100.0 / late.len() as f64;
    r.add(
        "completion_noticed_p99_s",
        "completion noticed after it happened, p99",
        percentile(&mut late, 99.0),
        "s",
        "<= 20 s (poll_interval)",
    );
    r.add(
        "completion_noticed_max_s",
        "completion noticed after it happened, max",
        percentile(&mut late, 100.0),
        "s",
        "",
    );
    r.add(
        "completion_noticed_late_percent",
        "runs noticed later than one poll interval",
        over,
        "%",
        "",
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; nothing to list.
    }
    let jobs = knob("BENCH_JOBS", 1000);
    let mut r = Report {
        rows: Vec::new(),
        json: serde_json::Map::new(),
    };
    println!(
        "vps-snapshot-agent benchmarks on {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::consts::ARCH
    );
    r.add(
        "binary_mib",
        "release binary size (`cargo build --release`)",
        shipped_size() as f64 / (1024.0 * 1024.0),
        "MiB",
        "<= 10 MiB",
    );
    if !skipped("run_once") {
        bench_run_once(&mut r, jobs, "").await;
    }
    if !skipped("floor") {
        bench_floor(&mut r).await;
    }
    if !skipped("peer") {
        let rounds = knob("BENCH_PEER_ROUNDS", 5) as usize;
        bench_side_by_side(&mut r, knob("BENCH_PEER_JOBS", 200), rounds).await;
    }
    if !skipped("polling") {
        bench_polling(&mut r).await;
    }
    if !skipped("lateness") {
        bench_lateness(&mut r).await;
    }
    if !skipped("pg") {
        bench_pg_lateness(&mut r).await;
    }
    if !skipped("idle") {
        bench_idle(&mut r, jobs, knob("BENCH_IDLE_SECS", 60), "").await;
    }
    if !skipped("scale") {
        // Where the ceiling is: many more jobs armed, and one big run-once.
        let armed = knob("BENCH_SCALE_JOBS", 10_000);
        bench_idle(&mut r, armed, knob("BENCH_IDLE_SECS", 60) / 3, "scale_").await;
        bench_run_once(&mut r, knob("BENCH_SCALE_RUN_JOBS", 5_000), "scale_").await;
    }
    if !skipped("history") {
        bench_history(&mut r, knob("BENCH_RUNS", 1_000_000)).await;
    }
    let out = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/bench-results.json"
    ));
    let mut f = std::fs::File::create(&out).unwrap();
    writeln!(
        f,
        "{}",
        serde_json::to_string_pretty(&serde_json::Value::Object(r.json)).unwrap()
    )
    .unwrap();
    println!("\nwritten to {}", out.display());
    println!("\n| metric | value | target |\n|---|---|---|");
    for (l, v, t) in &r.rows {
        println!("| {l} | {v} | {t} |");
    }
}
