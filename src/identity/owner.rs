//! The identities the database records: an agent is a process (`host/pid/start`, the
//! start time telling a reused pid apart), an owner is one holder in it
//! (`host/pid/start/nonce`): a run, a lock. Parsed and written here only.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// An agent: one process on one host, `host/pid/start`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AgentId {
    host: String,
    pid: u32,
    start: u64,
}

/// A holder of runs, locks and claims inside an agent: `host/pid/start/nonce`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    agent: AgentId,
    text: String,
}

/// A recorded identity that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an agent identity (host/pid/start, then /nonce for an owner)")]
pub struct BadIdentity(String);

impl AgentId {
    /// Process `pid` on this host, started at `start` (clock ticks since boot).
    pub(super) fn on_this_host(pid: u32, start: u64) -> Self {
        Self {
            // A `/` in the host name would split the identity.
            host: super::host_name().replace('/', "_"),
            pid,
            start,
        }
    }

    /// This process.
    pub fn this() -> &'static AgentId {
        static THIS: OnceLock<AgentId> = OnceLock::new();
        THIS.get_or_init(|| AgentId::on_this_host(std::process::id(), super::liveness::own_start()))
    }

    /// The agent that `recorded` names: an agent id, or an owner's agent.
    pub fn of_recorded(recorded: &str) -> Result<AgentId, BadIdentity> {
        recorded
            .parse::<AgentId>()
            .or_else(|_| recorded.parse::<Owner>().map(|o| o.agent))
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn start(&self) -> u64 {
        self.start
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.host, self.pid, self.start)
    }
}

impl FromStr for AgentId {
    type Err = BadIdentity;

    fn from_str(s: &str) -> Result<Self, BadIdentity> {
        let bad = || BadIdentity(s.to_string());
        let mut parts = s.split('/');
        let (Some(host), Some(pid), Some(start), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(Self {
            host: host.to_string(),
            pid: pid.parse().map_err(|_| bad())?,
            start: start.parse().map_err(|_| bad())?,
        })
    }
}

impl Owner {
    fn new(agent: AgentId, nonce: u32) -> Self {
        let text = format!("{agent}/{nonce:08x}");
        Self { agent, text }
    }

    /// This process, distinguished from other owners in it by a random nonce.
    pub fn current() -> Self {
        Self::new(AgentId::this().clone(), fastrand::u32(..))
    }

    /// Process `pid` on this host: it is alive while that process is. (The fault explorer
    /// gives each agent it simulates in one test process a helper process of its own.)
    pub fn of_process(pid: u32) -> Self {
        if pid == std::process::id() {
            return Self::current();
        }
        let start = super::liveness::process_start(pid)
            .ok()
            .flatten()
            .unwrap_or(0);
        Self::new(AgentId::on_this_host(pid, start), fastrand::u32(..))
    }

    /// The agent (process) it belongs to.
    pub fn agent(&self) -> &AgentId {
        &self.agent
    }

    /// The host it runs on.
    pub fn host(&self) -> &str {
        &self.agent.host
    }

    /// As recorded: `host/pid/start/nonce`.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Owner {
    type Err = BadIdentity;

    fn from_str(s: &str) -> Result<Self, BadIdentity> {
        let bad = || BadIdentity(s.to_string());
        let (agent, nonce) = s.rsplit_once('/').ok_or_else(bad)?;
        let agent: AgentId = agent.parse().map_err(|_| bad())?;
        // Any nonce will do (it only tells owners in one process apart): an owner recorded
        // with another kind of nonce is still its process's, alive while the process is.
        if nonce.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            agent,
            text: s.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_reads_back_as_written_and_names_its_agent() {
        let o = Owner::current();
        let back: Owner = o.to_string().parse().expect("an owner parses");
        assert_eq!(back, o);
        assert_eq!(back.agent(), AgentId::this());
        assert_eq!(
            AgentId::of_recorded(o.as_str()),
            Ok(AgentId::this().clone())
        );
        let a: AgentId = AgentId::this()
            .to_string()
            .parse()
            .expect("an agent parses");
        assert_eq!(&a, AgentId::this());
    }

    #[test]
    fn what_is_not_an_identity_is_refused_by_name() {
        for bad in [
            "",
            "host",
            "host/12",
            "host/x/1",
            "host/1/2/3/4",
            "host/1/2/",
            "/1/",
        ] {
            let err = AgentId::of_recorded(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let o: Owner = "box-1/4242/77/0000abcd".parse().expect("parses");
        assert_eq!(
            (o.host(), o.agent().pid(), o.agent().start()),
            ("box-1", 4242, 77)
        );
    }
}
