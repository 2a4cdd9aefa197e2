//! Weight loading and tensor layout: the six generated nets behind [`NetRunner`].
//!
//! The generated modules (see [`crate::generated`]) work in NCHW, as the ONNX
//! files do; the pipeline works in TFLite's NHWC. This file is the one place
//! that converts: the input is permuted to `1 x 3 x H x W`, 4-D outputs are
//! permuted back to NHWC before flattening, 2-D and 3-D outputs are already in
//! TFLite order (the converter transposed before every reshape).

use std::time::{Duration, Instant};

use burn::tensor::{Device, Tensor, TensorData};
use burn_store::{BurnpackStore, ModuleSnapshot};

use crate::generated::{
    face_detection_short_range, face_landmark, hand_landmark_full, hand_recrop, pose_detection,
    pose_landmark_full,
};
use crate::{Net, NetError, NetRunner};

/// The six Holistic nets, loaded once on one burn device, weights embedded in
/// the binary.
///
/// One instance per worker thread: `run` is `&self` but the burn modules are
/// only `Send`.
#[derive(Debug)]
pub struct BurnNets {
    device: Device,
    pose_detection: pose_detection::Model,
    pose_landmark: pose_landmark_full::Model,
    face_detection: face_detection_short_range::Model,
    face_landmark: face_landmark::Model,
    hand_recrop: hand_recrop::Model,
    hand_landmark: hand_landmark_full::Model,
}

/// Loads the embedded burnpack of one generated net, refusing a partial load:
/// a tensor left out would silently keep its random initialisation.
macro_rules! load_net {
    ($module:ident, $net:expr, $device:expr) => {{
        let mut model = $module::Model::new($device);
        let mut store = BurnpackStore::from_static($module::embedded_weights());
        let applied = model.load_from(&mut store).map_err(|e| NetError::Load {
            net: $net,
            message: e.to_string(),
        })?;
        if !applied.missing.is_empty() || !applied.errors.is_empty() {
            return Err(NetError::Load {
                net: $net,
                message: format!(
                    "{} tensors missing, {} errors (first: {:?} / {:?})",
                    applied.missing.len(),
                    applied.errors.len(),
                    applied.missing.first(),
                    applied.errors.first()
                ),
            });
        }
        model
    }};
}

impl BurnNets {
    /// Loads the nets on burn's pure-Rust CPU backend (`flex`).
    pub fn load() -> Result<Self, NetError> {
        Self::load_on(Device::flex())
    }

    /// Loads the nets on the device the enabled features favour: CUDA with the
    /// `cuda` feature, else wgpu with `wgpu`, else `flex` (CPU).
    pub fn load_default_device() -> Result<Self, NetError> {
        Self::load_on(preferred_device())
    }

    /// Loads the nets on `device`.
    pub fn load_on(device: Device) -> Result<Self, NetError> {
        Ok(Self {
            pose_detection: load_net!(pose_detection, Net::PoseDetection, &device),
            pose_landmark: load_net!(pose_landmark_full, Net::PoseLandmark, &device),
            face_detection: load_net!(face_detection_short_range, Net::FaceDetection, &device),
            face_landmark: load_net!(face_landmark, Net::FaceLandmark, &device),
            hand_recrop: load_net!(hand_recrop, Net::HandRecrop, &device),
            hand_landmark: load_net!(hand_landmark_full, Net::HandLandmark, &device),
            device,
        })
    }

    /// The device the nets run on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// [`NetRunner::run`], also returning the wall time of the forward pass
    /// including the read-back of the outputs (which waits for a GPU), but not
    /// the upload of the input. For `holistream bench`.
    pub fn run_timed(
        &self,
        net: Net,
        input_nhwc: &[f32],
    ) -> Result<(Vec<Vec<f32>>, Duration), NetError> {
        let input = self.input_tensor(net, input_nhwc)?;
        let start = Instant::now();
        let outputs = self.forward(net, input)?;
        Ok((outputs, start.elapsed()))
    }

    /// # Shapes
    /// - `input_nhwc`: `[H * W * 3]` with `(H, W) = net.input_size()`
    /// - returns `[1, 3, H, W]`
    fn input_tensor(&self, net: Net, input_nhwc: &[f32]) -> Result<Tensor<4>, NetError> {
        self.batch_tensor(net, &[input_nhwc])
    }

    /// # Shapes
    /// - `inputs`: N times `[H * W * 3]` with `(H, W) = net.input_size()`
    /// - returns `[N, 3, H, W]`
    fn batch_tensor(&self, net: Net, inputs: &[&[f32]]) -> Result<Tensor<4>, NetError> {
        let (h, w) = net.input_size();
        let expected = h * w * 3;
        let mut data = Vec::with_capacity(expected * inputs.len());
        for input in inputs {
            if input.len() != expected {
                return Err(NetError::InputSize {
                    net,
                    expected,
                    got: input.len(),
                });
            }
            data.extend_from_slice(input);
        }
        let data = TensorData::new(data, [inputs.len(), h, w, 3]);
        Ok(Tensor::<4>::from_data(data, &self.device).permute([0, 3, 1, 2]))
    }

    /// [`NetRunner::run_batch`], also returning the wall time of the forward
    /// pass with the read-back (as [`BurnNets::run_timed`]). For `holistream
    /// bench`.
    pub fn run_batch_timed(
        &self,
        net: Net,
        inputs: &[&[f32]],
    ) -> Result<(Vec<Vec<Vec<f32>>>, Duration), NetError> {
        let input = self.batch_tensor(net, inputs)?;
        let start = Instant::now();
        let outputs = self.forward(net, input)?;
        Ok((split_batch(net, outputs, inputs.len())?, start.elapsed()))
    }

    /// Runs one net and flattens its outputs in TFLite order and layout.
    ///
    /// # Shapes
    /// - `input`: `[1, 3, H, W]`
    /// - returns, per net, the TFLite outputs flattened (NHWC for 4-D ones):
    ///   - PoseDetection: `[1, 2254, 12]` boxes+keypoints, `[1, 2254, 1]` score logits
    ///   - PoseLandmark: `[1, 195]` landmarks, `[1, 1]` presence (sigmoid applied),
    ///     `[1, 64, 64, 39]` heatmap, `[1, 117]` world landmarks
    ///   - FaceDetection: `[1, 896, 16]` boxes+keypoints, `[1, 896, 1]` score logits
    ///   - FaceLandmark: `[1, 1, 1, 1404]` landmarks, `[1, 1, 1, 1]` presence logit
    ///   - HandRecrop: `[1, 1, 1, 4]` two keypoints
    ///   - HandLandmark: `[1, 63]` landmarks, `[1, 1]` presence, `[1, 1]` handedness
    ///     (both sigmoid applied), `[1, 63]` world landmarks
    fn forward(&self, net: Net, input: Tensor<4>) -> Result<Vec<Vec<f32>>, NetError> {
        Ok(match net {
            Net::PoseDetection => {
                let (boxes, scores) = self.pose_detection.forward(input);
                vec![flat(net, boxes)?, flat(net, scores)?]
            }
            Net::PoseLandmark => {
                let (landmarks, presence, heatmap, world) = self.pose_landmark.forward(input);
                vec![
                    flat(net, landmarks)?,
                    flat(net, presence)?,
                    flat(net, to_nhwc(heatmap))?,
                    flat(net, world)?,
                ]
            }
            Net::FaceDetection => {
                let (boxes, scores) = self.face_detection.forward(input);
                vec![flat(net, boxes)?, flat(net, scores)?]
            }
            Net::FaceLandmark => {
                let (landmarks, presence) = self.face_landmark.forward(input);
                vec![
                    flat(net, to_nhwc(landmarks))?,
                    flat(net, to_nhwc(presence))?,
                ]
            }
            Net::HandRecrop => {
                let keypoints = self.hand_recrop.forward(input);
                vec![flat(net, to_nhwc(keypoints))?]
            }
            Net::HandLandmark => {
                let (landmarks, presence, handedness, world) = self.hand_landmark.forward(input);
                vec![
                    flat(net, landmarks)?,
                    flat(net, presence)?,
                    flat(net, handedness)?,
                    flat(net, world)?,
                ]
            }
        })
    }
}

impl NetRunner for BurnNets {
    fn run(&self, net: Net, input_nhwc: &[f32]) -> Result<Vec<Vec<f32>>, NetError> {
        let input = self.input_tensor(net, input_nhwc)?;
        self.forward(net, input)
    }

    /// One forward pass over `[N, 3, H, W]`: on a GPU the launches and the
    /// read-back are paid once for the N inputs.
    fn run_batch(&self, net: Net, inputs: &[&[f32]]) -> Result<Vec<Vec<Vec<f32>>>, NetError> {
        match inputs {
            [] => Ok(Vec::new()),
            [one] => Ok(vec![self.run(net, one)?]),
            _ => {
                let input = self.batch_tensor(net, inputs)?;
                split_batch(net, self.forward(net, input)?, inputs.len())
            }
        }
    }

    fn batches(&self) -> bool {
        cfg!(any(feature = "wgpu", feature = "cuda"))
    }
}

/// Splits each output of a batch of `n` (batch first, flattened) into the
/// outputs of each input.
fn split_batch(net: Net, outputs: Vec<Vec<f32>>, n: usize) -> Result<Vec<Vec<Vec<f32>>>, NetError> {
    let mut per_input = vec![Vec::with_capacity(outputs.len()); n];
    for output in outputs {
        if output.len() % n != 0 {
            return Err(NetError::Output {
                net,
                message: format!("{} values do not split into a batch of {n}", output.len()),
            });
        }
        for (mine, chunk) in per_input
            .iter_mut()
            .zip(output.chunks_exact(output.len() / n))
        {
            mine.push(chunk.to_vec());
        }
    }
    Ok(per_input)
}

/// The device `load_default_device` uses: CUDA device 0 (`cuda` feature).
#[cfg(feature = "cuda")]
pub fn preferred_device() -> Device {
    Device::cuda(0)
}

/// The device `load_default_device` uses: the default wgpu adapter (`wgpu`
/// feature, without `cuda`).
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub fn preferred_device() -> Device {
    Device::wgpu(Default::default())
}

/// The device `load_default_device` uses: burn's pure-Rust CPU backend
/// (`flex`), as no GPU feature is enabled.
#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
pub fn preferred_device() -> Device {
    Device::flex()
}

/// # Shapes
/// - `[N, C, H, W]` -> `[N, H, W, C]`
fn to_nhwc(t: Tensor<4>) -> Tensor<4> {
    t.permute([0, 2, 3, 1])
}

/// Reads a tensor back as a flat `Vec<f32>` in its logical (row-major) order.
fn flat<const D: usize>(net: Net, t: Tensor<D>) -> Result<Vec<f32>, NetError> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| NetError::Output {
            net,
            message: format!("{e:?}"),
        })
}
