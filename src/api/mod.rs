//! The VPS.org Snapshot API: wire types here, the client (`client.rs`), what an answer
//! means (`error.rs`) and how failures are retried (`retry.rs`).
//! `../shared/vps-snapshot-api.md` is the contract; [`crate::sim`] implements it for tests.

mod client;
mod error;
mod retry;

pub use crate::domain::SnapshotStatus;
use crate::domain::{ServerId, SnapshotId};
pub use client::Client;
pub use error::ApiError;

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
