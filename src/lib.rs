//! holistream: MediaPipe Holistic served over WebSockets.
//!
//! Layers, each importing only from those below it (a test,
//! `tests/layering.rs`, holds the rule):
//!
//! ```text
//! commands ─▶ http ─▶ actors ─▶ model ─▶ holistream-nets (models/)
//!     └──────────┴────────┴─────────┴──▶ config, metrics, shutdown, net, session_id, stats
//! ```
//!
//! - [`commands`]: one file per subcommand of the binary (`serve`, `worker`,
//!   `infer`, `parity`, `bench`, `loadgen`, `healthcheck`).
//! - [`http`]: actix-web server: auth, session store (in memory, mirrored in
//!   Redis), WebSocket endpoint, `/metrics`, static web demo.
//! - [`actors`]: per-client session actors, the job of one frame, and the
//!   supervised inference pool, in process or over Redis Streams.
//! - [`model`]: the Holistic pipeline (pre/post-processing around the burn
//!   nets).
//!
//! Plumbing at the root, below every layer and importing none of them:
//! - [`config`]: every section of the configuration and how it is assembled
//!   (file, environment, flags); the one place environment variables are read.
//! - [`metrics`]: every Prometheus metric of the process.
//! - [`shutdown`]: the signal that cancels the process's token.
//! - [`net`]: the client's address behind trusted proxies, the login
//!   limiter's key; [`session_id`]: a session's public tag (the cookie's uuid
//!   never leaves the cookie); [`stats`]: the one percentile definition
//!   (bench, load generator, tests).

pub mod actors;
pub mod commands;
pub mod config;
pub mod http;
pub mod metrics;
pub mod model;
pub mod net;
pub mod session_id;
pub mod shutdown;
pub mod stats;
