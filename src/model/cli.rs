//! The model commands of the `holistream` binary: `infer`, `parity`, `bench`.
//! `main.rs` only parses arguments and calls these.

use super::image_input::{DecodeLimits, decode_image_with};
use super::{Backend, Holistic, Mode, Parts, ProcessOptions, TrackingState, bench, draw, parity};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// Default test data, relative to the repository root (as in CI).
const TESTDATA: &str = "../shared/testdata";

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ModeArg {
    Static,
    Tracking,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Static => Mode::Static,
            ModeArg::Tracking => Mode::Tracking,
        }
    }
}

/// `holistream infer IMAGE...`: prints one JSON result per image, one per line.
#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// JPEG or PNG files; in tracking mode they are frames of one stream, in order.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "static")]
    pub mode: ModeArg,
    /// Parts to compute, comma separated.
    #[arg(long, default_value = "pose,face,hands")]
    pub parts: Parts,
    /// Write the image with landmarks and connections drawn (PNG); with several
    /// images, `-N` is appended to the file stem for the N-th.
    #[arg(long)]
    pub draw: Option<PathBuf>,
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
}

/// `holistream bench`: per-net and per-frame medians beside MediaPipe's.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Images to run (default: the photos of ../shared/testdata/images).
    #[arg(long, num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// Iterations per net and per image and mode.
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Nets backends to measure, comma separated (`burn` is the generated
    /// `flex` code, `fused` our kernels).
    #[arg(long, value_delimiter = ',', default_value = "burn,fused")]
    pub nets: Vec<Backend>,
    /// Frames per worker for the throughput rows; 0 skips them.
    #[arg(long, default_value_t = 20)]
    pub throughput_frames: usize,
    /// Print where the fused kernels' time goes, per net and layer kind.
    #[arg(long)]
    pub profile: bool,
    /// A Python with mediapipe==0.10.14 (and ai-edge-litert for the per-net
    /// rows): MediaPipe is then measured on the same images in the same run;
    /// without it the ratios use reference figures for this kind of machine.
    #[arg(long, value_name = "PYTHON")]
    pub mediapipe: Option<PathBuf>,
}

fn load_image(path: &Path) -> anyhow::Result<image::RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // Photos, not camera frames: larger (a phone's are 4032x3024), and the
    // operator's own files; still bounded, by the hard cap.
    decode_image_with(&bytes, &DecodeLimits::PHOTO)
        .with_context(|| format!("decoding {}", path.display()))
}

use super::Net;

fn load_holistic() -> anyhow::Result<Holistic> {
    Holistic::load_default().context("loading the nets")
}

pub fn infer(args: &InferArgs) -> anyhow::Result<()> {
    let holistic = load_holistic()?;
    let mut state = TrackingState::default();
    for (i, path) in args.images.iter().enumerate() {
        let image = load_image(path)?;
        let opts = ProcessOptions {
            mode: args.mode.into(),
            parts: args.parts,
            // As MediaPipe's Python solution times a stream (first frame at
            // 33 333 µs), so `--mode tracking` reproduces its answers.
            timestamp_us: parity::python_timestamp_us(i),
        };
        let result = holistic.process(&image, &opts, &mut state)?;
        println!("{}", serde_json::to_string(&result)?);
        if let Some(out) = &args.draw {
            let out = if args.images.len() == 1 {
                out.clone()
            } else {
                numbered(out, i)
            };
            draw::draw(&image, &result)
                .save(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            tracing::info!(path = %out.display(), "drawn");
        }
    }
    Ok(())
}

fn numbered(path: &Path, i: usize) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    path.with_file_name(format!("{stem}-{i}.{ext}"))
}

pub fn parity(args: &ParityArgs) -> anyhow::Result<()> {
    let holistic = load_holistic()?;
    let thresholds = parity::Thresholds {
        max_mean_err: args.max_mean_err,
    };
    let report = parity::check_dir(&holistic, &args.dir, thresholds)?;
    println!("{report}");
    let mut failed = !report.passed();
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
    let backends = parity::check_fused_against_burn(&photos, Mode::Static)?;
    println!("{backends}");
    failed |= !backends.failures().is_empty();
    if let (Some(video), Some(golden)) = (&args.video, &args.golden_video) {
        let clip = parity::check_clip(
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

pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let paths = if args.images.is_empty() {
        let dir = Path::new(TESTDATA).join("images");
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        v
    } else {
        args.images.clone()
    };
    let images = paths
        .iter()
        .map(|p| load_image(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // MediaPipe first, so neither side runs beside the other's threads.
    let mediapipe = match &args.mediapipe {
        Some(python) => bench::MediaPipeTimes::measure(python, &paths, args.iters)
            .map_err(|e| anyhow::anyhow!("measuring MediaPipe: {e}"))?,
        None => bench::MediaPipeTimes::reference(),
    };
    let mut comparison = bench::Comparison {
        reports: Vec::new(),
        throughput: Vec::new(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mediapipe,
        mediapipe_throughput: Vec::new(),
    };
    for &backend in &args.nets {
        let holistic = Holistic::load(backend)
            .and_then(|h| Ok(h.with_branches(crate::model::pipeline::Branches::from_env()?)))
            .with_context(|| format!("loading the nets on {}", backend.name()))?;
        let report = bench::run(&holistic, &images, args.iters)?;
        eprintln!(
            "{}: static frame {:.2} ms",
            backend.name(),
            report.static_frame
        );
        comparison.reports.push((backend, report));
    }
    if args.throughput_frames > 0 {
        let mut workers = vec![1, comparison.cores];
        workers.dedup();
        for &backend in &args.nets {
            for &n in &workers {
                for mode in [Mode::Static, Mode::Tracking] {
                    let fps = bench::throughput(backend, &images, n, args.throughput_frames, mode)?;
                    comparison.throughput.push(bench::ThroughputRow {
                        backend,
                        workers: n,
                        mode,
                        fps,
                    });
                }
            }
        }
        if let Some(python) = &args.mediapipe {
            for &n in &workers {
                for mode in [Mode::Static, Mode::Tracking] {
                    let fps = bench::MediaPipeTimes::measure_throughput(
                        python,
                        &paths,
                        n,
                        args.throughput_frames,
                        mode,
                    )
                    .map_err(|e| anyhow::anyhow!("measuring MediaPipe's throughput: {e}"))?;
                    comparison.mediapipe_throughput.push((n, mode, fps));
                }
            }
        }
    }
    println!("{comparison}");
    if args.profile {
        print_profile()?;
    }
    Ok(())
}

/// Per net: the fused kernels' time by layer kind (sum of per-layer minima
/// over a few runs, so scheduling noise does not pile up).
fn print_profile() -> anyhow::Result<()> {
    let nets = holistream_nets::FusedNets::load()?;
    println!(
        "== fused kernels, where the time goes ({})",
        nets.isa().name()
    );
    for net in Net::ALL {
        let (h, w) = net.input_size();
        let input = vec![0.5f32; h * w * 3];
        let runs = (0..10)
            .map(|_| nets.profile(net, &input))
            .collect::<Result<Vec<_>, _>>()?;
        let mut by_kind: Vec<(String, f64)> = Vec::new();
        let mut total = 0.0;
        for (i, (name, _)) in runs[0].iter().enumerate() {
            let best = runs
                .iter()
                .map(|r| r[i].1.as_secs_f64() * 1e3)
                .fold(f64::INFINITY, f64::min);
            total += best;
            // "pointwise k=24 64x64x144" -> "pointwise"; "depthwise 3x3/1 ..." -> "depthwise 3x3/1".
            let kind = name.rsplit_once(' ').map_or(name.as_str(), |(k, _)| k);
            let kind = kind.split(" k=").next().unwrap_or(kind).to_string();
            match by_kind.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, t)) => *t += best,
                None => by_kind.push((kind, best)),
            }
        }
        by_kind.sort_by(|a, b| b.1.total_cmp(&a.1));
        let parts: Vec<String> = by_kind
            .iter()
            .take(6)
            .map(|(k, t)| format!("{k} {:.0}%", 100.0 * t / total))
            .collect();
        println!(
            "{:<28} {:6.2} ms ({} layers): {}",
            net.name(),
            total,
            runs[0].len(),
            parts.join(", ")
        );
    }
    Ok(())
}
