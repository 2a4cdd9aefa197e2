//! The Holistic graph, stage by stage (HOLISTIC_SPEC.md §10): pose, then face
//! and hands from the pose. Each net is reached only through [`NetRunner`].
//!
//! Holds no per-stream state (the caller's `TrackingState` does) and reads no
//! environment (its `[model]` settings come typed from `config`).

use super::anchors::Anchor;
use super::geometry::{ImageSize, NormRect};
use super::nets::NetOutputs;
use super::people::{self, Candidate, PersonFound};
use super::result::{HolisticResult, StageTimings};
use super::tracking::{DETECT_INTERVAL, PersonTrack, TrackingState, choose_roi};
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
    /// With `opts.people` above 1, every person found goes through the same
    /// stages ([`Holistic::people`]).
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
        let mut timings = StageTimings::default();
        let parts = opts.parts;
        let mut result = if !(parts.pose || parts.face || parts.hands) {
            if opts.mode == Mode::Tracking {
                // Nothing ran: as after a frame without pose, the next one
                // starts over.
                state.people.clear();
            }
            HolisticResult::default()
        } else if opts.people <= 1 {
            self.one_person(image, size, opts, state, &mut timings)?
        } else {
            self.people(image, size, opts, state, &mut timings)?
        };
        timings.total = ms_since(start);
        result.timings = timings;
        Ok(result)
    }

    /// MediaPipe's single-person graph: the tracked ROI, or the best
    /// detection's, then [`Holistic::person`].
    fn one_person(
        &self,
        image: &RgbImage,
        size: ImageSize,
        opts: &ProcessOptions,
        state: &mut TrackingState,
        timings: &mut StageTimings,
    ) -> Result<HolisticResult, ModelError> {
        let tracking = opts.mode == Mode::Tracking;
        // The stream's one person (after a stream with more, the oldest).
        let mut track = if tracking && !state.people.is_empty() {
            let first = state.people.remove(0);
            state.people.clear();
            first
        } else {
            PersonTrack::default()
        };
        let fresh = track.pose_roi.is_none();
        let roi = match track.pose_roi.take() {
            Some(roi) => Some(roi),
            None => {
                let t = Instant::now();
                let roi = self
                    .detect_poses(image, size)?
                    .into_iter()
                    .next()
                    .map(|c| c.roi);
                timings.pose_detection += ms_since(t);
                roi
            }
        };
        let found = match roi {
            Some(roi) => self.person(image, size, &roi, opts, &mut track, timings)?,
            None => None,
        };
        let Some(found) = found else {
            if tracking {
                // No pose: MediaPipe resets the filters and the face and hand
                // loops see nothing on the next frame.
                state.people.clear();
            }
            return Ok(HolisticResult::default());
        };
        if tracking {
            // An id only for a person found: frames without one use none.
            if fresh {
                track.id = state.new_id();
            }
            state.people.push(track);
        }
        let mut result = HolisticResult::default();
        found.fill(&mut result, opts.parts);
        Ok(result)
    }

    /// Several people, each through [`Holistic::person`], the stages of
    /// MediaPipe's one person. In tracking mode every tracked person goes
    /// first, oldest first, from its own ROI; one whose pose is lost is
    /// dropped, and of two that converged on one body the older stays. Then,
    /// while fewer than `opts.people` are found, pose detection (every frame
    /// in static mode, or when nobody is tracked; otherwise at most every
    /// [`DETECT_INTERVAL`] frames): on the whole frame (its first detection is
    /// MediaPipe's one), then up to [`people::RECALL_PASSES`] more times on
    /// the frame with everyone found so far painted over, which finds the
    /// neighbours the detector's weighted NMS merged into them. A detection
    /// on a person already found is that person; a new one gets the next id.
    /// The first person is found on the frame as it is, so it is exactly
    /// what single-person mode finds; the others on the frame with the heads
    /// found before them painted over ([`people::masked`]).
    fn people(
        &self,
        image: &RgbImage,
        size: ImageSize,
        opts: &ProcessOptions,
        state: &mut TrackingState,
        timings: &mut StageTimings,
    ) -> Result<HolisticResult, ModelError> {
        let tracking = opts.mode == Mode::Tracking;
        let max = opts.people;
        // First every person's pose, in order; then everyone's face and
        // hands, which are independent (and most of the work).
        let mut found: Vec<(PersonTrack, pose::PoseLandmarks, people::Head)> = Vec::new();
        // Everyone after the first is looked for on the frame with the heads
        // found so far painted over: a crop of a person cut at the chest
        // spans their neighbours, and the landmark net would lock onto the
        // more salient one (measured on the pan clip: the third person's
        // track drifted onto a neighbour within 2 to 15 frames).
        let mut masked: Option<(usize, RgbImage)> = None;
        fn pose_of(f: &(PersonTrack, pose::PoseLandmarks, people::Head)) -> &pose::PoseLandmarks {
            &f.1
        }
        if tracking {
            for mut track in std::mem::take(&mut state.people) {
                // Fewer people asked for than tracked: the oldest stay.
                if found.len() >= max {
                    break;
                }
                let Some(roi) = track.pose_roi.take() else {
                    continue;
                };
                let frame = people::masked(image, &found, pose_of, &mut masked);
                let Some(pose) = self.person_pose(frame, size, &roi, opts, &mut track, timings)?
                else {
                    continue;
                };
                let head = people::Head::of(&pose.body, size);
                if !found.iter().any(|f| head.same_as(&f.2)) {
                    found.push((track, pose, head));
                }
            }
        }
        let due = !tracking || found.is_empty() || state.since_detection + 1 >= DETECT_INTERVAL;
        if found.len() < max && due {
            state.since_detection = 0;
            for _pass in 0..=people::RECALL_PASSES {
                let before = found.len();
                let t = Instant::now();
                let frame = people::masked(image, &found, pose_of, &mut masked);
                let candidates = self.detect_poses(frame, size)?;
                timings.pose_detection += ms_since(t);
                for candidate in candidates {
                    if found.len() >= max {
                        break;
                    }
                    let face = people::Head::point(candidate.face, size);
                    if found.iter().any(|f| f.2.covers(face)) {
                        continue;
                    }
                    let mut track = PersonTrack::default();
                    let frame = people::masked(image, &found, pose_of, &mut masked);
                    let Some(pose) =
                        self.person_pose(frame, size, &candidate.roi, opts, &mut track, timings)?
                    else {
                        continue;
                    };
                    let head = people::Head::of(&pose.body, size);
                    if found.iter().any(|f| head.same_as(&f.2))
                        || !(found.is_empty() || self.shows_a_face(image, size, &pose.body)?)
                    {
                        continue;
                    }
                    track.id = if tracking {
                        state.new_id()
                    } else {
                        found.len() as u32
                    };
                    found.push((track, pose, head));
                }
                if found.len() >= max || found.len() == before {
                    break;
                }
            }
        } else if tracking {
            state.since_detection += 1;
        }

        let found = self.people_parts(image, size, found, opts, timings)?;
        let mut result = HolisticResult::default();
        if let Some((_, first)) = found.first() {
            first.fill(&mut result, opts.parts);
        }
        result.people = Some(
            found
                .iter()
                .map(|(t, p)| p.to_person(t.id, opts.parts))
                .collect(),
        );
        if tracking {
            state.people = found.into_iter().map(|(t, _)| t).collect();
        }
        Ok(result)
    }

    /// Everyone's face and hands, on the frame as it is: split between this
    /// pipeline and the second one while a core is free (each person's
    /// right hand then stays on its thread), else one after the other.
    fn people_parts(
        &self,
        image: &RgbImage,
        size: ImageSize,
        found: Vec<(PersonTrack, pose::PoseLandmarks, people::Head)>,
        opts: &ProcessOptions,
        timings: &mut StageTimings,
    ) -> Result<Vec<(PersonTrack, PersonFound)>, ModelError> {
        let branch = match &self.branch {
            Some((pipeline, policy)) if found.len() > 1 && self.core_free(*policy) => {
                Some(pipeline)
            }
            _ => None,
        };
        let Some(branch) = branch else {
            return found
                .into_iter()
                .map(|(mut track, pose, _)| {
                    let person =
                        self.person_parts(image, size, pose, opts, &mut track, true, timings)?;
                    Ok((track, person))
                })
                .collect();
        };
        // Even places here, odd ones on the second pipeline.
        let (mut mine, mut theirs): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
        for (i, f) in found.into_iter().enumerate() {
            if i % 2 == 0 {
                mine.push((i, f))
            } else {
                theirs.push((i, f))
            }
        }
        let run = |h: &Holistic,
                   list: Vec<(usize, (PersonTrack, pose::PoseLandmarks, people::Head))>,
                   timings: &mut StageTimings| {
            list.into_iter()
                .map(|(i, (mut track, pose, _))| {
                    let person =
                        h.person_parts(image, size, pose, opts, &mut track, false, timings)?;
                    Ok((i, (track, person)))
                })
                .collect::<Result<Vec<_>, ModelError>>()
        };
        let (mine, theirs) = self.beside(
            branch,
            timings,
            |h, t| run(h, mine, t),
            |h, t| run(h, theirs, t),
        );
        let mut all = mine?;
        all.extend(theirs?);
        all.sort_by_key(|(i, _)| *i);
        Ok(all.into_iter().map(|(_, f)| f).collect())
    }

    /// One person's stages from its pose ROI (§4–8): the pose landmarks
    /// ([`Holistic::person_pose`]), then the face and both hands
    /// ([`Holistic::person_parts`]). `None` when the pose is not found there.
    /// The same code for the one person of MediaPipe's graph and for each of
    /// several.
    fn person(
        &self,
        image: &RgbImage,
        size: ImageSize,
        roi: &NormRect,
        opts: &ProcessOptions,
        track: &mut PersonTrack,
        timings: &mut StageTimings,
    ) -> Result<Option<PersonFound>, ModelError> {
        let Some(pose) = self.person_pose(image, size, roi, opts, track, timings)? else {
            return Ok(None);
        };
        self.person_parts(image, size, pose, opts, track, true, timings)
            .map(Some)
    }

    /// §4, §5, §8: the pose landmarks on `roi`, smoothed, and the next
    /// frame's ROI kept in `track`, when tracking.
    fn person_pose(
        &self,
        image: &RgbImage,
        size: ImageSize,
        roi: &NormRect,
        opts: &ProcessOptions,
        track: &mut PersonTrack,
        timings: &mut StageTimings,
    ) -> Result<Option<pose::PoseLandmarks>, ModelError> {
        let t = Instant::now();
        let found = match self.run(
            Net::PoseLandmark,
            image,
            Some(roi),
            &pose::LANDMARK_TENSOR,
            true,
        )? {
            Some((outs, crop)) => {
                let (lms, flag, heatmap) = pose::landmark_outputs(&outs)?;
                pose::decode_landmarks(lms, flag, heatmap, roi, &crop)
            }
            None => None,
        };
        timings.pose_landmark += ms_since(t);
        let Some(mut pose) = found else {
            return Ok(None);
        };
        if opts.mode == Mode::Tracking {
            let filters = track.pose_filters.get_or_insert_with(Default::default);
            filters.apply(&mut pose.body, &mut pose.aux, opts.timestamp_us, size);
            track.pose_roi = Some(pose::aux_to_roi(&pose.aux, size));
        }
        Ok(Some(pose))
    }

    /// §6, §7: the face and both hands from the pose (tracked from
    /// `track`'s previous ones), the right hand on the second pipeline when
    /// `may_branch` and a core is free.
    #[allow(clippy::too_many_arguments)]
    fn person_parts(
        &self,
        image: &RgbImage,
        size: ImageSize,
        pose: pose::PoseLandmarks,
        opts: &ProcessOptions,
        track: &mut PersonTrack,
        may_branch: bool,
        timings: &mut StageTimings,
    ) -> Result<PersonFound, ModelError> {
        let tracking = opts.mode == Mode::Tracking;
        let parts = opts.parts;
        let prev_face = if tracking { track.face.take() } else { None };
        let [prev_left, prev_right] = if tracking {
            std::mem::take(&mut track.hands)
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
                if may_branch
                    && parts.hands
                    && hands::roi_from_pose(body, hands::Side::Right, size).is_some()
                    && self.core_free(*policy) =>
            {
                Some(pipeline)
            }
            _ => None,
        };
        let ((face, left), right) = match branch {
            Some(branch) => {
                let (main, right) = self.beside(
                    branch,
                    timings,
                    |h, t| face_and_left(h, false, t),
                    |h, t| right_hand(h, false, t),
                );
                (main?, right?)
            }
            _ => {
                let main = face_and_left(self, true, timings)?;
                let right = if parts.hands {
                    right_hand(self, true, timings)?
                } else {
                    None
                };
                (main, right)
            }
        };
        if tracking {
            track.face = face.clone();
            track.hands = [left.clone(), right.clone()];
        }
        Ok(PersonFound {
            pose,
            face,
            hands: [left, right],
        })
    }

    /// Whether a newly detected person shows a face: a face detection in
    /// its head ROI (§6.1). A new person after the first must: on the pan
    /// clip, poses that the landmark net hallucinated between the people
    /// already found (on the painted frame) came without one, every real
    /// person with one. A tracked person keeps its id when it turns away.
    fn shows_a_face(
        &self,
        image: &RgbImage,
        size: ImageSize,
        body: &[pose::RawLandmark],
    ) -> Result<bool, ModelError> {
        let coarse = face::roi_from_pose(body, size);
        Ok(
            match self.run(
                Net::FaceDetection,
                image,
                Some(&coarse),
                &face::DETECTION_TENSOR,
                true,
            )? {
                Some((outs, crop)) => {
                    let (regressors, scores) = face::detection_outputs(&outs)?;
                    face::best_detection(regressors, scores, &self.face_anchors, &crop, size)
                        .is_some()
                }
                None => false,
            },
        )
    }

    /// §2: every pose detection, in score order (MediaPipe's graph keeps
    /// the first): its ROI, and where its face is.
    pub(crate) fn detect_poses(
        &self,
        image: &RgbImage,
        size: ImageSize,
    ) -> Result<Vec<Candidate>, ModelError> {
        let Some((outs, crop)) = self.run(
            Net::PoseDetection,
            image,
            None,
            &pose::DETECTION_TENSOR,
            true,
        )?
        else {
            return Ok(Vec::new());
        };
        let (boxes, scores) = pose::detection_outputs(&outs)?;
        Ok(pose::detections(boxes, scores, &self.pose_anchors, &crop)
            .iter()
            .map(|d| Candidate {
                roi: pose::detection_to_roi(d, size),
                // The detector's box is the face's.
                face: [d.bbox.xmin + d.bbox.w / 2.0, d.bbox.ymin + d.bbox.h / 2.0],
            })
            .collect())
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
        timings.face_detection += ms_since(t);
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
        timings.face_landmark += ms_since(t);
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

    /// Runs `there` on the second pipeline, on a thread of its own, while
    /// `here` runs on this one; the second's stage times are added to
    /// `timings`.
    fn beside<A, B: Send>(
        &self,
        branch: &Mutex<Holistic>,
        timings: &mut StageTimings,
        here: impl FnOnce(&Holistic, &mut StageTimings) -> A,
        there: impl FnOnce(&Holistic, &mut StageTimings) -> B + Send,
    ) -> (A, B) {
        let mut branch_timings = StageTimings::default();
        let (a, b) = std::thread::scope(|scope| {
            let b = scope.spawn(|| {
                // A lock poisoned by a panic on an earlier frame is still
                // fine to use: every run overwrites what it reads.
                let branch = branch.lock().unwrap_or_else(|e| e.into_inner());
                there(&branch, &mut branch_timings)
            });
            let a = here(self, timings);
            let b = b
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (a, b)
        });
        timings.add_stages(&branch_timings);
        (a, b)
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
