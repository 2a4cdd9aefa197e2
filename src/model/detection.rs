//! SSD detections: decoding the detector's raw boxes (`TensorsToDetectionsCalculator`)
//! and weighted non-max suppression (`NonMaxSuppressionCalculator`),
//! HOLISTIC_SPEC.md §2.2–2.3 and §6.2.
//!
//! Pure functions on net outputs; it knows no image and no session.

use super::anchors::Anchor;
use super::geometry::{Padding, RelBox};

/// One detection in normalised coordinates (of the tensor until projected).
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    pub score: f32,
    pub bbox: RelBox,
    pub keypoints: Vec<[f32; 2]>,
}

/// How to read one detector's raw output (layout XYWH, then keypoints).
#[derive(Clone, Copy, Debug)]
pub struct DecodeOptions {
    /// Values per anchor in the box tensor.
    pub num_coords: usize,
    pub num_keypoints: usize,
    /// The tensor side; box and keypoint values are in tensor pixels.
    pub scale: f32,
    pub min_score: f32,
}

/// MediaPipe clips score logits to ±100 before the sigmoid.
const SCORE_CLIPPING: f32 = 100.0;

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Decodes every anchor whose score passes `min_score`.
///
/// # Shapes
/// `boxes`: `anchors.len() × num_coords`; `scores`: `anchors.len()` logits.
pub fn decode(
    boxes: &[f32],
    scores: &[f32],
    anchors: &[Anchor],
    opts: &DecodeOptions,
) -> Vec<Detection> {
    let mut out = Vec::new();
    for (i, a) in anchors.iter().enumerate() {
        let (Some(&logit), Some(raw)) = (
            scores.get(i),
            boxes.get(i * opts.num_coords..(i + 1) * opts.num_coords),
        ) else {
            break;
        };
        let score = sigmoid(logit.clamp(-SCORE_CLIPPING, SCORE_CLIPPING));
        if score < opts.min_score {
            continue;
        }
        let xc = raw[0] / opts.scale + a.xc;
        let yc = raw[1] / opts.scale + a.yc;
        let w = raw[2] / opts.scale;
        let h = raw[3] / opts.scale;
        // Negative or NaN sizes are dropped (`!(w >= 0)` catches NaN).
        if !(w >= 0.0) || !(h >= 0.0) {
            continue;
        }
        let keypoints = (0..opts.num_keypoints)
            .map(|k| {
                [
                    raw[4 + 2 * k] / opts.scale + a.xc,
                    raw[4 + 2 * k + 1] / opts.scale + a.yc,
                ]
            })
            .collect();
        out.push(Detection {
            score,
            bbox: RelBox {
                xmin: xc - w / 2.0,
                ymin: yc - h / 2.0,
                w,
                h,
            },
            keypoints,
        });
    }
    out
}

/// Weighted NMS with IoU > `threshold` as the cluster criterion: each cluster
/// becomes one detection with its best score and the score-weighted mean box
/// (as xmin/ymin/xmax/ymax) and keypoints. Output is best first.
pub fn weighted_nms(mut detections: Vec<Detection>, threshold: f32) -> Vec<Detection> {
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut remaining: Vec<usize> = (0..detections.len()).collect();
    let mut out = Vec::new();
    while let Some(&top) = remaining.first() {
        let before = remaining.len();
        let top_box = detections[top].bbox;
        let (cluster, rest): (Vec<usize>, Vec<usize>) = remaining
            .iter()
            .partition(|&&i| detections[i].bbox.iou(&top_box) > threshold);
        let mut merged = detections[top].clone();
        if !cluster.is_empty() {
            let nk = merged.keypoints.len();
            let (mut x0, mut y0, mut x1, mut y1, mut total) =
                (0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32);
            let mut kps = vec![[0.0f32; 2]; nk];
            for &i in &cluster {
                let d = &detections[i];
                let s = d.score;
                total += s;
                x0 += d.bbox.xmin * s;
                y0 += d.bbox.ymin * s;
                x1 += (d.bbox.xmin + d.bbox.w) * s;
                y1 += (d.bbox.ymin + d.bbox.h) * s;
                for (acc, kp) in kps.iter_mut().zip(&d.keypoints) {
                    acc[0] += kp[0] * s;
                    acc[1] += kp[1] * s;
                }
            }
            let (xmin, ymin) = (x0 / total, y0 / total);
            merged.bbox = RelBox {
                xmin,
                ymin,
                w: x1 / total - xmin,
                h: y1 / total - ymin,
            };
            merged.keypoints = kps
                .into_iter()
                .map(|[x, y]| [x / total, y / total])
                .collect();
        }
        out.push(merged);
        // MediaPipe stops when a round removes nothing (only possible with a
        // NaN box, which never overlaps itself).
        if rest.len() == before {
            break;
        }
        remaining = rest;
    }
    out
}

impl Detection {
    /// P5 for detections (`DetectionLetterboxRemovalCalculator`).
    pub fn remove_letterbox(&mut self, pad: &Padding) {
        let sx = 1.0 - pad.left - pad.right;
        let sy = 1.0 - pad.top - pad.bottom;
        self.bbox = RelBox {
            xmin: (self.bbox.xmin - pad.left) / sx,
            ymin: (self.bbox.ymin - pad.top) / sy,
            w: self.bbox.w / sx,
            h: self.bbox.h / sy,
        };
        for kp in &mut self.keypoints {
            kp[0] = (kp[0] - pad.left) / sx;
            kp[1] = (kp[1] - pad.top) / sy;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(score: f32, xmin: f32, w: f32, kp: f32) -> Detection {
        Detection {
            score,
            bbox: RelBox {
                xmin,
                ymin: 0.0,
                w,
                h: 1.0,
            },
            keypoints: vec![[kp, kp]],
        }
    }

    #[test]
    fn decode_applies_anchor_scale_and_sigmoid() {
        let anchors = [Anchor { xc: 0.5, yc: 0.25 }, Anchor { xc: 0.1, yc: 0.1 }];
        let opts = DecodeOptions {
            num_coords: 6,
            num_keypoints: 1,
            scale: 100.0,
            min_score: 0.5,
        };
        #[rustfmt::skip]
        let boxes = [
            10.0, -5.0, 20.0, 40.0, 0.0, 50.0, // anchor 0
            0.0, 0.0, 10.0, 10.0, 0.0, 0.0,    // anchor 1: score too low
        ];
        let scores = [0.0, -1.0]; // σ(0) = 0.5 passes (≥), σ(−1) ≈ 0.27 does not.
        let d = decode(&boxes, &scores, &anchors, &opts);
        assert_eq!(d.len(), 1);
        // centre (0.6, 0.2), size (0.2, 0.4) → xmin 0.5, ymin 0.0.
        let b = d[0].bbox;
        assert!((b.xmin - 0.5).abs() < 1e-6 && (b.ymin - 0.0).abs() < 1e-6);
        assert!((b.w - 0.2).abs() < 1e-6 && (b.h - 0.4).abs() < 1e-6);
        assert_eq!(d[0].score, 0.5);
        assert!(
            (d[0].keypoints[0][0] - 0.5).abs() < 1e-6 && (d[0].keypoints[0][1] - 0.75).abs() < 1e-6
        );
    }

    #[test]
    fn decode_drops_negative_and_nan_sizes_and_clips_scores() {
        let anchors = [Anchor { xc: 0.0, yc: 0.0 }; 3];
        let opts = DecodeOptions {
            num_coords: 4,
            num_keypoints: 0,
            scale: 1.0,
            min_score: 0.5,
        };
        let boxes = [
            0.0,
            0.0,
            -1.0,
            1.0,
            0.0,
            0.0,
            f32::NAN,
            1.0,
            0.0,
            0.0,
            1.0,
            1.0,
        ];
        let d = decode(&boxes, &[5.0, 5.0, 1e6], &anchors, &opts);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].score, sigmoid(100.0));
    }

    #[test]
    fn weighted_nms_merges_overlapping_boxes_by_score() {
        // a (0.6) and b (0.2) overlap with IoU 0.9/1.1 > 0.3; c is far away.
        let a = det(0.6, 0.0, 1.0, 1.0);
        let b = det(0.2, 0.1, 1.0, 3.0);
        let c = det(0.4, 5.0, 1.0, 9.0);
        let out = weighted_nms(vec![b, c.clone(), a], 0.3);
        assert_eq!(out.len(), 2);
        // Cluster {a, b}: score 0.6, xmin = (0·0.6 + 0.1·0.2)/0.8 = 0.025,
        // xmax = (1·0.6 + 1.1·0.2)/0.8 = 1.025, keypoint (1·0.6 + 3·0.2)/0.8 = 1.5.
        assert_eq!(out[0].score, 0.6);
        assert!((out[0].bbox.xmin - 0.025).abs() < 1e-6);
        assert!((out[0].bbox.w - 1.0).abs() < 1e-6);
        assert!((out[0].keypoints[0][0] - 1.5).abs() < 1e-6);
        // c alone keeps its box and keypoint (up to the weighting's rounding).
        assert_eq!(out[1].score, c.score);
        assert!((out[1].bbox.xmin - 5.0).abs() < 1e-5 && (out[1].bbox.w - 1.0).abs() < 1e-5);
        assert!((out[1].keypoints[0][0] - 9.0).abs() < 1e-5);
    }

    #[test]
    fn weighted_nms_keeps_touching_but_low_iou_boxes_apart() {
        // IoU = 0.25/1.75 ≈ 0.14 < 0.3.
        let a = det(0.9, 0.0, 1.0, 0.0);
        let b = det(0.8, 0.75, 1.0, 0.0);
        assert_eq!(weighted_nms(vec![a, b], 0.3).len(), 2);
        assert!(weighted_nms(vec![], 0.3).is_empty());
    }

    #[test]
    fn letterbox_removal_on_detection() {
        let mut d = Detection {
            score: 1.0,
            bbox: RelBox {
                xmin: 0.5,
                ymin: 0.25,
                w: 0.2,
                h: 0.25,
            },
            keypoints: vec![[0.5, 0.75]],
        };
        d.remove_letterbox(&Padding {
            left: 0.0,
            top: 0.25,
            right: 0.0,
            bottom: 0.25,
        });
        assert_eq!(
            d.bbox,
            RelBox {
                xmin: 0.5,
                ymin: 0.0,
                w: 0.2,
                h: 0.5
            }
        );
        assert_eq!(d.keypoints[0], [0.5, 1.0]);
    }
}
