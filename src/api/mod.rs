//! The VPS.org Snapshot API: wire types here, the client (`client.rs`), what an answer
//! means (`error.rs`) and how failures are retried (`retry.rs`).
//! `../shared/vps-snapshot-api.md` is the contract; [`crate::sim`] implements it for tests.

mod client;
mod error;
mod listing;
mod retry;

use crate::domain::ServerId;
pub use crate::domain::{ServerRef, Snapshot, SnapshotStatus};
pub use client::Client;
pub use error::ApiError;
pub use listing::Listing;

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One page of `GET /snapshots/`. Its items are read one by one ([`Listing`]): one that
/// cannot be read is an anomaly of the listing, not a listing that cannot be read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotPage {
    #[serde(default)]
    pub count: Option<u64>,
    pub results: Vec<serde_json::Value>,
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

/// A server's snapshots and when they were listed.
pub type Listed = (DateTime<Utc>, Vec<Snapshot>);

/// Each server's snapshots as this process last listed them (for the status page).
static LISTED: LazyLock<Mutex<HashMap<ServerId, Listed>>> = LazyLock::new(Default::default);

fn listed(server: ServerId, listing: &[Snapshot], at: DateTime<Utc>) {
    let on = listing
        .iter()
        .filter(|s| s.server.id == server)
        .cloned()
        .collect();
    LISTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(server, (at, on));
}

/// The last listing of each server this process has listed.
pub fn last_listings() -> HashMap<ServerId, Listed> {
    LISTED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
