//! A clip in tracking mode against MediaPipe's frame-by-frame goldens
//! (`holistream parity --video`): MJPEG splitting, per-part presence and
//! error over the frames, with one frame compared as the parent does.
//!
//! Measures only; it must not tune the pipeline to the goldens.

use super::*;

/// Splits an MJPEG stream (baseline JPEGs back to back) on SOI/EOI markers.
/// Inside entropy-coded data 0xFF is always followed by 0x00 or a restart
/// marker, so the first EOI after an SOI ends the frame.
pub fn split_mjpeg(bytes: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    let mut i = 0;
    while let Some(start) = find(&bytes[i..], &[0xFF, 0xD8]).map(|s| s + i) {
        let Some(end) = find(&bytes[start + 2..], &[0xFF, 0xD9]).map(|e| e + start + 4) else {
            break;
        };
        frames.push(&bytes[start..end]);
        i = end;
    }
    frames
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Per-part totals of a clip run in tracking mode.
#[derive(Debug, Clone, Default)]
pub struct ClipPart {
    pub frames_golden: usize,
    pub frames_ours: usize,
    pub frames_disagree: usize,
    pub compared: usize,
    pub sum_mean: f64,
    pub worst_mean: f64,
    pub max: f64,
}

/// Parts whose clip error is gated by the threshold. Hands are reported but
/// not gated: on the clip's arms-crossed frames the hand net is sensitive
/// enough that even frame 0 (same pose to 0.03%) differs by a few percent.
pub const CLIP_GATED_PARTS: [&str; 2] = ["pose", "face"];

/// The outcome of a tracking-mode run over a clip.
#[derive(Debug, Clone)]
pub struct ClipReport {
    pub frames: usize,
    pub parts: Vec<(&'static str, ClipPart)>,
    pub thresholds: Thresholds,
    /// Largest allowed share of frames whose presence differs, per part.
    pub max_presence_mismatch: f64,
}

impl ClipReport {
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (part, p) in &self.parts {
            let share = p.frames_disagree as f64 / self.frames.max(1) as f64;
            if share > self.max_presence_mismatch {
                out.push(format!(
                    "clip {part}: presence differs on {} of {} frames (> {:.0}%)",
                    p.frames_disagree,
                    self.frames,
                    self.max_presence_mismatch * 100.0
                ));
            }
            if p.compared > 0 && CLIP_GATED_PARTS.contains(part) {
                let mean = p.sum_mean / p.compared as f64;
                if !(mean <= self.thresholds.max_mean_err) {
                    out.push(format!(
                        "clip {part}: mean error {:.2}% > {:.2}%",
                        mean * 100.0,
                        self.thresholds.max_mean_err * 100.0
                    ));
                }
            }
        }
        out
    }
}

impl fmt::Display for ClipReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9}",
            "clip part", "mediapipe", "ours", "disagree", "mean%", "worst-mean%", "max%"
        )?;
        for (part, p) in &self.parts {
            let mean = if p.compared > 0 {
                p.sum_mean / p.compared as f64 * 100.0
            } else {
                0.0
            };
            writeln!(
                f,
                "{:<10} {:>9} {:>9} {:>9} {:>9.3} {:>10.3} {:>9.3}",
                part,
                p.frames_golden,
                p.frames_ours,
                p.frames_disagree,
                mean,
                p.worst_mean * 100.0,
                p.max * 100.0
            )?;
        }
        let failures = self.failures();
        write!(
            f,
            "summary: {} frames in tracking mode (error limit on pose and face): {}",
            self.frames,
            verdict(&failures)
        )?;
        write_failures(f, &failures)
    }
}

/// Runs a clip in tracking mode, frame after frame with one state and
/// Python's timestamps, against its tracking-mode golden; only the first
/// `max_frames` frames when given.
///
/// Two known limits of this comparison: the golden's frames were decoded by
/// OpenCV's FFmpeg backend (nearest-neighbour chroma, swscale colour
/// conversion), ours by libjpeg-turbo, which alone moves the pose by ~0.8% on
/// frame 0; and across the clip's hard cuts between photos the tracked ROIs
/// of the two implementations drift apart (pose 1–3%), so the whole-clip
/// numbers are a report, while the first scene is the regression check.
///
/// That drift is not a difference of graph: fed MediaPipe's own pose ROI on
/// every frame (dumped from its graph on the same OpenCV-decoded frames), our
/// unfiltered and filtered landmarks, aux landmarks and next ROIs match it
/// within 0.005% on all 150 frames. In the faceapi4 scene (presence scores
/// 0.55–0.95) the ROI feedback loop amplifies the nets' ~1e-5 rounding
/// differences 3–5× per frame: started from MediaPipe's exact state at frame
/// 50 or 70 we are 1–2% off within 5–10 frames. MediaPipe itself does the
/// same: run from t = 0 instead of Python's 33 333 µs (which only changes the
/// filters' rate on frame 1 by 1e-5) it lands 1.3–3.3% off its own golden in
/// frames 50–99. The pose loss near frames 94 and 101 is a presence knife
/// edge (MediaPipe's scores 0.55–0.6 against 0.5), and after re-detecting,
/// the astronaut scene settles on another self-consistent ROI than the one
/// MediaPipe carried across the cut (height 1.9 against 2.4–2.8), ~15% off.
pub fn check_clip(
    holistic: &Holistic,
    clip: &Path,
    golden: &Path,
    thresholds: Thresholds,
    max_presence_mismatch: f64,
    max_frames: Option<usize>,
) -> Result<ClipReport, ParityError> {
    let bytes = read(clip)?;
    let frames = split_mjpeg(&bytes);
    let golden: GoldenVideo = parse(golden)?;
    if frames.len() != golden.frames || golden.results.len() != golden.frames {
        return Err(ParityError::Data(format!(
            "{}: {} frames, golden has {} ({} results)",
            clip.display(),
            frames.len(),
            golden.frames,
            golden.results.len()
        )));
    }
    let mut state = TrackingState::default();
    let mut parts: Vec<(&'static str, ClipPart)> =
        PARTS.iter().map(|&p| (p, ClipPart::default())).collect();
    let count = max_frames.unwrap_or(frames.len()).min(frames.len());
    for (i, (jpeg, gold)) in frames.iter().zip(&golden.results).take(count).enumerate() {
        let image = decode_image(jpeg).map_err(|e| ParityError::Model {
            path: clip.to_owned(),
            source: e.into(),
        })?;
        let opts = ProcessOptions {
            people: 1,
            mode: Mode::Tracking,
            parts: Parts::default(),
            timestamp_us: python_timestamp_us(i),
        };
        let ours = holistic
            .process(&image, &opts, &mut state)
            .map_err(|source| ParityError::Model {
                path: clip.to_owned(),
                source,
            })?;
        for (cmp, (_, total)) in compare_frame(gold, &ours, image.width(), image.height())
            .iter()
            .zip(&mut parts)
        {
            total.frames_golden += cmp.golden_present as usize;
            total.frames_ours += cmp.ours_present as usize;
            total.frames_disagree += !cmp.agrees() as usize;
            if let Some((mean, max)) = cmp.errors {
                total.compared += 1;
                total.sum_mean += mean;
                total.worst_mean = total.worst_mean.max(mean);
                total.max = total.max.max(max);
            }
        }
    }
    Ok(ClipReport {
        frames: count,
        parts,
        thresholds,
        max_presence_mismatch,
    })
}
