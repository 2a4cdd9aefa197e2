//! `holistream bench`: where a frame's time goes, beside MediaPipe's numbers
//! for this machine, for each nets backend (the generated burn `flex` code
//! and our fused kernels), measured in the same run.
//!
//! Per net: the median forward time. Per frame: the median `process` time in
//! static mode (detection on every frame) and in tracking mode (each image
//! replayed as a still video, so the pose ROI is carried over and detection
//! is skipped after the first frame, as in a live stream). Throughput: frames
//! per second with one worker (one `Holistic`) per thread, all started
//! together, for 1 worker and for one per core.
//!
//! With `--people 1,3,6`, also multi-person frames ([`people`]): static on
//! three group photos, tracking on the pan clip, per people count.
//! `--profile`: the fused kernels by layer kind ([`profile`]).
//!
//! Tooling, not the pipeline: it times `model` from the outside and changes
//! nothing in it.

mod batch;
mod people;
mod profile;

pub use people::{PeopleBench, PeopleRow, bench_people};

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{TESTDATA, load_image};
use crate::config::{Branches, ModelConfig};
use crate::model::{
    Backend, Holistic, Mode, ModelError, Net, Parts, ProcessOptions, TrackingState,
};
use crate::stats::median;
use image::RgbImage;
use std::sync::{Arc, Barrier};
use std::time::Instant;

/// MediaPipe 0.10.14 (XNNPACK, 1 thread) on this kind of machine, ms per
/// frame, as measured once for the project brief: the figures printed when
/// the bench is not given a MediaPipe to measure in the same run.
pub const MEDIAPIPE_STATIC_MS: f64 = 26.0;
pub const MEDIAPIPE_TRACKING_MS: f64 = 20.0;

/// The brief's per-net MediaPipe forward times (XNNPACK, 1 thread), ms.
fn reference_net_ms(net: Net) -> Option<f64> {
    match net {
        Net::PoseDetection => Some(5.4),
        Net::PoseLandmark => Some(8.5),
        Net::HandLandmark => Some(4.3),
        Net::FaceLandmark => Some(0.64),
        Net::HandRecrop => Some(0.64),
        Net::FaceDetection => None,
    }
}

/// MediaPipe's times the bench compares with, ms: measured in the same run
/// (`--mediapipe PYTHON`, see `mediapipe_bench.py`) or the brief's reference
/// figures; `source` says which, and is printed.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct MediaPipeTimes {
    pub source: String,
    pub static_ms: f64,
    pub tracking_ms: f64,
    /// Forward time per net, by [`Net::name`].
    #[serde(default)]
    pub nets: std::collections::BTreeMap<String, f64>,
    /// Why the per-net times are missing, when they are.
    #[serde(default)]
    pub nets_error: Option<String>,
}

/// The script that measures MediaPipe (run by [`MediaPipeTimes::measure`]).
const MEDIAPIPE_BENCH_PY: &str = include_str!("../mediapipe_bench.py");

impl MediaPipeTimes {
    /// The brief's figures for this kind of machine (not measured here).
    pub fn reference() -> MediaPipeTimes {
        MediaPipeTimes {
            source: "reference figures for this kind of machine, not measured in this run".into(),
            static_ms: MEDIAPIPE_STATIC_MS,
            tracking_ms: MEDIAPIPE_TRACKING_MS,
            nets: Net::ALL
                .iter()
                .filter_map(|&n| reference_net_ms(n).map(|ms| (n.name().to_string(), ms)))
                .collect(),
            nets_error: None,
        }
    }

    /// Measures MediaPipe with `python` (which must have mediapipe==0.10.14)
    /// on the same images, `iters` frames per image and mode.
    pub fn measure(
        python: &std::path::Path,
        images: &[std::path::PathBuf],
        iters: usize,
    ) -> anyhow::Result<MediaPipeTimes> {
        let out = std::process::Command::new(python)
            .arg("-c")
            .arg(MEDIAPIPE_BENCH_PY)
            .arg(iters.to_string())
            .args(images)
            .output()
            .map_err(|e| anyhow::anyhow!("running {}: {e}", python.display()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            return Err(anyhow::anyhow!(
                "{} failed ({}): {}",
                python.display(),
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("reading MediaPipe's times ({e}): {line}"))
    }

    /// Frames per second of `workers` MediaPipe processes (one Holistic
    /// each), each processing `frames` frames cycling through `images` in
    /// `mode`, started together once all have loaded; the span is from the
    /// first start to the last end, on the wall clock the processes share.
    pub fn measure_throughput(
        python: &std::path::Path,
        images: &[std::path::PathBuf],
        workers: usize,
        frames: usize,
        mode: Mode,
    ) -> anyhow::Result<f64> {
        use std::io::{BufRead, BufReader, Write};
        use std::process::{Command, Stdio};
        let mode_arg = match mode {
            Mode::Static => "static",
            Mode::Tracking => "tracking",
        };
        // Killed on every way out of this function: a process left waiting
        // for its start line would run its frames later, beside whatever
        // the bench measures next.
        struct Children(Vec<std::process::Child>);
        impl Drop for Children {
            fn drop(&mut self) {
                for child in &mut self.0 {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        let mut children = Children(Vec::with_capacity(workers));
        for _ in 0..workers {
            let child = Command::new(python)
                .arg("-c")
                .arg(MEDIAPIPE_BENCH_PY)
                .args(["throughput", mode_arg, &frames.to_string()])
                .args(images)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| anyhow::anyhow!("running {}: {e}", python.display()))?;
            children.0.push(child);
        }
        // Wait until every process has loaded its graph and run a warm-up
        // frame, then start them all.
        let mut readers = Vec::with_capacity(workers);
        for child in &mut children.0 {
            let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .map_err(|e| anyhow::anyhow!("reading from {}: {e}", python.display()))?;
            if line.trim() != "ready" {
                return Err(anyhow::anyhow!(
                    "{} did not start (said {line:?}; is mediapipe==0.10.14 installed?)",
                    python.display()
                ));
            }
            readers.push(reader);
        }
        for child in &mut children.0 {
            let stdin = child.stdin.as_mut().expect("piped stdin");
            stdin
                .write_all(b"go\n")
                .and_then(|()| stdin.flush())
                .map_err(|e| anyhow::anyhow!("starting {}: {e}", python.display()))?;
        }
        #[derive(serde::Deserialize)]
        struct Span {
            start: f64,
            end: f64,
            frames: usize,
        }
        let (mut start, mut end, mut total) = (f64::INFINITY, f64::NEG_INFINITY, 0);
        for (child, mut reader) in children.0.iter_mut().zip(readers) {
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .map_err(|e| anyhow::anyhow!("reading from {}: {e}", python.display()))?;
            let status = child
                .wait()
                .map_err(|e| anyhow::anyhow!("waiting for {}: {e}", python.display()))?;
            if !status.success() {
                return Err(anyhow::anyhow!("{} failed ({status})", python.display()));
            }
            let span: Span = serde_json::from_str(line.trim())
                .map_err(|e| anyhow::anyhow!("reading MediaPipe's span ({e}): {line}"))?;
            start = start.min(span.start);
            end = end.max(span.end);
            total += span.frames;
        }
        Ok(total as f64 / (end - start))
    }

    /// MediaPipe's forward time of `net`, if known.
    pub fn net_ms(&self, net: Net) -> Option<f64> {
        self.nets.get(net.name()).copied()
    }
}

/// Medians of one bench run, in ms.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Forward-only median per net, one thread.
    pub nets: Vec<(Net, f64)>,
    /// The same with the net's large layers split across two threads
    /// ([`holistream_nets::NetRunner::run_split`]), timed alternately with
    /// the one-thread runs; equal to them where the nets cannot split.
    pub nets_split: Vec<(Net, f64)>,
    pub static_frame: f64,
    pub tracking_frame: f64,
    /// Median per-stage times of the static frames.
    pub static_stages: crate::model::StageTimings,
    pub images: usize,
    pub iters: usize,
}

/// Runs the bench: `iters` forward passes per net, and `iters` frames per
/// image in each mode (after one warm-up frame).
pub fn run(
    holistic: &Holistic,
    images: &[RgbImage],
    iters: usize,
) -> Result<BenchReport, ModelError> {
    let iters = iters.max(1);
    let mut nets = Vec::new();
    let mut nets_split = Vec::new();
    for net in Net::ALL {
        holistic.time_net(net, false)?;
        holistic.time_net(net, true)?;
        let (mut one, mut two) = (Vec::new(), Vec::new());
        for _ in 0..iters {
            one.push(holistic.time_net(net, false)?);
            two.push(holistic.time_net(net, true)?);
        }
        nets.push((net, median(&mut one)));
        nets_split.push((net, median(&mut two)));
    }

    let parts = Parts::default();
    let mut static_times = Vec::new();
    let mut stages: [Vec<f64>; 6] = Default::default();
    let mut tracking_times = Vec::new();
    for image in images {
        let opts = ProcessOptions {
            people: 1,
            mode: Mode::Static,
            parts,
            timestamp_us: 0,
        };
        holistic.process(image, &opts, &mut TrackingState::default())?;
        for _ in 0..iters {
            let r = holistic.process(image, &opts, &mut TrackingState::default())?;
            static_times.push(r.timings.total);
            let t = r.timings;
            for (v, s) in [
                t.pose_detection,
                t.pose_landmark,
                t.face_detection,
                t.face_landmark,
                t.hand_recrop,
                t.hand_landmark,
            ]
            .into_iter()
            .zip(&mut stages)
            {
                s.push(v);
            }
        }
        let mut state = TrackingState::default();
        for i in 0..=iters {
            let opts = ProcessOptions {
                people: 1,
                mode: Mode::Tracking,
                parts,
                timestamp_us: i as i64 * super::parity::FRAME_STEP_US,
            };
            let r = holistic.process(image, &opts, &mut state)?;
            if i > 0 {
                tracking_times.push(r.timings.total);
            }
        }
    }
    let [a, b, c, d, e, f] = stages.map(|mut s| median(&mut s));
    Ok(BenchReport {
        nets,
        nets_split,
        static_frame: median(&mut static_times),
        tracking_frame: median(&mut tracking_times),
        static_stages: crate::model::StageTimings {
            pose_detection: a,
            pose_landmark: b,
            face_detection: c,
            face_landmark: d,
            hand_recrop: e,
            hand_landmark: f,
            total: f64::NAN,
        },
        images: images.len(),
        iters,
    })
}

impl BenchReport {
    /// Writes the report beside MediaPipe's times `mp`.
    pub fn write(&self, f: &mut std::fmt::Formatter<'_>, mp: &MediaPipeTimes) -> std::fmt::Result {
        writeln!(
            f,
            "{} images, {} iterations each; medians in ms; ratio = ours / MediaPipe",
            self.images, self.iters
        )?;
        writeln!(
            f,
            "{:<28} {:>9} {:>10} {:>7} {:>10} {:>9}",
            "net (forward only)", "ours", "mediapipe", "ratio", "2 threads", "2t/1t"
        )?;
        for ((net, ms), (_, split)) in self.nets.iter().zip(&self.nets_split) {
            let mp = mp.net_ms(*net);
            writeln!(
                f,
                "{:<28} {:>9.2} {:>10} {:>7} {:>10.2} {:>9}",
                net.name(),
                ms,
                self::ms(mp),
                ratio(Some(*ms), mp),
                split,
                ratio(Some(*split), Some(*ms))
            )?;
        }
        let s = &self.static_stages;
        writeln!(
            f,
            "static stages (crop+net+decode, 0 = not run): pose_detection {:.2}, pose_landmark {:.2}, face_detection {:.2}, face_landmark {:.2}, hand_recrop {:.2}, hand_landmark {:.2}",
            s.pose_detection,
            s.pose_landmark,
            s.face_detection,
            s.face_landmark,
            s.hand_recrop,
            s.hand_landmark
        )?;
        writeln!(
            f,
            "{:<28} {:>9} {:>10} {:>7}",
            "frame", "ours", "mediapipe", "ratio"
        )?;
        writeln!(
            f,
            "{:<28} {:>9.2} {:>10.2} {:>6.1}x",
            "static",
            self.static_frame,
            mp.static_ms,
            self.static_frame / mp.static_ms
        )?;
        write!(
            f,
            "{:<28} {:>9.2} {:>10.2} {:>6.1}x",
            "tracking",
            self.tracking_frame,
            mp.tracking_ms,
            self.tracking_frame / mp.tracking_ms
        )
    }
}

/// Frames per second of `workers` threads, each with its own [`Holistic`] on
/// `backend` with the `branches` policy, each processing `frames` frames
/// (cycling through `images`) in `mode`; timed from a common start once all
/// have loaded their nets.
pub fn throughput(
    backend: Backend,
    branches: Branches,
    images: &[RgbImage],
    workers: usize,
    frames: usize,
    mode: Mode,
) -> Result<f64, ModelError> {
    if images.is_empty() || workers == 0 || frames == 0 {
        return Ok(f64::NAN);
    }
    let images = Arc::new(images.to_vec());
    let barrier = Arc::new(Barrier::new(workers + 1));
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (images, barrier) = (images.clone(), barrier.clone());
            std::thread::spawn(move || -> Result<(), ModelError> {
                let loaded = Holistic::load(backend).map(|h| h.with_branches(branches));
                // Wait even when loading failed, so the others are not stuck.
                barrier.wait();
                let holistic = loaded?;
                let mut state = TrackingState::default();
                for i in 0..frames {
                    let opts = ProcessOptions {
                        people: 1,
                        mode,
                        parts: Parts::default(),
                        timestamp_us: i as i64 * super::parity::FRAME_STEP_US,
                    };
                    holistic.process(&images[i % images.len()], &opts, &mut state)?;
                }
                Ok(())
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        match h.join() {
            Ok(r) => r?,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    Ok((workers * frames) as f64 / start.elapsed().as_secs_f64())
}

/// One throughput measurement.
#[derive(Debug, Clone)]
pub struct ThroughputRow {
    pub backend: Backend,
    pub workers: usize,
    pub mode: Mode,
    pub fps: f64,
}

/// Everything `holistream bench` prints: one [`BenchReport`] per backend and
/// the throughput rows, all from the same run.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub reports: Vec<(Backend, BenchReport)>,
    pub throughput: Vec<ThroughputRow>,
    /// Threads the throughput rows could use (`available_parallelism`).
    pub cores: usize,
    /// What the ratios compare with.
    pub mediapipe: MediaPipeTimes,
    /// MediaPipe's throughput measured in the same run (`--mediapipe`):
    /// workers (processes), mode, frames per second.
    pub mediapipe_throughput: Vec<(usize, Mode, f64)>,
}

impl Comparison {
    fn report(&self, backend: Backend) -> Option<&BenchReport> {
        self.reports
            .iter()
            .find(|(b, _)| *b == backend)
            .map(|(_, r)| r)
    }
}

/// `a / b` as `N.NNx`, or `-` when either is missing.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() && b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mp = &self.mediapipe;
        writeln!(f, "MediaPipe: {}", mp.source)?;
        if let Some(why) = &mp.nets_error {
            writeln!(f, "MediaPipe per-net times missing: {why}")?;
        }
        for (backend, report) in &self.reports {
            writeln!(f, "== nets: {}", backend.name())?;
            report.write(f, mp)?;
            writeln!(f)?;
        }
        let burn = self.report(Backend::Burn);
        let fused = self.report(Backend::Fused);
        writeln!(
            f,
            "== side by side (ms, medians; ratios: fused / burn flex, fused / MediaPipe)"
        )?;
        writeln!(
            f,
            "{:<28} {:>9} {:>9} {:>10} {:>10} {:>9}",
            "", "burn", "fused", "fused/burn", "mediapipe", "fused/mp"
        )?;
        let net_ms = |r: Option<&BenchReport>, net: Net| {
            r.and_then(|r| r.nets.iter().find(|(n, _)| *n == net).map(|(_, ms)| *ms))
        };
        let mut rows: Vec<(String, Option<f64>, Option<f64>, Option<f64>)> = Net::ALL
            .iter()
            .map(|&net| {
                (
                    net.name().to_string(),
                    net_ms(burn, net),
                    net_ms(fused, net),
                    mp.net_ms(net),
                )
            })
            .collect();
        rows.push((
            "frame static".into(),
            burn.map(|r| r.static_frame),
            fused.map(|r| r.static_frame),
            Some(mp.static_ms),
        ));
        rows.push((
            "frame tracking".into(),
            burn.map(|r| r.tracking_frame),
            fused.map(|r| r.tracking_frame),
            Some(mp.tracking_ms),
        ));
        for (name, b, u, mp) in rows {
            writeln!(
                f,
                "{:<28} {:>9} {:>9} {:>10} {:>10} {:>9}",
                name,
                ms(b),
                ms(u),
                ratio(u, b),
                ms(mp),
                ratio(u, mp)
            )?;
        }
        if !self.throughput.is_empty() {
            writeln!(
                f,
                "== throughput ({} cores; one Holistic per worker thread, each taking a second core while one is free (the right hand on its own thread, the other nets split across two); burn flex uses its own intra-op threads)",
                self.cores
            )?;
            writeln!(
                f,
                "{:<9} {:>7} {:>9} {:>8}",
                "nets", "workers", "mode", "fps"
            )?;
            let rows = self
                .throughput
                .iter()
                .map(|r| (r.backend.name(), r.workers, r.mode, r.fps))
                .chain(
                    self.mediapipe_throughput
                        .iter()
                        .map(|&(workers, mode, fps)| ("mediapipe", workers, mode, fps)),
                );
            for (name, workers, mode, fps) in rows {
                let vs_mp = self
                    .mediapipe_throughput
                    .iter()
                    .find(|&&(w, m, _)| w == workers && m == mode)
                    .filter(|_| name != "mediapipe")
                    .map_or(String::new(), |&(_, _, mp_fps)| {
                        format!(" {:>6.2}x MediaPipe's", fps / mp_fps)
                    });
                writeln!(
                    f,
                    "{:<9} {:>7} {:>9} {:>8.1}{vs_mp}",
                    name,
                    workers,
                    format!("{mode:?}").to_lowercase(),
                    fps
                )?;
            }
            if self.mediapipe_throughput.is_empty() {
                write!(
                    f,
                    "MediaPipe not run (--mediapipe): one process per core, from the reference frame times, would give {:.1} fps static, {:.1} fps tracking",
                    self.cores as f64 * 1000.0 / mp.static_ms,
                    self.cores as f64 * 1000.0 / mp.tracking_ms
                )?;
            } else {
                write!(
                    f,
                    "mediapipe rows: one Python process per worker, each with its own Holistic"
                )?;
            }
        }
        Ok(())
    }
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
    /// Also time multi-person frames for each of these people counts
    /// (e.g. `1,3,6`), static on group photos and tracking on the pan clip.
    #[arg(long, value_delimiter = ',')]
    pub people: Vec<usize>,
    /// Also time this many frames at once through one batched pipeline
    /// (what `pool.max_batch` does on a GPU) against one at a time, for
    /// each backend of `--nets`; 0 skips it.
    #[arg(long, default_value_t = 0)]
    pub batch: usize,
}

/// Runs `holistream bench`.
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
        Some(python) => {
            MediaPipeTimes::measure(python, &paths, args.iters).context("measuring MediaPipe")?
        }
        None => MediaPipeTimes::reference(),
    };
    let mut comparison = Comparison {
        reports: Vec::new(),
        throughput: Vec::new(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mediapipe,
        mediapipe_throughput: Vec::new(),
    };
    let branches = ModelConfig::from_env()?.parallel_branches;
    for &backend in &args.nets {
        let holistic = Holistic::load(backend)
            .map(|h| h.with_branches(branches))
            .with_context(|| format!("loading the nets on {}", backend.name()))?;
        let report = run(&holistic, &images, args.iters)?;
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
                    let fps =
                        throughput(backend, branches, &images, n, args.throughput_frames, mode)?;
                    comparison.throughput.push(ThroughputRow {
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
                    let fps = MediaPipeTimes::measure_throughput(
                        python,
                        &paths,
                        n,
                        args.throughput_frames,
                        mode,
                    )
                    .context("measuring MediaPipe's throughput")?;
                    comparison.mediapipe_throughput.push((n, mode, fps));
                }
            }
        }
    }
    println!("{comparison}");
    if !args.people.is_empty() {
        let holistic = super::load_holistic()?;
        println!("{}", bench_people(&holistic, &args.people, args.iters)?);
    }
    if args.batch > 0 {
        for &backend in &args.nets {
            let iters = args.iters.clamp(1, 5);
            println!(
                "{}",
                batch::bench_batch(backend, &images, args.batch, iters)?
            );
        }
    }
    if args.profile {
        profile::print_profile()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mediapipe_times_from_the_script_or_the_reference() {
        let line = r#"{"source": "mediapipe 0.10.14, measured in this run", "static_ms": 30.5, "tracking_ms": 21.0, "nets": {"pose_detection": 5.0, "hand_recrop": 0.7}}"#;
        let t: MediaPipeTimes = serde_json::from_str(line).unwrap();
        assert_eq!(t.static_ms, 30.5);
        assert_eq!(t.net_ms(Net::PoseDetection), Some(5.0));
        assert_eq!(t.net_ms(Net::FaceLandmark), None);
        assert!(t.nets_error.is_none());
        let r = MediaPipeTimes::reference();
        assert_eq!(r.static_ms, MEDIAPIPE_STATIC_MS);
        assert_eq!(r.net_ms(Net::PoseLandmark), Some(8.5));
        assert_eq!(r.net_ms(Net::FaceDetection), None);
        assert!(r.source.contains("not measured"));
    }

    #[test]
    fn a_python_without_mediapipe_is_a_clear_error() {
        let err = MediaPipeTimes::measure(std::path::Path::new("/nonexistent/python"), &[], 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/python"), "{err}");
    }

    #[test]
    fn ratios_and_missing_values() {
        assert_eq!(super::ratio(Some(3.0), Some(2.0)), "1.50x");
        assert_eq!(super::ratio(None, Some(2.0)), "-");
        assert_eq!(super::ratio(Some(1.0), Some(0.0)), "-");
        assert_eq!(super::ms(None), "-");
    }
}
