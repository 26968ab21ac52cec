use std::process::ExitCode;

use anyhow::Context;

use crate::cli::SimulateArgs;
use crate::sim::{Delay, SimOptions, Simulator};

pub async fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let opts = SimOptions {
        token: args.token.clone(),
        delay: Delay::Fixed(args.completion),
        page_size: args.page_size,
        servers: None,
        ..SimOptions::default()
    };
    let server = Simulator::new(opts, crate::clock::system())
        .serve(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!(
        "Snapshot API simulator listening: base_url = \"{}\"",
        server.base_url()
    );
    println!(
        "Accepts the token {:?}; every server id exists; snapshots complete after {}.",
        args.token,
        crate::human::span(args.completion)
    );
    println!(
        "Try it: AGENT_API__BASE_URL={} AGENT_API__TOKEN={} agent check   (or `cargo run -- check` from the source tree)",
        server.base_url(),
        args.token
    );
    crate::daemon::signals::shutdown().await;
    Ok(ExitCode::SUCCESS)
}
