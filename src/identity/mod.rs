//! Who this agent is: the box's name (in alerts, mails, the status page, and each
//! process's owner identity), the `User-Agent` its HTTP requests carry, the typed
//! identities of agents and owners ([`AgentId`], [`Owner`]) that the database records, and
//! whether the process behind one still lives ([`liveness`]: `/proc` on this host, the
//! runs in flight in this process).

mod liveness;
mod owner;

pub use liveness::{InFlight, fail_liveness_reads, liveness, may_be_alive, run_may_be_alive};
pub use owner::{AgentId, BadIdentity, Owner};

/// The box's host name, as the operator knows it (read once per call: a rename of the
/// host shows in what is said next).
pub fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// The `User-Agent` of every HTTP request: the API's and the receivers'.
pub const USER_AGENT: &str = concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"));

/// The `User-Agent` header of every mail: the agent, its version and the box it runs on.
pub fn mail_user_agent(host: &str) -> String {
    format!(
        "{} {} on {host}",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION")
    )
}

/// The host of the process `recorded` names (an agent or an owner); for a record that
/// does not parse (an older agent's, say), what comes before its first `/`.
pub fn host_of(recorded: &str) -> String {
    AgentId::of_recorded(recorded).map_or_else(
        |_| recorded.split('/').next().unwrap_or_default().to_string(),
        |a| a.host().to_string(),
    )
}
