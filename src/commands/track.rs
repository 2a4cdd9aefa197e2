//! `holistream track CLIP.mjpeg`: a clip (baseline JPEG frames back to back)
//! in tracking mode, frame by frame, with one [`TrackingState`] and Python's
//! timestamps, printing one JSON line per frame:
//! `{"frame":i,"people":[{"id","pose","face","left_hand","right_hand"}…]}`.
//!
//! The command's edge only: what is tracked and which id a person gets are
//! `model`'s; this file must not touch the pipeline or its state beyond
//! passing it along.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Serialize;

use super::load_holistic;
use super::parity::{python_timestamp_us, split_mjpeg};
use crate::model::{
    Holistic, HolisticResult, Mode, Parts, Person, ProcessOptions, TrackingState, decode_image,
};

/// `holistream track CLIP.mjpeg`: one JSON line per frame.
#[derive(Debug, clap::Args)]
pub struct TrackArgs {
    /// An MJPEG clip: baseline JPEG frames back to back.
    pub clip: PathBuf,
    /// Most people to track (1 is MediaPipe's single-person Holistic).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub people: u64,
    /// Parts to compute, comma separated.
    #[arg(long, default_value = "pose,face,hands")]
    pub parts: Parts,
    /// Only the first N frames.
    #[arg(long)]
    pub frames: Option<usize>,
}

/// One output line.
#[derive(Debug, Serialize)]
pub struct TrackedFrame {
    pub frame: usize,
    pub people: Vec<Person>,
}

/// Everyone in `result`, with their ids: the `people` list when more than
/// one person was asked for; otherwise the one person (if found) under the
/// id the state tracks it by (`state` as `process` left it, tracking mode).
pub fn frame_people(result: &HolisticResult, state: &TrackingState) -> Vec<Person> {
    if let Some(people) = &result.people {
        return people.clone();
    }
    match state.people_ids().first() {
        Some(&id) => vec![Person {
            id,
            pose: result.pose.clone(),
            face: result.face.clone(),
            left_hand: result.left_hand.clone(),
            right_hand: result.right_hand.clone(),
        }],
        None => Vec::new(),
    }
}

/// Runs the clip's frames through `holistic` in tracking mode with one
/// state, calling `each` with every frame's index, result and people.
pub fn track_frames(
    holistic: &Holistic,
    jpegs: &[&[u8]],
    people: usize,
    parts: Parts,
    mut each: impl FnMut(usize, &HolisticResult, Vec<Person>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut state = TrackingState::default();
    for (i, jpeg) in jpegs.iter().enumerate() {
        let image = decode_image(jpeg).with_context(|| format!("decoding frame {i}"))?;
        let opts = ProcessOptions {
            mode: Mode::Tracking,
            parts,
            timestamp_us: python_timestamp_us(i),
            people,
        };
        let result = holistic
            .process(&image, &opts, &mut state)
            .with_context(|| format!("frame {i}"))?;
        let found = frame_people(&result, &state);
        each(i, &result, found)?;
    }
    Ok(())
}

/// Runs `holistream track`.
pub fn track(args: &TrackArgs) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&args.clip).with_context(|| format!("reading {}", args.clip.display()))?;
    let mut jpegs = split_mjpeg(&bytes);
    if jpegs.is_empty() {
        bail!("{}: no JPEG frames", args.clip.display());
    }
    if let Some(n) = args.frames {
        jpegs.truncate(n);
    }
    let holistic = load_holistic()?;
    track_frames(
        &holistic,
        &jpegs,
        args.people as usize,
        args.parts,
        |frame, _, people| {
            println!(
                "{}",
                serde_json::to_string(&TrackedFrame { frame, people })?
            );
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_person_takes_the_state_id_and_nobody_is_an_empty_list() {
        let result = HolisticResult::default();
        assert!(frame_people(&result, &TrackingState::default()).is_empty());
        let several = HolisticResult {
            people: Some(vec![Person {
                id: 7,
                ..Person::default()
            }]),
            ..HolisticResult::default()
        };
        let people = frame_people(&several, &TrackingState::default());
        assert_eq!(people.len(), 1);
        assert_eq!(people[0].id, 7);
        let line = serde_json::to_string(&TrackedFrame { frame: 3, people }).unwrap();
        assert!(
            line.starts_with(r#"{"frame":3,"people":[{"id":7,"pose":[]"#),
            "{line}"
        );
    }
}
