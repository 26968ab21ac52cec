//! `agent hash-password`: a bcrypt hash for `[metrics] basic_auth_users`, so that the
//! config holds a hash and never the password.

use std::io::{BufRead as _, IsTerminal as _};
use std::process::ExitCode;

use anyhow::Context as _;

pub fn run(cost: u32) -> anyhow::Result<ExitCode> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        eprint!("password (not shown): ");
        let _quiet = NoEcho::on_stdin();
        let line = read_line()?;
        eprintln!();
        line
    } else {
        read_line()?
    };
    if password.is_empty() {
        anyhow::bail!("no password on standard input");
    }
    if password.len() > 72 {
        anyhow::bail!(
            "the password is {} bytes long; bcrypt reads only the first 72, so the rest would \
             not count: use one of 72 bytes or fewer",
            password.len()
        );
    }
    let hash = bcrypt::non_truncating_hash(password.as_bytes(), cost).context("bcrypt")?;
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
}

/// One line of standard input, without its line ending.
fn read_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// The terminal's echo turned off while it lives.
struct NoEcho(Option<libc::termios>);

impl NoEcho {
    fn on_stdin() -> Self {
        // SAFETY: tcgetattr writes only the struct it is given; zeroed is a valid termios.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return Self(None);
        }
        let mut quiet = t;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: sets the attributes of standard input from a struct tcgetattr filled.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &quiet) };
        Self(Some(t))
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the attributes read in `on_stdin`.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
        }
    }
}
