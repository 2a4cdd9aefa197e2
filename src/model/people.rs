//! More than one person per frame, our extension of the single-person graph:
//! what one person's stages found ([`PersonFound`]), which detection is a
//! person already found ([`same_person`]), and the frame with the people
//! found so far painted over ([`without_faces`]), on which the detector finds
//! the neighbours its weighted NMS merged into them.
//!
//! Pure functions and data: the pipeline (`pipeline.rs`) runs the nets and
//! decides the order; nothing here runs a net or keeps state between frames.

use image::{Rgb, RgbImage};

use super::Parts;
use super::geometry::{ImageSize, NormRect};
use super::pose::PoseLandmarks;
use super::result::{HolisticResult, Landmark, Person, PoseLandmark, landmarks};

/// Detection passes after the first, each on the frame with everyone found so
/// far painted over; a pass that finds nobody new ends them.
pub const RECALL_PASSES: usize = 2;

/// A detection whose ROI overlaps a found person's by more than this (IoU of
/// their bounds) is that person.
pub const SAME_PERSON_IOU: f32 = 0.5;

/// What one person's stages found in a frame.
#[derive(Clone, Debug)]
pub(crate) struct PersonFound {
    /// The pose ROI its own landmarks give (`aux_to_roi`): where the person
    /// is, for telling people apart.
    pub(crate) roi: NormRect,
    pub(crate) pose: PoseLandmarks,
    pub(crate) face: Option<Vec<[f32; 3]>>,
    /// [left, right].
    pub(crate) hands: [Option<Vec<[f32; 3]>>; 2],
}

impl PersonFound {
    /// Writes the parts asked for into the top level of `result`, as
    /// single-person Holistic does.
    pub(crate) fn fill(&self, result: &mut HolisticResult, parts: Parts) {
        if parts.pose {
            result.pose = self.pose_landmarks();
        }
        if let Some(f) = &self.face {
            result.face = landmarks(f);
        }
        if parts.hands {
            let [left, right] = self.hand_landmarks();
            result.left_hand = left;
            result.right_hand = right;
        }
    }

    /// This person in a multi-person result, under `id`.
    pub(crate) fn to_person(&self, id: u32, parts: Parts) -> Person {
        let mut top = HolisticResult::default();
        self.fill(&mut top, parts);
        Person {
            id,
            pose: top.pose,
            face: top.face,
            left_hand: top.left_hand,
            right_hand: top.right_hand,
        }
    }

    fn pose_landmarks(&self) -> Vec<PoseLandmark> {
        self.pose
            .body
            .iter()
            .map(|l| PoseLandmark {
                x: l.x,
                y: l.y,
                z: l.z,
                visibility: l.visibility,
            })
            .collect()
    }

    fn hand_landmarks(&self) -> [Vec<Landmark>; 2] {
        self.hands
            .each_ref()
            .map(|h| h.as_deref().map(landmarks).unwrap_or_default())
    }
}

/// The axis-aligned bounds of a (rotated) ROI, in pixels: `[x0, y0, x1, y1]`.
fn bounds(r: &NormRect, size: ImageSize) -> [f32; 4] {
    let (w, h) = (r.w * size.w(), r.h * size.h());
    let (s, c) = r.r.sin_cos();
    let half_w = 0.5 * (w * c.abs() + h * s.abs());
    let half_h = 0.5 * (w * s.abs() + h * c.abs());
    let (x, y) = (r.xc * size.w(), r.yc * size.h());
    [x - half_w, y - half_h, x + half_w, y + half_h]
}

/// Intersection over union of two ROIs' bounds.
pub fn iou(a: &NormRect, b: &NormRect, size: ImageSize) -> f32 {
    let (a, b) = (bounds(a, size), bounds(b, size));
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: [f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Whether `candidate` (a detection's ROI, or a person's own) is the person
/// at `known`: their bounds overlap by more than [`SAME_PERSON_IOU`], or the
/// candidate's centre lies inside the known person's bounds.
pub fn same_person(candidate: &NormRect, known: &NormRect, size: ImageSize) -> bool {
    let k = bounds(known, size);
    let (x, y) = (candidate.xc * size.w(), candidate.yc * size.h());
    let inside = k[0] <= x && x <= k[2] && k[1] <= y && y <= k[3];
    inside || iou(candidate, known, size) > SAME_PERSON_IOU
}

/// Pose landmarks 0–10: nose, eyes, ears and mouth.
const HEAD: std::ops::RangeInclusive<usize> = 0..=10;

/// A copy of `image` with the head of each of `people` painted mid-grey: a
/// square centred on the head landmarks, twice their extent, so the pose
/// detector (which keys on the face) finds the others.
pub(crate) fn without_faces<'a>(
    image: &RgbImage,
    people: impl IntoIterator<Item = &'a PoseLandmarks>,
) -> RgbImage {
    let mut out = image.clone();
    let (w, h) = (image.width() as f32, image.height() as f32);
    for person in people {
        let head = &person.body[HEAD];
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for l in head {
            x0 = x0.min(l.x * w);
            x1 = x1.max(l.x * w);
            y0 = y0.min(l.y * h);
            y1 = y1.max(l.y * h);
        }
        if !(x0.is_finite() && x1.is_finite() && y0.is_finite() && y1.is_finite()) {
            continue;
        }
        let side = 2.0 * (x1 - x0).max(y1 - y0);
        let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
        let px = |v: f32, max: f32| v.clamp(0.0, max) as u32;
        let (ax, bx) = (px(cx - side / 2.0, w), px(cx + side / 2.0, w));
        let (ay, by) = (px(cy - side / 2.0, h), px(cy + side / 2.0, h));
        for y in ay..by {
            for x in ax..bx {
                out.put_pixel(x, y, Rgb([128, 128, 128]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pose::RawLandmark;

    const SIZE: ImageSize = ImageSize {
        width: 640,
        height: 480,
    };

    fn rect(xc: f32, yc: f32, w: f32, h: f32) -> NormRect {
        NormRect {
            xc,
            yc,
            w,
            h,
            r: 0.0,
        }
    }

    #[test]
    fn an_overlapping_detection_is_the_same_person() {
        let known = rect(0.3, 0.5, 0.3, 0.4);
        // Shifted a little: IoU well above 0.5.
        assert!(same_person(&rect(0.32, 0.51, 0.3, 0.4), &known, SIZE));
        // A smaller box inside (IoU low, centre inside): the same person.
        assert!(same_person(&rect(0.3, 0.45, 0.1, 0.1), &known, SIZE));
        // A neighbour beside: another person.
        assert!(!same_person(&rect(0.7, 0.5, 0.3, 0.4), &known, SIZE));
        assert!((iou(&known, &known, SIZE) - 1.0).abs() < 1e-6);
        assert_eq!(iou(&known, &rect(0.9, 0.5, 0.1, 0.1), SIZE), 0.0);
    }

    #[test]
    fn a_rotated_roi_is_bounded_by_its_corners() {
        let mut r = rect(0.5, 0.5, 0.25, 0.25 * 640.0 / 480.0);
        r.r = std::f32::consts::FRAC_PI_4;
        let b = bounds(&r, SIZE);
        // A 160-px square turned 45°: 226 px across.
        assert!(((b[2] - b[0]) - 160.0 * 2f32.sqrt()).abs() < 0.5, "{b:?}");
    }

    #[test]
    fn found_heads_are_painted_over_and_nothing_else() {
        let image = RgbImage::from_pixel(100, 100, Rgb([10, 20, 30]));
        let mut body = vec![RawLandmark::default(); 33];
        for (i, l) in body.iter_mut().enumerate().take(11) {
            l.x = 0.2 + 0.01 * i as f32;
            l.y = 0.2;
        }
        let pose = PoseLandmarks {
            body,
            aux: [RawLandmark::default(); 2],
        };
        let out = without_faces(&image, [&pose]);
        assert_eq!(out.get_pixel(25, 20), &Rgb([128, 128, 128]));
        assert_eq!(out.get_pixel(80, 80), &Rgb([10, 20, 30]));
    }
}
