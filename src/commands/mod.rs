//! One file per subcommand; [`dispatch`] is the only `match` over them.

mod check;
mod db;
mod demo;
mod hash_password;
mod history;
mod manpage;
pub(crate) mod output;
mod pin;
mod prune;
mod restore;
mod run;
mod run_once;
mod setup;
mod simulate;
mod snapshots;
mod status;

use std::process::ExitCode;

pub use run_once::run_jobs;

use crate::cli::{Cli, Command};
use crate::config::ConfigErrors;

/// sysexits' EX_CONFIG: systemd's `RestartPreventExitStatus=78` stops a restart loop.
pub const EXIT_CONFIG: u8 = 78;
pub const EXIT_USAGE: u8 = 2;

/// A command used wrongly (exit 2), such as `restore` off a terminal without `--yes`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = crate::config::resolve_path(cli.config.as_deref());
    match cli.command {
        Command::Run => Box::pin(run::run(&config)).await,
        Command::Status(args) => Box::pin(status::run(&config, args)).await,
        Command::RunOnce(args) => Box::pin(run_once::run(&config, args)).await,
        Command::Prune(args) => Box::pin(prune::run(&config, args)).await,
        Command::History(args) => Box::pin(history::run(&config, args)).await,
        Command::Snapshots(args) => Box::pin(snapshots::run(&config, args)).await,
        Command::Pin(args) => Box::pin(pin::run(&config, args, true)).await,
        Command::Unpin(args) => Box::pin(pin::run(&config, args, false)).await,
        Command::Restore(args) => Box::pin(restore::run(&config, args)).await,
        Command::Demo(args) => Box::pin(demo::run(args)).await,
        Command::Check(args) => Box::pin(check::run(&config, args)).await,
        Command::Simulate(args) => Box::pin(simulate::run(args)).await,
        Command::Db(command) => Box::pin(db::run(&config, command)).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "agent", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::HashPassword { cost } => hash_password::run(cost),
        Command::Manpage { dir } => {
            manpage::run(dir.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints `agent: <error>: <cause>: ...` (each cause once) and picks the exit code.
pub fn report(e: &anyhow::Error) -> ExitCode {
    eprintln!("agent: {}", crate::errors::line(e));
    let config = e.chain().any(|c| {
        c.downcast_ref::<ConfigErrors>().is_some()
            || c.downcast_ref::<setup::UnusableDatabase>().is_some()
            || c.downcast_ref::<crate::serve::listener::AccessError>()
                .is_some()
            || matches!(
                c.downcast_ref::<crate::api::ApiError>(),
                Some(crate::api::ApiError::Unauthorized)
            )
    });
    if config {
        ExitCode::from(EXIT_CONFIG)
    } else if e.chain().any(|c| c.downcast_ref::<UsageError>().is_some()) {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::FAILURE
    }
}
