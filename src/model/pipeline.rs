//! The Holistic graph, stage by stage (HOLISTIC_SPEC.md §10): pose, then face
//! and hands from the pose. Each net is reached only through [`NetRunner`].
//!
//! Holds no per-stream state (the caller's `TrackingState` does) and reads no
//! environment (its `[model]` settings come typed from `config`).

use super::anchors::Anchor;
use super::geometry::{ImageSize, NormRect};
use super::nets::NetOutputs;
use super::result::{HolisticResult, PoseLandmark, StageTimings, landmarks};
use super::tracking::{TrackingState, choose_roi};
use super::warp::{CropTransform, TensorSpec, WarpError, crop_to_tensor};
use super::{Mode, ModelError, ProcessOptions, face, hands, pose};
use crate::config::{Branches, ModelConfig};
use holistream_nets::{Backend, Net, NetRunner};
use image::RgbImage;
use std::cell::RefCell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Pipelines in the middle of a frame in this process, for
/// [`Branches::WhenCoreFree`].
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Counts one frame in [`RUNNING`] while alive.
struct Running;

impl Running {
    fn enter() -> Running {
        RUNNING.fetch_add(1, Ordering::Relaxed);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// MediaPipe Holistic around one set of nets. One per worker thread: it is
/// `Send` but not `Sync` (the nets and the tensor buffer are used in place).
/// It holds no per-stream state; that lives in the caller's [`TrackingState`].
pub struct Holistic {
    nets: Box<dyn NetRunner>,
    pose_anchors: Vec<Anchor>,
    face_anchors: Vec<Anchor>,
    /// The input tensor, reused across nets and frames (largest: 256×256×3).
    tensor: RefCell<Vec<f32>>,
    /// A second pipeline on the same weights (its own buffers) for the
    /// right hand's thread, and when to use it. A mutex only to make it
    /// shareable with that thread; one frame at a time uses it.
    branch: Option<(Box<Mutex<Holistic>>, Branches)>,
    cores: usize,
}

impl Holistic {
    /// The shipped nets (weights embedded in the binary) with the defaults
    /// of `[model]`: our fused CPU kernels (burn on the GPU a cargo feature
    /// selects, [`Backend::default_for_build`]), and
    /// [`Branches::WhenCoreFree`].
    pub fn load_default() -> Result<Holistic, ModelError> {
        Self::load_with(&ModelConfig::default())
    }

    /// The shipped nets on the backend and with the [`Branches`] policy
    /// `[model]` names (read from the file and the environment at the edge,
    /// by `config`).
    pub fn load_with(config: &ModelConfig) -> Result<Holistic, ModelError> {
        Ok(Self::load(config.nets())?.with_branches(config.parallel_branches))
    }

    /// The shipped nets on `backend`.
    pub fn load(backend: Backend) -> Result<Holistic, ModelError> {
        Ok(Holistic::new(backend.load()?))
    }

    /// Wraps a set of nets, with [`Branches::WhenCoreFree`] where the nets
    /// can be forked ([`NetRunner::fork`]).
    pub fn new(nets: Box<dyn NetRunner>) -> Holistic {
        Holistic::single(nets).with_branches(Branches::WhenCoreFree)
    }

    fn single(nets: Box<dyn NetRunner>) -> Holistic {
        Holistic {
            nets,
            pose_anchors: pose::anchors(),
            face_anchors: face::anchors(),
            tensor: RefCell::new(Vec::with_capacity(256 * 256 * 3)),
            branch: None,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// Sets the [`Branches`] policy (no second thread where the nets cannot
    /// be forked).
    pub fn with_branches(mut self, branches: Branches) -> Holistic {
        self.branch = match (self.branch.take(), branches) {
            (_, Branches::Off) => None,
            (Some((pipeline, _)), _) => Some((pipeline, branches)),
            (None, _) => self
                .nets
                .fork()
                .map(|n| (Box::new(Mutex::new(Holistic::single(n))), branches)),
        };
        self
    }

    /// Runs the graph on one RGB frame.
    ///
    /// In [`Mode::Tracking`] the pose ROI, the pose filters and the previous
    /// face and hands come from `state` and are written back for the next
    /// frame; in [`Mode::Static`] `state` is neither read nor written.
    /// Parts switched off in `opts.parts` are not computed; the pose runs
    /// whenever any part is on, since face and hands are found from it.
    pub fn process(
        &self,
        image: &RgbImage,
        opts: &ProcessOptions,
        state: &mut TrackingState,
    ) -> Result<HolisticResult, ModelError> {
        let start = Instant::now();
        let _running = Running::enter();
        let (width, height) = image.dimensions();
        if width == 0 || height == 0 {
            return Err(ModelError::EmptyImage);
        }
        let size = ImageSize { width, height };
        let tracking = opts.mode == Mode::Tracking;
        let parts = opts.parts;
        let mut timings = StageTimings::default();
        let mut result = HolisticResult::default();

        let pose = if parts.pose || parts.face || parts.hands {
            self.pose(
                image,
                size,
                tracking,
                opts.timestamp_us,
                state,
                &mut timings,
            )?
        } else {
            None
        };
        let Some(pose) = pose else {
            if tracking {
                // No pose: MediaPipe resets the filters and the face and hand
                // loops see nothing on the next frame.
                *state = TrackingState::default();
            }
            timings.total = ms_since(start);
            result.timings = timings;
            return Ok(result);
        };

        if parts.pose {
            result.pose = pose
                .body
                .iter()
                .map(|l| PoseLandmark {
                    x: l.x,
                    y: l.y,
                    z: l.z,
                    visibility: l.visibility,
                })
                .collect();
        }

        let prev_face = if tracking { state.face.take() } else { None };
        let [prev_left, prev_right] = if tracking {
            std::mem::take(&mut state.hands)
        } else {
            [None, None]
        };
        let body = &pose.body;
        let face_and_left =
            |h: &Holistic, may_split: bool, timings: &mut StageTimings| -> Result<_, ModelError> {
                let face = if parts.face {
                    h.face(image, size, body, prev_face.as_deref(), may_split, timings)?
                } else {
                    None
                };
                let left = if parts.hands {
                    h.hand(
                        image,
                        size,
                        body,
                        hands::Side::Left,
                        prev_left.as_deref(),
                        may_split,
                        timings,
                    )?
                } else {
                    None
                };
                Ok((face, left))
            };
        let right_hand = |h: &Holistic, may_split: bool, timings: &mut StageTimings| {
            h.hand(
                image,
                size,
                body,
                hands::Side::Right,
                prev_right.as_deref(),
                may_split,
                timings,
            )
        };
        let branch = match &self.branch {
            Some((pipeline, policy))
                if parts.hands
                    && hands::roi_from_pose(body, hands::Side::Right, size).is_some()
                    && self.core_free(*policy) =>
            {
                Some(pipeline)
            }
            _ => None,
        };
        let ((face, left), right) = match branch {
            Some(branch) => {
                let mut branch_timings = StageTimings::default();
                let (main, right) = std::thread::scope(|scope| {
                    let right = scope.spawn(|| {
                        // A lock poisoned by a panic on an earlier frame is
                        // still fine to use: every run overwrites what it reads.
                        let branch = branch.lock().unwrap_or_else(|e| e.into_inner());
                        right_hand(&branch, false, &mut branch_timings)
                    });
                    let main = face_and_left(self, false, &mut timings);
                    let right = right
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    (main, right)
                });
                timings.hand_recrop += branch_timings.hand_recrop;
                timings.hand_landmark += branch_timings.hand_landmark;
                (main?, right?)
            }
            _ => {
                let main = face_and_left(self, true, &mut timings)?;
                let right = if parts.hands {
                    right_hand(self, true, &mut timings)?
                } else {
                    None
                };
                (main, right)
            }
        };
        if let Some(f) = &face {
            result.face = landmarks(f);
        }
        let found_hands = [left, right];
        if parts.hands {
            result.left_hand = found_hands[0].as_deref().map(landmarks).unwrap_or_default();
            result.right_hand = found_hands[1].as_deref().map(landmarks).unwrap_or_default();
        }

        if tracking {
            state.face = face;
            state.hands = found_hands;
        }
        timings.total = ms_since(start);
        result.timings = timings;
        Ok(result)
    }

    /// §2–5 and §8: the pose, smoothed in tracking mode.
    fn pose(
        &self,
        image: &RgbImage,
        size: ImageSize,
        tracking: bool,
        timestamp_us: i64,
        state: &mut TrackingState,
        timings: &mut StageTimings,
    ) -> Result<Option<pose::PoseLandmarks>, ModelError> {
        let tracked_roi = if tracking {
            state.pose_roi.take()
        } else {
            None
        };
        let roi = match tracked_roi {
            Some(roi) => Some(roi),
            None => {
                let t = Instant::now();
                let roi = self.detect_pose(image, size)?;
                timings.pose_detection = ms_since(t);
                roi
            }
        };
        let Some(roi) = roi else { return Ok(None) };

        let t = Instant::now();
        let found = match self.run(
            Net::PoseLandmark,
            image,
            Some(&roi),
            &pose::LANDMARK_TENSOR,
            true,
        )? {
            Some((outs, crop)) => {
                let (lms, flag, heatmap) = pose::landmark_outputs(&outs)?;
                pose::decode_landmarks(lms, flag, heatmap, &roi, &crop)
            }
            None => None,
        };
        timings.pose_landmark = ms_since(t);
        let Some(mut found) = found else {
            return Ok(None);
        };

        if tracking {
            let filters = state.pose_filters.get_or_insert_with(Default::default);
            filters.apply(&mut found.body, &mut found.aux, timestamp_us, size);
            state.pose_roi = Some(pose::aux_to_roi(&found.aux, size));
        }
        Ok(Some(found))
    }

    fn detect_pose(
        &self,
        image: &RgbImage,
        size: ImageSize,
    ) -> Result<Option<NormRect>, ModelError> {
        let Some((outs, crop)) = self.run(
            Net::PoseDetection,
            image,
            None,
            &pose::DETECTION_TENSOR,
            true,
        )?
        else {
            return Ok(None);
        };
        let (boxes, scores) = pose::detection_outputs(&outs)?;
        Ok(
            pose::best_detection(boxes, scores, &self.pose_anchors, &crop)
                .map(|d| pose::detection_to_roi(&d, size)),
        )
    }

    /// §6: face detection inside the pose's head ROI, then the landmark net
    /// on the re-crop (or previous frame's) ROI.
    fn face(
        &self,
        image: &RgbImage,
        size: ImageSize,
        body: &[pose::RawLandmark],
        prev: Option<&[[f32; 3]]>,
        may_split: bool,
        timings: &mut StageTimings,
    ) -> Result<Option<Vec<[f32; 3]>>, ModelError> {
        let t = Instant::now();
        let coarse = face::roi_from_pose(body, size);
        let detection = match self.run(
            Net::FaceDetection,
            image,
            Some(&coarse),
            &face::DETECTION_TENSOR,
            may_split,
        )? {
            Some((outs, crop)) => {
                let (regressors, scores) = face::detection_outputs(&outs)?;
                face::best_detection(regressors, scores, &self.face_anchors, &crop, size)
            }
            None => None,
        };
        timings.face_detection = ms_since(t);
        let Some(detection) = detection else {
            return Ok(None);
        };

        let t = Instant::now();
        let recrop = face::roi_from_detection(&detection, size);
        let prev = prev.map(|lms| (face::roi_from_landmarks(lms, size), lms));
        let roi = choose_roi(recrop, prev, &face::TRACKING, size);
        let found = match self.run(
            Net::FaceLandmark,
            image,
            Some(&roi),
            &face::LANDMARK_TENSOR,
            may_split,
        )? {
            Some((outs, _)) => {
                let (lms, flag) = face::landmark_outputs(&outs)?;
                face::decode_landmarks(lms, flag, &roi)
            }
            None => None,
        };
        timings.face_landmark = ms_since(t);
        Ok(found)
    }

    /// §7: one hand: pose ROI, re-crop net, tracking choice, landmark net.
    #[allow(clippy::too_many_arguments)]
    fn hand(
        &self,
        image: &RgbImage,
        size: ImageSize,
        body: &[pose::RawLandmark],
        side: hands::Side,
        prev: Option<&[[f32; 3]]>,
        may_split: bool,
        timings: &mut StageTimings,
    ) -> Result<Option<Vec<[f32; 3]>>, ModelError> {
        let Some(coarse) = hands::roi_from_pose(body, side, size) else {
            return Ok(None);
        };
        let t = Instant::now();
        let recrop = match self.run(
            Net::HandRecrop,
            image,
            Some(&coarse),
            &hands::RECROP_TENSOR,
            may_split,
        )? {
            Some((outs, crop)) => Some(hands::roi_from_recrop(
                hands::recrop_outputs(&outs)?,
                &coarse,
                &crop,
                size,
            )),
            None => None,
        };
        timings.hand_recrop += ms_since(t);
        let Some(recrop) = recrop else {
            return Ok(None);
        };

        let t = Instant::now();
        let prev = prev.map(|lms| (hands::roi_from_landmarks(lms, size), lms));
        let roi = choose_roi(recrop, prev, &hands::TRACKING, size);
        let found = match self.run(
            Net::HandLandmark,
            image,
            Some(&roi),
            &hands::LANDMARK_TENSOR,
            may_split,
        )? {
            Some((outs, crop)) => {
                let (lms, flag) = hands::landmark_outputs(&outs)?;
                hands::decode_landmarks(lms, flag, &roi, &crop)
            }
            None => None,
        };
        timings.hand_landmark += ms_since(t);
        Ok(found)
    }

    /// Crops `rect` for `net` and runs it, on two cores
    /// ([`NetRunner::run_split`]) where `may_split` (no other thread of this
    /// frame is running) and a core is free now. `None` when the ROI is
    /// degenerate (zero or non-finite size): MediaPipe produces no tensor
    /// then, and the part is absent this frame.
    fn run(
        &self,
        net: Net,
        image: &RgbImage,
        rect: Option<&NormRect>,
        spec: &TensorSpec,
        may_split: bool,
    ) -> Result<Option<(NetOutputs, CropTransform)>, ModelError> {
        let mut tensor = self.tensor.borrow_mut();
        let crop = match crop_to_tensor(image, rect, spec, &mut tensor) {
            Ok(crop) => crop,
            Err(WarpError::EmptyRoi) => return Ok(None),
            Err(WarpError::EmptyImage) => return Err(ModelError::EmptyImage),
        };
        let split = may_split
            && self
                .branch
                .as_ref()
                .is_some_and(|(_, p)| self.core_free(*p));
        let tensors = if split {
            self.nets.run_split(net, &tensor)?
        } else {
            self.nets.run(net, &tensor)?
        };
        Ok(Some((NetOutputs { net, tensors }, crop)))
    }

    /// Whether this frame may take a second core under `policy`: asked
    /// before each net and at the branches, not once a frame, so a frame
    /// that started alone stops splitting when another one starts.
    fn core_free(&self, policy: Branches) -> bool {
        match policy {
            Branches::Off => false,
            Branches::Always => true,
            Branches::WhenCoreFree => RUNNING.load(Ordering::Relaxed) < self.cores,
        }
    }

    /// Runs one net on a mid-grey input, on one thread or `split` across
    /// two ([`NetRunner::run_split`]): the per-net timing the bench reports.
    pub fn time_net(&self, net: Net, split: bool) -> Result<f64, ModelError> {
        let (h, w) = net.input_size();
        let input = vec![0.5f32; h * w * 3];
        let t = Instant::now();
        if split {
            self.nets.run_split(net, &input)?;
        } else {
            self.nets.run(net, &input)?;
        }
        Ok(ms_since(t))
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
