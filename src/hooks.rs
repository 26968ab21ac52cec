//! The operator's hook commands (`before`, `after`, `on_failure`), run as real processes:
//! each in a process group of its own, so that a timeout kills it and every child it
//! left behind; with an environment that carries the run's facts and none of the agent's
//! secrets; with the last few KiB of its output kept (however much it prints).

use std::ffi::OsString;
use std::fmt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A hook's time limit when the configuration sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a hook's output is kept (its end).
pub const OUTPUT_TAIL: usize = 4096;
/// After a hook exits, how long a child it left in the background may keep its output
/// open before the agent stops reading (the child keeps running).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// One command: a shell string run with `sh -c`, or an argv array run as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Shell(s) => write!(f, "sh -c {s:?}"),
            Command::Argv(argv) => {
                let words: Vec<String> = argv
                    .iter()
                    .map(|w| {
                        let plain = !w.is_empty()
                            && w.chars()
                                .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c));
                        if plain { w.clone() } else { format!("{w:?}") }
                    })
                    .collect();
                f.write_str(&words.join(" "))
            }
        }
    }
}

impl Command {
    /// How the journal stores it: the config's own syntax (JSON of a string or an array).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Option<Command> {
        serde_json::from_str(s).ok()
    }

    fn program(&self) -> Option<(&str, &[String])> {
        match self {
            Command::Shell(s) => Some(("sh", std::slice::from_ref(s))),
            Command::Argv(argv) => argv.split_first().map(|(p, rest)| (p.as_str(), rest)),
        }
    }
}

/// When `after` runs: once the API accepted the create, or once the snapshot completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThawAfter {
    #[default]
    Created,
    Completed,
}

/// What a failed `before` means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BeforeFailure {
    /// No snapshot; the run fails and alerts.
    #[default]
    Skip,
    /// Take a crash-consistent snapshot anyway, recorded and alerted as such.
    SnapshotAnyway,
}

/// A job's hooks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub before: Vec<Command>,
    pub after: Vec<Command>,
    pub on_failure: Vec<Command>,
    /// Each command's limit; its process group is killed at the end of it.
    pub timeout: Duration,
    pub thaw_after: ThawAfter,
    pub before_failure: BeforeFailure,
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        self.before.is_empty() && self.after.is_empty() && self.on_failure.is_empty()
    }
}

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Before,
    After,
    OnFailure,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::After => "after",
            Phase::OnFailure => "on_failure",
        }
    }
}

/// One hook a run ran, for its alert.
#[derive(Debug, Clone)]
pub struct Ran {
    pub phase: Phase,
    pub command: Command,
    pub finished: Finished,
}

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Exited(i32),
    Signalled(i32),
    /// Killed, with its process group, at the end of its timeout.
    TimedOut(Duration),
    CouldNotStart(String),
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Exited(c) => write!(f, "exit {c}"),
            Status::Signalled(s) => write!(f, "killed by signal {s}"),
            Status::TimedOut(t) => write!(
                f,
                "timed out after {}; its process group was killed",
                crate::human::span(*t)
            ),
            Status::CouldNotStart(e) => write!(f, "could not start: {e}"),
        }
    }
}

/// What one hook did.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: Status,
    /// The end of what it printed (stdout and stderr together), secrets scrubbed.
    pub output: String,
    /// How many bytes it printed in all.
    pub printed: u64,
    pub took: Duration,
}

impl Finished {
    pub fn ok(&self) -> bool {
        self.status == Status::Exited(0)
    }

    /// One line for the journal and messages, then the output's tail.
    pub fn report(&self) -> String {
        let mut s = format!("{} after {}", self.status, crate::human::Secs(self.took));
        if self.printed > self.output.len() as u64 {
            s.push_str(&format!(
                "; printed {} bytes, the last {} kept",
                self.printed,
                self.output.len()
            ));
        }
        if !self.output.trim().is_empty() {
            s.push_str(":\n");
            s.push_str(self.output.trim_end());
        }
        s
    }
}

/// The agent's environment less what a hook must not see: the agent's own settings
/// (`AGENT_*`), its database password (`PGPASSWORD`, which the agent reads for itself),
/// the systemd credentials directory, and anything whose value holds a secret the agent
/// knows ([`crate::secrets`]: the token, the SMTP and database passwords, its receivers'
/// URLs).
fn inherited() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, v)| {
            let name = k.to_string_lossy();
            !name.starts_with("AGENT_")
                && name != "PGPASSWORD"
                && name != "CREDENTIALS_DIRECTORY"
                && !crate::secrets::contains(v.as_encoded_bytes())
        })
        .collect()
}

/// The kept end of a stream of output.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    total: u64,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > 2 * OUTPUT_TAIL {
            let cut = self.bytes.len() - OUTPUT_TAIL;
            self.bytes.drain(..cut);
        }
    }

    /// The last [`OUTPUT_TAIL`] bytes, scrubbed before they are cut: a secret wholly in
    /// what is kept is replaced whole, and one cut at the start of what is kept (the
    /// stream was cut there) counts from [`crate::secrets::FRAGMENT`] characters on.
    fn text(&self) -> String {
        let kept = crate::secrets::scrub_cut(&String::from_utf8_lossy(&self.bytes));
        let mut start = kept.len().saturating_sub(OUTPUT_TAIL);
        while !kept.is_char_boundary(start) {
            start += 1;
        }
        kept[start..].to_string()
    }
}

async fn drain(mut from: impl AsyncRead + Unpin, tail: Arc<Mutex<Tail>>) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if let Ok(mut t) = tail.lock() {
            t.push(&buf[..n]);
        }
    }
}

fn status_of(s: ExitStatus) -> Status {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => Status::Exited(c),
        (None, Some(sig)) => Status::Signalled(sig),
        (None, None) => Status::Exited(-1),
    }
}

/// Kills the process group `pgid` (the hook and every child it did not move out).
fn kill_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: killpg only sends a signal; a group that is gone gives ESRCH.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

/// Runs `command` with `env` added to the inherited environment, for at most `timeout`.
pub async fn run(command: &Command, env: &[(&str, String)], timeout: Duration) -> Finished {
    let started = Instant::now();
    let could_not = |e: String| Finished {
        status: Status::CouldNotStart(e),
        output: String::new(),
        printed: 0,
        took: started.elapsed(),
    };
    let Some((program, args)) = command.program() else {
        return could_not("the command is empty".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    if matches!(command, Command::Shell(_)) {
        cmd.arg("-c");
    }
    cmd.args(args)
        .env_clear()
        .envs(inherited())
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return could_not(format!("{program}: {e}")),
    };
    let pgid = child.id();
    let tail = Arc::new(Mutex::new(Tail::default()));
    let mut readers = tokio::task::JoinSet::new();
    if let Some(out) = child.stdout.take() {
        readers.spawn(drain(out, tail.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.spawn(drain(err, tail.clone()));
    }
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(s)) => status_of(s),
        Ok(Err(e)) => Status::CouldNotStart(format!("waiting for {program}: {e}")),
        Err(_) => {
            if let Some(pgid) = pgid {
                kill_group(pgid);
            }
            let _ = child.wait().await;
            Status::TimedOut(timeout)
        }
    };
    let _ = tokio::time::timeout(OUTPUT_GRACE, async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    readers.abort_all();
    let (output, printed) = match tail.lock() {
        Ok(t) => (t.text(), t.total),
        Err(_) => (String::new(), 0),
    };
    Finished {
        status,
        output,
        printed,
        took: started.elapsed(),
    }
}

/// Whether `command` can be started by this user: its program found (on `PATH` unless
/// it names a path) and executable; a shell string must also parse (`sh -n`).
pub async fn check(command: &Command) -> Result<(), String> {
    let Some((program, _)) = command.program() else {
        return Err("the command is empty".into());
    };
    let path = find_program(program)?;
    if let Command::Shell(s) = command {
        let out = tokio::process::Command::new(&path)
            .args(["-n", "-c", s])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("cannot run sh -n to check it: {e}"))?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            return Err(format!("sh cannot parse it: {}", why.trim()));
        }
        // Its first word, when it is a plain command name (not a builtin, a variable or a
        // path), is looked for as an argv program is.
        if let Some(first) = s.split_whitespace().next().filter(|w| plain_command(w)) {
            find_program(first)?;
        }
    }
    Ok(())
}

/// A word the shell looks up on `PATH`: letters, digits, `-`, `_`, `.`, and not one of
/// its keywords or builtins.
fn plain_command(word: &str) -> bool {
    const SHELL: &[&str] = &[
        "!", ".", ":", "[", "alias", "break", "case", "cd", "command", "continue", "eval", "exec",
        "exit", "export", "false", "for", "getopts", "hash", "if", "local", "printf", "pwd",
        "read", "readonly", "return", "set", "shift", "source", "test", "times", "trap", "true",
        "type", "ulimit", "umask", "unalias", "unset", "until", "wait", "while", "echo", "{", "(",
    ];
    !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !SHELL.contains(&word)
}

fn find_program(program: &str) -> Result<std::path::PathBuf, String> {
    let candidates: Vec<std::path::PathBuf> = if program.contains('/') {
        vec![program.into()]
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .collect()
    };
    let found = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
        if program.contains('/') {
            format!("{program} does not exist")
        } else {
            format!("{program} is not found on PATH")
        }
    })?;
    if executable(found) {
        Ok(found.clone())
    } else {
        Err(format!(
            "{} is not executable by this user",
            found.display()
        ))
    }
}

fn executable(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access only reads the NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_end_of_long_output() {
        let mut t = Tail::default();
        for _ in 0..1000 {
            t.push(&[b'a'; 1000]);
        }
        t.push(b"the end");
        assert_eq!(t.total, 1_000_007);
        let text = t.text();
        assert_eq!(text.len(), OUTPUT_TAIL);
        assert!(text.ends_with("the end"));
    }

    #[test]
    fn commands_show_as_an_operator_wrote_them_and_round_trip_through_json() {
        let argv = Command::Argv(vec!["fsfreeze".into(), "-f".into(), "/srv data".into()]);
        assert_eq!(argv.to_string(), r#"fsfreeze -f "/srv data""#);
        let shell = Command::Shell("sync && echo ok".into());
        assert_eq!(shell.to_string(), r#"sh -c "sync && echo ok""#);
        for c in [argv, shell] {
            assert_eq!(Command::from_json(&c.to_json()), Some(c));
        }
    }
}
