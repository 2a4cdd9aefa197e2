//! Waiting for a condition: the one polling loop of the tests and the bench
//! ([`poll_within`]), its panicking forms ([`eventually`], [`wait_for`],
//! [`eventually_some`]) and, for code that has no async runtime at hand
//! (drops, process start-up, the bench's main thread), its blocking twin
//! ([`poll_blocking_within`], [`wait_blocking`]).
//!
//! The async forms never block the runtime: a test's WebSocket clients or
//! browser session run on the same thread (`actix_web::test` is
//! single-threaded) and must go on sending, reading and answering pings.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is probed unless a caller says otherwise.
pub const EVERY: Duration = Duration::from_millis(20);

/// Probes `probe` every `every` until it gives `Some`; that value, or `None`
/// once `timeout` has passed without one. The one async polling loop.
pub async fn poll_within<T, F, Fut>(timeout: Duration, every: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        actix_web::rt::time::sleep(every).await;
    }
}

fn timed_out(timeout: Duration, what: &str) -> ! {
    panic!("timed out after {timeout:?} waiting for: {what}")
}

/// Probes every [`EVERY`] until `probe` gives `Some`; returns the value,
/// panics with `what` after `timeout`.
pub async fn eventually_some<T, F, Fut>(timeout: Duration, what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_within(timeout, EVERY, probe)
        .await
        .unwrap_or_else(|| timed_out(timeout, what))
}

/// Polls the async `cond` every [`EVERY`] until it is true; panics with
/// `what` after `timeout`. Returns how long it took.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    eventually_some(timeout, what, || {
        let holds = cond();
        async move { holds.await.then_some(()) }
    })
    .await;
    start.elapsed()
}

/// [`eventually`] for a condition that needs no await (and may borrow
/// mutably, e.g. a child process it checks is still running).
pub async fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    eventually(timeout, what, || std::future::ready(cond())).await
}

/// The blocking twin of [`poll_within`]: probes `cond` every `every`, sleeping
/// the thread, until it holds (`true`) or `timeout` has passed (`false`).
pub fn poll_blocking_within(
    timeout: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// The blocking twin of [`wait_for`]: panics with `what` after `timeout`;
/// returns how long it took.
pub fn wait_blocking(timeout: Duration, what: &str, cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    if !poll_blocking_within(timeout, EVERY, cond) {
        timed_out(timeout, what);
    }
    start.elapsed()
}
