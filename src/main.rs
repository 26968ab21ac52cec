use std::process::ExitCode;

use clap::Parser;
use vps_snapshot_agent::cli::{Cli, Command};
use vps_snapshot_agent::{commands, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::History(_)
            | Command::Status(_)
            | Command::Snapshots(_)
            | Command::Completions { .. }
            | Command::Manpage { .. }
            | Command::Check(_)
    ) {
        // Pure output: `agent history | head` ends quietly, like any Unix filter.
        // SAFETY: setting a signal disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // The demo prints its own story; its logs would only repeat it.
    let quiet_by_default = matches!(cli.command, Command::Demo(_));
    let live = matches!(&cli.command, Command::RunOnce(a) if !a.dry_run);
    logging::init(
        cli.log_format,
        cli.verbose,
        cli.quiet + u8::from(quiet_by_default),
        live,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => commands::report(&e),
    }
}
