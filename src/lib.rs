//! holistream: MediaPipe Holistic served over WebSockets.
//!
//! Map of the crate:
//! - [`model`]: the Holistic pipeline (pre/post-processing around the burn nets).
//! - [`actors`]: per-client session actors and the supervised inference pool.
//! - [`http`]: actix-web server: auth, session store (in memory, mirrored in Redis),
//!   WebSocket endpoint, metrics, static web demo.

pub mod actors;
pub mod http;
pub mod model;
