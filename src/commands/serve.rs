//! `holistream serve`: loads the configuration, binds the listener and
//! serves (`http::run`) until ctrl-c or SIGTERM. The command's edge only:
//! what it serves is `http`'s.

use std::net::TcpListener;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::ServeArgs;
use crate::shutdown::cancel_on_signal;

/// `holistream serve`: loads the configuration, binds the listener and serves
/// until ctrl-c or SIGTERM.
pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = args.load()?;
    let listener = TcpListener::bind((config.server.host.as_str(), config.server.port))
        .with_context(|| format!("binding {}:{}", config.server.host, config.server.port))?;
    actix_web::rt::System::new().block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = actix_web::rt::spawn(cancel_on_signal(shutdown.clone()));
        let served = crate::http::run(listener, config, shutdown.clone()).await;
        shutdown.cancel();
        let _ = signals.await;
        served
    })
}
