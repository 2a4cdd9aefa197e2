//! `holistream worker`: the remote inference process for gateways started
//! with `serve --pool redis`. The command's edge only: its configuration
//! (`config::WorkerArgs`), the signal that stops it, and the threads of
//! `actors::remote::consumer` that do the work.

use tokio_util::sync::CancellationToken;

use crate::actors::remote::consumer::{ConsumerError, serve_jobs};
use crate::config::{ConfigError, WorkerArgs};

/// Errors of the worker command.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    #[error("cannot start the signal handler: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Runs the worker process until ctrl-c or SIGTERM.
pub fn run(args: &WorkerArgs) -> Result<(), WorkerError> {
    let (worker, model) = args.load()?;
    let shutdown = CancellationToken::new();
    // One runtime thread of its own: the signal task must run while this
    // thread blocks on the workers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(WorkerError::Runtime)?;
    let signal = runtime.spawn(crate::shutdown::cancel_on_signal(shutdown.clone()));
    let result = serve_jobs(&worker, &model, shutdown.clone());
    shutdown.cancel();
    let _ = runtime.block_on(signal);
    Ok(result?)
}
