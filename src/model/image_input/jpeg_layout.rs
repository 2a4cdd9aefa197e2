//! The walk of a JPEG's markers that decides, before libjpeg sees it,
//! whether a frame is worth decoding: see the parent module's order.
//!
//! Reads markers only: it must not allocate anything of the declared image
//! size.

use super::{DecodeLimits, ImageInputError};

/// The most scans a JPEG may have. Each scan makes libjpeg visit every block
/// of the components it covers however few bytes it has, so scans multiply
/// the work of one frame; libjpeg-turbo has a scan limit for the same reason
/// (`TJPARAM_SCANLIMIT`). Measured: camera frames, browser canvases and the
/// test photos have 1 scan (the progressive `franck.jpg` 7); libjpeg's
/// standard progression writes 10 for colour and 6 for grey; mozjpeg's scan
/// optimisation 4 on a flat frame, 7 to 12 on noise; `jpeg-encoder`'s
/// progressive mode 12 (`moz_progressive_scan_counts` below). Above twice the
/// most seen.
pub const MAX_SCANS: usize = 32;

/// What a JPEG's markers declare, read by walking them without libjpeg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JpegLayout {
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) progressive: bool,
    /// Each component's (horizontal, vertical) sampling factors.
    pub(super) sampling: Vec<(u8, u8)>,
    pub(super) scans: usize,
    /// Bytes of entropy-coded data in all scans, restart markers included.
    pub(super) entropy_bytes: usize,
}

/// The fewest bits of entropy-coded data per 8x8 block of each component
/// that a complete Huffman-coded JPEG can have. Sequential: every block
/// carries a DC code and at least one AC code (an end-of-block), each at
/// least 1 bit long. Progressive: every block carries a DC code in its
/// component's first DC scan (AC scans can skip up to 32767 blocks with one
/// end-of-band run, so they add nothing certain). A scan that was cut or
/// padded has fewer, and libjpeg decodes it in full all the same.
///
/// This is the floor itself, not a fraction of a measured figure, because
/// real flat frames reach it. Measured, in bits per component block (8 x
/// entropy-coded bytes / blocks): the test photos 17 to 67 (faceapi2.jpg the
/// lowest); the 640x480 MJPEG frames of the test clips 31 to 73; an
/// all-black 640x480 at quality 90 with standard Huffman tables, as cameras,
/// browsers and the tests' `jpeg-encoder` and `image` encoders write it, 4.7
/// (4:4:4) and 5.3 (4:2:0), a blank 1920x1080 the same; with optimised
/// tables, baseline 2.00 and progressive (mozjpeg's default) 1.006 in
/// colour and 1.000 in grey: 4052 bytes for a black 1920x1080 whose floor
/// is 4050. So no higher floor is safe, and this one is enough: the
/// 763-byte bomb declaring 8192x4880 (tests/fixtures/attack) has 0.001,
/// and a 1920x1080 frame cannot cost a full decode for under 4 KB. The flat
/// figures are printed by `flat_frames_pass_the_floor` (parent module).
const MIN_BITS_PER_BLOCK_SEQUENTIAL: u64 = 2;
const MIN_BITS_PER_BLOCK_PROGRESSIVE: u64 = 1;

/// The fewest entropy-coded bytes any complete JPEG of this layout has: the
/// per-block floor above over each component's blocks, whose count libjpeg
/// computes the same way (`jdinput.c`: width in blocks is
/// ceil(width x h / (max h x 8))).
pub(super) fn min_entropy_bytes(layout: &JpegLayout) -> usize {
    let h_max = layout.sampling.iter().map(|s| s.0).max().unwrap_or(1) as u64;
    let v_max = layout.sampling.iter().map(|s| s.1).max().unwrap_or(1) as u64;
    let per_block = if layout.progressive {
        MIN_BITS_PER_BLOCK_PROGRESSIVE
    } else {
        MIN_BITS_PER_BLOCK_SEQUENTIAL
    };
    let bits: u64 = layout
        .sampling
        .iter()
        .map(|&(h, v)| {
            let wide = (layout.width as u64 * h as u64).div_ceil(h_max * 8);
            let high = (layout.height as u64 * v as u64).div_ceil(v_max * 8);
            wide * high * per_block
        })
        .sum();
    bits.div_ceil(8) as usize
}

impl JpegLayout {
    /// Walks the markers from SOI to EOI. Size, components and coding are
    /// refused at the frame header, the scan count at the scan past the
    /// limit, the data volume and truncation at the end.
    pub(super) fn read(bytes: &[u8], limits: &DecodeLimits) -> Result<JpegLayout, ImageInputError> {
        let malformed = |why: &str| ImageInputError::Decode(format!("malformed JPEG: {why}"));
        if !bytes.starts_with(&[0xFF, 0xD8]) {
            return Err(malformed("no start-of-image marker"));
        }
        let mut layout: Option<JpegLayout> = None;
        let mut pos = 2;
        loop {
            // A marker is 0xFF, optional 0xFF fill bytes, then its code.
            // libjpeg skips stray bytes before one (with a warning), so this
            // does too; anything it would refuse it still refuses below.
            let Some(ff) = bytes[pos..].iter().position(|&b| b == 0xFF) else {
                return Err(ImageInputError::Truncated);
            };
            pos += ff;
            while bytes.get(pos) == Some(&0xFF) {
                pos += 1;
            }
            let Some(&code) = bytes.get(pos) else {
                return Err(ImageInputError::Truncated);
            };
            pos += 1;
            match code {
                // EOI.
                0xD9 => break,
                // A stuffed zero outside a scan is stray data to libjpeg;
                // restart and TEM markers stand alone (no length).
                0x00 | 0x01 | 0xD0..=0xD7 => continue,
                0xD8 => return Err(malformed("a second start-of-image marker")),
                _ => {}
            }
            let Some(length) = bytes.get(pos..pos + 2) else {
                return Err(ImageInputError::Truncated);
            };
            let length = u16::from_be_bytes([length[0], length[1]]) as usize;
            if length < 2 {
                return Err(malformed("a marker segment shorter than its length field"));
            }
            let Some(segment) = bytes.get(pos + 2..pos + length) else {
                return Err(ImageInputError::Truncated);
            };
            pos += length;
            match code {
                0xC0..=0xC2 => {
                    if layout.is_some() {
                        return Err(malformed("two frame headers"));
                    }
                    layout = Some(JpegLayout::from_frame_header(code, segment, limits)?);
                }
                0xC3 => return Err(ImageInputError::UnsupportedCoding("lossless coding")),
                0xC5..=0xC7 | 0xCD..=0xCF => {
                    return Err(ImageInputError::UnsupportedCoding("hierarchical coding"));
                }
                0xC9..=0xCB => {
                    return Err(ImageInputError::UnsupportedCoding("arithmetic coding"));
                }
                // SOS: its header, then entropy-coded data up to the next
                // marker that is neither a stuffed zero nor a restart.
                0xDA => {
                    let Some(frame) = layout.as_mut() else {
                        return Err(malformed("a scan before the frame header"));
                    };
                    let in_scan = segment.first().copied().unwrap_or(0) as usize;
                    if in_scan == 0
                        || in_scan > frame.sampling.len()
                        || segment.len() != 1 + 2 * in_scan + 3
                    {
                        return Err(malformed("a scan header that does not fit its frame"));
                    }
                    frame.scans += 1;
                    if frame.scans > MAX_SCANS {
                        return Err(ImageInputError::TooManyScans);
                    }
                    let data = pos;
                    loop {
                        let Some(ff) = bytes[pos..].iter().position(|&b| b == 0xFF) else {
                            return Err(ImageInputError::Truncated);
                        };
                        pos += ff;
                        match bytes.get(pos + 1) {
                            None => return Err(ImageInputError::Truncated),
                            Some(0x00 | 0xD0..=0xD7) => pos += 2,
                            // A fill byte: the marker starts at the next one.
                            Some(0xFF) => pos += 1,
                            Some(_) => break,
                        }
                    }
                    frame.entropy_bytes += pos - data;
                }
                // Tables, restart interval, application data, comments:
                // libjpeg's business.
                _ => {}
            }
        }
        let Some(layout) = layout else {
            return Err(malformed("no frame header"));
        };
        if layout.scans == 0 {
            return Err(malformed("no scan"));
        }
        let min_bytes = min_entropy_bytes(&layout);
        if layout.entropy_bytes < min_bytes {
            return Err(ImageInputError::ImplausiblySmall {
                bytes: layout.entropy_bytes,
                min_bytes,
                width: layout.width,
                height: layout.height,
            });
        }
        Ok(layout)
    }

    /// SOF0 (baseline), SOF1 (extended sequential) or SOF2 (progressive):
    /// precision(1) height(2) width(2) components(1), then id(1)
    /// sampling(1: h << 4 | v) table(1) per component.
    fn from_frame_header(
        code: u8,
        segment: &[u8],
        limits: &DecodeLimits,
    ) -> Result<JpegLayout, ImageInputError> {
        let malformed = |why: &str| ImageInputError::Decode(format!("malformed JPEG: {why}"));
        let [precision, h0, h1, w0, w1, components, ..] = *segment else {
            return Err(ImageInputError::Truncated);
        };
        if precision != 8 {
            return Err(ImageInputError::UnsupportedCoding(
                "samples of other than 8 bits",
            ));
        }
        let (height, width) = (
            u16::from_be_bytes([h0, h1]) as u32,
            u16::from_be_bytes([w0, w1]) as u32,
        );
        // A zero height is legal JPEG (the height comes in a DNL marker after
        // the first scan) but no camera writes it, and the size must be
        // known before decoding.
        if width == 0 || height == 0 {
            return Err(ImageInputError::ZeroSize { width, height });
        }
        if !limits.admits(width, height) {
            return Err(ImageInputError::TooLarge { width, height });
        }
        if components != 1 && components != 3 {
            return Err(ImageInputError::UnsupportedColorSpace { components });
        }
        let specs = &segment[6..];
        if specs.len() != 3 * components as usize {
            return Err(malformed("a frame header that does not fit its components"));
        }
        let sampling = specs
            .chunks_exact(3)
            .map(|c| (c[1] >> 4, c[1] & 0x0F))
            .collect::<Vec<_>>();
        if sampling
            .iter()
            .any(|&(h, v)| !(1..=4).contains(&h) || !(1..=4).contains(&v))
        {
            return Err(malformed("a sampling factor outside 1..=4"));
        }
        Ok(JpegLayout {
            width,
            height,
            progressive: code == 0xC2,
            sampling,
            scans: 0,
            entropy_bytes: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::image_input::decode_image;
    use crate::model::image_input::tests::{jpeg_encoder, layout, mozjpeg_default};

    #[test]
    fn moz_progressive_scan_counts() {
        let (w, h) = (320usize, 240usize);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| ((i * 7919) % 251) as u8).collect();
        let grey: Vec<u8> = rgb.iter().step_by(3).copied().collect();
        let colour = layout(&mozjpeg_default(w, h, &rgb, mozjpeg::ColorSpace::JCS_RGB));
        let gray = layout(&mozjpeg_default(
            w,
            h,
            &grey,
            mozjpeg::ColorSpace::JCS_GRAYSCALE,
        ));
        let standard = layout(&jpeg_encoder(w as u16, h as u16, &rgb, 90, None, true));
        println!(
            "scans: mozjpeg colour {}, grey {}; jpeg-encoder progressive {}",
            colour.scans, gray.scans, standard.scans
        );
        for l in [colour, gray, standard] {
            assert!(
                l.progressive && l.scans > 1 && l.scans <= MAX_SCANS / 2,
                "{l:?}"
            );
        }
    }

    /// `jpeg` with its last scan (marker, header and data) repeated until it
    /// has `scans` scans.
    fn with_scans(jpeg: &[u8], scans: usize) -> Vec<u8> {
        let last_sos = jpeg.windows(2).rposition(|m| m == [0xFF, 0xDA]).unwrap();
        let eoi = jpeg.len() - 2;
        let have = layout(jpeg).scans;
        let mut out = jpeg[..eoi].to_vec();
        for _ in have..scans {
            out.extend_from_slice(&jpeg[last_sos..eoi]);
        }
        out.extend_from_slice(&[0xFF, 0xD9]);
        out
    }

    #[test]
    fn too_many_scans_are_refused_unread() {
        let rgb: Vec<u8> = (0..64 * 64 * 3).map(|i| (i % 253) as u8).collect();
        let progressive = mozjpeg_default(64, 64, &rgb, mozjpeg::ColorSpace::JCS_RGB);
        assert_eq!(
            layout(&with_scans(&progressive, MAX_SCANS)).scans,
            MAX_SCANS
        );
        assert!(matches!(
            decode_image(&with_scans(&progressive, MAX_SCANS + 1)),
            Err(ImageInputError::TooManyScans)
        ));
    }

    #[test]
    fn the_walk_agrees_with_the_encoders() {
        let rgb: Vec<u8> = (0..40 * 24 * 3).map(|i| (i % 241) as u8).collect();
        let l = layout(&jpeg_encoder(
            40,
            24,
            &rgb,
            90,
            Some(jpeg_encoder::SamplingFactor::F_2_2),
            false,
        ));
        assert_eq!(
            (l.width, l.height, l.progressive, l.scans),
            (40, 24, false, 1)
        );
        assert_eq!(l.sampling, vec![(2, 2), (1, 1), (1, 1)]);
        // Y 5x3 blocks, Cb and Cr 3x2 each, 2 bits a block: 27 x 2 bits.
        assert_eq!(min_entropy_bytes(&l), (27 * 2usize).div_ceil(8));
    }
}
