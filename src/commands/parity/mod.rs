//! Parity with MediaPipe: our answers against MediaPipe 0.10.14's golden
//! outputs (format of `../shared/testdata`, see its README; the in-repo
//! public-domain photos and clip carry theirs in `tests/fixtures/golden`,
//! made by `tests/fixtures/gen_golden.py`), and the fused kernels against the
//! generated burn code through the whole pipeline ([`compare_backends`]).
//!
//! Error of a landmark = its distance to the golden one in image pixels
//! (x·W, y·H), as a fraction of the diagonal of the golden part's bounding box
//! (also in px), so a 1% error means the same on a face and on a body.
//!
//! Here: the goldens' format, one frame's comparison and the photo folder;
//! [`clip`]: a clip in tracking mode; [`backends`]: two pipelines against
//! each other; [`multi`]: several people per photo (`DIR/multi/golden`).
//!
//! Tooling, not the pipeline: it compares `model`'s answers and changes nothing
//! in it.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use super::{TESTDATA, load_holistic, load_image};
use crate::config::Branches;
use crate::model::{
    Backend, Holistic, HolisticResult, Mode, ModelError, Parts, ProcessOptions, TrackingState,
    decode_image,
};

mod backends;
mod clip;
mod multi;

pub use backends::*;
pub use clip::*;
pub use multi::*;

/// Images on which MediaPipe's pose presence is a knife edge (see the testdata
/// README): there pose presence may differ, and when it does, the parts found
/// from the pose (face, hands) are not compared either.
pub const KNIFE_EDGE_IMAGES: [&str; 2] = ["zidane", "camera"];

/// Python's frame step: `process()` advances the timestamp by 33 333 µs.
pub const FRAME_STEP_US: i64 = 33_333;

/// The timestamp Python's `SolutionBase.process()` gives frame `i` (from 0):
/// it advances `_simulated_timestamp` (starting at 0) by 33 333 µs *before*
/// sending each frame (mediapipe/python/solution_base.py), so the first frame
/// is at 33 333 µs. The filters treat t = 0 specially (see `OneEuro::apply`).
pub fn python_timestamp_us(i: usize) -> i64 {
    (i as i64 + 1) * FRAME_STEP_US
}

/// One golden frame: each part a list of rows (`[x, y, z]` or `[x, y, z, visibility]`), or null.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldenFrame {
    pub pose: Option<Vec<Vec<f32>>>,
    pub face: Option<Vec<Vec<f32>>>,
    pub left_hand: Option<Vec<Vec<f32>>>,
    pub right_hand: Option<Vec<Vec<f32>>>,
}

/// A golden file for one still image.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldenImage {
    pub image: String,
    pub width: u32,
    pub height: u32,
    #[serde(flatten)]
    pub frame: GoldenFrame,
}

/// The tracking-mode golden of a clip.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldenVideo {
    pub frames: usize,
    pub results: Vec<GoldenFrame>,
}

/// The four parts, in report order.
pub const PARTS: [&str; 4] = ["pose", "face", "left_hand", "right_hand"];

/// One part of one frame compared.
#[derive(Debug, Clone, PartialEq)]
pub struct PartComparison {
    pub part: &'static str,
    pub golden_present: bool,
    pub ours_present: bool,
    /// Mean and max error as fractions of the golden diagonal, when both are present.
    pub errors: Option<(f64, f64)>,
}

impl PartComparison {
    pub fn agrees(&self) -> bool {
        self.golden_present == self.ours_present
    }
}

/// Compares our result with a golden frame of a `width`×`height` image.
pub fn compare_frame(
    golden: &GoldenFrame,
    ours: &HolisticResult,
    width: u32,
    height: u32,
) -> Vec<PartComparison> {
    let ours_xy: [Vec<[f32; 2]>; 4] = [
        ours.pose.iter().map(|l| [l.x, l.y]).collect(),
        ours.face.iter().map(|l| [l.x, l.y]).collect(),
        ours.left_hand.iter().map(|l| [l.x, l.y]).collect(),
        ours.right_hand.iter().map(|l| [l.x, l.y]).collect(),
    ];
    let golden_parts = [
        &golden.pose,
        &golden.face,
        &golden.left_hand,
        &golden.right_hand,
    ];
    PARTS
        .iter()
        .zip(golden_parts)
        .zip(ours_xy)
        .map(|((&part, g), o)| {
            let golden_xy: Option<Vec<[f32; 2]>> = g
                .as_ref()
                .map(|rows| rows.iter().map(|r| [r[0], r[1]]).collect());
            let errors = match &golden_xy {
                Some(g) if !o.is_empty() => Some(landmark_errors(g, &o, width, height)),
                _ => None,
            };
            PartComparison {
                part,
                golden_present: golden_xy.is_some(),
                ours_present: !o.is_empty(),
                errors,
            }
        })
        .collect()
}

/// Mean and max distance in px over the golden bounding-box diagonal in px.
/// Landmarks are matched by index; a count mismatch counts as an infinite error.
pub fn landmark_errors(
    golden: &[[f32; 2]],
    ours: &[[f32; 2]],
    width: u32,
    height: u32,
) -> (f64, f64) {
    if golden.len() != ours.len() || golden.is_empty() {
        return (f64::INFINITY, f64::INFINITY);
    }
    let (w, h) = (width as f64, height as f64);
    let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for p in golden {
        let (x, y) = (p[0] as f64 * w, p[1] as f64 * h);
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    let diagonal = ((x1 - x0).powi(2) + (y1 - y0).powi(2)).sqrt().max(1e-9);
    let (mut sum, mut max) = (0.0f64, 0.0f64);
    for (g, o) in golden.iter().zip(ours) {
        let d = (((o[0] - g[0]) as f64 * w).powi(2) + ((o[1] - g[1]) as f64 * h).powi(2)).sqrt()
            / diagonal;
        sum += d;
        max = max.max(d);
    }
    (sum / golden.len() as f64, max)
}

/// One row of the report: an image (or a clip's summary) and its parts.
#[derive(Debug, Clone)]
pub struct ImageParity {
    pub name: String,
    pub parts: Vec<PartComparison>,
    pub knife_edge: bool,
}

/// The thresholds a parity run must meet.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Largest allowed mean error per part, as a fraction of the diagonal.
    pub max_mean_err: f64,
}

/// The outcome of a parity run over still images.
#[derive(Debug, Clone)]
pub struct ParityReport {
    pub images: Vec<ImageParity>,
    pub thresholds: Thresholds,
}

impl ParityReport {
    /// Every missed threshold, in words; empty when the run passes.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for img in &self.images {
            let pose_differs = img.parts.iter().any(|p| p.part == "pose" && !p.agrees());
            let excused = img.knife_edge && pose_differs;
            for p in &img.parts {
                if !p.agrees() && !excused {
                    out.push(format!(
                        "{} {}: presence differs (MediaPipe {}, ours {})",
                        img.name,
                        p.part,
                        yes_no(p.golden_present),
                        yes_no(p.ours_present)
                    ));
                }
                if let Some((mean, _)) = p.errors {
                    if !(mean <= self.thresholds.max_mean_err) {
                        out.push(format!(
                            "{} {}: mean error {:.2}% > {:.2}%",
                            img.name,
                            p.part,
                            mean * 100.0,
                            self.thresholds.max_mean_err * 100.0
                        ));
                    }
                }
            }
        }
        out
    }

    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "found" } else { "none" }
}

impl fmt::Display for ParityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<18} {:<10} {:>9} {:>9} {:>9} {:>9}",
            "image", "part", "mediapipe", "ours", "mean%", "max%"
        )?;
        let (mut compared, mut worst_mean, mut sum_mean) = (0usize, 0.0f64, 0.0f64);
        for img in &self.images {
            for p in &img.parts {
                let (mean, max) = match p.errors {
                    Some((m, x)) => {
                        compared += 1;
                        worst_mean = worst_mean.max(m);
                        sum_mean += m;
                        (format!("{:.3}", m * 100.0), format!("{:.3}", x * 100.0))
                    }
                    None => ("-".into(), "-".into()),
                };
                let mark = if p.agrees() {
                    ""
                } else if img.knife_edge {
                    "  (presence differs, knife edge)"
                } else {
                    "  PRESENCE DIFFERS"
                };
                writeln!(
                    f,
                    "{:<18} {:<10} {:>9} {:>9} {:>9} {:>9}{}",
                    img.name,
                    p.part,
                    yes_no(p.golden_present),
                    yes_no(p.ours_present),
                    mean,
                    max,
                    mark
                )?;
            }
        }
        let failures = self.failures();
        write!(
            f,
            "summary: {} images, {} parts compared, mean of means {:.3}%, worst mean {:.3}% (limit {:.2}%): {}",
            self.images.len(),
            compared,
            if compared > 0 {
                sum_mean / compared as f64 * 100.0
            } else {
                0.0
            },
            worst_mean * 100.0,
            self.thresholds.max_mean_err * 100.0,
            verdict(&failures)
        )?;
        write_failures(f, &failures)
    }
}

/// Why a parity run could not be carried out (as opposed to failing).
#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Model { path: PathBuf, source: ModelError },
    #[error("{0}")]
    Data(String),
}

fn read(path: &Path) -> Result<Vec<u8>, ParityError> {
    std::fs::read(path).map_err(|source| ParityError::Io {
        path: path.to_owned(),
        source,
    })
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ParityError> {
    serde_json::from_slice(&read(path)?).map_err(|source| ParityError::Json {
        path: path.to_owned(),
        source,
    })
}

/// Runs every golden of `dir/golden` on its image in `dir/images`, each with a
/// fresh state in static mode, as the goldens were made (the layout of
/// `../shared/testdata`). A missing `dir` is an error that says what the
/// folder should hold.
pub fn check_dir(
    holistic: &Holistic,
    dir: &Path,
    thresholds: Thresholds,
) -> Result<ParityReport, ParityError> {
    if !dir.join("golden").is_dir() || !dir.join("images").is_dir() {
        return Err(ParityError::Data(format!(
            "{}: no golden/ and images/ there. The extended parity needs MediaPipe's golden \
             outputs (golden/NAME.json) beside the photos they were made from (images/), as in \
             ../shared/testdata; `cargo test` checks the in-repo photos of tests/fixtures without it",
            dir.display()
        )));
    }
    check_goldens(
        holistic,
        &dir.join("images"),
        &dir.join("golden"),
        thresholds,
    )
}

/// Runs every golden of `golden_dir` (`*.json`; subfolders are not read) on
/// its image in `images_dir`, each with a fresh state in static mode.
pub fn check_goldens(
    holistic: &Holistic,
    images_dir: &Path,
    golden_dir: &Path,
    thresholds: Thresholds,
) -> Result<ParityReport, ParityError> {
    let golden_dir = golden_dir.to_owned();
    let mut goldens: Vec<PathBuf> = std::fs::read_dir(&golden_dir)
        .map_err(|source| ParityError::Io {
            path: golden_dir.clone(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    goldens.sort();
    if goldens.is_empty() {
        return Err(ParityError::Data(format!(
            "no golden files in {}",
            golden_dir.display()
        )));
    }
    let mut images = Vec::new();
    for path in goldens {
        let golden: GoldenImage = parse(&path)?;
        let image_path = images_dir.join(&golden.image);
        let image = golden_photo(&image_path, golden.width, golden.height)?;
        let opts = ProcessOptions {
            people: 1,
            mode: Mode::Static,
            parts: Parts::default(),
            timestamp_us: 0,
        };
        let ours = holistic
            .process(&image, &opts, &mut TrackingState::default())
            .map_err(|source| ParityError::Model {
                path: image_path.clone(),
                source,
            })?;
        let name = golden
            .image
            .rsplit_once('.')
            .map_or(golden.image.as_str(), |(stem, _)| stem)
            .to_string();
        images.push(ImageParity {
            knife_edge: KNIFE_EDGE_IMAGES.contains(&name.as_str()),
            parts: compare_frame(&golden.frame, &ours, golden.width, golden.height),
            name,
        });
    }
    Ok(ParityReport { images, thresholds })
}

/// `holistream parity DIR`: compares with MediaPipe's golden outputs; exits
/// non-zero when a threshold is missed.
#[derive(Debug, clap::Args)]
pub struct ParityArgs {
    /// Folder with `images/` and `golden/` (the format of ../shared/testdata).
    #[arg(default_value = TESTDATA)]
    pub dir: PathBuf,
    /// Largest mean landmark error per part, as a fraction of the part's diagonal.
    #[arg(long, default_value_t = 0.02)]
    pub max_mean_err: f64,
    /// Also check tracking mode on this MJPEG clip…
    #[arg(long, requires = "golden_video")]
    pub video: Option<PathBuf>,
    /// …against its tracking-mode golden JSON.
    #[arg(long, requires = "video")]
    pub golden_video: Option<PathBuf>,
    /// Largest share of clip frames whose presence may differ, per part.
    #[arg(long, default_value_t = 0.05)]
    pub max_presence_mismatch: f64,
    /// Compare only the first N frames of the clip.
    #[arg(long)]
    pub video_frames: Option<usize>,
    /// Largest mean face error of a person of `DIR/multi/golden`, as a
    /// fraction of the golden face's diagonal (checked when that folder exists).
    #[arg(long, default_value_t = 0.03)]
    pub max_multi_face_err: f64,
}

/// Runs `holistream parity`.
pub fn parity(args: &ParityArgs) -> anyhow::Result<()> {
    let holistic = load_holistic()?;
    let thresholds = Thresholds {
        max_mean_err: args.max_mean_err,
    };
    let report = check_dir(&holistic, &args.dir, thresholds)?;
    println!("{report}");
    let mut failed = !report.passed();
    if args.dir.join("multi/golden").is_dir() {
        let multi = check_multi(&holistic, &args.dir, args.max_multi_face_err)?;
        println!("{multi}");
        failed |= !multi.failures().is_empty();
    }
    // The fused kernels against the generated burn code on the same photos:
    // the only check of hands in still images (the in-repo photos show none).
    let images = args.dir.join("images");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&images)
        .with_context(|| format!("listing {}", images.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    let photos = paths
        .iter()
        .map(|p| {
            let name = p
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            load_image(p).map(|image| (name, image))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let backends = check_fused_against_burn(&photos, Mode::Static)?;
    println!("{backends}");
    failed |= !backends.failures().is_empty();
    if let (Some(video), Some(golden)) = (&args.video, &args.golden_video) {
        let clip = check_clip(
            &holistic,
            video,
            golden,
            thresholds,
            args.max_presence_mismatch,
            args.video_frames,
        )?;
        println!("{clip}");
        failed |= !clip.failures().is_empty();
    }
    if failed {
        bail!("parity thresholds missed");
    }
    Ok(())
}

/// A golden's photo, decoded and checked against the size the golden
/// gives.
pub(crate) fn golden_photo(
    image_path: &Path,
    width: u32,
    height: u32,
) -> Result<image::RgbImage, ParityError> {
    // The test photos go up to 1920x1448: above a camera frame's limits.
    let photo = &crate::model::image_input::DecodeLimits::PHOTO;
    let image =
        crate::model::image_input::decode_image_with(&read(image_path)?, photo).map_err(|e| {
            ParityError::Model {
                path: image_path.to_path_buf(),
                source: e.into(),
            }
        })?;
    if image.dimensions() != (width, height) {
        return Err(ParityError::Data(format!(
            "{}: image is {:?}, golden says {width}x{height}",
            image_path.display(),
            image.dimensions(),
        )));
    }
    Ok(image)
}

/// The last word of every report's summary line: `PASS`, or `FAIL (n
/// problems)`.
fn verdict<T>(failures: &[T]) -> String {
    if failures.is_empty() {
        "PASS".to_string()
    } else {
        format!("FAIL ({} problems)", failures.len())
    }
}

/// Each failure on its own indented line, after a report's summary.
fn write_failures<T: fmt::Display>(f: &mut fmt::Formatter<'_>, failures: &[T]) -> fmt::Result {
    for fail in failures {
        write!(f, "\n  {fail}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_fractions_of_the_golden_diagonal_in_pixels() {
        // Golden box 30 x 40 px in a 100x200 image → diagonal 50 px.
        let golden = [[0.1, 0.1], [0.4, 0.3]];
        // First point off by 5 px in x (0.05·100), second exact: mean 5%, max 10%.
        let ours = [[0.15, 0.1], [0.4, 0.3]];
        let (mean, max) = landmark_errors(&golden, &ours, 100, 200);
        assert!(
            (mean - 0.05).abs() < 1e-6 && (max - 0.1).abs() < 1e-6,
            "{mean} {max}"
        );
        assert_eq!(
            landmark_errors(&golden, &ours[..1], 100, 200).0,
            f64::INFINITY
        );
    }

    fn report(name: &str, pose: (bool, bool), face: (bool, bool), mean: f64) -> ParityReport {
        let part = |part, (g, o): (bool, bool)| PartComparison {
            part,
            golden_present: g,
            ours_present: o,
            errors: (g && o).then_some((mean, mean * 2.0)),
        };
        ParityReport {
            images: vec![ImageParity {
                name: name.into(),
                knife_edge: KNIFE_EDGE_IMAGES.contains(&name),
                parts: vec![part("pose", pose), part("face", face)],
            }],
            thresholds: Thresholds { max_mean_err: 0.02 },
        }
    }

    #[test]
    fn thresholds_fail_the_run() {
        assert!(report("obama", (true, true), (true, true), 0.01).passed());
        assert!(!report("obama", (true, true), (true, true), 0.03).passed());
        assert!(!report("obama", (true, true), (true, false), 0.01).passed());
        assert!(!report("obama", (false, true), (false, true), 0.01).passed());
        // Knife edge: a pose presence difference (and what follows from it) is excused…
        assert!(report("zidane", (false, true), (false, true), 0.01).passed());
        // …but not a face difference when the pose agrees.
        assert!(!report("zidane", (true, true), (true, false), 0.01).passed());
        assert!(
            report("zidane", (true, true), (true, true), 0.01)
                .to_string()
                .contains("PASS")
        );
    }

    #[test]
    fn backend_moves_fail_on_presence_and_past_their_bound() {
        assert_eq!(
            fused_vs_burn_bound("faceapi4", "left_hand", Mode::Static),
            0.01
        );
        // `holistream parity` names its photos with their extension.
        assert_eq!(
            fused_vs_burn_bound("faceapi4.jpg", "left_hand", Mode::Static),
            0.01
        );
        assert_eq!(
            fused_vs_burn_bound("faceapi4", "face", Mode::Static),
            FUSED_VS_BURN_MAX_MEAN
        );
        assert_eq!(
            fused_vs_burn_bound("clip#3", "pose", Mode::Tracking),
            FUSED_VS_BURN_TRACKING_MAX_MEAN
        );
        assert!(fused_vs_burn_bound("clip#3", "right_hand", Mode::Tracking).is_infinite());
        let part = |present, mean: f64| PartMove {
            frame: "obama".into(),
            part: "face",
            present,
            moved: (present == (true, true)).then_some((mean, mean * 3.0)),
            bound: FUSED_VS_BURN_MAX_MEAN,
        };
        let report = |parts| BackendReport {
            label: "test".into(),
            parts,
        };
        let within = report(vec![part((true, true), FUSED_VS_BURN_MAX_MEAN)]);
        assert!(within.failures().is_empty(), "{within}");
        assert_eq!(within.compared(), 1);
        let past = report(vec![part((true, true), FUSED_VS_BURN_MAX_MEAN * 1.01)]);
        assert_eq!(past.failures().len(), 1, "{past}");
        let missing = report(vec![part((true, false), 0.0)]);
        assert_eq!(missing.failures().len(), 1, "{missing}");
        assert!(missing.to_string().contains("PRESENCE DIFFERS"));
        assert!(report(vec![part((true, true), f64::NAN)]).failures().len() == 1);
    }

    #[test]
    fn mjpeg_splits_on_markers() {
        let stream = [0xFF, 0xD8, 1, 2, 0xFF, 0xD9, 0xFF, 0xD8, 3, 0xFF, 0xD9, 7];
        let frames = split_mjpeg(&stream);
        assert_eq!(frames, vec![&stream[0..6], &stream[6..11]]);
    }
}
