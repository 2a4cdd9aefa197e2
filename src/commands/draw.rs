//! `infer --draw`: the image with the landmarks and MediaPipe's connections drawn.
//!
//! The connection lists are MediaPipe's (`mediapipe/python/solutions/*_connections.py`,
//! 0.10.14, Apache-2.0), the same pairs as `web/connections.js`; the face is
//! drawn with its contours (lips, eyes, eyebrows, oval), not the full tessellation.
//!
//! With several people (`infer --people N`), each person is drawn in a
//! colour of its own with its id beside the head (a small built-in digit
//! font: no font file is shipped).
//!
//! Tooling for `infer --draw`; the pipeline never draws.

use crate::model::{HolisticResult, Landmark, Person};
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_circle_mut, draw_line_segment_mut};

/// Pose skeleton: pairs of indices into the 33 pose landmarks.
pub const POSE_CONNECTIONS: [(usize, usize); 35] = [
    (0, 1),
    (1, 2),
    (2, 3),
    (3, 7),
    (0, 4),
    (4, 5),
    (5, 6),
    (6, 8),
    (9, 10),
    (11, 12),
    (11, 13),
    (13, 15),
    (15, 17),
    (15, 19),
    (15, 21),
    (17, 19),
    (12, 14),
    (14, 16),
    (16, 18),
    (16, 20),
    (16, 22),
    (18, 20),
    (11, 23),
    (12, 24),
    (23, 24),
    (23, 25),
    (24, 26),
    (25, 27),
    (26, 28),
    (27, 29),
    (28, 30),
    (29, 31),
    (30, 32),
    (27, 31),
    (28, 32),
];

/// Hand bones: pairs of indices into the 21 hand landmarks.
pub const HAND_CONNECTIONS: [(usize, usize); 21] = [
    (0, 1),
    (0, 5),
    (9, 13),
    (13, 17),
    (5, 9),
    (0, 17),
    (1, 2),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (7, 8),
    (9, 10),
    (10, 11),
    (11, 12),
    (13, 14),
    (14, 15),
    (15, 16),
    (17, 18),
    (18, 19),
    (19, 20),
];

/// Face contours: pairs of indices into the 468 face landmarks.
pub const FACE_CONTOURS: [(usize, usize); 124] = [
    (270, 409),
    (317, 402),
    (81, 82),
    (91, 181),
    (37, 0),
    (84, 17),
    (269, 270),
    (321, 375),
    (318, 324),
    (312, 311),
    (415, 308),
    (17, 314),
    (61, 146),
    (78, 95),
    (0, 267),
    (82, 13),
    (314, 405),
    (178, 87),
    (267, 269),
    (61, 185),
    (14, 317),
    (88, 178),
    (185, 40),
    (405, 321),
    (13, 312),
    (324, 308),
    (409, 291),
    (146, 91),
    (87, 14),
    (78, 191),
    (95, 88),
    (311, 310),
    (39, 37),
    (40, 39),
    (402, 318),
    (191, 80),
    (80, 81),
    (310, 415),
    (181, 84),
    (375, 291),
    (374, 380),
    (390, 373),
    (249, 390),
    (385, 384),
    (373, 374),
    (263, 466),
    (387, 386),
    (381, 382),
    (384, 398),
    (466, 388),
    (386, 385),
    (388, 387),
    (263, 249),
    (380, 381),
    (398, 362),
    (382, 362),
    (334, 296),
    (276, 283),
    (293, 334),
    (295, 285),
    (296, 336),
    (282, 295),
    (283, 282),
    (300, 293),
    (154, 155),
    (33, 7),
    (246, 161),
    (159, 158),
    (144, 145),
    (173, 133),
    (158, 157),
    (163, 144),
    (153, 154),
    (7, 163),
    (161, 160),
    (157, 173),
    (33, 246),
    (160, 159),
    (145, 153),
    (155, 133),
    (46, 53),
    (66, 107),
    (52, 65),
    (53, 52),
    (63, 105),
    (70, 63),
    (65, 55),
    (105, 66),
    (176, 149),
    (297, 332),
    (150, 136),
    (109, 10),
    (356, 454),
    (58, 132),
    (152, 148),
    (361, 288),
    (162, 21),
    (251, 389),
    (132, 93),
    (10, 338),
    (389, 356),
    (284, 251),
    (400, 377),
    (136, 172),
    (377, 152),
    (323, 361),
    (54, 103),
    (21, 54),
    (172, 58),
    (67, 109),
    (454, 323),
    (365, 379),
    (379, 378),
    (148, 176),
    (93, 234),
    (332, 284),
    (397, 365),
    (338, 297),
    (149, 150),
    (288, 397),
    (234, 127),
    (103, 67),
    (378, 400),
    (127, 162),
];

const POSE_COLOUR: Rgb<u8> = Rgb([255, 255, 255]);
const POSE_POINT: Rgb<u8> = Rgb([255, 48, 48]);
const FACE_COLOUR: Rgb<u8> = Rgb([192, 192, 192]);
const LEFT_HAND_COLOUR: Rgb<u8> = Rgb([48, 255, 48]);
const RIGHT_HAND_COLOUR: Rgb<u8> = Rgb([48, 128, 255]);

/// One colour per person of a multi-person result, by id (cycling).
const PERSON_COLOURS: [Rgb<u8>; 8] = [
    Rgb([255, 64, 64]),
    Rgb([64, 220, 64]),
    Rgb([64, 128, 255]),
    Rgb([255, 200, 0]),
    Rgb([220, 64, 255]),
    Rgb([0, 220, 220]),
    Rgb([255, 128, 0]),
    Rgb([255, 255, 255]),
];

/// Draws `result` onto a copy of `image`; line width and point size follow
/// the image size. A multi-person result (`people` present) is drawn person
/// by person ([`draw_people`]).
pub fn draw(image: &RgbImage, result: &HolisticResult) -> RgbImage {
    if let Some(people) = &result.people {
        return draw_people(image, people);
    }
    let mut out = image.clone();
    let (w, h) = (image.width() as f32, image.height() as f32);
    let radius = ((w.max(h) / 300.0).round() as i32).max(2);
    let px = |x: f32, y: f32| (x * w, y * h);
    let xy = |l: &Landmark| px(l.x, l.y);

    let pose: Vec<(f32, f32)> = result.pose.iter().map(|l| px(l.x, l.y)).collect();
    lines(&mut out, &pose, &POSE_CONNECTIONS, POSE_COLOUR);
    let face: Vec<(f32, f32)> = result.face.iter().map(xy).collect();
    lines(&mut out, &face, &FACE_CONTOURS, FACE_COLOUR);
    for (hand, colour) in [
        (&result.left_hand, LEFT_HAND_COLOUR),
        (&result.right_hand, RIGHT_HAND_COLOUR),
    ] {
        let pts: Vec<(f32, f32)> = hand.iter().map(xy).collect();
        lines(&mut out, &pts, &HAND_CONNECTIONS, colour);
        points(&mut out, &pts, radius, colour);
    }
    points(&mut out, &pose, radius, POSE_POINT);
    out
}

/// Draws every person onto a copy of `image`, each in its colour (by id),
/// with its id written above the head.
pub fn draw_people(image: &RgbImage, people: &[Person]) -> RgbImage {
    let mut out = image.clone();
    let (w, h) = (image.width() as f32, image.height() as f32);
    let radius = ((w.max(h) / 300.0).round() as i32).max(2);
    let xy = |l: &Landmark| (l.x * w, l.y * h);
    for person in people {
        let colour = PERSON_COLOURS[person.id as usize % PERSON_COLOURS.len()];
        let pose: Vec<(f32, f32)> = person.pose.iter().map(|l| (l.x * w, l.y * h)).collect();
        lines(&mut out, &pose, &POSE_CONNECTIONS, colour);
        let face: Vec<(f32, f32)> = person.face.iter().map(xy).collect();
        lines(&mut out, &face, &FACE_CONTOURS, colour);
        for hand in [&person.left_hand, &person.right_hand] {
            let pts: Vec<(f32, f32)> = hand.iter().map(xy).collect();
            lines(&mut out, &pts, &HAND_CONNECTIONS, colour);
            points(&mut out, &pts, (radius / 2).max(1), colour);
        }
        points(&mut out, &pose, radius, colour);
        // The id above the head: the top of the face, else of the pose's head.
        let head: Vec<(f32, f32)> = if face.is_empty() {
            pose.iter().take(11).copied().collect()
        } else {
            face.clone()
        };
        let finite = head.iter().filter(|p| p.0.is_finite() && p.1.is_finite());
        let (mut x, mut top) = (0.0f32, f32::MAX);
        let mut n = 0;
        for p in finite {
            x += p.0;
            top = top.min(p.1);
            n += 1;
        }
        if n > 0 {
            let scale = (radius * 2).max(3);
            let text = person.id.to_string();
            let width = text.len() as i32 * 4 * scale;
            let x0 = (x / n as f32) as i32 - width / 2;
            let y0 = (top as i32 - 7 * scale).max(0);
            digits(&mut out, &text, x0, y0, scale, colour);
        }
    }
    out
}

/// 3×5 bitmaps of the digits, one row per `u8` (bit 2 = left column).
const DIGITS: [[u8; 5]; 10] = [
    [7, 5, 5, 5, 7],
    [2, 6, 2, 2, 7],
    [7, 1, 7, 4, 7],
    [7, 1, 7, 1, 7],
    [5, 5, 7, 1, 1],
    [7, 4, 7, 1, 7],
    [7, 4, 7, 5, 7],
    [7, 1, 1, 1, 1],
    [7, 5, 7, 5, 7],
    [7, 5, 7, 1, 7],
];

/// Writes the decimal digits of `text` at (`x0`, `y0`), each bitmap pixel a
/// `scale`-pixel square; off-image pixels are skipped.
fn digits(img: &mut RgbImage, text: &str, x0: i32, y0: i32, scale: i32, colour: Rgb<u8>) {
    for (i, c) in text.chars().enumerate() {
        let Some(d) = c.to_digit(10) else { continue };
        let left = x0 + i as i32 * 4 * scale;
        for (row, bits) in DIGITS[d as usize].iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (x, y) = (left + col * scale + dx, y0 + row as i32 * scale + dy);
                        if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height()
                        {
                            img.put_pixel(x as u32, y as u32, colour);
                        }
                    }
                }
            }
        }
    }
}

fn lines(img: &mut RgbImage, pts: &[(f32, f32)], pairs: &[(usize, usize)], colour: Rgb<u8>) {
    for &(a, b) in pairs {
        if let (Some(&p), Some(&q)) = (pts.get(a), pts.get(b)) {
            draw_line_segment_mut(img, p, q, colour);
        }
    }
}

fn points(img: &mut RgbImage, pts: &[(f32, f32)], radius: i32, colour: Rgb<u8>) {
    for &(x, y) in pts {
        if x.is_finite() && y.is_finite() {
            draw_filled_circle_mut(img, (x as i32, y as i32), radius, colour);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_index_inside_their_parts() {
        assert!(POSE_CONNECTIONS.iter().all(|&(a, b)| a < 33 && b < 33));
        assert!(HAND_CONNECTIONS.iter().all(|&(a, b)| a < 21 && b < 21));
        assert!(FACE_CONTOURS.iter().all(|&(a, b)| a < 468 && b < 468));
    }

    #[test]
    fn draws_on_a_copy_and_tolerates_off_image_points() {
        let img = RgbImage::new(40, 40);
        let mut r = HolisticResult::default();
        r.left_hand = vec![
            Landmark {
                x: 0.5,
                y: 0.5,
                z: 0.0
            };
            21
        ];
        r.left_hand[1] = Landmark {
            x: 2.0,
            y: -1.0,
            z: 0.0,
        };
        let out = draw(&img, &r);
        assert_eq!(out.get_pixel(20, 20), &LEFT_HAND_COLOUR);
        assert_eq!(img.get_pixel(20, 20), &Rgb([0, 0, 0]));
    }

    #[test]
    fn people_are_drawn_in_their_colours_with_their_ids() {
        let img = RgbImage::new(100, 100);
        let at = |x, y| Landmark { x, y, z: 0.0 };
        let person = |id, x| Person {
            id,
            face: vec![at(x, 0.5); 468],
            ..Person::default()
        };
        let r = HolisticResult {
            people: Some(vec![person(0, 0.25), person(1, 0.75)]),
            ..HolisticResult::default()
        };
        let out = draw(&img, &r);
        assert_eq!(out.get_pixel(25, 50), &PERSON_COLOURS[0]);
        assert_eq!(out.get_pixel(75, 50), &PERSON_COLOURS[1]);
        // An id above each head.
        let above = |x0: u32, c| (x0..x0 + 20).any(|x| (20..50).any(|y| out.get_pixel(x, y) == c));
        assert!(above(15, &PERSON_COLOURS[0]) && above(65, &PERSON_COLOURS[1]));
    }
}
