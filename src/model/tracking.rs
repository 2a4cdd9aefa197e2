//! Between frames: the ROI tracking choice (`RoiTrackingCalculator`, §6.5 and
//! §7.6), the pose filters (`VisibilitySmoothingCalculator`,
//! `LandmarksSmoothingCalculator` with one-euro filters, §8), and the
//! [`TrackingState`] that carries them from one frame to the next.
//!
//! The state is a plain serialisable value owned by the caller (a session), so
//! any worker can process any session's next frame.
//!
//! Must not run a net: the pipeline decides when to track and when to detect.

use super::geometry::{ImageSize, NormRect};
use super::pose::{NUM_POSE_LANDMARKS, RawLandmark};
use serde::{Deserialize, Serialize};

/// Everything one video stream carries from a frame to the next in tracking
/// mode: the people being tracked, each with its own state, and what keeps
/// their ids unique. Static mode neither reads nor writes it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrackingState {
    /// The people tracked into the next frame, oldest first (single-person
    /// mode keeps at most one).
    pub(crate) people: Vec<PersonTrack>,
    /// The id the next new person gets: ids are never reused in a stream.
    pub(crate) next_id: u32,
    /// Frames since the pose detector last ran (multi-person mode runs it at
    /// most every [`DETECT_INTERVAL`] frames while people are tracked).
    pub(crate) since_detection: u32,
}

/// Frames between two runs of the pose detector while fewer people than
/// asked for are tracked (and at least one is): a crowd does not pay for
/// detection on every frame.
pub const DETECT_INTERVAL: u32 = 5;

/// One tracked person's state between frames.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PersonTrack {
    /// Stable within the stream.
    pub(crate) id: u32,
    /// The pose ROI for the next frame, from this frame's smoothed auxiliary
    /// landmarks; `None` makes the next frame run pose detection.
    pub(crate) pose_roi: Option<NormRect>,
    /// Pose filters; `None` after a frame without pose (MediaPipe resets them).
    pub(crate) pose_filters: Option<PoseFilters>,
    /// The previous frame's face landmarks (image-normalised x, y, z).
    pub(crate) face: Option<Vec<[f32; 3]>>,
    /// The previous frame's hands, [left, right].
    pub(crate) hands: [Option<Vec<[f32; 3]>>; 2],
}

impl TrackingState {
    /// True when the next frame will reuse this frame's pose ROI instead of
    /// running the pose detector (single-person mode: its one person).
    pub fn is_tracking_pose(&self) -> bool {
        self.people.first().is_some_and(|p| p.pose_roi.is_some())
    }

    /// Ids of the people tracked into the next frame, oldest first.
    pub fn people_ids(&self) -> Vec<u32> {
        self.people.iter().map(|p| p.id).collect()
    }

    /// The id of a person found for the first time: the next one, never
    /// used before in this stream.
    pub(crate) fn new_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }
}

/// Thresholds of `RoiTrackingCalculator`'s rect and landmark requirements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoiTrackingLimits {
    pub rotation_degrees: f32,
    /// Allowed centre shift, as a fraction of the re-crop rect's size.
    pub translation: f32,
    /// Allowed size change, as a fraction of the re-crop rect's size.
    pub scale: f32,
    /// The previous landmarks must lie inside the re-crop rect grown by this
    /// fraction (negative: shrunk).
    pub recrop_margin: f32,
}

/// Keeps the previous frame's rect when the object barely moved (all checks
/// pass), otherwise takes this frame's re-crop rect.
pub fn choose_roi(
    recrop: NormRect,
    prev: Option<(NormRect, &[[f32; 3]])>,
    limits: &RoiTrackingLimits,
    size: ImageSize,
) -> NormRect {
    match prev {
        Some((prev_rect, prev_landmarks))
            if rect_requirements(&prev_rect, &recrop, limits, size)
                && landmarks_inside(prev_landmarks, &recrop, limits.recrop_margin, size) =>
        {
            prev_rect
        }
        _ => recrop,
    }
}

fn rect_requirements(
    prev: &NormRect,
    recrop: &NormRect,
    limits: &RoiTrackingLimits,
    size: ImageSize,
) -> bool {
    // Rotate both centres so the re-crop rect is axis aligned.
    let (sina, cosa) = (-recrop.r).sin_cos();
    let (iw, ih) = (size.w(), size.h());
    let rot = |r: &NormRect| {
        (
            r.xc * iw * cosa - r.yc * ih * sina,
            r.xc * iw * sina + r.yc * ih * cosa,
        )
    };
    let (px, py) = rot(prev);
    let (rx, ry) = rot(recrop);
    let mut dr = (prev.r - recrop.r).to_degrees();
    if dr > 180.0 {
        dr -= 360.0;
    }
    if dr < -180.0 {
        dr += 360.0;
    }
    let (rw, rh) = (recrop.w * iw, recrop.h * ih);
    dr.abs() <= limits.rotation_degrees
        && (px - rx).abs() <= rw * limits.translation
        && (py - ry).abs() <= rh * limits.translation
        && (prev.w * iw - rw).abs() <= rw * limits.scale
        && (prev.h * ih - rh).abs() <= rh * limits.scale
}

fn landmarks_inside(
    landmarks: &[[f32; 3]],
    recrop: &NormRect,
    margin: f32,
    size: ImageSize,
) -> bool {
    let (sina, cosa) = (-recrop.r).sin_cos();
    let (iw, ih) = (size.w(), size.h());
    let rx = recrop.xc * iw * cosa - recrop.yc * ih * sina;
    let ry = recrop.xc * iw * sina + recrop.yc * ih * cosa;
    let (hw, hh) = (
        recrop.w * iw * (1.0 + margin) * 0.5,
        recrop.h * ih * (1.0 + margin) * 0.5,
    );
    landmarks.iter().all(|p| {
        let x = p[0] * iw * cosa - p[1] * ih * sina;
        let y = p[0] * iw * sina + p[1] * ih * cosa;
        rx - hw < x && x < rx + hw && ry - hh < y && y < ry + hh
    })
}

/// MediaPipe's `LowPassFilter`: exponential smoothing; the first sample passes through.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) struct LowPass {
    raw: f32,
    stored: f32,
    initialized: bool,
}

impl LowPass {
    fn apply(&mut self, value: f32, alpha: f32) -> f32 {
        let out = if self.initialized {
            alpha * value + (1.0 - alpha) * self.stored
        } else {
            value
        };
        self.raw = value;
        self.stored = out;
        self.initialized = true;
        out
    }
}

/// Parameters of one one-euro filter bank.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OneEuroParams {
    pub min_cutoff: f64,
    pub beta: f64,
    pub derivate_cutoff: f64,
}

/// The 33 output landmarks: `pose_landmark_filtering.pbtxt`.
pub const POSE_FILTER: OneEuroParams = OneEuroParams {
    min_cutoff: 0.05,
    beta: 80.0,
    derivate_cutoff: 1.0,
};
/// The two auxiliary (ROI) landmarks, smoothed harder.
pub const AUX_FILTER: OneEuroParams = OneEuroParams {
    min_cutoff: 0.01,
    beta: 10.0,
    derivate_cutoff: 1.0,
};
/// Visibility low-pass weight of the new sample.
const VISIBILITY_ALPHA: f32 = 0.1;
/// Filters start at 30 Hz until two timestamps give the real rate.
const DEFAULT_FREQUENCY: f64 = 30.0;
/// Below this object scale (px) smoothing is skipped.
const MIN_OBJECT_SCALE: f32 = 1e-6;

/// MediaPipe's `OneEuroFilter` for one scalar.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct OneEuro {
    frequency: f64,
    last_time_ns: Option<i64>,
    x: LowPass,
    dx: LowPass,
}

impl Default for OneEuro {
    fn default() -> Self {
        OneEuro {
            frequency: DEFAULT_FREQUENCY,
            last_time_ns: None,
            x: LowPass::default(),
            dx: LowPass::default(),
        }
    }
}

impl OneEuro {
    fn alpha(&self, cutoff: f64) -> f64 {
        let te = 1.0 / self.frequency;
        let tau = 1.0 / (2.0 * std::f64::consts::PI * cutoff);
        1.0 / (1.0 + tau / te)
    }

    /// `OneEuroFilter::Apply` (mediapipe/util/filtering/one_euro_filter.cc):
    /// `last_time_` starts below any timestamp; a timestamp not after the last
    /// passes the value through; the rate is re-estimated only when neither
    /// the last nor the new timestamp is 0 (`last_time_ != 0 &&
    /// new_timestamp != 0`), so after a first frame at t = 0 the second is
    /// still filtered at the default 30 Hz. MediaPipe 0.10.14 run from t = 0
    /// instead of Python's t = 33 333 µs differs only by that, and on the test
    /// clip that alone moves its own pose by 1–3% in the faceapi4 scene.
    fn apply(&mut self, p: &OneEuroParams, time_ns: i64, value_scale: f64, value: f64) -> f64 {
        if let Some(last) = self.last_time_ns {
            if last >= time_ns {
                // Out-of-order timestamp: MediaPipe passes the value through.
                return value;
            }
            if last != 0 && time_ns != 0 {
                self.frequency = 1.0 / ((time_ns - last) as f64 * 1e-9);
            }
        }
        self.last_time_ns = Some(time_ns);
        let dvalue = if self.x.initialized {
            (value - self.x.raw as f64) * value_scale * self.frequency
        } else {
            0.0
        };
        let edvalue =
            self.dx
                .apply(dvalue as f32, self.alpha(p.derivate_cutoff) as f32) as f64;
        let cutoff = p.min_cutoff + p.beta * edvalue.abs();
        self.x.apply(value as f32, self.alpha(cutoff) as f32) as f64
    }
}

/// One-euro filters for x, y, z of each landmark of one stream, plus the
/// visibility low-pass filters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct LandmarkFilters {
    coords: Vec<[OneEuro; 3]>,
    visibility: Vec<LowPass>,
}

impl LandmarkFilters {
    /// Smooths visibility, then coordinates in px (x·W, y·H, z·W) with
    /// `value_scale = 1/object_scale`.
    fn apply(
        &mut self,
        lms: &mut [RawLandmark],
        p: &OneEuroParams,
        time_ns: i64,
        object_scale: f32,
        size: ImageSize,
    ) {
        self.visibility.resize(lms.len(), LowPass::default());
        for (lm, f) in lms.iter_mut().zip(&mut self.visibility) {
            lm.visibility = f.apply(lm.visibility, VISIBILITY_ALPHA);
        }
        if object_scale < MIN_OBJECT_SCALE {
            return;
        }
        let value_scale = 1.0 / object_scale as f64;
        self.coords.resize(lms.len(), [OneEuro::default(); 3]);
        let (iw, ih) = (size.w(), size.h());
        for (lm, f) in lms.iter_mut().zip(&mut self.coords) {
            lm.x = f[0].apply(p, time_ns, value_scale, (lm.x * iw) as f64) as f32 / iw;
            lm.y = f[1].apply(p, time_ns, value_scale, (lm.y * ih) as f64) as f32 / ih;
            lm.z = f[2].apply(p, time_ns, value_scale, (lm.z * iw) as f64) as f32 / iw;
        }
    }
}

/// The pose's filters: the 33 output landmarks and the 2 auxiliary ones.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct PoseFilters {
    body: LandmarkFilters,
    aux: LandmarkFilters,
}

impl PoseFilters {
    /// Smooths one frame's pose in place. The object scale is the mean side
    /// of the unfiltered aux landmarks' rect, in px.
    pub(crate) fn apply(
        &mut self,
        body: &mut [RawLandmark],
        aux: &mut [RawLandmark; 2],
        timestamp_us: i64,
        size: ImageSize,
    ) {
        debug_assert_eq!(body.len(), NUM_POSE_LANDMARKS);
        let rect = super::pose::aux_alignment_rect(aux, size);
        let object_scale = (rect.w * size.w() + rect.h * size.h()) / 2.0;
        let t = timestamp_us.saturating_mul(1000);
        self.body.apply(body, &POSE_FILTER, t, object_scale, size);
        self.aux.apply(aux, &AUX_FILTER, t, object_scale, size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQ: ImageSize = ImageSize {
        width: 100,
        height: 100,
    };
    const LIMITS: RoiTrackingLimits = RoiTrackingLimits {
        rotation_degrees: 15.0,
        translation: 0.1,
        scale: 0.3,
        recrop_margin: -0.2,
    };

    fn rect(xc: f32, w: f32, r_deg: f32) -> NormRect {
        NormRect {
            xc,
            yc: 0.5,
            w,
            h: w,
            r: r_deg.to_radians(),
        }
    }

    #[test]
    fn keeps_previous_rect_when_object_barely_moved() {
        let recrop = rect(0.5, 0.4, 0.0);
        let prev = rect(0.53, 0.45, 10.0);
        let lms = [[0.5, 0.5, 0.0], [0.6, 0.4, 0.0]];
        assert_eq!(choose_roi(recrop, Some((prev, &lms)), &LIMITS, SQ), prev);
        // No previous rect: the re-crop rect.
        assert_eq!(choose_roi(recrop, None, &LIMITS, SQ), recrop);
    }

    #[test]
    fn any_failed_requirement_takes_the_recrop_rect() {
        let recrop = rect(0.5, 0.4, 0.0);
        let lms = [[0.5, 0.5, 0.0]];
        // Centre moved 5 px > 0.1·40 px.
        assert_eq!(
            choose_roi(recrop, Some((rect(0.55, 0.4, 0.0), &lms)), &LIMITS, SQ),
            recrop
        );
        // Rotated 20° > 15°.
        assert_eq!(
            choose_roi(recrop, Some((rect(0.5, 0.4, 20.0), &lms)), &LIMITS, SQ),
            recrop
        );
        // Size 53 px vs 40 px: 13 > 0.3·40.
        assert_eq!(
            choose_roi(recrop, Some((rect(0.5, 0.53, 0.0), &lms)), &LIMITS, SQ),
            recrop
        );
        // A landmark at x = 0.67: outside the rect shrunk by 20% (half side 16 px → x < 0.66).
        let far = [[0.67, 0.5, 0.0]];
        assert_eq!(
            choose_roi(recrop, Some((rect(0.5, 0.4, 0.0), &far)), &LIMITS, SQ),
            recrop
        );
        let near = [[0.65, 0.5, 0.0]];
        assert_eq!(
            choose_roi(recrop, Some((rect(0.5, 0.4, 0.0), &near)), &LIMITS, SQ),
            rect(0.5, 0.4, 0.0)
        );
    }

    #[test]
    fn rotation_difference_wraps_around() {
        // 175° vs −175° differ by 10°, not 350°.
        let recrop = rect(0.5, 0.4, -175.0);
        let prev = rect(0.5, 0.4, 175.0);
        let lms = [[0.5, 0.5, 0.0]];
        assert_eq!(choose_roi(recrop, Some((prev, &lms)), &LIMITS, SQ), prev);
    }

    #[test]
    fn one_euro_first_sample_passes_then_smooths() {
        let p = OneEuroParams {
            min_cutoff: 1.0,
            beta: 0.0,
            derivate_cutoff: 1.0,
        };
        let mut f = OneEuro::default();
        assert_eq!(f.apply(&p, 1_000_000_000, 1.0, 10.0), 10.0);
        // Second sample 0.1 s later: frequency 10 Hz, te = 0.1, tau = 1/(2π),
        // alpha = 1/(1 + tau/te) = 1/(1 + 10/(2π)) ≈ 0.38586; out = 10 + α·10.
        let out = f.apply(&p, 1_100_000_000, 1.0, 20.0);
        let alpha = 1.0 / (1.0 + 10.0 / (2.0 * std::f64::consts::PI));
        assert!((out - (10.0 + alpha * 10.0)).abs() < 1e-4, "{out}");
        // A timestamp that does not advance passes the value through.
        assert_eq!(f.apply(&p, 1_100_000_000, 1.0, 50.0), 50.0);
    }

    #[test]
    fn one_euro_keeps_default_rate_after_a_frame_at_time_zero() {
        // From t = 0 the second sample is filtered at 30 Hz, from t = 33 333 µs
        // at the measured 30.0003 Hz (MediaPipe's `last_time_ != 0` rule).
        let run = |t0: i64| {
            let mut f = OneEuro::default();
            f.apply(&POSE_FILTER, t0, 1.0, 0.0);
            f.apply(&POSE_FILTER, t0 + 33_333_000, 1.0, 1.0);
            f.frequency
        };
        assert_eq!(run(0), DEFAULT_FREQUENCY);
        assert!((run(33_333_000) - 1.0 / 0.033_333).abs() < 1e-9);
    }

    #[test]
    fn visibility_low_pass() {
        let mut f = LowPass::default();
        assert_eq!(f.apply(1.0, 0.1), 1.0);
        assert!((f.apply(0.0, 0.1) - 0.9).abs() < 1e-6);
        assert!((f.apply(0.0, 0.1) - 0.81).abs() < 1e-6);
    }
}
