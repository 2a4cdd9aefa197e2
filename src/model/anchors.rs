//! SSD anchors (`SsdAnchorsCalculator`, HOLISTIC_SPEC.md §2.1 and §6.2).
//!
//! Both detectors use `fixed_anchor_size: true`, so every anchor is 1×1 and
//! only its centre matters; the scales only decide how many anchors a cell has.
//!
//! Pure functions of the nets' geometry; no I/O, no state.

/// Options of `SsdAnchorsCalculator` that matter with a fixed anchor size.
#[derive(Clone, Debug)]
pub struct AnchorOptions {
    pub input_size: usize,
    pub strides: &'static [usize],
    pub anchor_offset: f32,
    /// Aspect ratios per layer (each gives one anchor per cell), plus one
    /// interpolated-scale anchor per layer when `interpolated_scale_aspect_ratio > 0`.
    pub aspect_ratios: &'static [f32],
    pub interpolated_scale_aspect_ratio: f32,
}

/// Pose detector anchors: 224 input, strides 8,16,32,32,32 → 2254 anchors.
pub const POSE_DETECTION_ANCHORS: AnchorOptions = AnchorOptions {
    input_size: 224,
    strides: &[8, 16, 32, 32, 32],
    anchor_offset: 0.5,
    aspect_ratios: &[1.0],
    interpolated_scale_aspect_ratio: 1.0,
};

/// Short-range face detector anchors: 128 input, strides 8,16,16,16 → 896 anchors.
pub const FACE_DETECTION_ANCHORS: AnchorOptions = AnchorOptions {
    input_size: 128,
    strides: &[8, 16, 16, 16],
    anchor_offset: 0.5,
    aspect_ratios: &[1.0],
    interpolated_scale_aspect_ratio: 1.0,
};

/// An anchor centre in tensor-normalised coordinates (width and height are 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Anchor {
    pub xc: f32,
    pub yc: f32,
}

/// Generates the anchors in MediaPipe's order: layer group (consecutive layers
/// with the same stride merged), then row, then column, then anchor.
pub fn ssd_anchors(opts: &AnchorOptions) -> Vec<Anchor> {
    let mut anchors = Vec::new();
    let strides = opts.strides;
    let mut layer = 0;
    while layer < strides.len() {
        let mut last = layer;
        let mut per_cell = 0;
        while last < strides.len() && strides[last] == strides[layer] {
            per_cell += opts.aspect_ratios.len();
            if opts.interpolated_scale_aspect_ratio > 0.0 {
                per_cell += 1;
            }
            last += 1;
        }
        let fm = opts.input_size.div_ceil(strides[layer]);
        for y in 0..fm {
            for x in 0..fm {
                let a = Anchor {
                    xc: (x as f32 + opts.anchor_offset) / fm as f32,
                    yc: (y as f32 + opts.anchor_offset) / fm as f32,
                };
                anchors.extend(std::iter::repeat_n(a, per_cell));
            }
        }
        layer = last;
    }
    anchors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pose_anchor_count_and_layout() {
        let a = ssd_anchors(&POSE_DETECTION_ANCHORS);
        // 28·28·2 + 14·14·2 + 7·7·6
        assert_eq!(a.len(), 1568 + 392 + 294);
        assert_eq!(a.len(), 2254);
        // First two anchors share the first 8 px cell's centre: 0.5/28.
        assert_eq!(
            a[0],
            Anchor {
                xc: 0.5 / 28.0,
                yc: 0.5 / 28.0
            }
        );
        assert_eq!(a[1], a[0]);
        assert_eq!(
            a[2],
            Anchor {
                xc: 1.5 / 28.0,
                yc: 0.5 / 28.0
            }
        );
        // Second group starts at 1568 with the 14x14 grid.
        assert_eq!(
            a[1568],
            Anchor {
                xc: 0.5 / 14.0,
                yc: 0.5 / 14.0
            }
        );
        // Third group: 6 anchors per 32 px cell; last anchor is the bottom-right cell.
        assert_eq!(
            a[1960 + 6],
            Anchor {
                xc: 1.5 / 7.0,
                yc: 0.5 / 7.0
            }
        );
        assert_eq!(
            a[2253],
            Anchor {
                xc: 6.5 / 7.0,
                yc: 6.5 / 7.0
            }
        );
    }

    #[test]
    fn face_anchor_count_and_layout() {
        let a = ssd_anchors(&FACE_DETECTION_ANCHORS);
        assert_eq!(a.len(), 16 * 16 * 2 + 8 * 8 * 6);
        assert_eq!(
            a[512],
            Anchor {
                xc: 0.5 / 8.0,
                yc: 0.5 / 8.0
            }
        );
        assert_eq!(a[512 + 5], a[512]);
        assert_eq!(
            a[512 + 6],
            Anchor {
                xc: 1.5 / 8.0,
                yc: 0.5 / 8.0
            }
        );
    }
}
