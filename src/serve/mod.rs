//! What the agent serves to people and scrapers: the read-only HTTP [`listener`] (with its
//! TLS and basic-auth [`access`] rules), the status [`page`], and the Prometheus
//! [`metrics`] (counted in process, read from the database, also written as a textfile).

pub mod access;
pub mod listener;
pub mod metrics;
pub mod page;
