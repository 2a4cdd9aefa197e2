//! MediaPipe's rect geometry: the primitives P1–P6 of `HOLISTIC_SPEC.md` §0.1.
//!
//! Conventions (the same in every MediaPipe calculator we follow): a
//! [`NormRect`] has its centre and width normalised by the image width and its
//! height normalised by the image height; `r` is in radians and a positive `r`
//! turns the rect's local axes clockwise on screen (image y points down).
//! Arithmetic is `f32` like MediaPipe's protos, so rounding follows theirs.
//!
//! Pure geometry; it knows no net and no image.

use serde::{Deserialize, Serialize};
use std::f32::consts::PI;

/// A rotated rectangle in normalised image coordinates (MediaPipe's `NormalizedRect`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NormRect {
    /// Centre x, as a fraction of the image width.
    pub xc: f32,
    /// Centre y, as a fraction of the image height.
    pub yc: f32,
    /// Width, as a fraction of the image width.
    pub w: f32,
    /// Height, as a fraction of the image height.
    pub h: f32,
    /// Rotation in radians, clockwise on screen.
    pub r: f32,
}

/// Image size in pixels; the unit that turns normalised coordinates into px.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

impl ImageSize {
    pub fn w(self) -> f32 {
        self.width as f32
    }
    pub fn h(self) -> f32 {
        self.height as f32
    }
}

/// Wraps an angle to [-π, π) as MediaPipe's `NormalizeRadians`.
pub fn norm_rad(a: f32) -> f32 {
    a - 2.0 * PI * ((a + PI) / (2.0 * PI)).floor()
}

/// Rotation of the vector p0→p1 (normalised points, turned into px) relative to
/// a target angle: `NormRad(target − atan2(−(y1−y0), x1−x0))`
/// (`DetectionsToRectsCalculator::ComputeRotation`).
pub fn rotation_from_points(p0: [f32; 2], p1: [f32; 2], target_rad: f32, size: ImageSize) -> f32 {
    let (x0, y0) = (p0[0] * size.w(), p0[1] * size.h());
    let (x1, y1) = (p1[0] * size.w(), p1[1] * size.h());
    norm_rad(target_rad - (-(y1 - y0)).atan2(x1 - x0))
}

/// P1 (`AlignmentPointsRectsCalculator`): centre at `p0`, side twice the
/// distance p0→p1 in px, rotation of p0→p1 against `target_deg`.
pub fn alignment_rect(p0: [f32; 2], p1: [f32; 2], target_deg: f32, size: ImageSize) -> NormRect {
    let (x0, y0) = (p0[0] * size.w(), p0[1] * size.h());
    let (x1, y1) = (p1[0] * size.w(), p1[1] * size.h());
    let side = 2.0 * ((x1 - x0).powi(2) + (y1 - y0).powi(2)).sqrt();
    NormRect {
        xc: x0 / size.w(),
        yc: y0 / size.h(),
        w: side / size.w(),
        h: side / size.h(),
        r: rotation_from_points(p0, p1, target_deg.to_radians(), size),
    }
}

/// An axis-aligned box in normalised coordinates (`RelativeBoundingBox`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RelBox {
    pub xmin: f32,
    pub ymin: f32,
    pub w: f32,
    pub h: f32,
}

impl RelBox {
    pub fn area(&self) -> f32 {
        self.w * self.h
    }

    /// Intersection over union, 0 for boxes that do not overlap
    /// (`NonMaxSuppressionCalculator`'s `OverlapSimilarity`).
    pub fn iou(&self, other: &RelBox) -> f32 {
        let x0 = self.xmin.max(other.xmin);
        let y0 = self.ymin.max(other.ymin);
        let x1 = (self.xmin + self.w).min(other.xmin + other.w);
        let y1 = (self.ymin + self.h).min(other.ymin + other.h);
        if x1 < x0 || y1 < y0 {
            return 0.0;
        }
        let inter = (x1 - x0) * (y1 - y0);
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }
}

/// P2 (`DetectionsToRectsCalculator`, default conversion): the box's centre and
/// size, rotated by the keypoints `kp_start`→`kp_end` against `target_deg`.
pub fn box_rect(
    bbox: RelBox,
    kp_start: [f32; 2],
    kp_end: [f32; 2],
    target_deg: f32,
    size: ImageSize,
) -> NormRect {
    NormRect {
        xc: bbox.xmin + bbox.w / 2.0,
        yc: bbox.ymin + bbox.h / 2.0,
        w: bbox.w,
        h: bbox.h,
        r: rotation_from_points(kp_start, kp_end, target_deg.to_radians(), size),
    }
}

/// P3 (`LandmarksToDetectionCalculator`): the min/max box of the points.
///
/// MediaPipe starts the running maximum at `FLT_MIN` (the smallest positive
/// float), not at −∞, so a set of points all left of (or above) 0 gets a max of
/// ≈0; kept for parity on parts that leave the image.
pub fn landmarks_box(points: impl IntoIterator<Item = [f32; 2]>) -> RelBox {
    let (mut xmin, mut ymin) = (f32::MAX, f32::MAX);
    let (mut xmax, mut ymax) = (f32::MIN_POSITIVE, f32::MIN_POSITIVE);
    for [x, y] in points {
        xmin = xmin.min(x);
        ymin = ymin.min(y);
        xmax = xmax.max(x);
        ymax = ymax.max(y);
    }
    RelBox {
        xmin,
        ymin,
        w: xmax - xmin,
        h: ymax - ymin,
    }
}

/// Options of `RectTransformationCalculator` (P4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RectTransform {
    pub scale_x: f32,
    pub scale_y: f32,
    pub shift_x: f32,
    pub shift_y: f32,
    pub square_long: bool,
}

impl RectTransform {
    /// Square on the long side, scale by `scale`, shift `shift_y` along the rect's y.
    pub const fn square(scale: f32, shift_y: f32) -> RectTransform {
        RectTransform {
            scale_x: scale,
            scale_y: scale,
            shift_x: 0.0,
            shift_y,
            square_long: true,
        }
    }
}

/// P4 (`RectTransformationCalculator`): shift along the rotated axes using the
/// size before squaring and scaling, then square on the long side (in px), then scale.
pub fn transform_rect(rect: NormRect, t: RectTransform, size: ImageSize) -> NormRect {
    let (w_img, h_img) = (size.w(), size.h());
    let mut out = rect;
    if rect.r == 0.0 {
        out.xc += rect.w * t.shift_x;
        out.yc += rect.h * t.shift_y;
    } else {
        let (s, c) = rect.r.sin_cos();
        let dx = w_img * rect.w * t.shift_x * c - h_img * rect.h * t.shift_y * s;
        let dy = w_img * rect.w * t.shift_x * s + h_img * rect.h * t.shift_y * c;
        out.xc += dx / w_img;
        out.yc += dy / h_img;
    }
    if t.square_long {
        let long = (rect.w * w_img).max(rect.h * h_img);
        out.w = long / w_img;
        out.h = long / h_img;
    }
    out.w *= t.scale_x;
    out.h *= t.scale_y;
    out
}

/// Letterbox padding [left, top, right, bottom], as fractions of the tensor size.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Padding {
    pub left: f32,
    pub top: f32,
    pub right: f32,
    pub bottom: f32,
}

impl Padding {
    /// P5 (`LandmarkLetterboxRemovalCalculator`) on one point `[x, y, z]`.
    pub fn remove(&self, p: [f32; 3]) -> [f32; 3] {
        let sx = 1.0 - self.left - self.right;
        let sy = 1.0 - self.top - self.bottom;
        [(p[0] - self.left) / sx, (p[1] - self.top) / sy, p[2] / sx]
    }
}

/// P6 (`LandmarkProjectionCalculator`): a point normalised to the rect's crop
/// back to image-normalised coordinates; z scales with the rect width.
pub fn project(p: [f32; 3], rect: &NormRect) -> [f32; 3] {
    let (a, b) = (p[0] - 0.5, p[1] - 0.5);
    let (s, c) = rect.r.sin_cos();
    [
        (a * c - b * s) * rect.w + rect.xc,
        (a * s + b * c) * rect.h + rect.yc,
        p[2] * rect.w,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQ: ImageSize = ImageSize {
        width: 100,
        height: 100,
    };

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn norm_rad_wraps_to_half_open_interval() {
        assert!(close(norm_rad(0.5), 0.5));
        assert!(close(norm_rad(PI), -PI));
        assert!(close(norm_rad(-PI), -PI));
        assert!(close(norm_rad(3.0 * PI / 2.0), -PI / 2.0));
    }

    #[test]
    fn alignment_rect_upright_person_has_zero_rotation() {
        // Hip at (0.5, 0.6), body point straight above at (0.5, 0.4):
        // 20 px apart in a 100 px image → side 40 px; vector points up → r = 90° − 90° = 0.
        let r = alignment_rect([0.5, 0.6], [0.5, 0.4], 90.0, SQ);
        assert!(close(r.xc, 0.5) && close(r.yc, 0.6));
        assert!(close(r.w, 0.4) && close(r.h, 0.4));
        assert!(close(r.r, 0.0));
        // Body point to the right of the hip: the person lies on their side,
        // their "up" is screen-right, 90° clockwise.
        let r = alignment_rect([0.5, 0.5], [0.7, 0.5], 90.0, SQ);
        assert!(close(r.r, PI / 2.0), "{}", r.r);
    }

    #[test]
    fn alignment_rect_uses_pixels_not_normalised_units() {
        // 200x100 image: points 0.1 apart in x are 20 px apart, so side = 40 px,
        // w = 40/200 = 0.2, h = 40/100 = 0.4.
        let size = ImageSize {
            width: 200,
            height: 100,
        };
        let r = alignment_rect([0.5, 0.5], [0.6, 0.5], 0.0, size);
        assert!(close(r.w, 0.2) && close(r.h, 0.4));
        assert!(close(r.r, 0.0));
    }

    #[test]
    fn landmarks_box_keeps_mediapipe_flt_min_quirk() {
        let b = landmarks_box([[0.2, 0.3], [0.6, 0.1]]);
        assert!(close(b.xmin, 0.2) && close(b.ymin, 0.1) && close(b.w, 0.4) && close(b.h, 0.2));
        // All x negative: max stays at FLT_MIN ≈ 0, so the width reaches 0.
        let b = landmarks_box([[-0.3, 0.3], [-0.1, 0.5]]);
        assert!(close(b.xmin, -0.3) && close(b.w, 0.3));
    }

    #[test]
    fn transform_rect_shifts_before_squaring_and_scaling() {
        // Unrotated 0.2 x 0.4 rect: shift_y −0.1 moves yc by −0.04; square on the
        // long side → 0.4 x 0.4; scale 2 → 0.8 x 0.8.
        let rect = NormRect {
            xc: 0.5,
            yc: 0.5,
            w: 0.2,
            h: 0.4,
            r: 0.0,
        };
        let out = transform_rect(rect, RectTransform::square(2.0, -0.1), SQ);
        assert!(close(out.xc, 0.5) && close(out.yc, 0.46));
        assert!(close(out.w, 0.8) && close(out.h, 0.8));
        // Rotated 90° clockwise: a local offset (0, v) maps to (−v·sin r, v·cos r)
        // = (−v, 0), so the shift v = −0.1·0.4 = −0.04 moves the centre +0.04 in x.
        let rect = NormRect {
            r: PI / 2.0,
            ..rect
        };
        let out = transform_rect(rect, RectTransform::square(1.0, -0.1), SQ);
        assert!(close(out.xc, 0.54) && close(out.yc, 0.5), "{out:?}");
    }

    #[test]
    fn transform_rect_squares_in_pixels() {
        // 200x100 image, w = 0.5 (100 px), h = 0.5 (50 px): long side 100 px →
        // w = 0.5, h = 1.0.
        let size = ImageSize {
            width: 200,
            height: 100,
        };
        let rect = NormRect {
            xc: 0.5,
            yc: 0.5,
            w: 0.5,
            h: 0.5,
            r: 0.0,
        };
        let out = transform_rect(rect, RectTransform::square(1.0, 0.0), size);
        assert!(close(out.w, 0.5) && close(out.h, 1.0));
    }

    #[test]
    fn letterbox_removal_undoes_padding() {
        // Tensor padded 25% top and bottom: tensor y 0.25 is image top, 0.75 image bottom.
        let pad = Padding {
            left: 0.0,
            top: 0.25,
            right: 0.0,
            bottom: 0.25,
        };
        assert_eq!(pad.remove([0.5, 0.25, 0.1]), [0.5, 0.0, 0.1]);
        assert_eq!(pad.remove([0.5, 0.75, 0.1]), [0.5, 1.0, 0.1]);
        let pad = Padding {
            left: 0.25,
            top: 0.0,
            right: 0.25,
            bottom: 0.0,
        };
        assert_eq!(pad.remove([0.75, 0.5, 0.1]), [1.0, 0.5, 0.2]);
    }

    #[test]
    fn projection_maps_crop_corners_through_rotation() {
        let rect = NormRect {
            xc: 0.5,
            yc: 0.5,
            w: 0.2,
            h: 0.2,
            r: 0.0,
        };
        let p = project([1.0, 0.0, 0.5], &rect);
        assert!(close(p[0], 0.6) && close(p[1], 0.4) && close(p[2], 0.1));
        // Rotated 90° clockwise: the crop's right edge centre (1, 0.5) lands below the centre.
        let rect = NormRect {
            r: PI / 2.0,
            ..rect
        };
        let p = project([1.0, 0.5, 0.0], &rect);
        assert!(close(p[0], 0.5) && close(p[1], 0.6), "{p:?}");
    }

    #[test]
    fn iou_of_boxes() {
        let a = RelBox {
            xmin: 0.0,
            ymin: 0.0,
            w: 2.0,
            h: 2.0,
        };
        let b = RelBox {
            xmin: 1.0,
            ymin: 0.0,
            w: 2.0,
            h: 2.0,
        };
        // inter 2, union 4 + 4 − 2 = 6.
        assert!(close(a.iou(&b), 1.0 / 3.0));
        let c = RelBox {
            xmin: 5.0,
            ymin: 5.0,
            w: 1.0,
            h: 1.0,
        };
        assert_eq!(a.iou(&c), 0.0);
    }
}
