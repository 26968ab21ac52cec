//! Unix signals, in one place: SIGHUP reloads, SIGTERM and SIGINT stop.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::Control;

/// Turns SIGHUP into [`Control::Reload`] and SIGTERM/SIGINT into [`Control::Stop`]; it
/// keeps listening after the first stop, so a second one can cut the drain short.
pub fn control() -> anyhow::Result<mpsc::UnboundedReceiver<Control>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            let c = tokio::select! {
                _ = hup.recv() => Control::Reload,
                _ = term.recv() => Control::Stop,
                _ = int.recv() => Control::Stop,
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
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
