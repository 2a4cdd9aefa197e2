//! Face from pose (HOLISTIC_SPEC.md §6): a coarse ROI from pose landmarks
//! 0–10, the short-range face detector inside it, a re-crop ROI from the
//! detection's six keypoints, the tracking choice against the previous frame's
//! face, and the 468-landmark net.
//!
//! Pure functions of the face stages; the pipeline calls them in order and owns
//! the state.

use super::anchors::{Anchor, FACE_DETECTION_ANCHORS, ssd_anchors};
use super::detection::{DecodeOptions, Detection, decode, sigmoid, weighted_nms};
use super::geometry::{
    ImageSize, NormRect, RectTransform, box_rect, landmarks_box, project, transform_rect,
};
use super::nets::NetOutputs;
use super::pose::RawLandmark;
use super::warp::{Border, CropTransform, TensorSpec, ValueRange};

/// `face_detection_short_range`: the pose-derived ROI at 128, letterboxed, zero border, [−1, 1].
pub const DETECTION_TENSOR: TensorSpec = TensorSpec {
    size: 128,
    keep_aspect: true,
    border: Border::Zero,
    range: ValueRange::MINUS_ONE_ONE,
};
/// `face_landmark`: the tracking ROI at 192, stretched (no letterbox), replicated border, [0, 1].
pub const LANDMARK_TENSOR: TensorSpec = TensorSpec {
    size: 192,
    keep_aspect: false,
    border: Border::Replicate,
    range: ValueRange::ZERO_ONE,
};

pub const NUM_LANDMARKS: usize = 468;
const NUM_ANCHORS: usize = 896;
/// The face detector's own threshold (not tied to `min_detection_confidence`).
const MIN_DETECTION_SCORE: f32 = 0.5;
const NMS_IOU: f32 = 0.3;
/// The face flag is a logit; present iff σ(flag) > 0.5.
const MIN_PRESENCE: f32 = 0.5;

/// Limits of `RoiTrackingCalculator` for the face (`face_tracking.pbtxt`).
pub const TRACKING: super::tracking::RoiTrackingLimits = super::tracking::RoiTrackingLimits {
    rotation_degrees: 15.0,
    translation: 0.1,
    scale: 0.3,
    recrop_margin: -0.2,
};

pub fn anchors() -> Vec<Anchor> {
    ssd_anchors(&FACE_DETECTION_ANCHORS)
}

/// §6.1: the box of pose landmarks 0–10, rotated by right eye (5) → left eye (2),
/// squared and tripled. `pose` must hold at least 11 landmarks.
pub fn roi_from_pose(pose: &[RawLandmark], size: ImageSize) -> NormRect {
    let head = &pose[..11];
    let bbox = landmarks_box(head.iter().map(RawLandmark::xy));
    let rect = box_rect(bbox, head[5].xy(), head[2].xy(), 0.0, size);
    transform_rect(rect, RectTransform::square(3.0, 0.0), size)
}

/// §6.2: the best face detection in the crop, keypoints in image-normalised
/// coordinates (projected through the letterbox-padded ROI).
///
/// # Shapes
/// `regressors`: 896 × 16 (box XYWH + 6 keypoints, 128-px units); `scores`: 896 logits.
pub fn best_detection(
    regressors: &[f32],
    scores: &[f32],
    anchors: &[Anchor],
    crop: &CropTransform,
    size: ImageSize,
) -> Option<Detection> {
    let opts = DecodeOptions {
        num_coords: 16,
        num_keypoints: 6,
        scale: 128.0,
        min_score: MIN_DETECTION_SCORE,
    };
    let mut best = weighted_nms(decode(regressors, scores, anchors, &opts), NMS_IOU)
        .into_iter()
        .next()?;
    for kp in &mut best.keypoints {
        *kp = crop.roi.to_image(kp[0], kp[1], size.width, size.height);
    }
    Some(best)
}

/// §6.3: the re-crop ROI from the detection's six keypoints (box of the
/// keypoints, rotation right eye → left eye), doubled and shifted up by a tenth.
pub fn roi_from_detection(det: &Detection, size: ImageSize) -> NormRect {
    let bbox = landmarks_box(det.keypoints.iter().copied());
    let rect = box_rect(bbox, det.keypoints[0], det.keypoints[1], 0.0, size);
    transform_rect(rect, RectTransform::square(2.0, -0.1), size)
}

/// §6.5: the rect the previous frame's face landmarks give (box of all 468,
/// rotation landmark 33 → 263), ×1.5 and squared.
pub fn roi_from_landmarks(face: &[[f32; 3]], size: ImageSize) -> NormRect {
    let bbox = landmarks_box(face.iter().map(|p| [p[0], p[1]]));
    let (a, b) = (face[33], face[263]);
    let rect = box_rect(bbox, [a[0], a[1]], [b[0], b[1]], 0.0, size);
    transform_rect(rect, RectTransform::square(1.5, 0.0), size)
}

/// §6.4: the 468 landmarks projected through `roi`, or `None` when the face
/// flag says no face.
///
/// # Shapes
/// `landmarks`: 468 × 3 in 192-px units; `flag`: one logit.
pub fn decode_landmarks(landmarks: &[f32], flag: f32, roi: &NormRect) -> Option<Vec<[f32; 3]>> {
    if !(sigmoid(flag) > MIN_PRESENCE) {
        return None;
    }
    Some(
        landmarks
            .chunks_exact(3)
            .map(|p| project([p[0] / 192.0, p[1] / 192.0, p[2] / 192.0], roi))
            .collect(),
    )
}

pub fn detection_outputs(outs: &NetOutputs) -> Result<(&[f32], &[f32]), super::ModelError> {
    Ok((outs.get(0, NUM_ANCHORS * 16)?, outs.get(1, NUM_ANCHORS)?))
}

pub fn landmark_outputs(outs: &NetOutputs) -> Result<(&[f32], f32), super::ModelError> {
    Ok((outs.get(0, NUM_LANDMARKS * 3)?, outs.get(1, 1)?[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQ: ImageSize = ImageSize {
        width: 100,
        height: 100,
    };

    #[test]
    fn pose_roi_is_three_times_the_head_box() {
        // Eleven head points spanning x 0.4..0.6, y 0.2..0.3; eyes level → r = 0.
        let mut head = vec![
            RawLandmark {
                x: 0.5,
                y: 0.25,
                ..Default::default()
            };
            11
        ];
        head[0].x = 0.4;
        head[1].x = 0.6;
        head[3].y = 0.2;
        head[4].y = 0.3;
        head[5] = RawLandmark {
            x: 0.45,
            y: 0.25,
            ..Default::default()
        };
        head[2] = RawLandmark {
            x: 0.55,
            y: 0.25,
            ..Default::default()
        };
        let roi = roi_from_pose(&head, SQ);
        assert!((roi.xc - 0.5).abs() < 1e-6 && (roi.yc - 0.25).abs() < 1e-6);
        // Long side 0.2 → ×3 = 0.6.
        assert!((roi.w - 0.6).abs() < 1e-6 && (roi.h - 0.6).abs() < 1e-6);
        assert!(roi.r.abs() < 1e-6);
    }

    #[test]
    fn detection_roi_is_shifted_towards_the_forehead() {
        // Keypoints: right eye (0.4, 0.5), left eye (0.6, 0.5), others inside
        // y 0.5..0.7. Box 0.2 x 0.2 centred (0.5, 0.6); shift −0.1·0.2 → yc 0.58;
        // ×2 → 0.4.
        let det = Detection {
            score: 0.9,
            bbox: Default::default(),
            keypoints: vec![
                [0.4, 0.5],
                [0.6, 0.5],
                [0.5, 0.6],
                [0.5, 0.7],
                [0.45, 0.55],
                [0.55, 0.55],
            ],
        };
        let roi = roi_from_detection(&det, SQ);
        assert!(
            (roi.xc - 0.5).abs() < 1e-6 && (roi.yc - 0.58).abs() < 1e-6,
            "{roi:?}"
        );
        assert!((roi.w - 0.4).abs() < 1e-6);
        assert!(roi.r.abs() < 1e-6);
    }

    #[test]
    fn head_tilted_rotates_the_roi() {
        // Left eye lower than the right eye on screen by the same amount as it is
        // to the right: the face is turned 45° clockwise.
        let det = Detection {
            score: 0.9,
            bbox: Default::default(),
            keypoints: vec![
                [0.4, 0.4],
                [0.6, 0.6],
                [0.5, 0.5],
                [0.5, 0.5],
                [0.5, 0.5],
                [0.5, 0.5],
            ],
        };
        let roi = roi_from_detection(&det, SQ);
        assert!(
            (roi.r - std::f32::consts::FRAC_PI_4).abs() < 1e-6,
            "{}",
            roi.r
        );
    }

    #[test]
    fn face_flag_gates_landmarks() {
        let roi = NormRect {
            xc: 0.5,
            yc: 0.5,
            w: 0.5,
            h: 0.5,
            r: 0.0,
        };
        let raw = vec![96.0f32; NUM_LANDMARKS * 3];
        assert!(decode_landmarks(&raw, -1.0, &roi).is_none());
        let lms = decode_landmarks(&raw, 1.0, &roi).unwrap();
        // Tensor centre (0.5, 0.5) maps to the ROI centre; z = 0.5·w.
        assert_eq!(lms.len(), NUM_LANDMARKS);
        assert_eq!(lms[0], [0.5, 0.5, 0.25]);
    }
}
