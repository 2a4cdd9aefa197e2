//! The picture size an H.264 stream declares in its sequence parameter set
//! (ITU-T H.264 section 7.3.2.1.1), read before openh264 sees the frame: a
//! stream declaring a size above the decode limits is refused before the
//! decoder allocates for it (a peer could otherwise announce 8192x8192 and
//! make every picture cost 100 MB).
//!
//! Our own ~100 lines: the crates that parse SPS (`h264-reader`) bring a
//! whole NAL framework for these few fields.

/// The coded size (macroblocks x 16, before cropping: an upper bound of the
/// picture) of every SPS in the Annex B access unit `data`; the largest.
pub fn declared_size(data: &[u8]) -> Option<(u32, u32)> {
    nal_units(data)
        .filter(|nal| nal.first().is_some_and(|h| h & 0x1f == 7))
        .filter_map(|nal| sps_size(&unescape(&nal[1..])))
        .max_by_key(|&(w, h)| u64::from(w) * u64::from(h))
}

/// The NAL units of an Annex B byte stream (start codes 00 00 01 or
/// 00 00 00 01).
fn nal_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| s - 3)
        .chain(std::iter::once(data.len()))
        .collect();
    starts.into_iter().zip(ends).map(move |(s, e)| {
        // A four-byte start code leaves its first zero on the unit before.
        let e = if e > s && e < data.len() && data[e - 1] == 0 {
            e - 1
        } else {
            e
        };
        &data[s..e.max(s)]
    })
}

/// Drops the emulation prevention bytes (00 00 03 → 00 00).
fn unescape(rbsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rbsp.len());
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(bit))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0, |acc, _| Some(acc << 1 | self.bit()?))
    }

    /// Exp-Golomb ue(v); at most 31 leading zeros (larger is not H.264).
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some((1u32 << zeros) - 1 + self.bits(zeros)?)
    }

    fn se(&mut self) -> Option<i64> {
        let k = i64::from(self.ue()?);
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -k / 2 })
    }
}

/// Width and height in pixels of an SPS's coded frame.
fn sps_size(sps: &[u8]) -> Option<(u32, u32)> {
    let mut b = Bits { data: sps, pos: 0 };
    let profile = b.bits(8)?;
    b.bits(16)?; // constraint flags, level
    b.ue()?; // seq_parameter_set_id
    if [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135].contains(&profile) {
        let chroma_format = b.ue()?;
        if chroma_format == 3 {
            b.bit()?; // separate_colour_plane_flag
        }
        b.ue()?; // bit_depth_luma_minus8
        b.ue()?; // bit_depth_chroma_minus8
        b.bit()?; // qpprime_y_zero_transform_bypass_flag
        if b.bit()? == 1 {
            let lists = if chroma_format == 3 { 12 } else { 8 };
            for i in 0..lists {
                if b.bit()? == 1 {
                    skip_scaling_list(&mut b, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    b.ue()?; // log2_max_frame_num_minus4
    match b.ue()? {
        0 => {
            b.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            b.bit()?;
            b.se()?;
            b.se()?;
            let cycle = b.ue()?;
            if cycle > 255 {
                return None;
            }
            for _ in 0..cycle {
                b.se()?;
            }
        }
        _ => {}
    }
    b.ue()?; // max_num_ref_frames
    b.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = u64::from(b.ue()?) + 1;
    let height_units = u64::from(b.ue()?) + 1;
    let frame_mbs_only = u64::from(b.bit()?);
    let (w, h) = (width_mbs * 16, (2 - frame_mbs_only) * height_units * 16);
    Some((u32::try_from(w).ok()?, u32::try_from(h).ok()?))
}

fn skip_scaling_list(b: &mut Bits<'_>, size: usize) -> Option<()> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            next = (last + b.se()? + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_has_no_size_and_no_panic() {
        assert_eq!(declared_size(&[]), None);
        assert_eq!(declared_size(&[0, 0, 1, 0x67]), None);
        assert_eq!(declared_size(&[0, 0, 1, 0x67, 0, 0, 0, 0, 0, 0]), None);
        for seed in 0..200u32 {
            let mut data = vec![0, 0, 0, 1, 0x67];
            data.extend(
                (0..40).map(|i| (seed.wrapping_mul(2654435761).rotate_left(i) & 0xff) as u8),
            );
            let _ = declared_size(&data);
        }
    }

    #[test]
    fn a_declared_8k_stream_is_seen_as_such() {
        // profile 66 (baseline), level 5.1, sps id 0, log2_max_frame_num 0,
        // poc type 2, 1 ref frame, no gaps, 512 x 512 macroblocks, frame
        // only: 8192x8192.
        let mut bits = String::from("01000010" /* 66 */);
        bits += "0000000000110011"; // constraints, level 51
        bits += "1"; // sps id 0
        bits += "1"; // log2_max_frame_num_minus4 0
        bits += "011"; // poc type 2
        bits += "010"; // max refs 1
        bits += "0"; // gaps
        bits += "0000000001000000000"; // ue 511: width 512 MBs
        bits += "0000000001000000000"; // ue 511: height 512 units
        bits += "1"; // frame_mbs_only
        while bits.len() % 8 != 0 {
            bits.push('0');
        }
        let mut data = vec![0, 0, 0, 1, 0x67];
        data.extend(
            bits.as_bytes()
                .chunks(8)
                .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 2).unwrap()),
        );
        assert_eq!(declared_size(&data), Some((8192, 8192)));
    }
}
