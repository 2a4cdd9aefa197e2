//! holistream: MediaPipe Holistic served over WebSockets.
//!
//! Map of the crate:
//! - [`model`]: the Holistic pipeline (pre/post-processing around the burn nets).
//! - [`actors`]: per-client session actors and the supervised inference pool.
//! - [`http`]: actix-web server: auth, session store (in memory, mirrored in Redis),
//!   WebSocket endpoint, metrics, static web demo.
//! - [`loadgen`]: `holistream loadgen`, real WebSocket clients that measure a server.
//! - [`config`]: the one `Config` of `serve` (file, environment, flags).
//! - [`worker`]: `holistream worker`, remote inference over Redis Streams for
//!   `serve --pool redis` gateways (the gateway side is [`actors::remote`]).
//! - [`net`]: the client's address behind trusted proxies, the login
//!   limiter's key; [`session_id`]: a session's public tag (the cookie's uuid
//!   never leaves the cookie).
//! - [`healthcheck`]: `holistream healthcheck`, the container's liveness probe.
//! - [`stats`]: the one percentile definition (bench, load generator, tests).

pub mod actors;
pub mod config;
pub mod healthcheck;
pub mod http;
pub mod loadgen;
pub mod model;
pub mod net;
pub mod session_id;
pub mod stats;
pub mod worker;
