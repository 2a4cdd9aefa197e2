//! Image → tensor: MediaPipe's `ImageToTensorCalculator` (OpenCV CPU path),
//! HOLISTIC_SPEC.md §1.
//!
//! A rotated rect of the image is warped onto a T×T tensor. We reproduce
//! OpenCV's 8-bit `warpPerspective` with `INTER_LINEAR` bit for bit: the
//! source-from-tensor matrix is built by the same f32/f64 chain
//! (`boxPoints` → `getPerspectiveTransform` → `invert`), source coordinates
//! are computed per 64-column block and rounded to 1/32 px as OpenCV does,
//! the four bilinear weights are integers summing to 2^15, and the result is
//! rounded to u8 *before* the value range is applied. Doing it the same way
//! makes our crops identical to MediaPipe's, which matters because the nets
//! amplify one-level differences (see [`opencv_source_matrix`]).
//!
//! This runs for every net on every frame, so it writes straight into a
//! caller-owned buffer.
//!
//! Pure image-to-tensor arithmetic; it knows no net and no session.

use super::geometry::{NormRect, Padding};
use holistream_nets::Isa;
use holistream_nets::warp::{RgbSource, Warp, WarpBorder, warp_perspective};
use image::RgbImage;

/// What happens to samples that fall outside the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Border {
    /// Outside pixels are 0 (`BORDER_CONSTANT` with 0; MediaPipe's BORDER_ZERO).
    Zero,
    /// Outside pixels repeat the nearest edge pixel (`BORDER_REPLICATE`).
    Replicate,
}

/// Float range the u8 values 0..=255 are mapped onto.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ValueRange {
    pub min: f32,
    pub max: f32,
}

impl ValueRange {
    pub const ZERO_ONE: ValueRange = ValueRange { min: 0.0, max: 1.0 };
    pub const MINUS_ONE_ONE: ValueRange = ValueRange {
        min: -1.0,
        max: 1.0,
    };
}

/// How one net wants its input tensor made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorSpec {
    /// Tensor side T (all holistic inputs are square).
    pub size: usize,
    /// Letterbox the ROI to the tensor's aspect ratio instead of stretching it.
    pub keep_aspect: bool,
    pub border: Border,
    pub range: ValueRange,
}

/// A rotated rect in image pixels (`RotatedRect` of image_to_tensor_utils).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelRoi {
    pub cx: f32,
    pub cy: f32,
    pub w: f32,
    pub h: f32,
    /// Radians, clockwise on screen.
    pub r: f32,
}

impl PixelRoi {
    /// Maps a tensor-normalised point (u, v) ∈ [0,1]² of this ROI back to
    /// image-normalised coordinates (the MATRIX output of ImageToTensor, used
    /// by `DetectionProjectionCalculator`).
    pub fn to_image(&self, u: f32, v: f32, width: u32, height: u32) -> [f32; 2] {
        let (s, c) = self.r.sin_cos();
        let (a, b) = ((u - 0.5) * self.w, (v - 0.5) * self.h);
        [
            (self.cx + a * c - b * s) / width as f32,
            (self.cy + a * s + b * c) / height as f32,
        ]
    }
}

/// Where a tensor came from: the (letterbox-padded) ROI in px and the padding,
/// both needed to map the net's outputs back to the image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropTransform {
    pub roi: PixelRoi,
    pub padding: Padding,
}

/// Errors of the crop itself.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WarpError {
    #[error("region of interest has zero or non-finite size")]
    EmptyRoi,
    #[error("image has zero size")]
    EmptyImage,
}

/// Warps `rect` of `image` (or the whole image when `rect` is `None`) into
/// `out` as a `size × size × 3` NHWC tensor; `out` is resized, not reallocated
/// when it already has room.
pub fn crop_to_tensor(
    image: &RgbImage,
    rect: Option<&NormRect>,
    spec: &TensorSpec,
    out: &mut Vec<f32>,
) -> Result<CropTransform, WarpError> {
    let (iw, ih) = image.dimensions();
    if iw == 0 || ih == 0 {
        return Err(WarpError::EmptyImage);
    }
    // GetRoi: the ROI in px; no rect means the whole image.
    let mut roi = match rect {
        Some(r) => PixelRoi {
            cx: r.xc * iw as f32,
            cy: r.yc * ih as f32,
            w: r.w * iw as f32,
            h: r.h * ih as f32,
            r: r.r,
        },
        None => PixelRoi {
            cx: 0.5 * iw as f32,
            cy: 0.5 * ih as f32,
            w: iw as f32,
            h: ih as f32,
            r: 0.0,
        },
    };
    if !(roi.w > 0.0
        && roi.h > 0.0
        && roi.cx.is_finite()
        && roi.cy.is_finite()
        && roi.r.is_finite())
    {
        return Err(WarpError::EmptyRoi);
    }
    let padding = if spec.keep_aspect {
        pad_roi(&mut roi)
    } else {
        Padding::default()
    };
    warp(image, &roi, spec, out)?;
    Ok(CropTransform { roi, padding })
}

/// `PadRoi` for a square tensor: grows the short side of the ROI to make it
/// square and returns the padding as fractions of the tensor.
fn pad_roi(roi: &mut PixelRoi) -> Padding {
    let tensor_aspect = 1.0f32;
    let roi_aspect = roi.h / roi.w;
    if tensor_aspect > roi_aspect {
        roi.h = roi.w * tensor_aspect;
        let v = (1.0 - roi_aspect / tensor_aspect) / 2.0;
        Padding {
            left: 0.0,
            top: v,
            right: 0.0,
            bottom: v,
        }
    } else {
        roi.w = roi.h / tensor_aspect;
        let hp = (1.0 - tensor_aspect / roi_aspect) / 2.0;
        Padding {
            left: hp,
            top: 0.0,
            right: hp,
            bottom: 0.0,
        }
    }
}

/// The source-from-tensor matrix exactly as OpenCV builds it inside
/// MediaPipe's `ImageToTensorOpenCvConverter`
/// (mediapipe/calculators/tensor/image_to_tensor_converter_opencv.cc):
/// `cv::RotatedRect(centre, size, rotation * 180.f / M_PI)` → `boxPoints` →
/// `getPerspectiveTransform(box, {(0,T),(0,0),(T,0),(T,T)})` (8×8 LU solve in
/// f64), which `warpPerspective` then inverts (3×3 cofactors in f64).
///
/// Analytically this is the affine map of HOLISTIC_SPEC.md §1.3, but the chain
/// rounds differently: the box corners are f32, the LU and inversion add f64
/// error, so some samples land in the neighbouring 1/32-px cell and their
/// pixels differ by one level. Those one-level differences matter: on
/// faceapi4 the pose net turns them into a ~2e-4 shift of the left
/// wrist/index landmarks, which the hand ROI and recrop amplify: the left hand
/// was 2.2% of its diagonal off MediaPipe's with the analytic map, 1.7% with
/// this chain (crops at all three stages bit-identical to OpenCV 4.11's). The
/// rest is float noise of the nets: a 1-2 ulp change of the pose ROI moves
/// that hand by up to 1.1% in MediaPipe's own TFLite pipeline. `None` when
/// OpenCV's solve or inversion would fail (a degenerate box).
fn opencv_source_matrix(roi: &PixelRoi, t: usize) -> Option<[f64; 9]> {
    // RotatedRect's angle: `rotation * 180.f / M_PI`: an f32 product, an f64
    // division, stored as f32.
    let deg = ((roi.r * 180.0f32) as f64 / std::f64::consts::PI) as f32;
    let src = box_points(roi.cx, roi.cy, roi.w, roi.h, deg);
    let tf = t as f32;
    let dst = [(0.0, tf), (0.0, 0.0), (tf, 0.0), (tf, tf)];
    let fwd = perspective_transform(&src, &dst)?;
    invert3(&fwd)
}

/// `cv::RotatedRect::points` (imgproc/src/rotcalipers.cpp / core types.cpp):
/// the angle in f64, the half-cos/sin and the corners in f32.
fn box_points(cx: f32, cy: f32, w: f32, h: f32, deg: f32) -> [(f32, f32); 4] {
    let angle = deg as f64 * std::f64::consts::PI / 180.0;
    let b = angle.cos() as f32 * 0.5;
    let a = angle.sin() as f32 * 0.5;
    let p0 = (cx - a * h - b * w, cy + b * h - a * w);
    let p1 = (cx + a * h - b * w, cy - b * h - a * w);
    [
        p0,
        p1,
        (2.0 * cx - p0.0, 2.0 * cy - p0.1),
        (2.0 * cx - p1.0, 2.0 * cy - p1.1),
    ]
}

/// `cv::getPerspectiveTransform(src, dst, DECOMP_LU)`: the 8×8 system with
/// f32 products in its last two columns, solved by OpenCV's `LUImpl`
/// (partial pivoting, eps = 100·DBL_EPSILON).
fn perspective_transform(src: &[(f32, f32); 4], dst: &[(f32, f32); 4]) -> Option<[f64; 9]> {
    let mut a = [[0.0f64; 8]; 8];
    let mut b = [0.0f64; 8];
    for i in 0..4 {
        let ((sx, sy), (dx, dy)) = (src[i], dst[i]);
        a[i][0] = sx as f64;
        a[i + 4][3] = sx as f64;
        a[i][1] = sy as f64;
        a[i + 4][4] = sy as f64;
        a[i][2] = 1.0;
        a[i + 4][5] = 1.0;
        a[i][6] = (-sx * dx) as f64;
        a[i][7] = (-sy * dx) as f64;
        a[i + 4][6] = (-sx * dy) as f64;
        a[i + 4][7] = (-sy * dy) as f64;
        b[i] = dx as f64;
        b[i + 4] = dy as f64;
    }
    for i in 0..8 {
        let mut k = i;
        for j in i + 1..8 {
            if a[j][i].abs() > a[k][i].abs() {
                k = j;
            }
        }
        if a[k][i].abs() < f64::EPSILON * 100.0 {
            return None;
        }
        if k != i {
            a.swap(i, k);
            b.swap(i, k);
        }
        let d = -1.0 / a[i][i];
        for j in i + 1..8 {
            let alpha = a[j][i] * d;
            for c in i + 1..8 {
                a[j][c] += alpha * a[i][c];
            }
            b[j] += alpha * b[i];
        }
    }
    for i in (0..8).rev() {
        let mut s = b[i];
        for c in i + 1..8 {
            s -= a[i][c] * b[c];
        }
        b[i] = s / a[i][i];
    }
    Some([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], 1.0])
}

/// `cv::invert` of a 3×3 f64 matrix (core/src/lapack.cpp): cofactors over
/// the determinant; singular → `None`.
fn invert3(m: &[f64; 9]) -> Option<[f64; 9]> {
    let e = |r: usize, c: usize| m[3 * r + c];
    let det = e(0, 0) * (e(1, 1) * e(2, 2) - e(1, 2) * e(2, 1))
        - e(0, 1) * (e(1, 0) * e(2, 2) - e(1, 2) * e(2, 0))
        + e(0, 2) * (e(1, 0) * e(2, 1) - e(1, 1) * e(2, 0));
    if det == 0.0 || !det.is_finite() {
        return None;
    }
    let d = 1.0 / det;
    Some([
        (e(1, 1) * e(2, 2) - e(1, 2) * e(2, 1)) * d,
        (e(0, 2) * e(2, 1) - e(0, 1) * e(2, 2)) * d,
        (e(0, 1) * e(1, 2) - e(0, 2) * e(1, 1)) * d,
        (e(1, 2) * e(2, 0) - e(1, 0) * e(2, 2)) * d,
        (e(0, 0) * e(2, 2) - e(0, 2) * e(2, 0)) * d,
        (e(0, 2) * e(1, 0) - e(0, 0) * e(1, 2)) * d,
        (e(1, 0) * e(2, 1) - e(1, 1) * e(2, 0)) * d,
        (e(0, 1) * e(2, 0) - e(0, 0) * e(2, 1)) * d,
        (e(0, 0) * e(1, 1) - e(0, 1) * e(1, 0)) * d,
    ])
}

/// Column width of `WarpPerspectiveInvoker`'s blocks (imgproc/src/imgwarp.cpp,
/// BLOCK_SZ = 32): each block row restarts its coordinates from the block's
/// first column, so the block grid is part of the rounding.
fn block_width(t: usize) -> usize {
    const BLOCK_SZ: usize = 32;
    let bh0 = (BLOCK_SZ / 2).min(t);
    (BLOCK_SZ * BLOCK_SZ / bh0).min(t)
}

fn warp(
    image: &RgbImage,
    roi: &PixelRoi,
    spec: &TensorSpec,
    out: &mut Vec<f32>,
) -> Result<(), WarpError> {
    let t = spec.size;
    let m = opencv_source_matrix(roi, t).ok_or(WarpError::EmptyRoi)?;
    out.clear();
    out.resize(t * t * 3, 0.0);
    let scale = (spec.range.max - spec.range.min) / 255.0;
    let offset = spec.range.min;
    let lut: [f32; 256] = std::array::from_fn(|v| v as f32 * scale + offset);
    let src = RgbSource {
        data: image.as_raw(),
        width: image.width() as usize,
        height: image.height() as usize,
    };
    let warp = Warp {
        matrix: &m,
        size: t,
        block: block_width(t),
        border: match spec.border {
            Border::Zero => WarpBorder::Zero,
            Border::Replicate => WarpBorder::Replicate,
        },
        lut: &lut,
    };
    // The pixel loops live in the kernels crate: compiled with full
    // optimisation and for this CPU's vector width (the coordinates vectorize).
    WARP_COORDS.with_borrow_mut(|coords| warp_perspective(Isa::detect(), &src, &warp, out, coords));
    Ok(())
}

thread_local! {
    /// One row of source coordinates, reused across crops.
    static WARP_COORDS: std::cell::RefCell<Vec<[i32; 2]>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    const RAW: TensorSpec = TensorSpec {
        size: 4,
        keep_aspect: false,
        border: Border::Replicate,
        range: ValueRange {
            min: 0.0,
            max: 255.0,
        },
    };

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 10) as u8, (y * 10) as u8, 7]))
    }

    #[test]
    fn identity_crop_copies_pixels() {
        // A 4x4 ROI centred at (2, 2) px of a 4x4 image: tensor (i, j) samples
        // (i, j) exactly (c − w/2 = 0), so the tensor is the image.
        let img = gradient(4, 4);
        let mut out = Vec::new();
        crop_to_tensor(&img, None, &RAW, &mut out).unwrap();
        for j in 0..4 {
            for i in 0..4 {
                let p = &out[(j * 4 + i) * 3..][..3];
                assert_eq!(p, &[(i * 10) as f32, (j * 10) as f32, 7.0], "({i},{j})");
            }
        }
    }

    #[test]
    fn half_pixel_offset_averages_neighbours_with_opencv_rounding() {
        // ROI shifted by half a pixel in x: samples at x = 0.5, 1.5, ...: mean of
        // neighbours: 5, 15, 25, then (30+30)/2 = 30 at the replicated edge.
        let img = gradient(4, 4);
        let rect = NormRect {
            xc: 2.5 / 4.0,
            yc: 0.5,
            w: 1.0,
            h: 1.0,
            r: 0.0,
        };
        let mut out = Vec::new();
        crop_to_tensor(&img, Some(&rect), &RAW, &mut out).unwrap();
        let row0: Vec<f32> = (0..4).map(|i| out[i * 3]).collect();
        assert_eq!(row0, vec![5.0, 15.0, 25.0, 30.0]);
        // Same with a zero border: the last sample is (30 + 0)/2 = 15.
        let spec = TensorSpec {
            border: Border::Zero,
            ..RAW
        };
        crop_to_tensor(&img, Some(&rect), &spec, &mut out).unwrap();
        assert_eq!(out[3 * 3], 15.0);
        // Channel 2 is constant 7 inside the image, 3.5 → rounds to 4 at the edge.
        assert_eq!(out[3 * 3 + 2], 4.0);
    }

    #[test]
    fn crop_is_bit_identical_to_opencv_warp_perspective() {
        // Reference values from OpenCV 4.11 (`cv2.boxPoints` →
        // `getPerspectiveTransform` → `warpPerspective`, INTER_LINEAR,
        // BORDER_REPLICATE) on the same image and rect. The analytic mapping
        // src = c + R·((i/T − ½)w, (j/T − ½)h) rounds pixel (7, 8) into the
        // next 1/32-px cell and gives [228, 129, 175] there.
        let img = RgbImage::from_fn(40, 30, |x, y| {
            Rgb([
                ((x * 37 + y * 11) % 256) as u8,
                ((x * 5 + y * 29) % 256) as u8,
                ((x * y) % 256) as u8,
            ])
        });
        let rect = NormRect {
            xc: 0.518_340_6,
            yc: 0.643_542_65,
            w: 0.711_535_6,
            h: 0.498_955_1,
            r: -2.640_012_5,
        };
        let spec = TensorSpec { size: 32, ..RAW };
        let mut out = Vec::new();
        crop_to_tensor(&img, Some(&rect), &spec, &mut out).unwrap();
        let at = |i: usize, j: usize| &out[(j * 32 + i) * 3..][..3];
        assert_eq!(at(7, 8), &[227.0, 128.0, 174.0]);
        // The whole crop, as a position-weighted sum (OpenCV's: 49399055).
        let fingerprint: i64 = out
            .iter()
            .enumerate()
            .map(|(k, &v)| v as i64 * (k as i64 % 251 + 1))
            .sum();
        assert_eq!(fingerprint, 49_399_055);
    }

    #[test]
    fn quarter_turn_rotates_the_crop() {
        // r = 90° clockwise: tensor x runs along image +y, tensor y along image −x.
        // Tensor (0,0) samples c + R·(−2, −2) = (2 + 2, 2 − 2) = (4, 0) → replicated
        // to column 3; tensor (i, 0) samples (4, i).
        let img = gradient(4, 4);
        let rect = NormRect {
            xc: 0.5,
            yc: 0.5,
            w: 1.0,
            h: 1.0,
            r: std::f32::consts::FRAC_PI_2,
        };
        let mut out = Vec::new();
        crop_to_tensor(&img, Some(&rect), &RAW, &mut out).unwrap();
        for i in 0..4 {
            assert_eq!(out[i * 3], 30.0);
            assert_eq!(out[i * 3 + 1], (i * 10) as f32);
        }
        // Tensor (0, j) samples (4 − j, 0).
        for j in 1..4 {
            assert_eq!(out[j * 4 * 3], ((4 - j) * 10) as f32);
        }
    }

    #[test]
    fn letterbox_pads_the_short_side_with_zero_border() {
        // 4 wide x 2 high image into a 4x4 tensor: the ROI grows to 4x4 around the
        // centre, rows 0 and 3 fall outside (zero), padding is 1/4 top and bottom.
        let img = RgbImage::from_pixel(4, 2, Rgb([255, 255, 255]));
        let spec = TensorSpec {
            keep_aspect: true,
            border: Border::Zero,
            range: ValueRange::MINUS_ONE_ONE,
            size: 4,
        };
        let mut out = Vec::new();
        let t = crop_to_tensor(&img, None, &spec, &mut out).unwrap();
        assert_eq!(
            t.padding,
            Padding {
                left: 0.0,
                top: 0.25,
                right: 0.0,
                bottom: 0.25
            }
        );
        assert_eq!(t.roi.h, 4.0);
        // Row 0 samples y = −1: outside → −1.0; rows 1, 2 sample y = 0, 1 → +1.0;
        // row 3 samples y = 2 → outside.
        assert_eq!(out[0], -1.0);
        assert_eq!(out[4 * 3], 1.0);
        assert_eq!(out[2 * 4 * 3], 1.0);
        assert_eq!(out[3 * 4 * 3], -1.0);
    }

    #[test]
    fn degenerate_roi_is_an_error_not_a_panic() {
        let img = gradient(4, 4);
        let rect = NormRect {
            xc: 0.5,
            yc: 0.5,
            w: 0.0,
            h: 0.0,
            r: 0.0,
        };
        let mut out = Vec::new();
        assert_eq!(
            crop_to_tensor(&img, Some(&rect), &RAW, &mut out),
            Err(WarpError::EmptyRoi)
        );
        let rect = NormRect {
            xc: f32::NAN,
            ..rect
        };
        assert_eq!(
            crop_to_tensor(&img, Some(&rect), &RAW, &mut out),
            Err(WarpError::EmptyRoi)
        );
    }

    #[test]
    fn tensor_point_maps_back_to_image() {
        let roi = PixelRoi {
            cx: 50.0,
            cy: 40.0,
            w: 20.0,
            h: 20.0,
            r: 0.0,
        };
        assert_eq!(roi.to_image(1.0, 0.0, 100, 80), [0.6, 0.375]);
    }
}
