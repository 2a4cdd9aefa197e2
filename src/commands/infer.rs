//! `holistream infer IMAGE...`: the Holistic landmarks of images as JSON,
//! one line per image, optionally drawn. The command's edge only.
//!
//! What it computes is `model`'s; nothing here changes a landmark.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{draw, load_holistic, load_image, parity};
use crate::model::{Mode, Parts, ProcessOptions, TrackingState};

/// `holistream infer IMAGE...`: prints one JSON result per image, one per line.
#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// JPEG or PNG files; in tracking mode they are frames of one stream, in order.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// `static` (every image on its own) or `tracking` (frames of one stream).
    #[arg(long, default_value = "static")]
    pub mode: Mode,
    /// Parts to compute, comma separated.
    #[arg(long, default_value = "pose,face,hands")]
    pub parts: Parts,
    /// Most people to find per image: 1 is MediaPipe's single-person
    /// Holistic; more adds `"people":[{"id",…}]` to the JSON (the top-level
    /// parts stay the first person's) and `--draw` draws everyone.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub people: u64,
    /// Write the image with landmarks and connections drawn (PNG); with several
    /// images, `-N` is appended to the file stem for the N-th.
    #[arg(long)]
    pub draw: Option<PathBuf>,
}

/// Runs `holistream infer`.
pub fn infer(args: &InferArgs) -> anyhow::Result<()> {
    let holistic = load_holistic()?;
    let mut state = TrackingState::default();
    for (i, path) in args.images.iter().enumerate() {
        let image = load_image(path)?;
        let opts = ProcessOptions {
            people: args.people as usize,
            mode: args.mode,
            parts: args.parts,
            // As MediaPipe's Python solution times a stream (first frame at
            // 33 333 µs), so `--mode tracking` reproduces its answers.
            timestamp_us: parity::python_timestamp_us(i),
        };
        let result = holistic.process(&image, &opts, &mut state)?;
        println!("{}", serde_json::to_string(&result)?);
        if let Some(out) = &args.draw {
            let out = if args.images.len() == 1 {
                out.clone()
            } else {
                numbered(out, i)
            };
            draw::draw(&image, &result)
                .save(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            tracing::info!(path = %out.display(), "drawn");
        }
    }
    Ok(())
}

fn numbered(path: &Path, i: usize) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    path.with_file_name(format!("{stem}-{i}.{ext}"))
}
