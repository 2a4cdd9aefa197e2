//! Multi-person Holistic (issue 13) on real models and real images from the
//! shared test data (`../shared/testdata`, see `multi/README.md`):
//!
//! - identity: with `people` > 1 the first person (the top-level parts) is
//!   bit-for-bit the single-person answer, in static mode on every photo and
//!   in tracking mode on the single-person clip; `people` = 1 has no
//!   `people` key;
//! - tracking on `multi/video/faceapi2_pan.mjpeg`: the three seated people
//!   tracked, few ids, no id jumping to another person;
//! - association: a person lost comes back under a new id (ids are never
//!   reused), and the ids of a frame are unique.
//!
//! Each test prints what it measured before it asserts. Reads only; the
//! pipeline under test is `holistream::model`, untouched.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use holistream::commands::parity::{python_timestamp_us, split_mjpeg};
use holistream::commands::track::frame_people;
use holistream::model::image_input::{DecodeLimits, decode_image_with};
use holistream::model::{
    Holistic, HolisticResult, Mode, Parts, Person, ProcessOptions, TrackingState, decode_image,
};
use image::{Rgb, RgbImage};
use support::fixtures::shared_testdata;

fn holistic() -> Holistic {
    Holistic::load_default().expect("shipped weights load")
}

fn opts(mode: Mode, people: usize, i: usize) -> ProcessOptions {
    ProcessOptions {
        mode,
        parts: Parts::default(),
        timestamp_us: if mode == Mode::Tracking {
            python_timestamp_us(i)
        } else {
            0
        },
        people,
    }
}

/// The photos of `images/`, decoded, in name order.
fn photos() -> Vec<(String, RgbImage)> {
    let dir = shared_testdata().join("images");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let image = decode_image_with(&std::fs::read(&p).unwrap(), &DecodeLimits::PHOTO)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), image)
        })
        .collect()
}

/// The first `n` frames of an MJPEG clip of the shared test data.
fn clip(path: &str, n: usize) -> Vec<RgbImage> {
    let bytes = std::fs::read(shared_testdata().join(path)).unwrap();
    split_mjpeg(&bytes)
        .into_iter()
        .take(n)
        .map(|jpeg| decode_image(jpeg).unwrap())
        .collect()
}

fn top_level(r: &HolisticResult) -> HolisticResult {
    HolisticResult {
        people: None,
        timings: Default::default(),
        ..r.clone()
    }
}

/// A person's head in pixels: the mean of its face landmarks, or of the
/// pose's head landmarks (0–10) when it has no face.
fn head_centre(p: &Person, w: u32, h: u32) -> Option<(f32, f32)> {
    let pts: Vec<(f32, f32)> = if p.face.is_empty() {
        p.pose.iter().take(11).map(|l| (l.x, l.y)).collect()
    } else {
        p.face.iter().map(|l| (l.x, l.y)).collect()
    };
    if pts.is_empty() {
        return None;
    }
    let n = pts.len() as f32;
    let (x, y) = pts
        .iter()
        .fold((0.0, 0.0), |(sx, sy), &(x, y)| (sx + x, sy + y));
    Some((x / n * w as f32, y / n * h as f32))
}

#[test]
fn the_first_person_is_the_single_person_answer_on_every_photo() {
    let holistic = holistic();
    let mut differ = Vec::new();
    for (name, image) in photos() {
        let one = holistic
            .process(
                &image,
                &opts(Mode::Static, 1, 0),
                &mut TrackingState::default(),
            )
            .unwrap();
        let six = holistic
            .process(
                &image,
                &opts(Mode::Static, 6, 0),
                &mut TrackingState::default(),
            )
            .unwrap();
        let json = serde_json::to_value(&one).unwrap();
        assert!(
            json.get("people").is_none(),
            "{name}: people = 1 has a people key"
        );
        let people = six.people.as_deref().expect("people > 1 lists people");
        let json = serde_json::to_value(&six).unwrap();
        assert!(json.get("people").is_some(), "{name}: no people key");
        println!(
            "{name}: people = 6 found {} (pose of the first {})",
            people.len(),
            if one.pose.is_empty() { "none" } else { "found" }
        );
        if top_level(&six) != top_level(&one) {
            differ.push(name.clone());
        }
        if let Some(first) = people.first() {
            assert_eq!(
                (
                    &first.pose,
                    &first.face,
                    &first.left_hand,
                    &first.right_hand
                ),
                (&six.pose, &six.face, &six.left_hand, &six.right_hand),
                "{name}: the top level is not the first person"
            );
        } else {
            assert!(
                six.pose.is_empty(),
                "{name}: top-level pose without a person"
            );
        }
    }
    assert!(
        differ.is_empty(),
        "the first person differs from people = 1 on {differ:?}"
    );
}

#[test]
fn the_first_person_is_the_single_person_answer_when_tracking() {
    let holistic = holistic();
    let frames = clip("video/holistic_640x480.mjpeg", 60);
    assert_eq!(frames.len(), 60);
    let (mut one_state, mut six_state) = (TrackingState::default(), TrackingState::default());
    let mut differ = Vec::new();
    let mut found = 0;
    for (i, image) in frames.iter().enumerate() {
        let one = holistic
            .process(image, &opts(Mode::Tracking, 1, i), &mut one_state)
            .unwrap();
        let six = holistic
            .process(image, &opts(Mode::Tracking, 6, i), &mut six_state)
            .unwrap();
        assert!(serde_json::to_value(&one).unwrap().get("people").is_none());
        found += usize::from(!one.pose.is_empty());
        if top_level(&six) != top_level(&one) {
            differ.push(i);
        }
    }
    println!(
        "{} frames, pose on {found}; first person differs on frames {differ:?}",
        frames.len()
    );
    assert!(found > 0, "nobody found on the single-person clip");
    assert!(
        differ.is_empty(),
        "first person differs on frames {differ:?}"
    );
}

#[test]
fn three_people_are_tracked_through_the_pan_with_stable_ids() {
    let holistic = holistic();
    let frames = clip("multi/video/faceapi2_pan.mjpeg", usize::MAX);
    assert_eq!(frames.len(), 120, "the pan's frames");
    let (w, h) = frames[0].dimensions();
    let mut state = TrackingState::default();
    let mut counts = BTreeMap::<usize, usize>::new();
    let mut ids = BTreeSet::new();
    let mut last: BTreeMap<u32, (usize, (f32, f32))> = BTreeMap::new();
    let mut worst_jump = (0.0f32, 0u32, 0usize);
    let mut three = 0;
    for (i, image) in frames.iter().enumerate() {
        let result = holistic
            .process(image, &opts(Mode::Tracking, 6, i), &mut state)
            .unwrap();
        let people = frame_people(&result, &state);
        let frame_ids: BTreeSet<u32> = people.iter().map(|p| p.id).collect();
        assert_eq!(frame_ids.len(), people.len(), "frame {i}: an id twice");
        *counts.entry(people.len()).or_default() += 1;
        three += usize::from(people.len() >= 3);
        for p in &people {
            ids.insert(p.id);
            let Some(c) = head_centre(p, w, h) else {
                continue;
            };
            if let Some((_, prev)) = last.get(&p.id) {
                let jump = ((c.0 - prev.0).powi(2) + (c.1 - prev.1).powi(2)).sqrt() / w as f32;
                if jump > worst_jump.0 {
                    worst_jump = (jump, p.id, i);
                }
            }
            last.insert(p.id, (i, c));
        }
    }
    println!(
        "people per frame (count: frames) {counts:?}; >= 3 on {three} of {}; ids {ids:?}; \
         largest head jump {:.1}% of the width (id {} at frame {})",
        frames.len(),
        worst_jump.0 * 100.0,
        worst_jump.1,
        worst_jump.2
    );
    assert!(
        three * 10 >= frames.len() * 9,
        "three people on {three} of {} frames (< 90%)",
        frames.len()
    );
    assert!(ids.len() <= 4, "{} distinct ids: {ids:?}", ids.len());
    assert!(
        worst_jump.0 <= 0.10,
        "id {} jumps {:.1}% of the width at frame {}",
        worst_jump.1,
        worst_jump.0 * 100.0,
        worst_jump.2
    );
}

#[test]
fn a_person_lost_comes_back_with_a_new_id() {
    let holistic = holistic();
    let image = clip("multi/video/faceapi2_pan.mjpeg", 1).remove(0);
    let grey = RgbImage::from_pixel(image.width(), image.height(), Rgb([128, 128, 128]));
    for people in [1, 6] {
        let mut state = TrackingState::default();
        let mut seen: Vec<Vec<u32>> = Vec::new();
        for (i, frame) in [&image, &grey, &image, &image].into_iter().enumerate() {
            let result = holistic
                .process(frame, &opts(Mode::Tracking, people, i), &mut state)
                .unwrap();
            let ids: Vec<u32> = frame_people(&result, &state).iter().map(|p| p.id).collect();
            let unique: BTreeSet<u32> = ids.iter().copied().collect();
            assert_eq!(
                unique.len(),
                ids.len(),
                "people = {people}, frame {i}: {ids:?}"
            );
            seen.push(ids);
        }
        println!("people = {people}: ids per frame (image, grey, image, image) {seen:?}");
        assert!(
            !seen[0].is_empty(),
            "people = {people}: nobody on the image"
        );
        assert!(
            seen[1].is_empty(),
            "people = {people}: someone on a grey frame"
        );
        assert!(
            !seen[2].is_empty(),
            "people = {people}: nobody after the grey frame"
        );
        assert!(
            seen[2].iter().all(|id| !seen[0].contains(id)),
            "people = {people}: an id reused after the person was lost: {seen:?}"
        );
        // Tracked on: the same ids on the next frame.
        assert!(
            seen[2].iter().all(|id| seen[3].contains(id)),
            "people = {people}: ids not kept from one frame to the next: {seen:?}"
        );
    }
}
