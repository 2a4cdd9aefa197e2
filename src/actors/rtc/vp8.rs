//! VP8 through Debian's libvpx (`env-libvpx-sys`): the decoder the server
//! runs on each peer's track, and the encoder the Rust client
//! (`loadgen --transport rtc`, the tests) sends with.
//!
//! A thin safe wrapper over the C API rather than a crate: the maintained
//! wrappers (`vpx-encode`, `libvpx-native-sys`) each cover only one side or
//! pin a libvpx other than the 1.12 Debian ships; this is ~150 lines of
//! calls straight from libvpx's `vpx_decoder.h`/`vpx_encoder.h`.

use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_uint};
use std::ptr;

use vpx_sys as vpx;

use super::video::CodecError;
use crate::config::DecodeLimits;
use crate::model::I420Picture;

fn check(what: &'static str, err: vpx::vpx_codec_err_t) -> Result<(), CodecError> {
    if err == vpx::vpx_codec_err_t::VPX_CODEC_OK {
        Ok(())
    } else {
        Err(CodecError::Vp8(format!("{what}: {err:?}")))
    }
}

/// A VP8 decoder context (one per peer: decoding is stateful).
pub struct Vp8Decoder {
    // Boxed: libvpx is handed this address on every call, so it must not
    // move while the context lives.
    ctx: Box<vpx::vpx_codec_ctx_t>,
}

// SAFETY: the context is owned by this value alone and libvpx keeps no
// thread-local state for it; it is used from one thread at a time (`&mut`).
unsafe impl Send for Vp8Decoder {}

impl Vp8Decoder {
    pub fn new() -> Result<Vp8Decoder, CodecError> {
        // SAFETY: an all-zero vpx_codec_ctx_t is the "not initialised" value
        // libvpx's own examples start from (`vpx_codec_ctx_t codec = {0}`).
        let mut ctx = Box::new(unsafe { std::mem::zeroed::<vpx::vpx_codec_ctx_t>() });
        // One thread: each peer has its own decoder thread already, and the
        // machine's cores belong to inference.
        let cfg = vpx::vpx_codec_dec_cfg_t {
            threads: 1,
            w: 0,
            h: 0,
        };
        // SAFETY: `ctx` is a valid, zeroed context that outlives the call;
        // `cfg` is a valid config; the ABI version is the one the bindings
        // were generated for (a mismatch is an error return, not UB).
        let err = unsafe {
            vpx::vpx_codec_dec_init_ver(
                &mut *ctx,
                vpx::vpx_codec_vp8_dx(),
                &cfg,
                0,
                vpx::VPX_DECODER_ABI_VERSION as c_int,
            )
        };
        check("initialising the VP8 decoder", err)?;
        Ok(Vp8Decoder { ctx })
    }

    /// Decodes one frame; the picture it completes, if any.
    pub fn decode(
        &mut self,
        data: &[u8],
        limits: &DecodeLimits,
    ) -> Result<Option<I420Picture>, CodecError> {
        // A keyframe declares its size in its first 10 bytes (RFC 6386
        // section 9.1): one above the limits is refused before libvpx
        // allocates its buffers (a 16383x16383 stream would take 400 MB).
        if let Some((w, h)) = keyframe_size(data)
            && !limits.admits(w, h)
        {
            return Err(CodecError::Picture(format!(
                "VP8 keyframe of {w}x{h} is above the decode limits"
            )));
        }
        let len = c_uint::try_from(data.len())
            .map_err(|_| CodecError::Vp8("frame larger than 4 GiB".into()))?;
        // SAFETY: `ctx` was initialised by `new`; `data` is valid for `len`
        // bytes for the duration of the call (libvpx copies what it keeps).
        let err = unsafe {
            vpx::vpx_codec_decode(&mut *self.ctx, data.as_ptr(), len, ptr::null_mut(), 0)
        };
        check("decoding a VP8 frame", err)?;
        let mut picture = None;
        let mut iter: vpx::vpx_codec_iter_t = ptr::null();
        loop {
            // SAFETY: `ctx` is initialised; `iter` is the iterator libvpx
            // asks for, starting at null.
            let img = unsafe { vpx::vpx_codec_get_frame(&mut *self.ctx, &mut iter) };
            if img.is_null() {
                break;
            }
            // SAFETY: a non-null image from get_frame stays valid until the
            // next decode call on this context.
            let img = unsafe { &*img };
            picture = Some(image_to_picture(img, limits)?);
        }
        Ok(picture)
    }
}

/// The size a VP8 keyframe declares: a frame tag with the key bit clear,
/// the start code 9d 01 2a, then 14-bit width and height.
pub fn keyframe_size(data: &[u8]) -> Option<(u32, u32)> {
    if data.len() < 10 || data[0] & 1 != 0 || data[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let side = |lo: u8, hi: u8| u32::from(u16::from_le_bytes([lo, hi]) & 0x3fff);
    Some((side(data[6], data[7]), side(data[8], data[9])))
}

/// Copies a decoded `vpx_image_t` (I420, the only format VP8 decodes to)
/// into a packed picture.
fn image_to_picture(
    img: &vpx::vpx_image_t,
    limits: &DecodeLimits,
) -> Result<I420Picture, CodecError> {
    // Read as a plain integer: a format value outside the bindings' enum
    // must be an error, not an invalid enum.
    // SAFETY: `fmt` is a C enum, an `int`-sized field of a valid image.
    let fmt = unsafe { ptr::read(ptr::addr_of!(img.fmt).cast::<c_uint>()) };
    if fmt != vpx::vpx_img_fmt::VPX_IMG_FMT_I420 as c_uint {
        return Err(CodecError::Vp8(format!(
            "decoded image format {fmt}, not I420"
        )));
    }
    let (w, h) = (img.d_w, img.d_h);
    if w == 0 || h == 0 {
        return Err(CodecError::Vp8("decoded an empty image".into()));
    }
    let plane = |i: usize, pw: u32, ph: u32| -> Result<(&[u8], usize), CodecError> {
        let stride = usize::try_from(img.stride[i])
            .map_err(|_| CodecError::Vp8("negative stride".into()))?;
        let len = (ph as usize - 1) * stride + pw as usize;
        if img.planes[i].is_null() || stride < pw as usize {
            return Err(CodecError::Vp8("decoded image without its planes".into()));
        }
        // SAFETY: libvpx's plane `i` holds `ph` rows of `stride` bytes
        // (`pw` of them pixels), valid while `img` is; `len` covers exactly
        // the rows' pixels.
        Ok((
            unsafe { std::slice::from_raw_parts(img.planes[i], len) },
            stride,
        ))
    };
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    I420Picture::from_strided(
        w,
        h,
        plane(0, w, h)?,
        plane(1, cw, ch)?,
        plane(2, cw, ch)?,
        limits,
    )
    .map_err(|e| CodecError::Picture(e.to_string()))
}

impl Drop for Vp8Decoder {
    fn drop(&mut self) {
        // SAFETY: `ctx` was initialised by `new` and is destroyed once.
        unsafe {
            vpx::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

/// A realtime VP8 encoder, as a browser runs one: no lag, a keyframe on
/// request or every `keyframe_interval` frames.
pub struct Vp8Encoder {
    ctx: Box<vpx::vpx_codec_ctx_t>,
    width: u32,
    height: u32,
    pts: i64,
}

// SAFETY: as for the decoder: exclusively owned, used through `&mut`.
unsafe impl Send for Vp8Encoder {}

impl Vp8Encoder {
    /// An encoder for `width` x `height` at about `bitrate_kbps`.
    pub fn new(
        width: u32,
        height: u32,
        bitrate_kbps: u32,
        keyframe_interval: u32,
    ) -> Result<Vp8Encoder, CodecError> {
        // Not zeroed: the config holds C enums that have no 0 in Rust;
        // libvpx writes every field.
        let mut cfg = MaybeUninit::<vpx::vpx_codec_enc_cfg_t>::uninit();
        // SAFETY: `cfg` is valid for writes; usage 0 is the only one VP8 has.
        let err = unsafe {
            vpx::vpx_codec_enc_config_default(vpx::vpx_codec_vp8_cx(), cfg.as_mut_ptr(), 0)
        };
        check("VP8 encoder defaults", err)?;
        // SAFETY: filled by the successful call above.
        let mut cfg = unsafe { cfg.assume_init() };
        cfg.g_w = width;
        cfg.g_h = height;
        // RTP's 90 kHz video clock.
        cfg.g_timebase = vpx::vpx_rational {
            num: 1,
            den: 90_000,
        };
        cfg.rc_target_bitrate = bitrate_kbps;
        cfg.g_lag_in_frames = 0;
        cfg.g_threads = 1;
        cfg.kf_max_dist = keyframe_interval;
        // SAFETY: zeroed context, as for the decoder.
        let mut ctx = Box::new(unsafe { std::mem::zeroed::<vpx::vpx_codec_ctx_t>() });
        // SAFETY: valid context and config; ABI version of the bindings.
        let err = unsafe {
            vpx::vpx_codec_enc_init_ver(
                &mut *ctx,
                vpx::vpx_codec_vp8_cx(),
                &cfg,
                0,
                vpx::VPX_ENCODER_ABI_VERSION as c_int,
            )
        };
        check("initialising the VP8 encoder", err)?;
        Ok(Vp8Encoder {
            ctx,
            width,
            height,
            pts: 0,
        })
    }

    /// Encodes `picture` (its size must be the encoder's) lasting
    /// `duration_90k` ticks; the frame's bytes (empty when the encoder
    /// skipped it).
    pub fn encode(
        &mut self,
        picture: &I420Picture,
        duration_90k: u32,
        keyframe: bool,
    ) -> Result<Vec<u8>, CodecError> {
        if (picture.width(), picture.height()) != (self.width, self.height) {
            return Err(CodecError::Vp8(
                "picture size differs from the encoder's".into(),
            ));
        }
        let mut img = MaybeUninit::<vpx::vpx_image_t>::uninit();
        // SAFETY: `planes` holds packed I420 of the encoder's size (checked
        // by I420Picture) and outlives the encode call; libvpx only reads it
        // (the `*mut` is the C API's); vpx_img_wrap fills every field of
        // `img`.
        let wrapped = unsafe {
            vpx::vpx_img_wrap(
                img.as_mut_ptr(),
                vpx::vpx_img_fmt::VPX_IMG_FMT_I420,
                self.width,
                self.height,
                1,
                picture.planes().as_ptr().cast_mut(),
            )
        };
        if wrapped.is_null() {
            return Err(CodecError::Vp8("wrapping the picture".into()));
        }
        // SAFETY: initialised by the successful vpx_img_wrap above.
        let img = unsafe { img.assume_init() };
        let flags = if keyframe {
            vpx::VPX_EFLAG_FORCE_KF as vpx::vpx_enc_frame_flags_t
        } else {
            0
        };
        // SAFETY: initialised context, a wrapped image valid for the call.
        let err = unsafe {
            vpx::vpx_codec_encode(
                &mut *self.ctx,
                &img,
                self.pts,
                duration_90k.into(),
                flags,
                vpx::VPX_DL_REALTIME.into(),
            )
        };
        check("encoding a VP8 frame", err)?;
        self.pts += i64::from(duration_90k);
        let mut out = Vec::new();
        let mut iter: vpx::vpx_codec_iter_t = ptr::null();
        loop {
            // SAFETY: initialised context; iterator from null.
            let pkt = unsafe { vpx::vpx_codec_get_cx_data(&mut *self.ctx, &mut iter) };
            if pkt.is_null() {
                break;
            }
            // SAFETY: valid until the next encode call; `kind` read as an
            // integer for the same reason as the image format.
            let kind = unsafe { ptr::read(ptr::addr_of!((*pkt).kind).cast::<c_uint>()) };
            if kind == vpx::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT as c_uint {
                // SAFETY: a frame packet's union member is `frame`, whose
                // buffer holds `sz` bytes.
                let frame = unsafe { (*pkt).data.frame };
                let bytes = unsafe {
                    std::slice::from_raw_parts(frame.buf.cast::<u8>(), frame.sz as usize)
                };
                out.extend_from_slice(bytes);
            }
        }
        Ok(out)
    }
}

impl Drop for Vp8Encoder {
    fn drop(&mut self) {
        // SAFETY: initialised by `new`, destroyed once.
        unsafe {
            vpx::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}
