//! Hands from pose (HOLISTIC_SPEC.md §7): for each body side, a coarse ROI
//! from the pose's wrist, pinky and index, refined by the `hand_recrop` net,
//! the tracking choice against the previous frame's hand, and the 21-landmark
//! net. Left and right are the pose's (the person's own) sides; the hand net's
//! handedness output is not used, as in MediaPipe Holistic.
//!
//! Pure functions of the hand stages; the pipeline calls them in order and owns
//! the state.

use super::geometry::{
    ImageSize, NormRect, RectTransform, alignment_rect, landmarks_box, norm_rad, project,
    transform_rect,
};
use super::nets::NetOutputs;
use super::pose::RawLandmark;
use super::warp::{Border, CropTransform, TensorSpec, ValueRange};

/// `hand_recrop`: the pose-derived hand ROI at 256, replicated border, [0, 1].
pub const RECROP_TENSOR: TensorSpec = TensorSpec {
    size: 256,
    keep_aspect: true,
    border: Border::Replicate,
    range: ValueRange::ZERO_ONE,
};
/// `hand_landmark_full`: the tracking ROI at 224, replicated border, [0, 1].
pub const LANDMARK_TENSOR: TensorSpec = TensorSpec {
    size: 224,
    keep_aspect: true,
    border: Border::Replicate,
    range: ValueRange::ZERO_ONE,
};

pub const NUM_LANDMARKS: usize = 21;
/// The wrist's pose visibility must exceed this for the hand to be processed.
const MIN_WRIST_VISIBILITY: f32 = 0.1;
/// The hand flag is already a probability; present iff flag > 0.5.
const MIN_PRESENCE: f32 = 0.5;
/// `normalize_z` of the hand landmark decoder.
const Z_NORMALIZATION: f32 = 0.4;

/// Limits of `RoiTrackingCalculator` for hands (`hand_tracking.pbtxt`).
pub const TRACKING: super::tracking::RoiTrackingLimits = super::tracking::RoiTrackingLimits {
    rotation_degrees: 40.0,
    translation: 0.2,
    scale: 0.4,
    recrop_margin: -0.1,
};

/// A body side; the person's own, as the pose model names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Left, Side::Right];

    /// Pose landmarks [wrist, pinky, index] of this side.
    fn pose_indices(self) -> [usize; 3] {
        match self {
            Side::Left => [15, 17, 19],
            Side::Right => [16, 18, 20],
        }
    }
}

/// §7.2–7.3: the hand ROI from the pose, or `None` when the wrist's visibility
/// is at most 0.1. The centre is the estimated middle finger
/// `(2·index + pinky)/3`, the side twice its distance to the wrist; then
/// ×2.7 and shifted a tenth towards the fingers.
pub fn roi_from_pose(pose: &[RawLandmark], side: Side, size: ImageSize) -> Option<NormRect> {
    let [wi, pi, ii] = side.pose_indices();
    let (wrist, pinky, index) = (pose[wi], pose[pi], pose[ii]);
    if !(wrist.visibility > MIN_WRIST_VISIBILITY) {
        return None;
    }
    let px = |l: RawLandmark| [l.x * size.w(), l.y * size.h()];
    let (w, p, i) = (px(wrist), px(pinky), px(index));
    let mid = [(2.0 * i[0] + p[0]) / 3.0, (2.0 * i[1] + p[1]) / 3.0];
    let side_px = 2.0 * ((mid[0] - w[0]).powi(2) + (mid[1] - w[1]).powi(2)).sqrt();
    let rect = NormRect {
        xc: mid[0] / size.w(),
        yc: mid[1] / size.h(),
        w: side_px / size.w(),
        h: side_px / size.h(),
        r: norm_rad(std::f32::consts::FRAC_PI_2 - (-(mid[1] - w[1])).atan2(mid[0] - w[0])),
    };
    Some(transform_rect(rect, RectTransform::square(2.7, -0.1), size))
}

/// §7.4: the re-crop ROI from the `hand_recrop` net's two points (centre and
/// scale/rotation point, 256-px units) in the crop of `roi`.
pub fn roi_from_recrop(
    points: &[f32],
    roi: &NormRect,
    crop: &CropTransform,
    size: ImageSize,
) -> NormRect {
    let p = |k: usize| {
        let q = project(
            crop.padding
                .remove([points[2 * k] / 256.0, points[2 * k + 1] / 256.0, 0.0]),
            roi,
        );
        [q[0], q[1]]
    };
    let rect = alignment_rect(p(0), p(1), -90.0, size);
    transform_rect(rect, RectTransform::square(1.0, -0.1), size)
}

/// §7.6: the rect the previous frame's 21 hand landmarks give (rotated box of
/// the palm and lower finger joints), ×2 and shifted a tenth towards the fingers.
pub fn roi_from_landmarks(hand: &[[f32; 3]], size: ImageSize) -> NormRect {
    const PARTIAL: [usize; 12] = [0, 1, 2, 3, 5, 6, 9, 10, 13, 14, 17, 18];
    let (iw, ih) = (size.w(), size.h());
    let p0 = [hand[0][0] * iw, hand[0][1] * ih];
    // Mean of the index and ring MCPs, then with the middle MCP, in normalised units.
    let x1 = ((hand[5][0] + hand[13][0]) / 2.0 + hand[9][0]) / 2.0 * iw;
    let y1 = ((hand[5][1] + hand[13][1]) / 2.0 + hand[9][1]) / 2.0 * ih;
    let r = norm_rad(std::f32::consts::FRAC_PI_2 - (-(y1 - p0[1])).atan2(x1 - p0[0]));
    let reverse = norm_rad(-r);

    let aligned = landmarks_box(PARTIAL.iter().map(|&k| [hand[k][0], hand[k][1]]));
    let (cx, cy) = (
        aligned.xmin + aligned.w / 2.0,
        aligned.ymin + aligned.h / 2.0,
    );
    let (sr, cr) = reverse.sin_cos();
    let rotated = landmarks_box(PARTIAL.iter().map(|&k| {
        let (ox, oy) = ((hand[k][0] - cx) * iw, (hand[k][1] - cy) * ih);
        [ox * cr - oy * sr, ox * sr + oy * cr]
    }));
    let (pcx, pcy) = (
        rotated.xmin + rotated.w / 2.0,
        rotated.ymin + rotated.h / 2.0,
    );
    let (s, c) = r.sin_cos();
    let rect = NormRect {
        xc: (pcx * c - pcy * s + iw * cx) / iw,
        yc: (pcx * s + pcy * c + ih * cy) / ih,
        w: rotated.w / iw,
        h: rotated.h / ih,
        r,
    };
    transform_rect(rect, RectTransform::square(2.0, -0.1), size)
}

/// §7.5: the 21 landmarks projected through `roi`, or `None` when the hand
/// flag is at most 0.5.
///
/// # Shapes
/// `landmarks`: 21 × 3 in 224-px units; `flag`: a probability.
pub fn decode_landmarks(
    landmarks: &[f32],
    flag: f32,
    roi: &NormRect,
    crop: &CropTransform,
) -> Option<Vec<[f32; 3]>> {
    if !(flag > MIN_PRESENCE) {
        return None;
    }
    Some(
        landmarks
            .chunks_exact(3)
            .map(|p| {
                let q = crop.padding.remove([
                    p[0] / 224.0,
                    p[1] / 224.0,
                    p[2] / 224.0 / Z_NORMALIZATION,
                ]);
                project(q, roi)
            })
            .collect(),
    )
}

pub fn recrop_outputs(outs: &NetOutputs) -> Result<&[f32], super::ModelError> {
    outs.get(0, 4)
}

pub fn landmark_outputs(outs: &NetOutputs) -> Result<(&[f32], f32), super::ModelError> {
    Ok((outs.get(0, NUM_LANDMARKS * 3)?, outs.get(1, 1)?[0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::geometry::Padding;
    use crate::model::warp::PixelRoi;

    const SQ: ImageSize = ImageSize {
        width: 100,
        height: 100,
    };

    fn pose_with_left_hand(
        wrist: [f32; 2],
        pinky: [f32; 2],
        index: [f32; 2],
        vis: f32,
    ) -> Vec<RawLandmark> {
        let mut pose = vec![RawLandmark::default(); 33];
        pose[15] = RawLandmark {
            x: wrist[0],
            y: wrist[1],
            visibility: vis,
            ..Default::default()
        };
        pose[17] = RawLandmark {
            x: pinky[0],
            y: pinky[1],
            ..Default::default()
        };
        pose[19] = RawLandmark {
            x: index[0],
            y: index[1],
            ..Default::default()
        };
        pose
    }

    #[test]
    fn pose_roi_points_from_wrist_to_fingers() {
        // Hand pointing up: wrist (0.5, 0.6), pinky and index at y 0.5, x 0.47 and
        // 0.515 → middle (0.5, 0.5). Side 2·10 px = 20 px; shift −0.1·20 = −2 px
        // in y (towards the fingers); ×2.7 → 54 px.
        let pose = pose_with_left_hand([0.5, 0.6], [0.47, 0.5], [0.515, 0.5], 0.9);
        let roi = roi_from_pose(&pose, Side::Left, SQ).unwrap();
        assert!(
            (roi.xc - 0.5).abs() < 1e-5 && (roi.yc - 0.48).abs() < 1e-5,
            "{roi:?}"
        );
        assert!((roi.w - 0.54).abs() < 1e-5);
        assert!(roi.r.abs() < 1e-5);
        // The right hand's wrist has visibility 0: no ROI.
        assert!(roi_from_pose(&pose, Side::Right, SQ).is_none());
        // Visibility exactly 0.1 is not enough (strictly greater).
        let pose = pose_with_left_hand([0.5, 0.6], [0.47, 0.5], [0.515, 0.5], 0.1);
        assert!(roi_from_pose(&pose, Side::Left, SQ).is_none());
    }

    #[test]
    fn pose_roi_rotates_with_the_forearm() {
        // Fingers to the right of the wrist: the hand's up is screen-right, 90° clockwise.
        let pose = pose_with_left_hand([0.4, 0.5], [0.5, 0.5], [0.5, 0.5], 0.9);
        let roi = roi_from_pose(&pose, Side::Left, SQ).unwrap();
        assert!((roi.r - std::f32::consts::FRAC_PI_2).abs() < 1e-5);
        // The −0.1 shift moves the centre further towards the fingers (+x):
        // local (0, −2 px) → screen (+2 px, 0).
        assert!(
            (roi.xc - 0.52).abs() < 1e-5 && (roi.yc - 0.5).abs() < 1e-5,
            "{roi:?}"
        );
    }

    #[test]
    fn recrop_roi_from_two_points() {
        // ROI 0.5 wide centred (0.5, 0.5); points at tensor (128, 128) and (128, 64):
        // the centre, and a point a quarter of the crop above it = 12.5 px.
        // Side 25 px; target −90° with the vector pointing up: r = −90° − 90° = −π.
        let roi = NormRect {
            xc: 0.5,
            yc: 0.5,
            w: 0.5,
            h: 0.5,
            r: 0.0,
        };
        let crop = CropTransform {
            roi: PixelRoi {
                cx: 50.0,
                cy: 50.0,
                w: 50.0,
                h: 50.0,
                r: 0.0,
            },
            padding: Padding::default(),
        };
        let out = roi_from_recrop(&[128.0, 128.0, 128.0, 64.0], &roi, &crop, SQ);
        assert!((out.w - 0.25).abs() < 1e-5, "{out:?}");
        assert!((out.r.abs() - std::f32::consts::PI).abs() < 1e-5, "{out:?}");
        // Rotated by π, the −0.1 shift along local y moves the centre down by 2.5 px.
        assert!(
            (out.xc - 0.5).abs() < 1e-5 && (out.yc - 0.525).abs() < 1e-5,
            "{out:?}"
        );
    }

    #[test]
    fn landmarks_roi_of_an_upright_hand() {
        // Wrist at (0.5, 0.7), all MCPs at (0.5, 0.5): rotation 0. The 12 points
        // span x 0.45..0.55, y 0.5..0.7: box 10 x 20 px centred (0.5, 0.6);
        // shift −0.1·20 px → yc 0.58; square 20 px, ×2 → 0.4.
        let mut hand = vec![[0.5, 0.5, 0.0]; 21];
        hand[0] = [0.5, 0.7, 0.0];
        hand[1] = [0.45, 0.6, 0.0];
        hand[17] = [0.55, 0.55, 0.0];
        let roi = roi_from_landmarks(&hand, SQ);
        assert!(roi.r.abs() < 1e-5);
        assert!(
            (roi.xc - 0.5).abs() < 1e-5 && (roi.yc - 0.58).abs() < 1e-5,
            "{roi:?}"
        );
        assert!((roi.w - 0.4).abs() < 1e-5);
    }
}
