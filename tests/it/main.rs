//! Integration tests: one binary, a module per feature (link once, run everything).

mod agents;
mod cli;
mod client;
mod config;
mod daemon;
mod data_safety;
mod db_copy;
mod edges;
mod explore;
mod glance;
mod helpers;
mod hooks;
mod invariants;
mod job;
mod mail;
mod needs;
mod newcomer;
mod on_postgres;
mod pg_faults;
mod receiver;
mod reliability;
mod restore;
mod retention_props;
mod scene;
mod store;
mod watch;
