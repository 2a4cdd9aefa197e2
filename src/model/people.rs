//! More than one person per frame, our extension of the single-person graph:
//! what one person's stages found ([`PersonFound`]), which detection is a
//! person already found ([`Head`]), and the frame with the people
//! found so far painted over ([`without_faces`]), on which the detector finds
//! the neighbours its weighted NMS merged into them.
//!
//! Pure functions and data: the pipeline (`pipeline.rs`) runs the nets and
//! decides the order; nothing here runs a net or keeps state between frames.

use image::{Rgb, RgbImage};

use super::Parts;
use super::geometry::{ImageSize, NormRect};
use super::pose::{PoseLandmarks, RawLandmark};
use super::result::{HolisticResult, Landmark, Person, PoseLandmark, landmarks};

/// Detection passes after the first, each on the frame with everyone found so
/// far painted over; a pass that finds nobody new ends them.
pub const RECALL_PASSES: usize = 2;

/// What one person's stages found in a frame.
#[derive(Clone, Debug)]
pub(crate) struct PersonFound {
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

/// A pose detection: the ROI MediaPipe's graph would crop, and the centre
/// of the detector's box, which is the face's (image-normalised).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub(crate) roi: NormRect,
    pub(crate) face: [f32; 2],
}

/// Where a person's head is, in pixels, and how big: what tells people
/// apart. Not their pose ROIs: in a group photo cut at the chest, each ROI
/// is extrapolated around hips below the frame and spans nearly the whole
/// picture, so neighbours' ROIs overlap as much as one person's do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Head {
    /// The nose (pose landmark 0), or a detection's face centre.
    pub centre: [f32; 2],
    /// Twice the widest of ear to ear and eye to eye, at least 1 px; 0 for
    /// a bare point (a detection).
    pub size: f32,
}

impl Head {
    /// A person's head from its pose landmarks.
    pub fn of(body: &[RawLandmark], size: ImageSize) -> Head {
        let px = |i: usize| [body[i].x * size.w(), body[i].y * size.h()];
        let dist =
            |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
        let ears = dist(px(LEFT_EAR), px(RIGHT_EAR));
        let eyes = dist(px(LEFT_EYE_OUTER), px(RIGHT_EYE_OUTER));
        let size_px = 2.0 * ears.max(eyes);
        Head {
            centre: px(NOSE),
            size: if size_px.is_finite() {
                size_px.max(1.0)
            } else {
                1.0
            },
        }
    }

    /// A point (a detection's face centre, image-normalised) as a head of
    /// no size.
    pub fn point(xy: [f32; 2], size: ImageSize) -> Head {
        Head {
            centre: [xy[0] * size.w(), xy[1] * size.h()],
            size: 0.0,
        }
    }

    fn distance(&self, other: &Head) -> f32 {
        ((self.centre[0] - other.centre[0]).powi(2) + (self.centre[1] - other.centre[1]).powi(2))
            .sqrt()
    }

    /// Whether a detection's face centre lies on this head: closer than
    /// half its size (a neighbour's face is at least a head width away).
    pub fn covers(&self, face: Head) -> bool {
        self.distance(&face) < SAME_HEAD * self.size
    }

    /// Whether two people found are one: their noses closer than
    /// [`SAME_HEAD`] of the larger head.
    pub fn same_as(&self, other: &Head) -> bool {
        self.distance(other) < SAME_HEAD * self.size.max(other.size)
    }
}

/// Two heads (or a head and a detection's face) closer than this fraction
/// of the head's size are one person's. A head's size is about twice its
/// ear-to-ear width, so this is about one head width.
pub const SAME_HEAD: f32 = 0.5;

const NOSE: usize = 0;
const LEFT_EYE_OUTER: usize = 3;
const RIGHT_EYE_OUTER: usize = 6;
const LEFT_EAR: usize = 7;
const RIGHT_EAR: usize = 8;

/// The frame the next person is looked for on: `image` itself while nobody
/// is found (so the first person is single-person Holistic's), otherwise
/// `image` with the heads of everyone in `found` painted over, made once per
/// count of people found and kept in `cache`.
pub(crate) fn masked<'a, T>(
    image: &'a RgbImage,
    found: &[T],
    pose_of: impl Fn(&T) -> &PoseLandmarks,
    cache: &'a mut Option<(usize, RgbImage)>,
) -> &'a RgbImage {
    if found.is_empty() {
        return image;
    }
    if cache.as_ref().map(|(n, _)| *n) != Some(found.len()) {
        *cache = Some((found.len(), without_faces(image, found.iter().map(pose_of))));
    }
    // unwrap: set just above for this count.
    &cache.as_ref().unwrap().1
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

    fn body_with_head(nose: [f32; 2], ear_span: f32) -> Vec<RawLandmark> {
        let mut body = vec![RawLandmark::default(); 33];
        let at = |x: f32, y: f32| RawLandmark {
            x,
            y,
            ..RawLandmark::default()
        };
        body[NOSE] = at(nose[0], nose[1]);
        body[LEFT_EAR] = at(nose[0] + ear_span / 2.0, nose[1]);
        body[RIGHT_EAR] = at(nose[0] - ear_span / 2.0, nose[1]);
        body[LEFT_EYE_OUTER] = at(nose[0] + ear_span / 4.0, nose[1]);
        body[RIGHT_EYE_OUTER] = at(nose[0] - ear_span / 4.0, nose[1]);
        body
    }

    #[test]
    fn a_detection_on_a_found_head_is_that_person_and_a_neighbour_is_not() {
        // A head 64 px across (ears 0.05 of 640): size 64.
        let head = Head::of(&body_with_head([0.5, 0.3], 0.05), SIZE);
        assert!((head.size - 64.0).abs() < 1e-3, "{head:?}");
        // The detector's face centre a little off the nose: the same person.
        assert!(head.covers(Head::point([0.52, 0.29], SIZE)));
        // A face one and a half head widths away (a neighbour): another.
        assert!(!head.covers(Head::point([0.65, 0.3], SIZE)));
        // Two people found on one head (two detections of one person).
        let twin = Head::of(&body_with_head([0.51, 0.31], 0.05), SIZE);
        assert!(head.same_as(&twin));
        let neighbour = Head::of(&body_with_head([0.62, 0.3], 0.05), SIZE);
        assert!(!head.same_as(&neighbour));
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
