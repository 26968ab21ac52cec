//! Unix signals, in one place: SIGHUP reloads, SIGTERM and SIGINT stop — the daemon,
//! `run-once` (which exits 143 or 130 after one) and `simulate` all listen here.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::Control;

/// SIGTERM and SIGINT, each time one comes, as the exit code they ask for (143, 130).
/// Keeps listening after the first, so a second one can cut a drain short.
pub fn stops() -> anyhow::Result<mpsc::UnboundedReceiver<u8>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            let code = tokio::select! {
                _ = term.recv() => 143,
                _ = int.recv() => 130,
            };
            if tx.send(code).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Turns SIGHUP into [`Control::Reload`] and SIGTERM/SIGINT into [`Control::Stop`], each
/// time one comes.
pub fn control() -> anyhow::Result<mpsc::UnboundedReceiver<Control>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut hup = signal(SignalKind::hangup())?;
    let mut stops = stops()?;
    tokio::spawn(async move {
        loop {
            let c = tokio::select! {
                _ = hup.recv() => Control::Reload,
                Some(_) = stops.recv() => Control::Stop,
            };
            if tx.send(c).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown() {
    match stops() {
        Ok(mut stops) => {
            stops.recv().await;
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
