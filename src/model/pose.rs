//! Pose stages: detection on the whole image (§2), detection → ROI (§3), the
//! 256×256 landmark net with heatmap refinement and projection (§4), and the
//! next frame's ROI from the auxiliary landmarks (§5). Section numbers refer to
//! HOLISTIC_SPEC.md.
//!
//! Pure functions of the pose stages; the pipeline calls them in order and owns
//! the state.

use super::anchors::{Anchor, POSE_DETECTION_ANCHORS, ssd_anchors};
use super::detection::{DecodeOptions, Detection, decode, sigmoid, weighted_nms};
use super::geometry::{
    ImageSize, NormRect, Padding, RectTransform, alignment_rect, transform_rect,
};
use super::nets::NetOutputs;
use super::warp::{Border, CropTransform, TensorSpec, ValueRange};
use serde::{Deserialize, Serialize};

/// `pose_detection`: whole image letterboxed to 224, zero border, [−1, 1].
pub const DETECTION_TENSOR: TensorSpec = TensorSpec {
    size: 224,
    keep_aspect: true,
    border: Border::Zero,
    range: ValueRange::MINUS_ONE_ONE,
};
/// `pose_landmark_full`: the pose ROI at 256, replicated border, [0, 1].
pub const LANDMARK_TENSOR: TensorSpec = TensorSpec {
    size: 256,
    keep_aspect: true,
    border: Border::Replicate,
    range: ValueRange::ZERO_ONE,
};

/// Python's `min_detection_confidence` default, which overrides the detector's `min_score_thresh`.
pub const MIN_DETECTION_SCORE: f32 = 0.5;
/// Python's `min_tracking_confidence` default: the pose flag must exceed it.
pub const MIN_PRESENCE: f32 = 0.5;
const NMS_IOU: f32 = 0.3;

/// Number of landmarks the pose net predicts: 33 body, 2 auxiliary (ROI), 4 unused.
pub const NUM_NET_LANDMARKS: usize = 39;
/// Body landmarks in the output.
pub const NUM_POSE_LANDMARKS: usize = 33;
const HEATMAP_SIDE: usize = 64;
/// The refinement window. HOLISTIC_SPEC.md §4.3 says 7 (the v0.10.14
/// `pose_landmark_by_roi_cpu.pbtxt`), but the graph compiled into the 0.10.14
/// wheel uses 9: with 9 our pose matches the golden outputs to ~0.005% of the
/// body diagonal, with 7 only to ~0.3% (and elbows/wrists jump by cells).
const HEATMAP_KERNEL: usize = 9;
const MIN_CONFIDENCE_TO_REFINE: f32 = 0.5;

/// A landmark with MediaPipe's optional visibility and presence, normalised to
/// the image (x by width, y by height, z by width).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RawLandmark {
    pub x: f32,
    pub y: f32,
    pub z: f32,
    pub visibility: f32,
    pub presence: f32,
}

impl RawLandmark {
    pub fn xy(&self) -> [f32; 2] {
        [self.x, self.y]
    }
}

/// What the pose landmark stage produced for one frame.
#[derive(Clone, Debug, PartialEq)]
pub struct PoseLandmarks {
    /// The 33 body landmarks, projected to the image.
    pub body: Vec<RawLandmark>,
    /// Auxiliary landmarks 33 and 34: ROI centre and its size/rotation point.
    pub aux: [RawLandmark; 2],
}

/// The anchors of the pose detector (2254), generated once per worker.
pub fn anchors() -> Vec<Anchor> {
    ssd_anchors(&POSE_DETECTION_ANCHORS)
}

/// Decodes the detector's outputs into the best detection, in image-normalised
/// coordinates, or `None` when no anchor scores ≥ `MIN_DETECTION_SCORE`.
///
/// # Shapes
/// `boxes`: 2254 × 12 (`[xc, yc, w, h, kp0x, kp0y, … kp3y]` in 224-px units);
/// `scores`: 2254 logits.
pub fn best_detection(
    boxes: &[f32],
    scores: &[f32],
    anchors: &[Anchor],
    crop: &CropTransform,
) -> Option<Detection> {
    detections(boxes, scores, anchors, crop).into_iter().next()
}

/// Every detection after weighted NMS, in score order, in image-normalised
/// coordinates: MediaPipe's graph keeps the first ([`best_detection`]); the
/// multi-person pipeline takes them all.
pub fn detections(
    boxes: &[f32],
    scores: &[f32],
    anchors: &[Anchor],
    crop: &CropTransform,
) -> Vec<Detection> {
    let opts = DecodeOptions {
        num_coords: 12,
        num_keypoints: 4,
        scale: 224.0,
        min_score: MIN_DETECTION_SCORE,
    };
    let mut all = weighted_nms(decode(boxes, scores, anchors, &opts), NMS_IOU);
    for d in &mut all {
        d.remove_letterbox(&crop.padding);
    }
    all
}

/// §3: ROI from the detection's keypoints 0 (mid-hip) and 1 (body size and
/// rotation point), at 90°, scaled 1.25 and squared.
pub fn detection_to_roi(det: &Detection, size: ImageSize) -> NormRect {
    let rect = alignment_rect(det.keypoints[0], det.keypoints[1], 90.0, size);
    transform_rect(rect, RectTransform::square(1.25, 0.0), size)
}

/// §5: the next frame's ROI, same recipe on the (smoothed) auxiliary landmarks.
pub fn aux_to_roi(aux: &[RawLandmark; 2], size: ImageSize) -> NormRect {
    transform_rect(
        aux_alignment_rect(aux, size),
        RectTransform::square(1.25, 0.0),
        size,
    )
}

/// The aux landmarks' rect before scaling: the smoothing filters' object scale (§8).
pub fn aux_alignment_rect(aux: &[RawLandmark; 2], size: ImageSize) -> NormRect {
    alignment_rect(aux[0].xy(), aux[1].xy(), 90.0, size)
}

/// §4: decodes the landmark net's outputs for the crop `crop` of `roi`;
/// `None` when the pose flag is not above `MIN_PRESENCE`.
///
/// # Shapes
/// `landmarks`: 39 × 5 (x, y, z in 256-px units, visibility and presence logits);
/// `flag`: 1 (already a probability); `heatmap`: 64 × 64 × 39 logits (HWC).
pub fn decode_landmarks(
    landmarks: &[f32],
    flag: f32,
    heatmap: &[f32],
    roi: &NormRect,
    crop: &CropTransform,
) -> Option<PoseLandmarks> {
    if !(flag > MIN_PRESENCE) {
        return None;
    }
    let mut lms: Vec<RawLandmark> = (0..NUM_NET_LANDMARKS)
        .map(|k| {
            let r = &landmarks[5 * k..5 * k + 5];
            RawLandmark {
                x: r[0] / 256.0,
                y: r[1] / 256.0,
                z: r[2] / 256.0,
                visibility: sigmoid(r[3]),
                presence: sigmoid(r[4]),
            }
        })
        .collect();
    refine_from_heatmap(&mut lms, heatmap);
    let project = |lm: &RawLandmark| project_landmark(lm, &crop.padding, roi);
    let body = lms[..NUM_POSE_LANDMARKS].iter().map(project).collect();
    let aux = [project(&lms[33]), project(&lms[34])];
    Some(PoseLandmarks { body, aux })
}

fn project_landmark(lm: &RawLandmark, pad: &Padding, roi: &NormRect) -> RawLandmark {
    let p = super::geometry::project(pad.remove([lm.x, lm.y, lm.z]), roi);
    RawLandmark {
        x: p[0],
        y: p[1],
        z: p[2],
        ..*lm
    }
}

/// `RefineLandmarksFromHeatmapCalculator` (kernel 9): moves x, y to the
/// sigmoid-weighted mean cell of a 9×9 window around the landmark, when the
/// window's peak is at least 0.5. Coordinates are tensor-normalised.
///
/// MediaPipe's bounds check compares the row against the width by mistake
/// (`center_col >= hm_height`), so rows 64..66 still refine from the clipped
/// window; kept for parity.
pub fn refine_from_heatmap(lms: &mut [RawLandmark], heatmap: &[f32]) {
    let side = HEATMAP_SIDE as i64;
    let channels = lms.len();
    let offset = (HEATMAP_KERNEL as i64 - 1) / 2;
    for (k, lm) in lms.iter_mut().enumerate() {
        // C++ float → int conversion truncates toward zero.
        let col = (lm.x * side as f32) as i64;
        let row = (lm.y * side as f32) as i64;
        if col < 0 || col >= side || row < 0 {
            continue;
        }
        let (c0, c1) = ((col - offset).max(0), (col + offset + 1).min(side));
        let (r0, r1) = ((row - offset).max(0), (row + offset + 1).min(side));
        let (mut sum, mut wcol, mut wrow, mut max) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
        for r in r0..r1 {
            for c in c0..c1 {
                let v = sigmoid(heatmap[(r * side + c) as usize * channels + k]);
                sum += v;
                max = max.max(v);
                wcol += c as f32 * v;
                wrow += r as f32 * v;
            }
        }
        if max >= MIN_CONFIDENCE_TO_REFINE && sum > 0.0 {
            lm.x = wcol / side as f32 / sum;
            lm.y = wrow / side as f32 / sum;
        }
    }
}

/// Reads the pose detector's outputs.
pub fn detection_outputs(outs: &NetOutputs) -> Result<(&[f32], &[f32]), super::ModelError> {
    Ok((outs.get(0, 2254 * 12)?, outs.get(1, 2254)?))
}

/// Reads the pose landmark net's outputs: landmarks, flag, heatmap.
///
/// The TFLite model has five outputs (landmarks, flag, segmentation, heatmap,
/// world landmarks); our converter prunes the unused segmentation head, which
/// moves the heatmap from index 3 to 2. Both layouts are accepted.
pub fn landmark_outputs(outs: &NetOutputs) -> Result<(&[f32], f32, &[f32]), super::ModelError> {
    let hm = HEATMAP_SIDE * HEATMAP_SIDE * NUM_NET_LANDMARKS;
    let heatmap_index = if outs.tensors.len() == 5 { 3 } else { 2 };
    Ok((
        outs.get(0, NUM_NET_LANDMARKS * 5)?,
        outs.get(1, 1)?[0],
        outs.get(heatmap_index, hm)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heatmap_with(cells: &[(usize, usize, usize, f32)]) -> Vec<f32> {
        // Logit −20 ≈ probability 0 everywhere else.
        let mut hm = vec![-20.0f32; 64 * 64 * 2];
        for &(row, col, k, logit) in cells {
            hm[(row * 64 + col) * 2 + k] = logit;
        }
        hm
    }

    #[test]
    fn heatmap_refinement_moves_to_weighted_cell_mean() {
        // Landmark 0 at cell (row 10, col 20); two confident cells (row 10, col 21)
        // and (row 12, col 21) with equal weight → (col 21, row 11) / 64.
        let hm = heatmap_with(&[(10, 21, 0, 20.0), (12, 21, 0, 20.0)]);
        let mut lms = vec![
            RawLandmark {
                x: 20.5 / 64.0,
                y: 10.5 / 64.0,
                ..Default::default()
            },
            RawLandmark {
                x: 0.5,
                y: 0.5,
                ..Default::default()
            },
        ];
        refine_from_heatmap(&mut lms, &hm);
        assert!((lms[0].x - 21.0 / 64.0).abs() < 1e-4, "{}", lms[0].x);
        assert!((lms[0].y - 11.0 / 64.0).abs() < 1e-4, "{}", lms[0].y);
        // Landmark 1's window has no confident cell (max < 0.5): unchanged.
        assert_eq!((lms[1].x, lms[1].y), (0.5, 0.5));
    }

    #[test]
    fn heatmap_refinement_ignores_cells_outside_kernel_and_points_outside_map() {
        // Confident cell 5 columns away: outside the 9x9 window → no refinement.
        let hm = heatmap_with(&[(10, 25, 0, 20.0)]);
        let mut lms = vec![
            RawLandmark {
                x: 20.5 / 64.0,
                y: 10.5 / 64.0,
                ..Default::default()
            };
            2
        ];
        refine_from_heatmap(&mut lms, &hm);
        assert_eq!(lms[0].x, 20.5 / 64.0);
        // x = −0.5: col = −32 → left alone.
        let mut lms = vec![
            RawLandmark {
                x: -0.5,
                y: 0.5,
                ..Default::default()
            };
            2
        ];
        refine_from_heatmap(&mut lms, &heatmap_with(&[(32, 0, 0, 20.0)]));
        assert_eq!(lms[0].x, -0.5);
        // x = −0.01 truncates to col 0, so it is refined (C++ truncation).
        let mut lms = vec![
            RawLandmark {
                x: -0.01,
                y: 32.5 / 64.0,
                ..Default::default()
            };
            2
        ];
        refine_from_heatmap(&mut lms, &heatmap_with(&[(32, 0, 0, 20.0)]));
        assert!(lms[0].x.abs() < 1e-6);
    }

    #[test]
    fn heatmap_refinement_keeps_mediapipe_row_bound_quirk() {
        // Row 65 (y just below the map) still refines from rows 61..63.
        let hm = heatmap_with(&[(63, 10, 0, 20.0)]);
        let mut lms = vec![
            RawLandmark {
                x: 10.5 / 64.0,
                y: 65.5 / 64.0,
                ..Default::default()
            };
            2
        ];
        refine_from_heatmap(&mut lms, &hm);
        assert!((lms[0].y - 63.0 / 64.0).abs() < 1e-4);
    }

    #[test]
    fn detection_roi_for_upright_person() {
        // Hip at (0.5, 0.7), body point 0.2 above it in a 100x100 image: side
        // 2·20 px = 40 px, ×1.25 = 50 px → 0.5; upright, so no rotation.
        let det = Detection {
            score: 0.9,
            bbox: Default::default(),
            keypoints: vec![[0.5, 0.7], [0.5, 0.5], [0.0, 0.0], [0.0, 0.0]],
        };
        let roi = detection_to_roi(
            &det,
            ImageSize {
                width: 100,
                height: 100,
            },
        );
        assert!((roi.xc - 0.5).abs() < 1e-6 && (roi.yc - 0.7).abs() < 1e-6);
        assert!((roi.w - 0.5).abs() < 1e-6 && (roi.h - 0.5).abs() < 1e-6);
        assert!(roi.r.abs() < 1e-6);
    }
}
