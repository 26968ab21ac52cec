//! `agent manpage`: agent(1) with the sections clap does not write (exit status,
//! environment, files, examples), and with `--dir` one page per subcommand, so that every
//! `agent-run(1)` the main page refers to is shipped.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_mangen::Man;

use crate::cli::Cli;

const EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success.
.TP
\fB1\fR
A job (or the command's work) failed.
.TP
\fB2\fR
Bad usage: an unknown option or job name, \fBrestore\fR off a terminal without \fB\-\-yes\fR.
.TP
\fB78\fR
The setup is unusable: an invalid configuration or one without jobs, a database that
cannot be opened, or a token the API rejects. The systemd unit does not restart on it.
.TP
\fB130\fR, \fB143\fR
\fBrun\-once\fR stopped by SIGINT or SIGTERM; runs still in flight are finished by the
next start.
.PP
\fBstatus \-\-check\fR answers as monitoring plugins do: 0 OK, 1 WARNING, 2 CRITICAL.
.SH ENVIRONMENT
.TP
\fBAGENT_CONFIG\fR
The configuration file when \fB\-\-config\fR is not given.
.TP
\fBAGENT_\fR\fIKEY\fR\fB__\fR\fIKEY\fR
Overrides a configuration key, e.g. \fBAGENT_DEFAULTS__TIMEZONE=Europe/Berlin\fR.
.TP
\fBAGENT_API__TOKEN\fR, \fBAGENT_EMAIL__PASSWORD\fR
The API token and the SMTP password (taken before the file and the credentials).
.TP
\fBCREDENTIALS_DIRECTORY\fR
Set by systemd: the credentials \fBapi\-token\fR, \fBsmtp\-password\fR, \fBdatabase\-password\fR and \fBmetrics\-tls\-key\fR are read from it.
.TP
\fBRUST_LOG\fR
Log filters, e.g. \fBvps_snapshot_agent=debug\fR.
.TP
\fBNO_COLOR\fR
When set and not empty, logs are never coloured.
.SH FILES
.TP
\fI/etc/vps\-snapshot\-agent/config.toml\fR
The configuration (commented example: \fI/usr/share/doc/vps\-snapshot\-agent/examples/config.example.toml\fR).
.TP
\fI/etc/vps\-snapshot\-agent/token\fR
The API token, loaded by the unit as the credential \fBapi\-token\fR.
.TP
\fI/var/lib/vps\-snapshot\-agent/history.db\fR
The run history and journal (SQLite), and the alert outbox.
.SH EXAMPLES
.TP
\fBagent check \-\-send\-test\-alert\fR
Validate the configuration, the token and every alert channel.
.TP
\fBagent run\-once \-\-job web\-01\-nightly\fR
Take one job's snapshot now and rotate.
.TP
\fBagent status \-\-check\fR
One line and an exit status for cron or a monitoring agent.
.TP
\fBagent snapshots \-\-server 12345\fR
A server's snapshots, whose each is, and what the policy keeps.
.TP
\fBagent restore 802\fR
Restore the server of snapshot 802 (asks you to type its id).
.TP
\fBagent prune \-\-dry\-run\fR
After lowering a job's keep_* counts: what its policy would delete now, and why, without a new snapshot (drop \-\-dry\-run to delete).
.TP
\fBagent history \-\-since 2d \-\-status failed\fR
The runs that failed in the last two days, newest first.
.TP
\fBenabled = false\fR, \fBinclude = ["jobs.d/*.toml"]\fR
In the configuration: switch a job off without deleting it; read more [[jobs]] from a conf.d\-style directory.
"#;

/// agent(1) to `w`.
fn main_page(w: &mut dyn Write) -> std::io::Result<()> {
    let man = Man::new(Cli::command());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;
    w.write_all(EXTRA.as_bytes())?;
    man.render_version_section(w)
}

/// agent(1) to standard output, or with `dir` every page into it.
pub fn run(dir: Option<&Path>) -> anyhow::Result<()> {
    let Some(dir) = dir else {
        return Ok(main_page(&mut std::io::stdout().lock())?);
    };
    std::fs::create_dir_all(dir)?;
    main_page(&mut std::fs::File::create(dir.join("agent.1"))?)?;
    let mut cmd = Cli::command();
    cmd.build();
    for sub in cmd.get_subcommands() {
        let name = sub.get_name();
        let page = sub
            .clone()
            .display_name(format!("agent-{name}"))
            .bin_name(format!("agent {name}"))
            .version(env!("CARGO_PKG_VERSION"));
        let mut file = std::fs::File::create(dir.join(format!("agent-{name}.1")))?;
        Man::new(page).render(&mut file)?;
    }
    Ok(())
}
