//! The pipeline's answer for one frame, and its wire format.
//!
//! JSON: `{"pose":[{"x","y","z","visibility"}×33], "face":[{"x","y","z"}×468],
//! "left_hand":[…×21], "right_hand":[…×21]}`; coordinates are normalised to the
//! image (x by width, y by height, z as MediaPipe defines it); a part that was
//! not found (or not asked for) is an empty list. Left and right are the
//! person's own.
//!
//! With `people` > 1 the result adds `"people":[{"id","pose","face",
//! "left_hand","right_hand"}…]`, and the top-level parts are the first
//! person's.
//!
//! Data only: the pipeline fills it, the actors serialise it.

use serde::{Deserialize, Serialize};

/// A face or hand landmark, normalised to the image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Landmark {
    pub x: f32,
    pub y: f32,
    pub z: f32,
}

/// A pose landmark: normalised position and the probability that it is visible.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PoseLandmark {
    pub x: f32,
    pub y: f32,
    pub z: f32,
    pub visibility: f32,
}

/// Wall time of each stage of one frame, in milliseconds (0 for stages that did not run).
/// Each net's time includes its crop and decoding; `total` is the whole `process` call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimings {
    pub pose_detection: f64,
    pub pose_landmark: f64,
    pub face_detection: f64,
    pub face_landmark: f64,
    pub hand_recrop: f64,
    pub hand_landmark: f64,
    pub total: f64,
}

impl StageTimings {
    /// Adds another thread's stage times (not its `total`).
    pub fn add_stages(&mut self, other: &StageTimings) {
        self.pose_detection += other.pose_detection;
        self.pose_landmark += other.pose_landmark;
        self.face_detection += other.face_detection;
        self.face_landmark += other.face_landmark;
        self.hand_recrop += other.hand_recrop;
        self.hand_landmark += other.hand_landmark;
    }
}

/// What MediaPipe Holistic returns for one frame. With more than one
/// person asked for, `people` lists everyone found and the top-level parts
/// are the first person's (so a single-person reader is unchanged); with one,
/// `people` is absent and the output is single-person Holistic's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HolisticResult {
    pub pose: Vec<PoseLandmark>,
    pub face: Vec<Landmark>,
    pub left_hand: Vec<Landmark>,
    pub right_hand: Vec<Landmark>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub people: Option<Vec<Person>>,
    #[serde(skip)]
    pub timings: StageTimings,
}

/// One person of a multi-person result: `id` is stable while the person is
/// tracked in a stream (static mode numbers people in detection order).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Person {
    pub id: u32,
    pub pose: Vec<PoseLandmark>,
    pub face: Vec<Landmark>,
    pub left_hand: Vec<Landmark>,
    pub right_hand: Vec<Landmark>,
}

pub(crate) fn landmarks(points: &[[f32; 3]]) -> Vec<Landmark> {
    points
        .iter()
        .map(|p| Landmark {
            x: p[0],
            y: p[1],
            z: p[2],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_has_empty_lists_for_absent_parts_and_no_timings() {
        let r = HolisticResult {
            pose: vec![PoseLandmark {
                x: 0.5,
                y: 0.25,
                z: -0.125,
                visibility: 1.0,
            }],
            timings: StageTimings {
                total: 3.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"pose":[{"x":0.5,"y":0.25,"z":-0.125,"visibility":1.0}],"face":[],"left_hand":[],"right_hand":[]}"#
        );
    }
}
