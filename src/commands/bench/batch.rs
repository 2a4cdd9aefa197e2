//! `holistream bench --batch N`: frames from N sessions at once through
//! [`Batched`] (one forward pass per net for all of them, what a batching
//! pool does on a GPU) against the same frames one at a time, per backend.
//!
//! Static mode on the bench's photos, each session a different photo: every
//! frame runs pose detection and the landmark nets.

use std::time::Instant;

use anyhow::Context;
use image::RgbImage;

use crate::model::{Backend, Batched, Holistic, Mode, Parts, ProcessOptions, TrackingState};
use crate::stats::percentile;

/// One backend's figures: median ms per frame alone and in a batch of `n`.
pub(super) struct BatchRow {
    pub backend: Backend,
    pub n: usize,
    pub alone_ms: f64,
    pub batched_ms: f64,
}

impl std::fmt::Display for BatchRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "batch {:<14} {:>3} frames: {:8.2} ms/frame alone, {:8.2} ms/frame batched ({:.2}x)",
            self.backend.name(),
            self.n,
            self.alone_ms,
            self.batched_ms,
            self.alone_ms / self.batched_ms
        )
    }
}

/// Medians over `iters` rounds of `n` frames (photos cycled), per frame.
pub(super) fn bench_batch(
    backend: Backend,
    images: &[RgbImage],
    n: usize,
    iters: usize,
) -> anyhow::Result<BatchRow> {
    anyhow::ensure!(!images.is_empty(), "no images to batch");
    let alone = Holistic::load(backend)
        .with_context(|| format!("loading the nets on {}", backend.name()))?;
    let mut batched = Batched::new(backend.load()?, n);
    let frames: Vec<&RgbImage> = images.iter().cycle().take(n).collect();
    let opts = ProcessOptions {
        mode: Mode::Static,
        parts: Parts::default(),
        timestamp_us: 33_333,
        people: 1,
    };
    // One untimed round each: first passes compile kernels on a GPU.
    let (mut alone_ms, mut batched_ms) = (Vec::new(), Vec::new());
    for round in 0..=iters {
        let t = Instant::now();
        for frame in &frames {
            alone.process(frame, &opts, &mut TrackingState::default())?;
        }
        let a = t.elapsed().as_secs_f64() * 1e3 / n as f64;
        let t = Instant::now();
        for r in batched.run(frames.clone(), |h, frame| {
            h.process(frame, &opts, &mut TrackingState::default())
        }) {
            r.map_err(|_| anyhow::anyhow!("a batched frame panicked"))??;
        }
        let b = t.elapsed().as_secs_f64() * 1e3 / n as f64;
        if round > 0 {
            alone_ms.push(a);
            batched_ms.push(b);
        }
    }
    Ok(BatchRow {
        backend,
        n,
        alone_ms: percentile(&mut alone_ms, 0.5),
        batched_ms: percentile(&mut batched_ms, 0.5),
    })
}
