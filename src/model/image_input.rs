//! Decoding untrusted image bytes into the RGB image the pipeline takes.
//!
//! The header is read first and oversized images are refused before any
//! pixel buffer is allocated, so a 20000×20000 JPEG of a few bytes cannot make
//! a worker allocate gigabytes.

use image::{ImageFormat, ImageReader, Limits, RgbImage};
use std::io::Cursor;

/// Largest accepted side, in pixels.
pub const MAX_SIDE: u32 = 8192;
/// Largest accepted image, in pixels (40 Mpx).
pub const MAX_PIXELS: u64 = 40_000_000;
/// Decoder allocation cap: a 40 Mpx RGBA16 image plus slack.
const MAX_ALLOC: u64 = MAX_PIXELS * 8 + (64 << 20);

/// Why bytes could not become an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageInputError {
    #[error("empty input")]
    Empty,
    #[error("not a supported image (JPEG or PNG expected)")]
    UnknownFormat,
    #[error("image is {width}x{height}: zero-sized")]
    ZeroSize { width: u32, height: u32 },
    #[error(
        "image is {width}x{height}: larger than the {MAX_SIDE} px per side / {MAX_PIXELS} px limit"
    )]
    TooLarge { width: u32, height: u32 },
    #[error("JPEG data ends before its end-of-image marker (truncated)")]
    Truncated,
    #[error("image could not be decoded: {0}")]
    Decode(String),
}

/// Decodes JPEG or PNG bytes to 8-bit RGB (grayscale becomes three equal
/// channels, alpha is dropped), refusing zero-sized and oversized images
/// before decoding their pixels.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, ImageInputError> {
    if bytes.is_empty() {
        return Err(ImageInputError::Empty);
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageInputError::Decode(e.to_string()))?;
    match reader.format() {
        // The JPEG decoder fills a cut-off scan with grey and reports success,
        // so truncation is checked here: the end-of-image marker must follow
        // the first scan (entropy-coded data never contains FF D9).
        Some(ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
            return Err(ImageInputError::Truncated);
        }
        Some(ImageFormat::Jpeg | ImageFormat::Png) => {}
        // Only JPEG and PNG decoders are built in; other recognised formats
        // (GIF, BMP, …) are as unsupported as garbage.
        _ => return Err(ImageInputError::UnknownFormat),
    }
    // Read only the header to check the size.
    let (width, height) = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageInputError::Decode(e.to_string()))?
        .into_dimensions()
        .map_err(|e| ImageInputError::Decode(e.to_string()))?;
    if width == 0 || height == 0 {
        return Err(ImageInputError::ZeroSize { width, height });
    }
    if width > MAX_SIDE || height > MAX_SIDE || width as u64 * height as u64 > MAX_PIXELS {
        return Err(ImageInputError::TooLarge { width, height });
    }
    if reader.format() == Some(ImageFormat::Jpeg) {
        return decode_jpeg(bytes, width, height);
    }
    let mut reader = reader;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => ImageInputError::TooLarge { width, height },
        other => ImageInputError::Decode(other.to_string()),
    })?;
    Ok(image.into_rgb8())
}

/// JPEG through libjpeg-turbo's decoder (the MozJPEG fork, built from source
/// without SIMD), not the `image` crate's: MediaPipe's goldens were decoded by
/// OpenCV, i.e. libjpeg-turbo (ISLOW IDCT, fancy chroma upsampling). Pure-Rust
/// decoders differ by up to 4 levels on a tenth of the pixels, and the nets
/// turn that into ~1% landmark error (10% on one hand of the test photos);
/// with libjpeg-turbo's pixels our errors drop to ~0.1%.
fn decode_jpeg(bytes: &[u8], width: u32, height: u32) -> Result<RgbImage, ImageInputError> {
    let decode_error = |e: std::io::Error| ImageInputError::Decode(e.to_string());
    let mut started = mozjpeg::Decompress::new_mem(bytes)
        .map_err(decode_error)?
        .rgb()
        .map_err(decode_error)?;
    if (started.width(), started.height()) != (width as usize, height as usize) {
        return Err(ImageInputError::Decode(
            "JPEG frame size disagrees with its header".into(),
        ));
    }
    let pixels: Vec<u8> = started.read_scanlines::<u8>().map_err(decode_error)?;
    started.finish().map_err(decode_error)?;
    // A short read (corrupt data) leaves fewer pixels than the frame needs.
    RgbImage::from_raw(width, height, pixels).ok_or(ImageInputError::Truncated)
}

fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let find = |hay: &[u8], marker: [u8; 2]| hay.windows(2).position(|w| w == marker);
    match find(bytes, [0xFF, 0xDA]) {
        Some(sos) => find(&bytes[sos..], [0xFF, 0xD9]).is_some(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgb};

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7) as u8, (y * 5) as u8, 99]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn decodes_jpeg_and_grayscale_png() {
        let img = decode_image(&jpeg(16, 8)).unwrap();
        assert_eq!(img.dimensions(), (16, 8));
        let gray = image::GrayImage::from_fn(4, 3, |x, _| image::Luma([x as u8 * 60]));
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(gray.as_raw(), 4, 3, image::ExtendedColorType::L8)
            .unwrap();
        let rgb = decode_image(&png).unwrap();
        assert_eq!(rgb.get_pixel(2, 1), &Rgb([120, 120, 120]));
    }

    #[test]
    fn refuses_garbage_and_truncation() {
        assert!(matches!(decode_image(b""), Err(ImageInputError::Empty)));
        assert!(matches!(
            decode_image(b"hello, this is not an image"),
            Err(ImageInputError::UnknownFormat)
        ));
        let full = jpeg(64, 64);
        let cut = &full[..full.len() / 2];
        assert!(matches!(decode_image(cut), Err(ImageInputError::Truncated)));
        // Cut inside the headers, before any scan.
        assert!(matches!(
            decode_image(&full[..100]),
            Err(ImageInputError::Truncated)
        ));
    }

    /// A JPEG whose SOF header claims `w`×`h` but that has no pixel data: what
    /// an attacker sends to make a decoder allocate.
    fn jpeg_header_only(w: u16, h: u16) -> Vec<u8> {
        let mut real = jpeg(8, 8);
        // Patch the SOF0 marker (FF C0): length(2) precision(1) height(2) width(2).
        let sof = real.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
        real[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
        real[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
        real
    }

    #[test]
    fn refuses_huge_and_zero_sized_headers_before_decoding() {
        assert!(matches!(
            decode_image(&jpeg_header_only(20000, 20000)),
            Err(ImageInputError::TooLarge {
                width: 20000,
                height: 20000
            })
        ));
        // 8192 x 8000 is within each side but above 40 Mpx.
        assert!(matches!(
            decode_image(&jpeg_header_only(8192, 8000)),
            Err(ImageInputError::TooLarge { .. })
        ));
        let zero = decode_image(&jpeg_header_only(0, 0));
        assert!(
            matches!(
                zero,
                Err(ImageInputError::ZeroSize { .. }) | Err(ImageInputError::Decode(_))
            ),
            "{zero:?}"
        );
    }
}
