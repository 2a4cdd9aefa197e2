// Which camera picture a WebRTC result belongs to. The server tags each
// result with the RTP timestamp (90 kHz) of its picture; the browser stamps a
// sent frame with 90 × its capture time in ms plus a random offset, the same
// for the whole stream. RtpClock finds that offset by lining RTP timestamps
// up with the capture times of the pictures the page kept
// (requestVideoFrameCallback's captureTime): camera frame intervals jitter
// by a few ms, so only the true offset puts most of them on a picture.
//
// The RTP timestamps come from the encoder where the browser shows its
// frames (rtc.js: Chromium's encoded insertable streams), else from the
// results themselves; either way, until the offset is lined up, a bound
// gives an estimate.

/** Samples (RTP timestamp, bound on capture time) kept to find the RTP offset. */
const CLOCK_SAMPLES = 40;
/** Samples that must line up with pictures before the offset is trusted. */
const CLOCK_MIN_MATCHES = 5;
/**
 * Tolerance of a match, ms: RTP timestamps are the capture time rounded to
 * the ms (WebRTC stamps 90 × capture ms), captureTime has 0.1 ms.
 */
export const CLOCK_TOLERANCE_MS = 1.5;
/**
 * Share of the best offset's matches that an earlier (smaller) offset needs
 * to be taken instead: see lineUp.
 */
const RIVAL_SHARE = 0.6;
/** 2^32 RTP ticks in ms: where a u32 RTP timestamp wraps. */
const RTP_WRAP_MS = 2 ** 32 / 90;
/**
 * Slack for samples newer than the newest picture kept (about a frame of a
 * slow camera): their pictures may not have been shown yet.
 */
const FRAME_SLACK_MS = 50;

/**
 * Maps the RTP timestamps of the sent track to capture times
 * (performance.now() ms), from samples of (RTP timestamp, latest time its
 * picture can have been captured) and the pictures' own capture times.
 */
export class RtpClock {
  constructor() {
    /** rtp/90 − capture time, ms; null until found. */
    this.offset = null;
    /** Found by lining samples up with pictures (else a bound-based estimate). */
    this.lined = false;
    /** @type {{rtpMs: number, bound: number}[]} */
    this.samples = [];
  }

  /**
   * Adds a sample and, while the offset is not lined up, tries to line it up.
   * @param {number} rtp u32 RTP timestamp
   * @param {number} bound a time (performance ms) by which it was certainly captured
   * @param {{time: number}[]} pictures capture times of the pictures kept, oldest first
   */
  add(rtp, bound, pictures) {
    const rtpMs = (rtp >>> 0) / 90;
    this.samples.push({ rtpMs, bound });
    if (this.samples.length > CLOCK_SAMPLES) this.samples.shift();
    if (this.lined) return;
    const found = lineUp(this.samples, pictures);
    if (found !== null) {
      this.offset = found;
      this.lined = true;
      return;
    }
    // Meanwhile (or for good, where capture times are not exposed): the
    // smallest offset the bounds allow, as if each picture was captured at
    // its bound. Latencies then come out short by the smallest such delay.
    const first = this.samples[0].rtpMs - this.samples[0].bound;
    this.offset = Math.max(...this.samples.map((s) => unwrapOffset(s.rtpMs - s.bound, first)));
  }

  /** Capture time (performance ms) of the picture with RTP timestamp `rtp`, or null. */
  captureTime(rtp) {
    if (this.offset === null) return null;
    const t = (rtp >>> 0) / 90 - this.offset;
    // The RTP timestamp may have wrapped since the offset was found.
    return t + Math.round((performance.now() - t) / RTP_WRAP_MS) * RTP_WRAP_MS;
  }
}

/** `value` moved by whole RTP wraps to lie nearest `near`. */
function unwrapOffset(value, near) {
  return value + Math.round((near - value) / RTP_WRAP_MS) * RTP_WRAP_MS;
}

/**
 * The offset (rtp/90 − capture time) that puts enough samples on a
 * picture's capture time without putting any capture after its bound, the
 * smallest such; or null when none does.
 *
 * Candidates pair each sample with each picture captured before its bound.
 * A camera's frames come at nearly regular intervals, so the true offset
 * lands every sample whose picture was kept, and so does the true offset
 * plus or minus whole frames. Plus frames put every capture a frame earlier:
 * still before its bound, but further from it; minus frames put some capture
 * after its bound (an encoder takes a few ms, less than a frame, at least
 * once in a while). Hence the smallest offset that lands enough samples and
 * breaks no bound. Under load for the whole window (every frame encoded more
 * than a frame late) it would be a frame off.
 */
function lineUp(samples, pictures) {
  if (pictures.length < 2) return null;
  const oldest = pictures[0].time;
  const usable = samples.filter((s) => s.bound >= oldest);
  if (usable.length < CLOCK_MIN_MATCHES) return null;
  // Samples newer than the newest picture cannot land yet: not held against it.
  const newest = pictures[pictures.length - 1].time;
  const landable = usable.filter((s) => s.bound <= newest + FRAME_SLACK_MS).length;
  // Under load the <video> skips pictures, so only about half may land.
  const needed = Math.max(CLOCK_MIN_MATCHES, 0.5 * landable);
  const times = pictures.map((p) => p.time);
  const lands = (t) => {
    // times is sorted: the first picture at or after t − tolerance decides.
    let lo = 0;
    let hi = times.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (times[mid] < t - CLOCK_TOLERANCE_MS) lo = mid + 1;
      else hi = mid;
    }
    return lo < times.length && times[lo] <= t + CLOCK_TOLERANCE_MS;
  };
  const candidates = [];
  for (const s of usable) {
    for (const time of times) if (time <= s.bound) candidates.push(s.rtpMs - time);
  }
  candidates.sort((a, b) => a - b);
  const scored = [];
  let top = 0;
  let last = -Infinity;
  for (const offset of candidates) {
    // Offsets within the tolerance of one already scored land the same samples.
    if (offset - last <= CLOCK_TOLERANCE_MS / 2) continue;
    last = offset;
    if (!samples.every((s) => s.rtpMs - offset <= s.bound + CLOCK_TOLERANCE_MS)) continue;
    let score = 0;
    for (const s of usable) if (lands(s.rtpMs - offset)) score++;
    scored.push([offset, score]);
    top = Math.max(top, score);
  }
  if (top < needed) return null;
  // Whole-frame shifts land about as many samples as the true offset (which
  // pictures were kept is luck); an offset a jittery camera put there by
  // chance lands far fewer.
  const found = scored.find(([, score]) => score >= RIVAL_SHARE * top);
  return found ? found[0] : null;
}
