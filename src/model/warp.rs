//! Image → tensor: MediaPipe's `ImageToTensorCalculator` (OpenCV CPU path),
//! HOLISTIC_SPEC.md §1.
//!
//! A rotated rect of the image is warped onto a T×T tensor. We reproduce
//! OpenCV's 8-bit `warpPerspective` with `INTER_LINEAR` exactly: source
//! coordinates are rounded to 1/32 px, the four bilinear weights are integers
//! summing to 2^15, the result is rounded to u8 *before* the value range is
//! applied. Doing it the same way keeps our crops within rounding of
//! MediaPipe's, which matters because the nets amplify one-level differences
//! at ROI borders.
//!
//! This runs for every net on every frame, so the inner loop is incremental
//! (one add per pixel for the source coordinate) and writes straight into a
//! caller-owned buffer.

use super::geometry::{NormRect, Padding};
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

/// OpenCV's INTER_BITS: source coordinates are quantised to 1/32 px.
const INTER_BITS: u32 = 5;
const INTER_TAB_SIZE: i64 = 1 << INTER_BITS;
/// OpenCV's INTER_REMAP_COEF_BITS: bilinear weights are integers summing to 2^15.
const COEF_BITS: u32 = 15;

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
    warp(image, &roi, spec, out);
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

fn warp(image: &RgbImage, roi: &PixelRoi, spec: &TensorSpec, out: &mut Vec<f32>) {
    let t = spec.size;
    out.clear();
    out.resize(t * t * 3, 0.0);
    let (iw, ih) = (image.width() as i64, image.height() as i64);
    let src = image.as_raw();
    let stride = iw as usize * 3;

    // Tensor pixel (i, j) samples src = c + R(r)·((i/T − ½)·w, (j/T − ½)·h);
    // scaled by 32 so that rounding gives OpenCV's 1/32-px fixed point.
    let (s, c) = (roi.r as f64).sin_cos();
    let (w, h) = (roi.w as f64, roi.h as f64);
    let tf = t as f64;
    let q = INTER_TAB_SIZE as f64;
    let (dxi, dyi) = (w / tf * c * q, w / tf * s * q);
    let (dxj, dyj) = (-h / tf * s * q, h / tf * c * q);
    let x00 = (roi.cx as f64 + (-0.5 * w) * c - (-0.5 * h) * s) * q;
    let y00 = (roi.cy as f64 + (-0.5 * w) * s + (-0.5 * h) * c) * q;

    let scale = (spec.range.max - spec.range.min) / 255.0;
    let offset = spec.range.min;
    let lut: [f32; 256] = std::array::from_fn(|v| v as f32 * scale + offset);
    let zero = matches!(spec.border, Border::Zero);
    let mask = INTER_TAB_SIZE - 1;
    let full = 1i64 << COEF_BITS;
    let half = 1i64 << (COEF_BITS - 1);

    for j in 0..t {
        let row_x = x00 + dxj * j as f64;
        let row_y = y00 + dyj * j as f64;
        let out_row = &mut out[j * t * 3..(j + 1) * t * 3];
        for i in 0..t {
            let xq = round_half_even(row_x + dxi * i as f64);
            let yq = round_half_even(row_y + dyi * i as f64);
            let (sx, sy) = (xq >> INTER_BITS, yq >> INTER_BITS);
            let (ax, ay) = (xq & mask, yq & mask);
            // Weights: products of (32 − a) and a, times 2^15 / 2^10 = 32, exact.
            let w00 = (INTER_TAB_SIZE - ax) * (INTER_TAB_SIZE - ay) * 32;
            let w01 = ax * (INTER_TAB_SIZE - ay) * 32;
            let w10 = (INTER_TAB_SIZE - ax) * ay * 32;
            let w11 = ax * ay * 32;
            debug_assert_eq!(w00 + w01 + w10 + w11, full);
            let px = &mut out_row[i * 3..i * 3 + 3];
            if sx >= 0 && sy >= 0 && sx + 1 < iw && sy + 1 < ih {
                // Fast path: all four neighbours inside.
                let o = sy as usize * stride + sx as usize * 3;
                let (r0, r1) = (&src[o..o + 6], &src[o + stride..o + stride + 6]);
                for ch in 0..3 {
                    let v = r0[ch] as i64 * w00
                        + r0[3 + ch] as i64 * w01
                        + r1[ch] as i64 * w10
                        + r1[3 + ch] as i64 * w11;
                    px[ch] = lut[((v + half) >> COEF_BITS).clamp(0, 255) as usize];
                }
            } else if zero && (sx >= iw || sy >= ih || sx + 1 < 0 || sy + 1 < 0) {
                px.copy_from_slice(&[lut[0]; 3]);
            } else {
                let fetch = |x: i64, y: i64| -> Option<usize> {
                    if zero {
                        (x >= 0 && y >= 0 && x < iw && y < ih)
                            .then(|| y as usize * stride + x as usize * 3)
                    } else {
                        Some(y.clamp(0, ih - 1) as usize * stride + x.clamp(0, iw - 1) as usize * 3)
                    }
                };
                let corners = [
                    (fetch(sx, sy), w00),
                    (fetch(sx + 1, sy), w01),
                    (fetch(sx, sy + 1), w10),
                    (fetch(sx + 1, sy + 1), w11),
                ];
                for ch in 0..3 {
                    let v: i64 = corners
                        .iter()
                        .map(|&(o, wt)| o.map_or(0, |o| src[o + ch] as i64) * wt)
                        .sum();
                    px[ch] = lut[((v + half) >> COEF_BITS).clamp(0, 255) as usize];
                }
            }
        }
    }
}

/// OpenCV's `saturate_cast<int>(double)` (cvRound): round half to even.
/// Adding and subtracting 1.5·2^52 makes the FPU round in its default
/// nearest-even mode; unlike `f64::round_ties_even` this needs no SSE4.1 and
/// no libm call, which matters in the per-pixel loop. Exact for |v| < 2^51;
/// crop coordinates (×32) are far below that, and larger ones saturate.
#[inline(always)]
fn round_half_even(v: f64) -> i64 {
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    if v.abs() < 2f64.powi(50) {
        ((v + MAGIC) - MAGIC) as i64
    } else {
        v.clamp(i32::MIN as f64, i32::MAX as f64) as i64
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rounding_is_half_to_even_like_cv_round() {
        use super::round_half_even as r;
        assert_eq!(
            [r(0.5), r(1.5), r(2.5), r(-0.5), r(-1.5), r(2.4), r(-2.6)],
            [0, 2, 2, 0, -2, 2, -3]
        );
        assert_eq!(r(1e300), i32::MAX as i64);
        assert_eq!(r(f64::NAN), 0);
    }

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
