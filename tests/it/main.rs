//! Integration tests: one binary, a module per feature (link once, run everything).

mod cli;
mod client;
mod config;
mod daemon;
mod helpers;
mod job;
mod mail;
mod retention_props;
