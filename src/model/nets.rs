//! The seam between the pipeline and `holistream-nets`: checked access to a
//! net's outputs, so a converter change that reorders or reshapes outputs is
//! a clear error instead of a wrong index.
//!
//! Must not run a net: the `NetRunner` of `holistream-nets` does.

use super::ModelError;
use holistream_nets::Net;

/// The outputs of one forward pass, in the TFLite model's order.
pub struct NetOutputs {
    pub net: Net,
    pub tensors: Vec<Vec<f32>>,
}

impl NetOutputs {
    /// Output `index`, which must hold exactly `len` floats.
    pub fn get(&self, index: usize, len: usize) -> Result<&[f32], ModelError> {
        let t = self
            .tensors
            .get(index)
            .ok_or_else(|| ModelError::NetOutput {
                net: self.net,
                detail: format!(
                    "missing output {index} (got {} outputs)",
                    self.tensors.len()
                ),
            })?;
        if t.len() != len {
            return Err(ModelError::NetOutput {
                net: self.net,
                detail: format!("output {index} has {} values, expected {len}", t.len()),
            });
        }
        Ok(t)
    }
}
