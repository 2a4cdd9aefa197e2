//! Decoding untrusted image bytes into the RGB image the pipeline takes.
//!
//! A frame comes from anyone who was given the demo, so it is held to what a
//! camera sends before any pixel is decoded. For a JPEG, in this order:
//!
//! 1. Its markers are walked here, without libjpeg (`JpegLayout::read`): the
//!    frame header's size against the [`DecodeLimits`], one or three
//!    components (no CMYK: libjpeg cannot make RGB of it and raises a fatal
//!    error), a Huffman-coded 8-bit process (what every camera and browser
//!    writes), at most [`MAX_SCANS`] scans, an end-of-image marker, and at
//!    least the entropy-coded bytes that any complete image of the declared
//!    size needs (`jpeg_layout::min_entropy_bytes`). A refusal here has read nothing
//!    but the bytes already in memory: no decoder exists yet, nothing of the
//!    declared size is allocated.
//! 2. libjpeg decodes with its memory capped to what the limits need, inside
//!    `catch_unwind`: the mozjpeg crate turns libjpeg's fatal errors into
//!    unwinding, which becomes [`ImageInputError::Decode`] here, so a bad
//!    frame is answered `bad_frame` and its worker lives.
//!
//! A PNG's header is read by the `image` crate and its size checked the same
//! way before its pixels are decoded.

use std::cell::Cell;
use std::io::Cursor;
use std::os::raw::{c_int, c_long};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use image::{ImageFormat, ImageReader, Limits, RgbImage};
use mozjpeg_sys::{J_COLOR_SPACE, jpeg_common_struct, jpeg_error_mgr};

mod i420;
mod jpeg_layout;

pub use i420::{I420Picture, i420_len};
use jpeg_layout::JpegLayout;
pub use jpeg_layout::MAX_SCANS;

/// The limits live with the configuration that sets them (`[pool]`,
/// `[worker]`); the decoder below holds every image to them.
pub use crate::config::{DecodeLimits, DecodeLimitsError};

/// The memory libjpeg may use for an admitted image: its largest need is
/// the whole-image coefficient buffer of a progressive or multi-scan
/// JPEG, 128 bytes per 8x8 block (64 coefficients of 2 bytes) of each of
/// at most 3 components, the sides rounded up to the largest MCU (32 px);
/// plus the row buffers, tables and state of one decode, a few MiB at
/// the hard cap's width, given 16 MiB.
fn libjpeg_max_memory(limits: &DecodeLimits) -> usize {
    let blocks = |side: u32| side.div_ceil(32) as usize * 4;
    blocks(limits.max_width()) * blocks(limits.max_height()) * 3 * 128 + (16 << 20)
}

/// The `image` crate's allocation cap for a PNG: an RGBA16 image of the
/// largest admitted size, plus slack for the decoder's own buffers.
fn png_max_alloc(limits: &DecodeLimits) -> u64 {
    limits.max_width() as u64 * limits.max_height() as u64 * 8 + (16 << 20)
}

/// Why bytes could not become an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageInputError {
    #[error("empty input")]
    Empty,
    #[error("not a supported image (JPEG or PNG expected)")]
    UnknownFormat,
    #[error("image is {width}x{height}: zero-sized")]
    ZeroSize { width: u32, height: u32 },
    #[error("image is {width}x{height}: above the decode limits")]
    TooLarge { width: u32, height: u32 },
    /// The scans hold fewer bytes than any complete image of the declared
    /// size needs: libjpeg would pad the missing data and still decode every
    /// pixel, so a few hundred bytes would cost a full-size decode.
    #[error(
        "JPEG declares {width}x{height} but has {bytes} bytes of image data, \
         fewer than the {min_bytes} any complete image of that size needs"
    )]
    ImplausiblySmall {
        bytes: usize,
        min_bytes: usize,
        width: u32,
        height: u32,
    },
    #[error("JPEG has more than {MAX_SCANS} scans")]
    TooManyScans,
    /// CMYK, YCCK, or another component count than 1 (grey) or 3 (colour).
    #[error("JPEG has {components} colour components: grey (1) or colour (3) expected")]
    UnsupportedColorSpace { components: u8 },
    #[error(
        "JPEG uses {0}: baseline, extended or progressive Huffman coding of 8-bit samples expected"
    )]
    UnsupportedCoding(&'static str),
    #[error("JPEG data ends before its end-of-image marker (truncated)")]
    Truncated,
    #[error("image could not be decoded: {0}")]
    Decode(String),
    /// A decoder panicked on the image (a bug, in it or here); caught, so
    /// that the worker lives. The panic's own message may hold anything and
    /// stays out of the error.
    #[error("image could not be decoded: the decoder failed")]
    DecoderPanicked,
}

/// A frame as a client sent it, for a worker to turn into RGB: a JPEG (the
/// WebSocket) or a decoded video picture (WebRTC, decoded on arrival since
/// inter-frame codecs need every frame).
#[derive(Debug, Clone)]
pub enum FrameData {
    Jpeg(bytes::Bytes),
    I420(I420Picture),
}

impl FrameData {
    /// The frame as RGB: a JPEG decoded within `limits`, a picture
    /// converted (its size was checked against the limits when it was made).
    pub fn to_rgb(&self, limits: &DecodeLimits) -> Result<RgbImage, ImageInputError> {
        match self {
            FrameData::Jpeg(bytes) => decode_image_with(bytes, limits),
            FrameData::I420(picture) => {
                if limits.admits(picture.width(), picture.height()) {
                    Ok(picture.to_rgb())
                } else {
                    Err(ImageInputError::TooLarge {
                        width: picture.width(),
                        height: picture.height(),
                    })
                }
            }
        }
    }

    /// Size in bytes as it travels (for logs and bounds).
    pub fn len(&self) -> usize {
        match self {
            FrameData::Jpeg(bytes) => bytes.len(),
            FrameData::I420(picture) => picture.planes().len(),
        }
    }

    /// True for an empty JPEG (a picture is never empty).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decodes JPEG or PNG bytes to 8-bit RGB (grayscale becomes three equal
/// channels, alpha is dropped) within the [`DecodeLimits::CAMERA`] limits:
/// what the server does with a frame.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, ImageInputError> {
    decode_image_with(bytes, &DecodeLimits::default())
}

/// [`decode_image`] within `limits`. Everything that can be refused from
/// the headers is refused before a decoder is made; a libjpeg fatal error
/// becomes [`ImageInputError::Decode`], any other panic
/// [`ImageInputError::DecoderPanicked`].
pub fn decode_image_with(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, ImageInputError> {
    if bytes.is_empty() {
        return Err(ImageInputError::Empty);
    }
    // The whole decode is guarded, the marker walk included: whatever panics
    // on a frame, the worker that holds the model must survive it. A fuzzer
    // still sees our panics: libfuzzer's panic hook aborts before unwinding,
    // and libjpeg's errors unwind without calling the hook.
    match catch_unwind(AssertUnwindSafe(|| decode_unguarded(bytes, limits))) {
        Ok(outcome) => outcome,
        Err(payload) => match payload.downcast::<LibjpegError>() {
            Ok(libjpeg) => Err(ImageInputError::Decode(libjpeg.0)),
            Err(_) => Err(ImageInputError::DecoderPanicked),
        },
    }
}

fn decode_unguarded(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, ImageInputError> {
    match image::guess_format(bytes) {
        Ok(ImageFormat::Jpeg) => {
            let layout = JpegLayout::read(bytes, limits)?;
            decode_jpeg(bytes, &layout, libjpeg_max_memory(limits))
        }
        Ok(ImageFormat::Png) => decode_png(bytes, limits),
        // Only JPEG and PNG decoders are built in; other recognised formats
        // (GIF, BMP, …) are as unsupported as garbage.
        _ => Err(ImageInputError::UnknownFormat),
    }
}

fn decode_png(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, ImageInputError> {
    let reader = || ImageReader::with_format(Cursor::new(bytes), ImageFormat::Png);
    // Read only the header to check the size.
    let (width, height) = reader()
        .into_dimensions()
        .map_err(|e| ImageInputError::Decode(e.to_string()))?;
    if width == 0 || height == 0 {
        return Err(ImageInputError::ZeroSize { width, height });
    }
    if !limits.admits(width, height) {
        return Err(ImageInputError::TooLarge { width, height });
    }
    let mut reader = reader();
    let mut decoder_limits = Limits::default();
    let longest = limits.max_width().max(limits.max_height());
    decoder_limits.max_image_width = Some(longest);
    decoder_limits.max_image_height = Some(longest);
    decoder_limits.max_alloc = Some(png_max_alloc(limits));
    reader.limits(decoder_limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => ImageInputError::TooLarge { width, height },
        other => ImageInputError::Decode(other.to_string()),
    })?;
    Ok(image.into_rgb8())
}

/// A libjpeg fatal error, as the unwinding payload of our error manager.
struct LibjpegError(String);

thread_local! {
    /// The `max_memory_to_use` the error manager hands libjpeg for the decode
    /// running on this thread (libjpeg's callbacks run on the caller's
    /// thread, inside `decode_jpeg`, which sets it first).
    static LIBJPEG_MAX_MEMORY: Cell<c_long> = const { Cell::new(0) };
}

/// Our libjpeg error manager: libjpeg's own, with three methods replaced.
///
/// - `error_exit` unwinds with the message (libjpeg's error exits must not
///   return; mozjpeg builds libjpeg with unwinding for this), without
///   calling the panic hook, so nothing is printed.
/// - `emit_message` (warnings and traces) prints nothing, and caps libjpeg's
///   memory: it is the first code of ours that libjpeg calls with its state
///   (the trace of the start-of-image marker, inside `jpeg_read_header`),
///   and the mozjpeg crate gives no other access to it. libjpeg checks
///   `max_memory_to_use` when it allocates its whole-image buffers; over it,
///   it would spill to temporary files, which this build does not have, so
///   it raises an error instead of allocating.
/// - `output_message` prints nothing.
fn error_manager() -> jpeg_error_mgr {
    // SAFETY: jpeg_error_mgr is plain C data (integers, pointers and
    // optional function pointers) for which all-zero is valid, and
    // jpeg_std_error fills in every field.
    let mut err: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { mozjpeg_sys::jpeg_std_error(&mut err) };
    err.error_exit = Some(unwind_with_message);
    err.emit_message = Some(cap_memory_quietly);
    err.output_message = Some(print_nothing);
    err
}

unsafe extern "C-unwind" fn unwind_with_message(cinfo: &mut jpeg_common_struct) {
    let mut buffer = [0u8; 80];
    // SAFETY: libjpeg calls error_exit with its live state, whose `err` is
    // our manager; format_message (libjpeg's own, set by jpeg_std_error)
    // writes at most JMSG_LENGTH_MAX (80) bytes, NUL included, into the
    // buffer. Its Rust signature says `&[u8; 80]`, but C writes through it:
    // the mozjpeg crate calls it through the same signature with `&mut`.
    let format = unsafe { cinfo.err.as_ref() }.and_then(|err| err.format_message);
    if let Some(format) = format {
        let format: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &mut [u8; 80]) =
            unsafe { std::mem::transmute(format) };
        unsafe { format(cinfo, &mut buffer) };
    }
    let text = buffer.split(|&b| b == 0).next().unwrap_or_default();
    // libjpeg's messages are its own ASCII texts with numbers; keep only
    // printable ASCII all the same, as this may reach a client's error.
    let message: String = text
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    resume_unwind(Box::new(LibjpegError(format!("libjpeg: {message}"))));
}

unsafe extern "C-unwind" fn cap_memory_quietly(cinfo: &mut jpeg_common_struct, _level: c_int) {
    // SAFETY: libjpeg passes its live state; `mem` is its memory manager,
    // set up by jpeg_create_decompress before any message can be emitted.
    if let Some(mem) = unsafe { cinfo.mem.as_mut() } {
        mem.max_memory_to_use = LIBJPEG_MAX_MEMORY.get();
    }
}

unsafe extern "C-unwind" fn print_nothing(_cinfo: &mut jpeg_common_struct) {}

/// JPEG through libjpeg-turbo's decoder (the MozJPEG fork, built from source
/// without SIMD), not the `image` crate's: MediaPipe's goldens were decoded by
/// OpenCV, i.e. libjpeg-turbo (ISLOW IDCT, fancy chroma upsampling). Pure-Rust
/// decoders differ by up to 4 levels on a tenth of the pixels, and the nets
/// turn that into ~1% landmark error (10% on one hand of the test photos);
/// with libjpeg-turbo's pixels our errors drop to ~0.1%.
///
/// `layout` is what `JpegLayout::read` accepted; libjpeg reads the header
/// again, and must agree with it. May unwind (libjpeg's fatal errors): call
/// under `catch_unwind`.
fn decode_jpeg(
    bytes: &[u8],
    layout: &JpegLayout,
    max_memory: usize,
) -> Result<RgbImage, ImageInputError> {
    let decode_error = |e: std::io::Error| ImageInputError::Decode(e.to_string());
    LIBJPEG_MAX_MEMORY.set(c_long::try_from(max_memory).unwrap_or(c_long::MAX));
    let decompress = mozjpeg::decompress::DecompressBuilder::new()
        .with_err(error_manager())
        .from_mem(bytes)
        .map_err(decode_error)?;
    let (width, height) = (layout.width, layout.height);
    if decompress.size() != (width as usize, height as usize) {
        return Err(ImageInputError::Decode(
            "libjpeg reads another frame size than the header".into(),
        ));
    }
    // The component count was checked; this is libjpeg's reading of it
    // (with the Adobe and JFIF markers), before it is asked for RGB.
    match decompress.color_space() {
        J_COLOR_SPACE::JCS_GRAYSCALE | J_COLOR_SPACE::JCS_YCbCr | J_COLOR_SPACE::JCS_RGB => {}
        _ => {
            return Err(ImageInputError::UnsupportedColorSpace {
                components: decompress.components().len() as u8,
            });
        }
    }
    let mut started = decompress.rgb().map_err(decode_error)?;
    let pixels: Vec<u8> = started.read_scanlines::<u8>().map_err(decode_error)?;
    started.finish().map_err(decode_error)?;
    // A short read (corrupt data) leaves fewer pixels than the frame needs.
    RgbImage::from_raw(width, height, pixels).ok_or(ImageInputError::Truncated)
}

#[cfg(test)]
pub(super) mod tests {
    use super::jpeg_layout::min_entropy_bytes;
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

    /// `jpeg-encoder`'s JPEG of `pixels` (RGB), as the tests' frames are made.
    pub(super) fn jpeg_encoder(
        w: u16,
        h: u16,
        pixels: &[u8],
        quality: u8,
        sampling: Option<jpeg_encoder::SamplingFactor>,
        progressive: bool,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
        if let Some(s) = sampling {
            encoder.set_sampling_factor(s);
        }
        encoder.set_progressive(progressive);
        encoder
            .encode(pixels, w, h, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        out
    }

    /// mozjpeg's JPEG with its own defaults (progressive, optimised Huffman
    /// tables and scans, trellis quantisation): the smallest files a real
    /// encoder writes.
    pub(super) fn mozjpeg_default(
        w: usize,
        h: usize,
        pixels: &[u8],
        color_space: mozjpeg::ColorSpace,
    ) -> Vec<u8> {
        let mut c = mozjpeg::Compress::new(color_space);
        c.set_size(w, h);
        c.set_quality(90.0);
        let mut started = c.start_compress(Vec::new()).unwrap();
        started.write_scanlines(pixels).unwrap();
        started.finish().unwrap()
    }

    /// Patches the frame header (SOF0 or SOF2: length(2) precision(1)
    /// height(2) width(2)) to declare `w` x `h`, keeping the data: what an
    /// attacker sends to make a decoder do a full-size decode.
    fn declaring(mut jpeg: Vec<u8>, w: u16, h: u16) -> Vec<u8> {
        let sof = jpeg
            .windows(2)
            .position(|m| m == [0xFF, 0xC0] || m == [0xFF, 0xC2])
            .unwrap();
        jpeg[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
        jpeg
    }

    pub(super) fn layout(jpeg: &[u8]) -> JpegLayout {
        JpegLayout::read(jpeg, &DecodeLimits::HARD_CAP).unwrap()
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
    fn decodes_a_grayscale_jpeg_to_rgb() {
        let gray: Vec<u8> = (0..64 * 48).map(|i| (i % 251) as u8).collect();
        let jpeg = mozjpeg_default(64, 48, &gray, mozjpeg::ColorSpace::JCS_GRAYSCALE);
        let rgb = decode_image(&jpeg).unwrap();
        assert_eq!(rgb.dimensions(), (64, 48));
        assert!(rgb.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
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
        // Cut right before the end-of-image marker.
        assert!(matches!(
            decode_image(&full[..full.len() - 2]),
            Err(ImageInputError::Truncated)
        ));
    }

    #[test]
    fn refuses_huge_and_zero_sized_headers_before_decoding() {
        assert!(matches!(
            decode_image(&declaring(jpeg(8, 8), 20000, 20000)),
            Err(ImageInputError::TooLarge {
                width: 20000,
                height: 20000
            })
        ));
        // Within the old per-side limit of 8192 and above the hard cap.
        assert!(matches!(
            decode_image_with(&declaring(jpeg(8, 8), 8192, 4880), &DecodeLimits::HARD_CAP),
            Err(ImageInputError::TooLarge {
                width: 8192,
                height: 4880
            })
        ));
        assert!(matches!(
            decode_image(&declaring(jpeg(8, 8), 0, 0)),
            Err(ImageInputError::ZeroSize { .. })
        ));
    }

    #[test]
    fn limits_default_to_full_hd_in_either_orientation_and_never_pass_the_hard_cap() {
        let limits = DecodeLimits::default();
        assert_eq!((limits.max_width(), limits.max_height()), (1920, 1080));
        assert!(limits.admits(1920, 1080) && limits.admits(1080, 1920));
        assert!(!limits.admits(1921, 1080) && !limits.admits(1920, 1081));
        assert!(!limits.admits(1081, 1920) && !limits.admits(1200, 1200));
        assert_eq!(
            DecodeLimits::new(4096, 4096).unwrap(),
            DecodeLimits::HARD_CAP
        );
        assert_eq!(DecodeLimits::new(640, 480).unwrap().max_width(), 640);
        for (w, h) in [(4097, 100), (100, 4097), (0, 480), (640, 0)] {
            assert_eq!(
                DecodeLimits::new(w, h),
                Err(DecodeLimitsError {
                    width: w,
                    height: h
                })
            );
        }
        // A portrait phone frame decodes under the default limits.
        assert_eq!(
            decode_image(&jpeg(1080, 1920)).unwrap().dimensions(),
            (1080, 1920)
        );
        let small = DecodeLimits::new(32, 16).unwrap();
        assert!(matches!(
            decode_image_with(&jpeg(33, 16), &small),
            Err(ImageInputError::TooLarge {
                width: 33,
                height: 16
            })
        ));
        assert!(decode_image_with(&jpeg(16, 32), &small).is_ok());
    }

    #[test]
    fn a_tiny_scan_declaring_a_large_frame_is_refused_unread() {
        let pixels: Vec<u8> = (0..16 * 16 * 3).map(|i| (i * 13) as u8).collect();
        let baseline = jpeg_encoder(16, 16, &pixels, 75, None, false);
        let progressive = mozjpeg_default(16, 16, &pixels, mozjpeg::ColorSpace::JCS_RGB);
        assert!(layout(&progressive).progressive);
        for tiny in [baseline, progressive] {
            let bomb = declaring(tiny.clone(), 1920, 1080);
            let refused = decode_image(&bomb);
            let Err(ImageInputError::ImplausiblySmall {
                bytes,
                min_bytes,
                width: 1920,
                height: 1080,
            }) = refused
            else {
                panic!("{} bytes declaring 1920x1080: {refused:?}", bomb.len());
            };
            assert_eq!(bytes, layout(&tiny).entropy_bytes);
            assert!(bytes < min_bytes, "{bytes} >= {min_bytes}");
        }
    }

    #[test]
    fn flat_frames_pass_the_floor() {
        // What a camera can send that compresses best: an all-black 640x480
        // and a blank (white) 1920x1080, from each encoder the tests and
        // clients use, and from encoders that squeeze the most out of them.
        let mut seen = Vec::new();
        for (w, h, level) in [
            (640usize, 480usize, 0u8),
            (640, 480, 255),
            (1920, 1080, 255),
        ] {
            let rgb = vec![level; w * h * 3];
            let (w16, h16) = (w as u16, h as u16);
            let optimised = {
                let mut out = Vec::new();
                let mut encoder = jpeg_encoder::Encoder::new(&mut out, 90);
                encoder.set_optimized_huffman_tables(true);
                encoder
                    .encode(&rgb, w16, h16, jpeg_encoder::ColorType::Rgb)
                    .unwrap();
                out
            };
            let frames = [
                (
                    "jpeg-encoder q90",
                    jpeg_encoder(w16, h16, &rgb, 90, None, false),
                ),
                (
                    "jpeg-encoder q90 4:2:0",
                    jpeg_encoder(
                        w16,
                        h16,
                        &rgb,
                        90,
                        Some(jpeg_encoder::SamplingFactor::F_2_2),
                        false,
                    ),
                ),
                ("jpeg-encoder q90 optimised tables", optimised),
                (
                    "jpeg-encoder q90 progressive",
                    jpeg_encoder(w16, h16, &rgb, 90, None, true),
                ),
                ("image q85", {
                    let mut out = Vec::new();
                    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
                        .write_image(&rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8)
                        .unwrap();
                    out
                }),
                (
                    "mozjpeg default",
                    mozjpeg_default(w, h, &rgb, mozjpeg::ColorSpace::JCS_RGB),
                ),
                (
                    "mozjpeg default grey",
                    mozjpeg_default(
                        w,
                        h,
                        &vec![level; w * h],
                        mozjpeg::ColorSpace::JCS_GRAYSCALE,
                    ),
                ),
            ];
            for (what, jpeg) in frames {
                let l = layout(&jpeg);
                let decoded = decode_image(&jpeg)
                    .unwrap_or_else(|e| panic!("{what} {w}x{h} of {level}: {e}"));
                assert_eq!(decoded.dimensions(), (w as u32, h as u32));
                let over = l.entropy_bytes as f64 / min_entropy_bytes(&l) as f64;
                seen.push(format!(
                    "{what} {w}x{h} level {level}: {} bytes, {} scans, {over:.2}x the floor",
                    jpeg.len(),
                    l.scans
                ));
            }
        }
        // The figures in MIN_BITS_PER_BLOCK_*'s comment (--nocapture).
        println!("{}", seen.join("\n"));
    }

    #[test]
    fn cmyk_is_refused_before_libjpeg_is_asked_for_rgb() {
        let cmyk: Vec<u8> = (0..8 * 8 * 4).map(|i| (i * 29) as u8).collect();
        let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_CMYK);
        c.set_size(8, 8);
        let mut started = c.start_compress(Vec::new()).unwrap();
        started.write_scanlines(&cmyk).unwrap();
        let jpeg = started.finish().unwrap();
        assert!(matches!(
            decode_image(&jpeg),
            Err(ImageInputError::UnsupportedColorSpace { components: 4 })
        ));
    }

    #[test]
    fn other_codings_are_refused() {
        let mut arithmetic = jpeg(16, 16);
        let sof = arithmetic
            .windows(2)
            .position(|m| m == [0xFF, 0xC0])
            .unwrap();
        arithmetic[sof + 1] = 0xC9;
        assert!(matches!(
            decode_image(&arithmetic),
            Err(ImageInputError::UnsupportedCoding("arithmetic coding"))
        ));
        let mut twelve_bit = jpeg(16, 16);
        twelve_bit[sof + 4] = 12;
        assert!(matches!(
            decode_image(&twelve_bit),
            Err(ImageInputError::UnsupportedCoding(_))
        ));
    }

    #[test]
    fn a_libjpeg_fatal_error_is_a_decode_error_not_a_panic() {
        // The first component's quantisation table (SOF: ... id, sampling,
        // table) points at table 3, which no DQT defines: libjpeg raises a
        // fatal error when decoding starts.
        let mut jpeg = jpeg(16, 16);
        let sof = jpeg.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 12] = 3;
        match decode_image(&jpeg) {
            Err(ImageInputError::Decode(message)) => {
                assert_eq!(message, "libjpeg: Quantization table 0x03 was not defined");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn libjpeg_memory_is_capped() {
        // A progressive JPEG needs a whole-image coefficient buffer:
        // 640x480x3 components at 2 bytes a coefficient, 1.8 MB.
        let rgb: Vec<u8> = (0..640 * 480 * 3).map(|i| (i % 249) as u8).collect();
        let jpeg = jpeg_encoder(640, 480, &rgb, 90, None, true);
        let l = layout(&jpeg);
        assert!(decode_jpeg(&jpeg, &l, libjpeg_max_memory(&DecodeLimits::CAMERA)).is_ok());
        let capped = catch_unwind(AssertUnwindSafe(|| decode_jpeg(&jpeg, &l, 1 << 20)));
        let payload = match capped {
            Err(payload) => payload,
            Ok(outcome) => panic!("decoded in 1 MiB: {:?}", outcome.map(|i| i.dimensions())),
        };
        let message = &payload.downcast::<LibjpegError>().unwrap().0;
        assert_eq!(message, "libjpeg: Backing store not supported");
        // The smallest limits that admit the image leave it room.
        let exact = DecodeLimits::new(640, 480).unwrap();
        assert!(decode_image_with(&jpeg, &exact).is_ok());
    }
}
