//! Multi-person parity (`holistream parity DIR` when `DIR/multi/golden`
//! exists): our `people` > 1 answer on a photo against a crop-by-crop
//! MediaPipe golden per person (format and precision in
//! `multi/README.md` of the shared test data).
//!
//! Static mode, `people` = golden count + 2. Gated: every golden person
//! found (the nearest of ours by face centre, by the pose's head when the
//! golden has no face, and inside the golden person's box), no duplicates
//! (two of ours with face centres closer than half a face width), every
//! matched face within `max_face_err` of its golden (mean distance over the
//! golden face's diagonal, as [`landmark_errors`]). Reported only: the pose
//! (landmarks the golden sees with visibility ≥ 0.5), the hands, people
//! beyond the goldens.
//!
//! Measures only; it must not tune the pipeline to the goldens.

use super::*;
use crate::model::Person;

/// One golden person: a crop's MediaPipe answer mapped to the full image.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldenPerson {
    #[serde(rename = "box")]
    pub bounds: [f32; 4],
    #[serde(flatten)]
    pub frame: GoldenFrame,
}

/// A multi-person golden file (`multi/golden/NAME.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct GoldenPeople {
    pub image: String,
    pub width: u32,
    pub height: u32,
    pub people: Vec<GoldenPerson>,
}

/// One golden person against the one of ours matched to it.
#[derive(Debug, Clone)]
pub struct PersonParity {
    pub image: String,
    pub index: usize,
    /// Our id, when found.
    pub ours: Option<u32>,
    /// The four parts as [`compare_frame`] sees them (the pose over the
    /// golden's visible landmarks only).
    pub parts: Vec<PartComparison>,
}

/// The outcome of the multi-person check.
#[derive(Debug, Clone)]
pub struct MultiReport {
    pub people: Vec<PersonParity>,
    /// Per image: how many we found, and the ids matched to no golden.
    pub found: Vec<(String, usize, Vec<u32>)>,
    /// Pairs of ours closer than half a face width: image, ids, distance in
    /// face widths.
    pub duplicates: Vec<(String, u32, u32, f32)>,
    pub max_face_err: f64,
}

impl MultiReport {
    /// Every missed gate, in words; empty when the check passes.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.people {
            let Some(id) = p.ours else {
                out.push(format!("{} person {}: not found", p.image, p.index));
                continue;
            };
            let face = p.parts.iter().find(|c| c.part == "face");
            if let Some(face) = face.filter(|f| f.golden_present) {
                match face.errors {
                    None => out.push(format!(
                        "{} person {} (ours {id}): no face",
                        p.image, p.index
                    )),
                    Some((mean, _)) if mean.is_nan() || mean > self.max_face_err => {
                        out.push(format!(
                            "{} person {} (ours {id}): face mean error {:.2}% > {:.2}%",
                            p.image,
                            p.index,
                            mean * 100.0,
                            self.max_face_err * 100.0
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        for (image, a, b, apart) in &self.duplicates {
            out.push(format!(
                "{image}: ours {a} and {b} are one face ({apart:.2} face widths apart)"
            ));
        }
        out
    }
}

impl fmt::Display for MultiReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<18} {:>6} {:>5} {:>9} {:>9} {:>9} {:>9}",
            "multi image", "person", "ours", "face%", "pose%", "left%", "right%"
        )?;
        let cell = |p: &PersonParity, part: &str| {
            let c = p.parts.iter().find(|c| c.part == part);
            match c {
                Some(PartComparison {
                    errors: Some((m, _)),
                    ..
                }) => format!("{:.2}", m * 100.0),
                Some(c) if c.golden_present || c.ours_present => {
                    format!(
                        "{}/{}",
                        if c.golden_present { "mp" } else { "-" },
                        if c.ours_present { "us" } else { "-" }
                    )
                }
                _ => "-".into(),
            }
        };
        let mut worst = 0.0f64;
        for p in &self.people {
            if let Some((m, _)) = p
                .parts
                .iter()
                .find(|c| c.part == "face")
                .and_then(|c| c.errors)
            {
                worst = worst.max(m);
            }
            writeln!(
                f,
                "{:<18} {:>6} {:>5} {:>9} {:>9} {:>9} {:>9}",
                p.image,
                p.index,
                p.ours.map_or("none".into(), |id| id.to_string()),
                cell(p, "face"),
                cell(p, "pose"),
                cell(p, "left_hand"),
                cell(p, "right_hand"),
            )?;
        }
        for (image, n, extra) in &self.found {
            writeln!(f, "{image}: found {n}, beyond the goldens: {extra:?}")?;
        }
        let failures = self.failures();
        let matched = self.people.iter().filter(|p| p.ours.is_some()).count();
        write!(
            f,
            "multi summary: {} images, {} golden people, {} found, {} beyond, worst face mean \
             {:.2}% (limit {:.2}%; pose and hands reported, not gated): {}",
            self.found.len(),
            self.people.len(),
            matched,
            self.found.iter().map(|(_, _, e)| e.len()).sum::<usize>(),
            worst * 100.0,
            self.max_face_err * 100.0,
            verdict(&failures)
        )?;
        write_failures(f, &failures)
    }
}

/// Mean of `points` (normalised) in pixels, and their extent in x (px).
fn centre(points: &[[f32; 2]], w: u32, h: u32) -> Option<((f32, f32), f32)> {
    if points.is_empty() {
        return None;
    }
    let n = points.len() as f32;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |a, p| (a.0 + p[0], a.1 + p[1]));
    let (lo, hi) = points
        .iter()
        .fold((f32::MAX, f32::MIN), |a, p| (a.0.min(p[0]), a.1.max(p[0])));
    Some(((sx / n * w as f32, sy / n * h as f32), (hi - lo) * w as f32))
}

fn xy<T>(rows: &[T], f: impl Fn(&T) -> [f32; 2]) -> Vec<[f32; 2]> {
    rows.iter().map(f).collect()
}

/// The golden person's centre: its face, else its pose's head (0–10).
fn golden_centre(g: &GoldenPerson, w: u32, h: u32) -> Option<((f32, f32), bool)> {
    let rows = |r: &Vec<Vec<f32>>| xy(r, |r| [r[0], r[1]]);
    if let Some(c) = g.frame.face.as_ref().and_then(|f| centre(&rows(f), w, h)) {
        return Some((c.0, true));
    }
    let head: Vec<Vec<f32>> = g.frame.pose.as_ref()?.iter().take(11).cloned().collect();
    centre(&rows(&head), w, h).map(|c| (c.0, false))
}

/// Our person's face centre (`by_face`), or its pose's head.
fn our_centre(p: &Person, by_face: bool, w: u32, h: u32) -> Option<(f32, f32)> {
    if by_face && !p.face.is_empty() {
        return centre(&xy(&p.face, |l| [l.x, l.y]), w, h).map(|c| c.0);
    }
    let head: Vec<[f32; 2]> = p.pose.iter().take(11).map(|l| [l.x, l.y]).collect();
    centre(&head, w, h).map(|c| c.0)
}

/// Matches golden people to ours: closest pairs first, each of ours inside
/// the golden person's box. Returns, per golden person, the index of ours.
pub fn match_people(golden: &GoldenPeople, ours: &[Person]) -> Vec<Option<usize>> {
    let (w, h) = (golden.width, golden.height);
    let mut pairs = Vec::new();
    for (gi, g) in golden.people.iter().enumerate() {
        let Some((gc, by_face)) = golden_centre(g, w, h) else {
            continue;
        };
        for (oi, o) in ours.iter().enumerate() {
            let Some(oc) = our_centre(o, by_face, w, h) else {
                continue;
            };
            let b = g.bounds;
            if !(b[0] <= oc.0 && oc.0 <= b[2] && b[1] <= oc.1 && oc.1 <= b[3]) {
                continue;
            }
            pairs.push(((gc.0 - oc.0).hypot(gc.1 - oc.1), gi, oi));
        }
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut matched = vec![None; golden.people.len()];
    let mut taken = vec![false; ours.len()];
    for (_, gi, oi) in pairs {
        if matched[gi].is_none() && !taken[oi] {
            matched[gi] = Some(oi);
            taken[oi] = true;
        }
    }
    matched
}

/// Pairs of ours whose face centres are closer than half a face width (the
/// mean of the two widths).
pub fn duplicate_faces(ours: &[Person], w: u32, h: u32) -> Vec<(u32, u32, f32)> {
    let faces: Vec<(u32, (f32, f32), f32)> = ours
        .iter()
        .filter_map(|p| centre(&xy(&p.face, |l| [l.x, l.y]), w, h).map(|(c, fw)| (p.id, c, fw)))
        .collect();
    let mut out = Vec::new();
    for (i, a) in faces.iter().enumerate() {
        for b in &faces[i + 1..] {
            let width = (a.2 + b.2) / 2.0;
            let apart = (a.1.0 - b.1.0).hypot(a.1.1 - b.1.1) / width.max(1e-6);
            if apart < 0.5 {
                out.push((a.0, b.0, apart));
            }
        }
    }
    out
}

/// One golden person against one of ours: face and hands as
/// [`compare_frame`], the pose over the golden's visible landmarks.
fn compare_person(g: &GoldenPerson, o: &Person, w: u32, h: u32) -> Vec<PartComparison> {
    let as_result = HolisticResult {
        pose: o.pose.clone(),
        face: o.face.clone(),
        left_hand: o.left_hand.clone(),
        right_hand: o.right_hand.clone(),
        ..HolisticResult::default()
    };
    let mut parts = compare_frame(&g.frame, &as_result, w, h);
    if let (Some(pose), Some(c)) = (&g.frame.pose, parts.iter_mut().find(|c| c.part == "pose")) {
        let visible: Vec<usize> = (0..pose.len())
            .filter(|&i| pose[i].get(3).is_some_and(|&v| v >= 0.5))
            .collect();
        c.errors =
            (!o.pose.is_empty() && o.pose.len() == pose.len() && !visible.is_empty()).then(|| {
                let golden: Vec<[f32; 2]> =
                    visible.iter().map(|&i| [pose[i][0], pose[i][1]]).collect();
                let ours: Vec<[f32; 2]> = visible
                    .iter()
                    .map(|&i| [o.pose[i].x, o.pose[i].y])
                    .collect();
                landmark_errors(&golden, &ours, w, h)
            });
    }
    parts
}

/// Runs every `multi/golden/*.json` of `dir` on its photo in `dir/images`,
/// static mode, `people` = golden count + 2.
pub fn check_multi(
    holistic: &Holistic,
    dir: &Path,
    max_face_err: f64,
) -> Result<MultiReport, ParityError> {
    let golden_dir = dir.join("multi/golden");
    let mut goldens: Vec<PathBuf> = std::fs::read_dir(&golden_dir)
        .map_err(|source| ParityError::Io {
            path: golden_dir.clone(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    goldens.sort();
    let mut report = MultiReport {
        people: Vec::new(),
        found: Vec::new(),
        duplicates: Vec::new(),
        max_face_err,
    };
    for path in goldens {
        let golden: GoldenPeople = parse(&path)?;
        let image_path = dir.join("images").join(&golden.image);
        let image = super::golden_photo(&image_path, golden.width, golden.height)?;
        let opts = ProcessOptions {
            people: golden.people.len() + 2,
            mode: Mode::Static,
            parts: Parts::default(),
            timestamp_us: 0,
        };
        let result = holistic
            .process(&image, &opts, &mut TrackingState::default())
            .map_err(|source| ParityError::Model {
                path: image_path.clone(),
                source,
            })?;
        let ours = result.people.unwrap_or_default();
        let (w, h) = (golden.width, golden.height);
        let name = golden.image.clone();
        let matched = match_people(&golden, &ours);
        for (index, (g, m)) in golden.people.iter().zip(&matched).enumerate() {
            report.people.push(PersonParity {
                image: name.clone(),
                index,
                ours: m.map(|oi| ours[oi].id),
                parts: m.map_or_else(Vec::new, |oi| compare_person(g, &ours[oi], w, h)),
            });
        }
        let extra = (0..ours.len())
            .filter(|oi| !matched.contains(&Some(*oi)))
            .map(|oi| ours[oi].id)
            .collect();
        report.found.push((name.clone(), ours.len(), extra));
        for (a, b, apart) in duplicate_faces(&ours, w, h) {
            report.duplicates.push((name.clone(), a, b, apart));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Landmark;

    fn face_at(id: u32, x: f32, y: f32, half: f32) -> Person {
        let face = (0..468)
            .map(|i| Landmark {
                x: x + if i % 2 == 0 { -half } else { half },
                y,
                z: 0.0,
            })
            .collect();
        Person {
            id,
            face,
            ..Person::default()
        }
    }

    #[test]
    fn people_match_by_nearest_face_inside_the_box_and_duplicates_are_flagged() {
        let golden_person = |x: f32, b: [f32; 4]| GoldenPerson {
            bounds: b,
            frame: GoldenFrame {
                pose: None,
                face: Some(vec![vec![x - 0.05, 0.5, 0.0], vec![x + 0.05, 0.5, 0.0]]),
                left_hand: None,
                right_hand: None,
            },
        };
        let golden = GoldenPeople {
            image: "t.jpg".into(),
            width: 100,
            height: 100,
            people: vec![
                golden_person(0.25, [0.0, 0.0, 50.0, 100.0]),
                golden_person(0.75, [50.0, 0.0, 100.0, 100.0]),
            ],
        };
        let ours = vec![face_at(4, 0.74, 0.5, 0.05), face_at(2, 0.26, 0.5, 0.05)];
        assert_eq!(match_people(&golden, &ours), vec![Some(1), Some(0)]);
        // Only one of ours, on the right: the left golden person is not found.
        assert_eq!(match_people(&golden, &ours[..1]), vec![None, Some(0)]);
        assert!(duplicate_faces(&ours, 100, 100).is_empty());
        let twice = vec![face_at(0, 0.5, 0.5, 0.05), face_at(1, 0.52, 0.5, 0.05)];
        let dups = duplicate_faces(&twice, 100, 100);
        assert_eq!(dups.len(), 1);
        assert!((dups[0].2 - 0.2).abs() < 1e-3, "{dups:?}");
    }
}
