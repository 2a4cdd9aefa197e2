//! Session actors and the supervised inference pool.
//!
//! Map of this module:
//! - [`protocol`]: the WebSocket wire format (binary frame header, JSON control
//!   and server messages).
//! - [`session`]: one actix actor per client, [`session::SessionActor`] for a
//!   WebSocket, [`session::RtcSession`] for a WebRTC peer, both on one core:
//!   fps cap, latest-wins frame slot, the client's tracking state, stats, and
//!   the [`SessionRegistry`] that bounds and closes sessions.
//! - [`rtc`]: WebRTC ingest: the [`rtc::RtcEngine`] (one UDP socket, str0m
//!   peers, a decoder thread per peer) and the client side.
//! - [`job`]: one frame's job and its answer, and [`job::run_frame`], the one
//!   way a frame is run, whichever executor runs it.
//! - [`pool`]: the [`InferencePool`] handle in front of a ractor factory of
//!   inference workers: bounded queue with oldest-dropped discards, job TTL,
//!   and an answer for every job, whatever happens to it.
//! - [`inference`]: one in-process inference worker = one ractor actor in
//!   front of a model thread; panics and stalls are detected and the worker
//!   replaced.
//! - [`model_thread`]: the OS thread that owns a model instance and does the
//!   CPU work, for one worker, or for a group of workers whose frames it
//!   batches on a GPU (`pool.max_batch`).
//! - [`remote`]: the same pool over Redis Streams: the gateway side
//!   ([`remote::gateway`]) and the `holistream worker` processes
//!   ([`remote::consumer`]).
//!
//! Data flow: WebSocket frame → session (header check, fps cap, slot) →
//! `InferencePool::submit` → factory queue → worker actor → worker thread →
//! reply (result JSON + new tracking state) → session → WebSocket. WebRTC:
//! UDP → engine → decoder thread → session (the same from there) → engine
//! → data channel.
//!
//! Imports `model` and the root plumbing (`config`, `metrics`,
//! `session_id`); nothing from `http` or `commands`.

pub mod inference;
pub mod job;
pub mod model_thread;
pub mod pool;
pub mod protocol;
pub mod remote;
pub mod rtc;
pub mod session;

pub use job::{FrameDone, FrameFailure, FrameJob, FrameOutput};
pub use pool::{InferencePool, PoolError};
pub use rtc::RtcEngine;
pub use session::{
    RtcSession, RtcSessionMsg, SessionActor, SessionCore, SessionRegistry, SessionsFull,
};
