//! The subcommands of the `holistream` binary, one file each: `main.rs`
//! parses the command line and calls one of these. Each is an edge: it reads
//! its flags (and, for the services, the configuration), then calls into the
//! layers below (`http`, `actors`, `model`); nothing below imports from here.
//!
//! - [`serve`]: the HTTP server (`http::run`) until a signal.
//! - [`worker`]: the remote inference process (`actors::remote::consumer`).
//! - [`infer`]: landmarks of images as JSON, optionally drawn ([`draw`]).
//! - [`track`]: an MJPEG clip in tracking mode, one JSON line per frame.
//! - [`parity`]: the pipeline against MediaPipe's golden outputs.
//! - [`bench`]: per-net and per-frame times beside MediaPipe's.
//! - [`loadgen`]: real WebSocket clients measuring a running server.
//! - [`healthcheck`]: the container's liveness probe.

pub mod bench;
pub mod draw;
pub mod healthcheck;
pub mod infer;
pub mod loadgen;
pub mod parity;
pub mod serve;
pub mod track;
pub mod worker;

use std::path::Path;

use anyhow::Context;

use crate::config::ModelConfig;
use crate::model::Holistic;
use crate::model::image_input::{DecodeLimits, decode_image_with};

/// Default test data, relative to the repository root (as in CI).
pub(crate) const TESTDATA: &str = "../shared/testdata";

/// An image file given on the command line.
pub(crate) fn load_image(path: &Path) -> anyhow::Result<image::RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // Photos, not camera frames: larger (a phone's are 4032x3024), and the
    // operator's own files; still bounded, by the hard cap.
    decode_image_with(&bytes, &DecodeLimits::PHOTO)
        .with_context(|| format!("decoding {}", path.display()))
}

/// The pipeline as `[model]`'s environment variables ask
/// (`HOLISTREAM_NETS`, `HOLISTREAM_PARALLEL_BRANCHES`).
pub(crate) fn load_holistic() -> anyhow::Result<Holistic> {
    let model = ModelConfig::from_env()?;
    Holistic::load_with(&model).context("loading the nets")
}
