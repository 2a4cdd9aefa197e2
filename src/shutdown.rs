//! The one way the server stops: a signal (ctrl-c or SIGTERM) cancels the
//! server's `CancellationToken`; everything else selects on that token.
//!
//! Plumbing below every layer: imports nothing from the crate.

use tokio_util::sync::CancellationToken;

/// Resolves on the first ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            // Without a handler we could never stop gracefully; wait for the
            // other signal instead of stopping right away.
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        _ = ctrl_c => tracing::info!("ctrl-c received, shutting down"),
        _ = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// Cancels `token` on the first signal, or returns once the token was
/// cancelled some other way.
pub async fn cancel_on_signal(token: CancellationToken) {
    tokio::select! {
        _ = shutdown_signal() => token.cancel(),
        _ = token.cancelled() => {}
    }
}
