//! The agent's mark on the snapshots it makes: `agent-mark:v1:` and 32 hex digits in the
//! description, an HMAC-SHA256 of the snapshot's server and name keyed with the API token.
//! Only a holder of the token can write one that verifies; a mark copied onto another name
//! or server does not verify; and the mark reveals nothing of the token.

use std::fmt::Write as _;

use aws_lc_rs::hmac;

use crate::domain::{RunId, ServerId};

const MARK: &str = "agent-mark:v1:";
const TAG_HEX: usize = 32;

/// Writes and checks the agent's mark.
pub struct Marker {
    key: hmac::Key,
}

impl std::fmt::Debug for Marker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Marker([redacted])")
    }
}

impl Marker {
    /// A marker keyed with `secret` (the API token).
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    fn tag(&self, server_id: ServerId, name: &str) -> String {
        let data = format!("vps-snapshot-agent mark v1\n{server_id}\n{name}");
        let tag = hmac::sign(&self.key, data.as_bytes());
        let mut hex = String::with_capacity(TAG_HEX);
        for b in &tag.as_ref()[..TAG_HEX / 2] {
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }

    /// The description a new snapshot is created with: what made it, and the mark.
    pub fn description(&self, job: &str, server_id: ServerId, run_id: RunId, name: &str) -> String {
        format!(
            "Made by vps-snapshot-agent (job {job}, run {run_id}). {MARK}{}",
            self.tag(server_id, name)
        )
    }

    /// Whether `description` carries a valid mark for the snapshot `name` on `server_id`.
    pub fn verifies(&self, server_id: ServerId, name: &str, description: Option<&str>) -> bool {
        self.check(server_id, name, description) == Mark::Valid
    }

    /// What a description says of the mark for the snapshot `name` on `server_id`.
    pub fn check(&self, server_id: ServerId, name: &str, description: Option<&str>) -> Mark {
        let Some(at) = description.and_then(|d| d.find(MARK).map(|i| &d[i + MARK.len()..])) else {
            return Mark::Absent;
        };
        let tag: String = at.chars().take(TAG_HEX).collect();
        if tag == self.tag(server_id, name) {
            Mark::Valid
        } else {
            Mark::Invalid
        }
    }
}

/// What a description says of the mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Absent,
    Valid,
    Invalid,
}
