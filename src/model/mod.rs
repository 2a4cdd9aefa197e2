//! The MediaPipe Holistic pipeline: our own pre/post-processing around the
//! nets of `holistream-nets`, following `HOLISTIC_SPEC.md` stage by stage.
//!
//! The model worker is stateless: the caller (a session) owns the
//! [`TrackingState`] and passes it in with every frame.

pub use holistream_nets::{Net, NetError, NetRunner};
