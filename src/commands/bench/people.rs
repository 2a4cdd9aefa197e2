//! `holistream bench --people 1,3,6`: multi-person frames per people count,
//! static on the group photos (`faceapi2.jpg`, `faceapi4.jpg`, `bus.jpg` of
//! the shared test data) and tracking on the pan clip
//! (`multi/video/faceapi2_pan.mjpeg`, one state over all its frames, Python's
//! timestamps): median frame time, fps, people found per frame, and the
//! mean time per frame of each stage (`HolisticResult::timings`).
//!
//! Tooling, not the pipeline: it times `model` from the outside and changes
//! nothing in it.

use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};

use super::super::parity::{python_timestamp_us, split_mjpeg};
use super::super::{TESTDATA, load_image};
use crate::model::{
    Holistic, HolisticResult, Mode, Parts, ProcessOptions, StageTimings, TrackingState,
    decode_image,
};
use crate::stats::median;

/// The group photos of the static rows, in `TESTDATA/images`.
pub const PEOPLE_IMAGES: [&str; 3] = ["faceapi2.jpg", "faceapi4.jpg", "bus.jpg"];

/// The clip of the tracking rows, in `TESTDATA`.
pub const PEOPLE_CLIP: &str = "multi/video/faceapi2_pan.mjpeg";

/// One people count in one mode.
#[derive(Debug, Clone)]
pub struct PeopleRow {
    pub mode: Mode,
    pub people: usize,
    pub frames: usize,
    /// Median `process` time, ms.
    pub median_ms: f64,
    /// Frames per second over the mean time.
    pub fps: f64,
    /// Mean people found per frame.
    pub found: f64,
    /// Mean time per frame of each stage, ms (`total` is the mean frame).
    pub stages: StageTimings,
}

/// The `--people` table.
#[derive(Debug, Clone)]
pub struct PeopleBench {
    pub rows: Vec<PeopleRow>,
    pub iters: usize,
    pub clip_frames: usize,
}

/// Accumulates frames of one row.
#[derive(Default)]
struct Acc {
    totals: Vec<f64>,
    found: usize,
    sums: [f64; 6],
}

impl Acc {
    fn add(&mut self, r: &HolisticResult) {
        let t = r.timings;
        self.totals.push(t.total);
        self.found += match &r.people {
            Some(p) => p.len(),
            None => usize::from(!r.pose.is_empty()),
        };
        let stages = [
            t.pose_detection,
            t.pose_landmark,
            t.face_detection,
            t.face_landmark,
            t.hand_recrop,
            t.hand_landmark,
        ];
        for (s, v) in self.sums.iter_mut().zip(stages) {
            *s += v;
        }
    }

    fn row(mut self, mode: Mode, people: usize) -> PeopleRow {
        let n = self.totals.len().max(1) as f64;
        let mean = self.totals.iter().sum::<f64>() / n;
        let [a, b, c, d, e, f] = self.sums.map(|s| s / n);
        PeopleRow {
            mode,
            people,
            frames: self.totals.len(),
            median_ms: median(&mut self.totals),
            fps: if mean > 0.0 { 1000.0 / mean } else { 0.0 },
            found: self.found as f64 / n,
            stages: StageTimings {
                pose_detection: a,
                pose_landmark: b,
                face_detection: c,
                face_landmark: d,
                hand_recrop: e,
                hand_landmark: f,
                total: mean,
            },
        }
    }
}

/// Times `counts` people on the group photos (`iters` frames each, after a
/// warm-up) and on the pan clip (every frame but the first).
pub fn bench_people(
    holistic: &Holistic,
    counts: &[usize],
    iters: usize,
) -> anyhow::Result<PeopleBench> {
    let dir = Path::new(TESTDATA);
    let mut images = Vec::new();
    for name in PEOPLE_IMAGES {
        let path = dir.join("images").join(name);
        if !path.is_file() {
            bail!(
                "{}: missing (bench --people needs the shared test data)",
                path.display()
            );
        }
        images.push(load_image(&path)?);
    }
    let clip_path = dir.join(PEOPLE_CLIP);
    let bytes =
        std::fs::read(&clip_path).with_context(|| format!("reading {}", clip_path.display()))?;
    let frames = split_mjpeg(&bytes)
        .into_iter()
        .map(decode_image)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("decoding {}", clip_path.display()))?;
    let iters = iters.max(1);
    let mut rows = Vec::new();
    for &people in counts {
        let people = people.max(1);
        let opts = |mode, i| ProcessOptions {
            mode,
            parts: Parts::default(),
            timestamp_us: python_timestamp_us(i),
            people,
        };
        let mut acc = Acc::default();
        for image in &images {
            holistic.process(image, &opts(Mode::Static, 0), &mut TrackingState::default())?;
            for _ in 0..iters {
                let r = holistic.process(
                    image,
                    &opts(Mode::Static, 0),
                    &mut TrackingState::default(),
                )?;
                acc.add(&r);
            }
        }
        rows.push(acc.row(Mode::Static, people));
        let mut acc = Acc::default();
        let mut state = TrackingState::default();
        for (i, frame) in frames.iter().enumerate() {
            let r = holistic.process(frame, &opts(Mode::Tracking, i), &mut state)?;
            if i > 0 {
                acc.add(&r);
            }
        }
        rows.push(acc.row(Mode::Tracking, people));
    }
    rows.sort_by_key(|r| (r.mode == Mode::Tracking, r.people));
    Ok(PeopleBench {
        rows,
        iters,
        clip_frames: frames.len(),
    })
}

impl fmt::Display for PeopleBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "== people: static on {} ({} iterations each), tracking on {} ({} frames, the first \
             not timed); frame = median ms, stages = mean ms per frame",
            PEOPLE_IMAGES.join(", "),
            self.iters,
            PEOPLE_CLIP,
            self.clip_frames
        )?;
        writeln!(
            f,
            "{:<9} {:>6} {:>8} {:>7} {:>6} {:>9} {:>8} {:>9} {:>8} {:>7} {:>8}",
            "mode",
            "people",
            "frame",
            "fps",
            "found",
            "pose det",
            "pose lm",
            "face det",
            "face lm",
            "recrop",
            "hand lm"
        )?;
        for r in &self.rows {
            let s = r.stages;
            writeln!(
                f,
                "{:<9} {:>6} {:>8.2} {:>7.1} {:>6.2} {:>9.2} {:>8.2} {:>9.2} {:>8.2} {:>7.2} {:>8.2}",
                match r.mode {
                    Mode::Static => "static",
                    Mode::Tracking => "tracking",
                },
                r.people,
                r.median_ms,
                r.fps,
                r.found,
                s.pose_detection,
                s.pose_landmark,
                s.face_detection,
                s.face_landmark,
                s.hand_recrop,
                s.hand_landmark
            )?;
        }
        Ok(())
    }
}
