//! The remote inference pool: sessions' frames go to `holistream worker`
//! processes over Redis Streams instead of threads of this process.
//!
//! # Topology
//!
//! ```text
//! gateway (serve --pool redis)                         worker process (holistream worker)
//!   RemotePool::submit ── XADD MAXLEN ~ N ──▶ holistream:jobs ──▶ XREADGROUP workers <consumer>
//!   result reader ◀── XREAD BLOCK ── holistream:results:<gateway> ◀── XADD + XACK
//! ```
//!
//! - One jobs stream `holistream:jobs`, one consumer group `workers`: each job
//!   goes to exactly one worker thread (a consumer).
//! - One result stream per gateway, `holistream:results:<gateway id>`, read by
//!   that gateway only. Workers trim it (`MAXLEN ~ 1000`) and give it a TTL
//!   (60 s), so the stream of a gateway that left disappears by itself.
//!
//!
//! Map: [`wire`] (the stream entries, version 2), [`gateway`] (the
//! [`gateway::RemotePool`] a `serve --pool redis` gateway submits to),
//! [`consumer`] (the threads of `holistream worker`). This file holds the
//! names both sides agree on. Nothing here knows of sessions or HTTP.

pub mod consumer;
pub mod gateway;
pub mod wire;

pub use gateway::{RemotePool, RemotePoolError, RemoteStats};

/// Version of the job and result encodings written by this build.
///
/// 2: the tracking state holds a list of tracked people (multi-person
/// Holistic), and `opts` may carry `people`; a version-1 worker could not
/// read the state, so it answers `unsupported` instead of failing frames.
pub const WIRE_VERSION: u32 = 2;
/// The version of a job that carries a decoded picture instead of a JPEG
/// (WebRTC ingest); results stay [`WIRE_VERSION`].
pub const PICTURE_WIRE_VERSION: u32 = 3;
/// The stream all gateways add jobs to.
pub const JOBS_STREAM: &str = "holistream:jobs";
/// The consumer group of the workers on [`JOBS_STREAM`].
pub const WORKERS_GROUP: &str = "workers";
/// Entries kept in a gateway's result stream (approximate trim).
pub const RESULTS_MAXLEN: usize = 1000;
/// Seconds a result stream lives after the last result written to it.
pub const RESULTS_TTL_S: i64 = 60;

/// The result stream of a gateway.
pub fn results_stream(gateway: &str) -> String {
    format!("holistream:results:{gateway}")
}

/// `XGROUP CREATE` of the workers' group (and of the jobs stream). Gateways
/// and workers both send it at start, whichever comes first; `BUSYGROUP`
/// means it exists ([`group_exists`]).
pub fn create_group_cmd() -> redis::Cmd {
    // From id 0: jobs added before the first worker came are still taken
    // (expired ones are then skipped).
    let mut cmd = redis::cmd("XGROUP");
    cmd.arg("CREATE")
        .arg(JOBS_STREAM)
        .arg(WORKERS_GROUP)
        .arg("0")
        .arg("MKSTREAM");
    cmd
}

/// Whether a [`create_group_cmd`] result means the group is there.
pub fn group_exists(created: redis::RedisResult<()>) -> redis::RedisResult<()> {
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}
