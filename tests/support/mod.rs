//! The one harness of the integration tests and of `benches/scaleout.rs`
//! (which includes it with `#[path]`): real processes and real clients on
//! loopback, every wait a poll with a deadline, none a fixed sleep that
//! hopes.
//!
//! Each test binary declares `mod support;` and uses the part it needs:
//!
//! | module | owns |
//! |---|---|
//! | [`port`] | [`port::FreePort`]: a free loopback port whose listener stays bound until handed over (an in-process server takes the listener) or released (a child process binds it) |
//! | [`poll`] | the one polling loop: [`poll::eventually`] (async condition), [`poll::wait_for`] (plain condition, async wait), [`poll::eventually_some`] (a value), [`poll::wait_blocking`] (no runtime) |
//! | [`redis_server`] | [`redis_server::RedisServer`], the one Redis spawner (plain, or with a password as compose runs it); the remote pool's stream and group as Redis shows them |
//! | [`server`] | [`server::TestServer`], the real server in this process, and [`server::test_config`] |
//! | [`http`] | an awc client, login, `/metrics` read and parsed, the admin fault route; raw HTTP/1.1 from a chosen source address |
//! | [`ws`] | `/ws` clients: step by step ([`ws::open_session`], [`ws::next_answer`]) and the one streaming client ([`ws::StreamingClient`]) |
//! | [`process`] | the binary under test and nginx as child processes ([`process::Proc`]): `serve`, `worker`, their readiness |
//! | [`browser`] | headless Chromium over WebDriver with a fake camera playing the fixture photos |
//! | [`fixtures`] | fixture photos and JPEG frames, repository files, the shared test data, settings from the environment |
//!
//! Percentiles and medians are the library's, `holistream::stats` (nearest
//! rank), the definition `loadgen` and the bench report: no copy here.
//!
//! Tests using the async parts run under `#[actix_web::test]` (awc needs an
//! actix runtime); the bench runs them on a tokio runtime.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

pub mod browser;
pub mod fixtures;
pub mod http;
pub mod poll;
pub mod port;
pub mod process;
pub mod redis_server;
pub mod server;
pub mod ws;
