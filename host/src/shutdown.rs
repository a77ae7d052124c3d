//! The one stop signal: SIGINT (Ctrl-C) or SIGTERM. Tests pass their own future instead.

use std::future::Future;

/// Installs the SIGINT and SIGTERM handlers now, and returns a future that resolves on the first
/// of them. Install before announcing readiness: a signal that arrives earlier would otherwise
/// kill the process with the default action instead of stopping it cleanly.
#[cfg(unix)]
pub fn install() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "stop requested"),
            _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "stop requested"),
        }
    })
}

/// Installs the Ctrl-C handler now, and returns a future that resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn install() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!(signal = "ctrl-c", "stop requested");
        }
    })
}
