//! Frames batched across sessions (`model::Batched`, `pool.max_batch`): a
//! batched forward pass gives each input what it gives alone, and frames
//! run in lockstep through [`Batched`] give what they give one at a time,
//! each keeping its own tracking state.
//!
//! On a CPU build the nets are burn's `flex` (a real batched forward) and
//! the fused kernels (one by one under `run_batch`); built with `--features
//! wgpu` the same tests run on the wgpu device (`.ci/run` runs them on Mesa's
//! lavapipe), where the batch is one dispatch per layer.

mod support;

use std::panic::AssertUnwindSafe;

use holistream::model::{
    Backend, Batched, Holistic, HolisticResult, Mode, Net, NetError, NetRunner, Parts,
    ProcessOptions, TrackingState,
};
use image::RgbImage;
use support::fixtures::fixtures;

/// A GPU build runs on a software GPU in CI, about a second a frame: fewer
/// frames there.
const GPU: bool = cfg!(any(feature = "wgpu", feature = "cuda"));

fn photo(name: &str) -> RgbImage {
    let bytes = std::fs::read(fixtures().join(name)).unwrap();
    holistream::model::decode_image(&bytes).unwrap()
}

fn clip(frames: usize) -> Vec<RgbImage> {
    let bytes = std::fs::read(fixtures().join("clip/obama_640x480.mjpeg")).unwrap();
    holistream::commands::parity::split_mjpeg(&bytes)
        .into_iter()
        .take(frames)
        .map(|jpeg| holistream::model::decode_image(jpeg).unwrap())
        .collect()
}

/// `image` resized to `net`'s input, scaled to [-1, 1]: a real picture, not
/// the crop the pipeline would make (only the batch's bookkeeping is tested).
fn net_input(net: Net, image: &RgbImage) -> Vec<f32> {
    let (h, w) = net.input_size();
    image::imageops::resize(image, w as u32, h as u32, image::imageops::Triangle)
        .into_raw()
        .into_iter()
        .map(|v| v as f32 / 127.5 - 1.0)
        .collect()
}

/// Largest `|a - b|` over two output lists, and the scale to hold it to
/// (the outputs' magnitude, at least 1: some are in pixels).
fn worst(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f32, f32) {
    assert_eq!(a.len(), b.len(), "output count");
    let mut diff = 0f32;
    let mut scale = 1f32;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len(), "output length");
        for (p, q) in x.iter().zip(y) {
            diff = diff.max((p - q).abs());
            scale = scale.max(q.abs());
            assert!(p.is_finite(), "non-finite output");
        }
    }
    (diff, scale)
}

/// Every net, on three different photos at once: each input's outputs as
/// when it runs alone, to 1e-4 of the outputs' magnitude.
#[test]
fn a_batch_gives_each_input_its_own_outputs() {
    let nets = Backend::Burn.load().expect("burn nets load");
    let photos = [
        photo("obama.jpg"),
        photo("astronaut.png"),
        photo("grace_hopper.jpg"),
    ];
    for net in Net::ALL {
        let inputs: Vec<Vec<f32>> = photos.iter().map(|p| net_input(net, p)).collect();
        let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        let batched = nets.run_batch(net, &refs).unwrap();
        assert_eq!(batched.len(), 3, "{net:?}: one answer per input");
        for (i, input) in inputs.iter().enumerate() {
            let alone = nets.run(net, input).unwrap();
            let (diff, scale) = worst(&batched[i], &alone);
            eprintln!("{net:?} input {i}: max |batched - alone| = {diff:.2e} (scale {scale:.1})");
            assert!(
                diff <= 1e-4 * scale,
                "{net:?} input {i}: |batched - alone| = {diff} (scale {scale})"
            );
        }
        // The inputs differ, so a batch that mixed them up would show.
        let (diff, _) = worst(&batched[0], &batched[1]);
        assert!(diff > 1e-3, "{net:?}: two photos gave the same outputs");
    }
    let (h, w) = Net::FaceDetection.input_size();
    let short = vec![0.0; h * w * 3 - 1];
    let good = vec![0.0; h * w * 3];
    assert!(matches!(
        nets.run_batch(Net::FaceDetection, &[&good, &short]),
        Err(NetError::InputSize { .. })
    ));
}

fn max_landmark_diff(a: &HolisticResult, b: &HolisticResult, what: &str) -> f32 {
    let pose = |r: &HolisticResult| -> Vec<[f32; 4]> {
        r.pose
            .iter()
            .map(|l| [l.x, l.y, l.z, l.visibility])
            .collect()
    };
    let part = |v: &[holistream::model::Landmark]| -> Vec<[f32; 4]> {
        v.iter().map(|l| [l.x, l.y, l.z, 0.0]).collect()
    };
    let mut diff = 0f32;
    for (name, x, y) in [
        ("pose", pose(a), pose(b)),
        ("face", part(&a.face), part(&b.face)),
        ("left hand", part(&a.left_hand), part(&b.left_hand)),
        ("right hand", part(&a.right_hand), part(&b.right_hand)),
    ] {
        assert_eq!(x.len(), y.len(), "{what}: {name} presence");
        for (p, q) in x.iter().zip(&y) {
            for k in 0..4 {
                diff = diff.max((p[k] - q[k]).abs());
            }
        }
    }
    diff
}

/// Three sessions, one batch per tick: a tracked clip, tracked photos (a
/// scene cut every frame) and static photos. Each frame's landmarks are
/// those of the same session run one frame at a time, within `tolerance`
/// (normalised coordinates).
fn sessions_in_lockstep(backend: Backend, ticks: usize, tolerance: f32) {
    let clip = clip(ticks);
    let photos = [
        photo("obama.jpg"),
        photo("astronaut.png"),
        photo("grace_hopper.jpg"),
        photo("camera.png"),
    ];
    let streams: Vec<(Mode, Vec<&RgbImage>)> = vec![
        (Mode::Tracking, clip.iter().collect()),
        (Mode::Tracking, photos.iter().cycle().take(ticks).collect()),
        (
            Mode::Static,
            photos.iter().cycle().skip(1).take(ticks).collect(),
        ),
    ];
    let alone = Holistic::load(backend).unwrap();
    let mut batched = Batched::new(backend.load().unwrap(), streams.len());
    let mut alone_states = vec![TrackingState::default(); streams.len()];
    let mut batched_states = vec![TrackingState::default(); streams.len()];
    let mut worst = 0f32;
    let mut found = 0;
    for tick in 0..ticks {
        let opts = |mode| ProcessOptions {
            mode,
            parts: Parts::default(),
            timestamp_us: (tick as i64 + 1) * 33_333,
            people: 1,
        };
        let items: Vec<_> = streams
            .iter()
            .zip(batched_states.iter_mut())
            .map(|((mode, frames), state)| (frames[tick], opts(*mode), state))
            .collect();
        let got = batched.run(items, |holistic, (image, opts, state)| {
            holistic.process(image, &opts, state).unwrap()
        });
        for (s, ((mode, frames), got)) in streams.iter().zip(got).enumerate() {
            let got = got.expect("no panic");
            let want = alone
                .process(frames[tick], &opts(*mode), &mut alone_states[s])
                .unwrap();
            let what = format!("session {s} ({mode:?}) tick {tick}");
            worst = worst.max(max_landmark_diff(&got, &want, &what));
            found += usize::from(!want.pose.is_empty())
                + usize::from(!want.face.is_empty())
                + usize::from(!want.left_hand.is_empty() || !want.right_hand.is_empty());
        }
    }
    eprintln!(
        "{}: {ticks} ticks of {} sessions, max |batched - alone| = {worst:.2e}",
        backend.name(),
        streams.len()
    );
    assert!(
        worst <= tolerance,
        "batched frames moved by {worst} (> {tolerance})"
    );
    assert!(
        found >= ticks * streams.len(),
        "too few parts found ({found}): the comparison says little"
    );
    assert!(!batched.broken());
}

/// The lockstep itself, on the nets this build serves with: on a CPU build
/// the fused kernels run each input alone under `run_batch`, so the frames
/// must come out identical.
#[test]
fn frames_in_lockstep_match_one_at_a_time() {
    let backend = Backend::default_for_build();
    let tolerance = if backend.batches() { 1e-4 } else { 0.0 };
    sessions_in_lockstep(backend, if GPU { 3 } else { 8 }, tolerance);
}

/// A real batched forward pass through the whole pipeline: burn's nets
/// (`flex` on a CPU build, the GPU device otherwise), the frames within 1e-4
/// of one at a time.
#[test]
fn batched_burn_frames_match_one_at_a_time() {
    sessions_in_lockstep(Backend::Burn, 2, 1e-4);
}

/// The real nets, failing on demand: a panic in `run_batch` of one net.
struct PanicsOn(Box<dyn NetRunner>, Net);

impl NetRunner for PanicsOn {
    fn run(&self, net: Net, input: &[f32]) -> Result<Vec<Vec<f32>>, NetError> {
        self.0.run(net, input)
    }

    fn run_batch(&self, net: Net, inputs: &[&[f32]]) -> Result<Vec<Vec<Vec<f32>>>, NetError> {
        assert_ne!(net, self.1, "injected fault: the device fails");
        self.0.run_batch(net, inputs)
    }
}

/// A frame that panics is its own failure; a device that panics fails the
/// frames waiting on it with an error, marks the nets broken and never
/// leaves a frame waiting.
#[test]
fn failures_stay_with_their_frames_and_never_hang() {
    let image = photo("obama.jpg");
    let opts = ProcessOptions {
        mode: Mode::Static,
        parts: Parts::default(),
        timestamp_us: 33_333,
        people: 1,
    };
    let mut batched = Batched::new(Backend::Fused.load().unwrap(), 3);
    let got = batched.run(vec![0, 1, 2], |holistic, i| {
        assert_ne!(i, 1, "injected fault: this frame panics");
        holistic.process(&image, &opts, &mut TrackingState::default())
    });
    assert!(got[1].is_err(), "the panicking frame");
    for i in [0, 2] {
        let result = got[i]
            .as_ref()
            .expect("no panic")
            .as_ref()
            .expect("landmarks");
        assert_eq!(result.pose.len(), 33, "frame {i}");
    }
    assert!(!batched.broken());

    let nets = PanicsOn(Backend::Fused.load().unwrap(), Net::PoseLandmark);
    let mut batched = Batched::new(Box::new(nets), 2);
    // Five frames: three batches; the first breaks the nets, the others
    // fail at once.
    let got = std::panic::catch_unwind(AssertUnwindSafe(|| {
        batched.run(vec![(); 5], |holistic, ()| {
            holistic.process(&image, &opts, &mut TrackingState::default())
        })
    }))
    .expect("the coordinator does not panic");
    assert_eq!(got.len(), 5);
    for (i, r) in got.into_iter().enumerate() {
        let err = r.expect("no frame panics").expect_err("the device failed");
        assert!(
            err.to_string().contains("device failed"),
            "frame {i}: {err}"
        );
    }
    assert!(batched.broken());
}
