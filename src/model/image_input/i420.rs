//! Decoded video pictures (WebRTC ingest): I420 planes, and their conversion
//! to the RGB the pipeline takes.
//!
//! Written here rather than taken from a crate: the conversion is 30 lines
//! of the textbook integer BT.601 formula (the one libyuv's `I420ToRGB24`
//! uses), and the codecs' own converters each take only their own picture
//! type. Converting on the worker (not on the decoder) means only the
//! pictures that reach inference pay for it.

use bytes::Bytes;
use image::RgbImage;

use super::ImageInputError;
use crate::config::DecodeLimits;

/// One decoded picture: I420 (YUV 4:2:0, 8 bits, BT.601 limited range, the
/// colour space WebRTC's codecs carry), planes packed without padding: Y
/// (`width * height`), then U and V (`ceil(width/2) * ceil(height/2)` each).
#[derive(Clone, PartialEq, Eq)]
pub struct I420Picture {
    width: u32,
    height: u32,
    planes: Bytes,
}

impl std::fmt::Debug for I420Picture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "I420Picture({}x{})", self.width, self.height)
    }
}

/// The bytes of packed I420 planes of `width` x `height`.
pub fn i420_len(width: u32, height: u32) -> usize {
    let (w, h) = (width as usize, height as usize);
    w * h + 2 * w.div_ceil(2) * h.div_ceil(2)
}

impl I420Picture {
    /// A picture from packed planes; refused when the sizes disagree, when a
    /// side is zero, or above `limits`.
    pub fn new(
        width: u32,
        height: u32,
        planes: Bytes,
        limits: &DecodeLimits,
    ) -> Result<I420Picture, ImageInputError> {
        if width == 0 || height == 0 {
            return Err(ImageInputError::ZeroSize { width, height });
        }
        if !limits.admits(width, height) {
            return Err(ImageInputError::TooLarge { width, height });
        }
        if planes.len() != i420_len(width, height) {
            return Err(ImageInputError::Decode(format!(
                "I420 picture {width}x{height} needs {} bytes, got {}",
                i420_len(width, height),
                planes.len()
            )));
        }
        Ok(I420Picture {
            width,
            height,
            planes,
        })
    }

    /// Packs strided planes (as decoders hand them out) into a picture.
    /// `y`, `u`, `v` are (data, stride); the data must cover the picture.
    pub fn from_strided(
        width: u32,
        height: u32,
        y: (&[u8], usize),
        u: (&[u8], usize),
        v: (&[u8], usize),
        limits: &DecodeLimits,
    ) -> Result<I420Picture, ImageInputError> {
        let (w, h) = (width as usize, height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let mut out = Vec::with_capacity(i420_len(width, height));
        for ((data, stride), (pw, ph)) in [(y, (w, h)), (u, (cw, ch)), (v, (cw, ch))] {
            if stride < pw || (ph > 0 && data.len() < (ph - 1) * stride + pw) {
                return Err(ImageInputError::Decode(format!(
                    "decoded plane too small for {width}x{height} (stride {stride}, {} bytes)",
                    data.len()
                )));
            }
            for row in 0..ph {
                out.extend_from_slice(&data[row * stride..row * stride + pw]);
            }
        }
        I420Picture::new(width, height, Bytes::from(out), limits)
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// The packed planes (what the remote wire carries).
    pub fn planes(&self) -> &Bytes {
        &self.planes
    }

    /// The picture as RGB: BT.601 limited range, chroma repeated over each
    /// 2x2 block (libyuv's integer formula, 8.8 fixed point).
    pub fn to_rgb(&self) -> RgbImage {
        let (w, h) = (self.width as usize, self.height as usize);
        let cw = w.div_ceil(2);
        let (y_plane, rest) = self.planes.split_at(w * h);
        let (u_plane, v_plane) = rest.split_at(cw * h.div_ceil(2));
        let mut rgb = vec![0u8; w * h * 3];
        for (row, out_row) in rgb.chunks_exact_mut(w * 3).enumerate() {
            let y_row = &y_plane[row * w..][..w];
            let u_row = &u_plane[(row / 2) * cw..][..cw];
            let v_row = &v_plane[(row / 2) * cw..][..cw];
            for (col, px) in out_row.chunks_exact_mut(3).enumerate() {
                let c = (i32::from(y_row[col]) - 16) * 298;
                let d = i32::from(u_row[col / 2]) - 128;
                let e = i32::from(v_row[col / 2]) - 128;
                let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
                px[0] = clamp(c + 409 * e);
                px[1] = clamp(c - 100 * d - 208 * e);
                px[2] = clamp(c + 516 * d);
            }
        }
        // unwrap: the buffer is exactly w * h * 3.
        RgbImage::from_raw(self.width, self.height, rgb).unwrap()
    }

    /// The I420 planes of an RGB image (BT.601 limited range, each chroma
    /// sample the mean of its 2x2 block): what an encoder is fed, for the
    /// load generator's WebRTC client and the codec's cost measurement.
    pub fn from_rgb(image: &RgbImage) -> I420Picture {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let mut planes = vec![0u8; i420_len(image.width(), image.height())];
        let (y_plane, rest) = planes.split_at_mut(w * h);
        let (u_plane, v_plane) = rest.split_at_mut(cw * ch);
        let px = |x: usize, y: usize| {
            let p = image.get_pixel(x.min(w - 1) as u32, y.min(h - 1) as u32).0;
            (i32::from(p[0]), i32::from(p[1]), i32::from(p[2]))
        };
        for y in 0..h {
            for x in 0..w {
                let (r, g, b) = px(x, y);
                y_plane[y * w + x] = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
            }
        }
        for cy in 0..ch {
            for cx in 0..cw {
                let (mut u, mut v) = (0, 0);
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let (r, g, b) = px(2 * cx + dx, 2 * cy + dy);
                    u += ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128;
                    v += ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128;
                }
                u_plane[cy * cw + cx] = ((u + 2) / 4).clamp(0, 255) as u8;
                v_plane[cy * cw + cx] = ((v + 2) / 4).clamp(0, 255) as u8;
            }
        }
        I420Picture {
            width: image.width(),
            height: image.height(),
            planes: Bytes::from(planes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb_round_trips_within_the_limited_range_error() {
        // A gradient with colour, odd sides (the chroma planes round up).
        let img = RgbImage::from_fn(33, 17, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 13) as u8, ((x + y) * 5) as u8])
        });
        let pic = I420Picture::from_rgb(&img);
        assert_eq!(pic.planes().len(), 33 * 17 + 2 * 17 * 9);
        let back = pic.to_rgb();
        // Flat 2x2 blocks come back within a few levels; a smooth gradient
        // loses a little more to the shared chroma sample.
        let worst = img
            .pixels()
            .zip(back.pixels())
            .flat_map(|(a, b)| (0..3).map(move |c| (i32::from(a[c]) - i32::from(b[c])).abs()))
            .max()
            .unwrap();
        assert!(worst <= 12, "worst channel error {worst}");
        let flat = RgbImage::from_pixel(8, 8, image::Rgb([200, 30, 90]));
        let back = I420Picture::from_rgb(&flat).to_rgb();
        for p in back.pixels() {
            for (c, want) in [200, 30, 90].into_iter().enumerate() {
                assert!((i32::from(p[c]) - want).abs() <= 2, "{p:?}");
            }
        }
    }

    #[test]
    fn sizes_and_limits_are_checked() {
        let limits = DecodeLimits::CAMERA;
        assert!(I420Picture::new(4, 4, Bytes::from(vec![0; 24]), &limits).is_ok());
        assert!(I420Picture::new(4, 4, Bytes::from(vec![0; 23]), &limits).is_err());
        assert!(matches!(
            I420Picture::new(0, 4, Bytes::new(), &limits),
            Err(ImageInputError::ZeroSize { .. })
        ));
        assert!(matches!(
            I420Picture::new(4000, 4000, Bytes::new(), &limits),
            Err(ImageInputError::TooLarge { .. })
        ));
        // Strided planes: padding is dropped, short planes refused.
        let y = vec![1u8; 8 * 4];
        let uv = vec![2u8; 4 * 2];
        let p = I420Picture::from_strided(6, 4, (&y, 8), (&uv, 4), (&uv, 4), &limits).unwrap();
        assert_eq!(p.planes().len(), i420_len(6, 4));
        assert!(
            I420Picture::from_strided(6, 4, (&y[..20], 8), (&uv, 4), (&uv, 4), &limits).is_err()
        );
    }
}
