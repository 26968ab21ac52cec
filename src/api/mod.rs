//! The VPS.org Snapshot API: wire types and a client with retries and pagination.
//! `../shared/vps-snapshot-api.md` is the contract; [`crate::sim`] implements it for tests.

mod client;

pub use crate::domain::SnapshotStatus;
use crate::domain::{ServerId, SnapshotId};
pub use client::{Client, RetryPolicy};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRef {
    pub id: ServerId,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub server: ServerRef,
    pub name: String,
    pub status: SnapshotStatus,
    #[serde(default)]
    pub size_mb: Option<u64>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub description: Option<String>,
}

/// One page of `GET /snapshots/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotPage {
    #[serde(default)]
    pub count: Option<u64>,
    pub results: Vec<Snapshot>,
    #[serde(default)]
    pub next: Option<String>,
    #[serde(default)]
    pub previous: Option<String>,
}

/// `POST /snapshots/{id}/restore/`'s answer; every field is informational.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreResponse {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// Everything that can go wrong talking to the API. Bodies are shown, never parsed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "the API rejected the token (401 Unauthorized); check api.token_file or AGENT_API__TOKEN"
    )]
    Unauthorized,
    #[error("{what}: not found (404): {body}")]
    NotFound { what: String, body: String },
    #[error("the API refused {what} (400 Bad Request): {body}")]
    BadRequest { what: String, body: String },
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: rate limited (429) after {attempts} attempts")]
    RateLimited { what: String, attempts: u32 },
    #[error("{what}: server error {status} after {attempts} attempts: {body}")]
    Server {
        what: String,
        status: u16,
        attempts: u32,
        body: String,
    },
    #[error("{what}: {kind} after {attempts} attempts")]
    Transport {
        what: String,
        kind: String,
        attempts: u32,
    },
    #[error("{what}: malformed response: {detail}")]
    Decode { what: String, detail: String },
    /// The request may or may not have been carried out (a create or restore whose
    /// response was lost). The caller must find out before trying again.
    #[error("{what}: outcome unknown ({reason})")]
    OutcomeUnknown { what: String, reason: String },
}

impl ApiError {
    /// Worth trying again later (the API or the network, not the request, was at fault).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::Transport { .. }
                | Self::OutcomeUnknown { .. }
        )
    }
}
