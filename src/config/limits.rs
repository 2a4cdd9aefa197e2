//! Frame size limits: the largest image a decode accepts, set by `[pool]`
//! (`max_frame_width`/`max_frame_height`) and `[worker]`, and held by the
//! decoder in `model::image_input`. Owns the hard cap every configuration
//! stays under; knows nothing of how an image is decoded.

/// The largest side any configuration may accept, in pixels. 4096x4096
/// (16.8 Mpx) holds a 12 Mpx phone photo (4032x3024) and a 4K UHD frame
/// (3840x2160); at this size one decode holds a 48 MiB RGB image plus, for a
/// progressive or multi-scan JPEG, libjpeg's whole-image coefficient buffer
/// (up to 96 MiB: three full-resolution components at 2 bytes a
/// coefficient), and every pool worker may be decoding one at a time.
const HARD_CAP_SIDE: u32 = 4096;

/// The largest image a decode accepts, in either orientation: a phone held
/// upright sends 1080x1920 where a webcam sends 1920x1080, and both cost the
/// same. No limits exceed [`DecodeLimits::HARD_CAP`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    max_width: u32,
    max_height: u32,
}

/// Limits asked for outside `1..=4096` per side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "decode limits {width}x{height}: each side must be between 1 and {HARD_CAP_SIDE} px \
     (the hard cap)"
)]
pub struct DecodeLimitsError {
    pub width: u32,
    pub height: u32,
}

impl DecodeLimits {
    /// Full HD: the most a webcam or a phone camera streams, and more than
    /// the web demo sends (640x480). The default.
    pub const CAMERA: DecodeLimits = DecodeLimits {
        max_width: 1920,
        max_height: 1080,
    };
    /// The most any configuration may accept (see `HARD_CAP_SIDE` for why
    /// this size).
    pub const HARD_CAP: DecodeLimits = DecodeLimits {
        max_width: HARD_CAP_SIDE,
        max_height: HARD_CAP_SIDE,
    };
    /// Photos given on the command line (`infer`, `parity`, `bench`): they
    /// are larger than camera frames (the test photos go up to 1920x1448, a
    /// phone's to 4032x3024), and come from the operator, so the hard cap.
    pub const PHOTO: DecodeLimits = DecodeLimits::HARD_CAP;

    /// Limits of `max_width` x `max_height` (either orientation); refused
    /// when a side is zero or above the hard cap.
    pub fn new(max_width: u32, max_height: u32) -> Result<DecodeLimits, DecodeLimitsError> {
        let side_ok = |s: u32| (1..=HARD_CAP_SIDE).contains(&s);
        if side_ok(max_width) && side_ok(max_height) {
            Ok(DecodeLimits {
                max_width,
                max_height,
            })
        } else {
            Err(DecodeLimitsError {
                width: max_width,
                height: max_height,
            })
        }
    }

    pub fn max_width(&self) -> u32 {
        self.max_width
    }

    pub fn max_height(&self) -> u32 {
        self.max_height
    }

    /// Whether a `width` x `height` image fits, in either orientation.
    pub fn admits(&self, width: u32, height: u32) -> bool {
        let (w, h) = (self.max_width, self.max_height);
        (width <= w && height <= h) || (width <= h && height <= w)
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits::CAMERA
    }
}
