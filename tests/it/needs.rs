//! What some tests need from the machine beyond Rust: a PostgreSQL (with TLS for the
//! `sslmode` test), root for `unshare` (a second host name), Chromium, libfaketime. In CI
//! every one is required (`AGENT_TEST_REQUIRE=all`, or a comma-separated list of
//! `postgres`, `postgres-tls`, `unshare`, `browser`, `faketime`): a test whose need is
//! missing fails. Elsewhere it skips what it cannot do, and the suite's last line (written
//! when the test process exits) says how many tests skipped and why — never in silence.

use std::io::Write as _;
use std::sync::{Mutex, Once};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Postgres,
    PostgresTls,
    Unshare,
    Browser,
    Faketime,
}

impl Need {
    fn name(self) -> &'static str {
        match self {
            Need::Postgres => "postgres",
            Need::PostgresTls => "postgres-tls",
            Need::Unshare => "unshare",
            Need::Browser => "browser",
            Need::Faketime => "faketime",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Need::Postgres => {
                "need PostgreSQL (eval \"$(scripts/test-postgres)\" sets AGENT_TEST_POSTGRES_URL)"
            }
            Need::PostgresTls => "need TLS on the test PostgreSQL (Debian's cluster has it)",
            Need::Unshare => "need root for `unshare -u` (another host name for one agent)",
            Need::Browser => "need Chromium (apt-get install chromium)",
            Need::Faketime => "need libfaketime (apt-get install faketime)",
        }
    }

    /// Whether this run requires it (`AGENT_TEST_REQUIRE`).
    pub fn required(self) -> bool {
        std::env::var("AGENT_TEST_REQUIRE").is_ok_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|w| w == "all" || w == self.name())
        })
    }
}

static SKIPPED: Mutex<Vec<(Need, String)>> = Mutex::new(Vec::new());

/// The current test lacks `need`: fails it when required, else records the skip (the
/// caller then returns, or leaves out the part that needs it).
pub fn missing(need: Need) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    assert!(
        !need.required(),
        "{test}: AGENT_TEST_REQUIRE asks for {} but it is missing: tests {}",
        need.name(),
        need.what()
    );
    SKIPPED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((need, test));
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| {
        // SAFETY: registers a function without arguments to run at exit.
        unsafe { libc::atexit(summary) };
    });
}

/// At exit, after the harness's own result line: how many tests skipped, and why.
extern "C" fn summary() {
    let skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    let mut line = format!(
        "\n{} tests skipped part or all of their subject:",
        skipped.len()
    );
    for need in [
        Need::Postgres,
        Need::PostgresTls,
        Need::Unshare,
        Need::Browser,
        Need::Faketime,
    ] {
        let n = skipped.iter().filter(|(n, _)| *n == need).count();
        if n > 0 {
            line.push_str(&format!(" {n} {};", need.what()));
        }
    }
    line.pop();
    // Straight to the terminal: the harness has finished (and captured) by now.
    let _ = writeln!(std::io::stderr(), "{line}");
}
