// The WebRTC transport: the camera goes up as a video track, negotiated by
// WHIP (`POST /whip` with the SDP offer, `DELETE` the Location to end);
// results come back on the `holistream` data channel as the same JSON text
// the WebSocket carries, each with the RTP timestamp of its picture.
//
// Why a track: the browser's encoder compresses between frames and adapts to
// the uplink, a tenth of the JPEG stream's bytes (issue 14). The price: no
// seq of ours travels with a frame, so a result is matched to its picture by
// its `rtp_ts` (rtpclock.js). The camera's recent pictures are kept here with
// their capture times; the RTP timestamps of sent frames come from the
// encoder itself where the browser lets us see its frames (Chromium's
// encoded insertable streams: exact), else from the results (an estimate,
// said so in the HUD).
//
// Same interface as WsTransport (ws.js; the list is there).

import { RtpClock, CLOCK_TOLERANCE_MS } from './rtpclock.js';

/** The data channel the server answers on (CHANNEL_LABEL in src/actors/rtc/mod.rs). */
export const CHANNEL_LABEL = 'holistream';
/** From the answer to an open data channel (ICE, DTLS, SCTP); past it the attempt has failed. */
const OPEN_TIMEOUT_MS = 6000;
/** Bound on the WHIP request itself (the server answers once its side is set up). */
const WHIP_TIMEOUT_MS = 10000;
/** ICE `disconnected` this long is taken as lost (it may recover before). */
const DISCONNECTED_GRACE_MS = 2500;
/** Pictures kept to draw results on: about 1.5 s of a 30 fps camera. */
const PICTURE_RING_SIZE = 45;
/** How often the upstream bitrate is read from getStats(). */
const STATS_INTERVAL_MS = 1000;
/**
 * A picture this close to a result's capture time stands in for it when
 * that very picture was not kept (the <video> shows at most one picture per
 * screen refresh): at most a frame apart, counted in `stats.nearestPicture`.
 */
const NEAREST_PICTURE_MS = 50;

/** Whether this browser can stream over WebRTC at all. */
export function rtcSupported() {
  return typeof RTCPeerConnection === 'function';
}

/** Chromium's encoded insertable streams: each encoded frame's RTP timestamp, on the main thread. */
function encodedStreamsSupported() {
  return typeof RTCRtpSender !== 'undefined' && 'createEncodedStreams' in RTCRtpSender.prototype;
}

export class RtcTransport {
  /** @param {import('./app.js').Link} link */
  constructor(link) {
    this.link = link;
    this.name = 'webrtc';
    this.label = 'WebRTC';
    /** @type {RTCPeerConnection|null} */
    this.pc = null;
    /** @type {RTCDataChannel|null} */
    this.channel = null;
    /** @type {RTCRtpSender|null} */
    this.sender = null;
    /** The session's URL for DELETE (the answer's Location). */
    this.resource = null;
    this.ended = false;
    this.timers = new Set();
    this.openTimer = null;
    this.disconnectTimer = null;
    this.statsTimer = null;
    this.clock = new RtpClock();
    /** True when the RTP timestamps come from the encoder (insertable streams). */
    this.encoderClock = false;
    /** @type {{time: number, bitmap: ImageBitmap}[]} oldest first */
    this.pictures = [];
    this.videoCallback = null;
    this.lastStats = null;
    this.bps = null;
    this.codec = null;
    /** Whether the encoding was last set inactive (the page's Pause). */
    this.sendingPaused = false;
  }

  get isOpen() {
    return this.channel?.readyState === 'open';
  }

  get inFlightCount() {
    return 0;
  }

  connect() {
    this.open().catch((e) => this.fail('lost', `WebRTC setup failed: ${e.message ?? e}`));
  }

  async open() {
    const track = await this.link.source.track();
    if (this.ended) return;
    if (!track) {
      this.fail('no-camera', 'no camera picture to send over WebRTC');
      return;
    }
    const withEncodedStreams = encodedStreamsSupported();
    let pc;
    try {
      pc = new RTCPeerConnection(withEncodedStreams ? { encodedInsertableStreams: true } : {});
      this.encoderClock = withEncodedStreams;
    } catch {
      // The option is refused where insertable streams went away: the plain
      // connection still streams; the latency becomes an estimate.
      pc = new RTCPeerConnection();
      this.encoderClock = false;
    }
    this.pc = pc;
    const transceiver = pc.addTransceiver(track, { direction: 'sendonly' });
    this.sender = transceiver.sender;
    if (this.encoderClock) this.tapEncodedFrames(transceiver.sender);
    // Created by the page before the offer, so the offer carries SCTP and the
    // server answers on this very channel (label checked server side).
    const channel = pc.createDataChannel(CHANNEL_LABEL);
    this.channel = channel;
    channel.addEventListener('open', () => {
      if (this.ended) return;
      this.clearTimer(this.openTimer);
      this.applySendParameters();
      this.link.opened();
    });
    channel.addEventListener('message', (event) => {
      if (this.ended) return;
      if (typeof event.data !== 'string') {
        this.link.error('protocol', 'server sent a binary message; expected JSON text');
        return;
      }
      this.link.message(event.data);
    });
    channel.addEventListener('close', () => this.fail('lost', 'WebRTC data channel closed'));
    pc.addEventListener('connectionstatechange', () => this.onConnectionState());
    this.watchPictures();

    // No trickle: the server is ICE-lite with its one candidate in the
    // answer, and learns ours from our first connectivity check.
    await pc.setLocalDescription(await pc.createOffer());
    const resp = await fetch('/whip', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/sdp' },
      body: pc.localDescription.sdp,
      signal: AbortSignal.timeout(WHIP_TIMEOUT_MS),
    }).catch((e) => {
      throw new Error(`POST /whip failed: ${e.message}`);
    });
    if (resp.status === 201) {
      const location = resp.headers.get('Location');
      if (location) this.resource = new URL(location, window.location.href).href;
    }
    if (this.ended) {
      // Ended while the server was setting up (the visitor switched): the
      // session it opened is deleted at once.
      this.deleteResource();
      return;
    }
    if (resp.status !== 201) {
      const text = `POST /whip: ${await errorText(resp)}`;
      // 404: WebRTC is off here. 400/413/415/422: the server cannot take this
      // browser's offer. Either way the WebSocket is the way in.
      if (resp.status === 404) this.fail('off', text);
      else if ([400, 413, 415, 422].includes(resp.status)) this.fail('refused', text);
      else if (resp.status === 401) this.fail('auth', text);
      else this.fail('lost', text);
      return;
    }
    const answer = await resp.text();
    if (this.ended) {
      this.deleteResource();
      return;
    }
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    this.openTimer = this.later(OPEN_TIMEOUT_MS, () => {
      this.fail('timeout', `WebRTC did not connect within ${OPEN_TIMEOUT_MS / 1000} s of the answer (UDP blocked?)`);
    });
    this.codec = negotiatedCodec(answer);
    this.statsTimer = setInterval(() => this.readStats(), STATS_INTERVAL_MS);
  }

  onConnectionState() {
    if (this.ended || !this.pc) return;
    const state = this.pc.connectionState;
    if (state === 'failed' || state === 'closed') {
      this.fail(this.isOpen ? 'lost' : 'timeout', `WebRTC connection ${state}`);
    } else if (state === 'disconnected') {
      this.disconnectTimer ??= this.later(DISCONNECTED_GRACE_MS, () => {
        this.fail('lost', 'WebRTC connection lost (ICE disconnected)');
      });
    } else {
      this.clearTimer(this.disconnectTimer);
      this.disconnectTimer = null;
    }
  }

  /**
   * Passes each encoded frame through unchanged, noting its RTP timestamp
   * and when it left the encoder: a sent frame, and a sample for the clock.
   */
  tapEncodedFrames(sender) {
    const { readable, writable } = sender.createEncodedStreams();
    const tap = new TransformStream({
      transform: (frame, controller) => {
        controller.enqueue(frame);
        if (this.ended) return;
        const now = performance.now();
        const rtp = frame.getMetadata?.().rtpTimestamp ?? frame.timestamp;
        this.clock.add(rtp, now, this.pictures);
        this.link.sent(now);
      },
    });
    readable.pipeThrough(tap).pipeTo(writable).catch(() => {
      // Ends with the connection; nothing to report.
    });
  }

  /**
   * Keeps the camera's recent pictures with their capture times, to draw a
   * result over the picture it was computed on.
   */
  watchPictures() {
    const video = this.link.source.video;
    if (typeof video.requestVideoFrameCallback !== 'function') return;
    const onFrame = (now, meta) => {
      if (this.ended) return;
      this.videoCallback = video.requestVideoFrameCallback(onFrame);
      const time = meta.captureTime ?? now;
      // Snapshots the frame on screen now, the one this callback is for.
      createImageBitmap(video).then((bitmap) => {
        if (this.ended) {
          bitmap.close();
          return;
        }
        this.pictures.push({ time, bitmap });
        while (this.pictures.length > PICTURE_RING_SIZE) this.pictures.shift().bitmap.close();
      }, () => {
        // A frame that cannot be snapshotted (camera switching) is skipped.
      });
    };
    this.videoCallback = video.requestVideoFrameCallback(onFrame);
  }

  sendControl(text) {
    if (this.isOpen) this.channel.send(text);
  }

  match(msg) {
    const now = performance.now();
    if (typeof msg.rtp_ts !== 'number') return { picture: null, capturedAt: null, estimated: true };
    if (!this.encoderClock) {
      // The result arrived after its picture was captured, decoded and
      // inferred: that bounds the capture time from above.
      const serverMs = msg.timings?.total_ms ?? 0;
      this.clock.add(msg.rtp_ts, now - serverMs, this.pictures);
    }
    const captured = this.clock.captureTime(msg.rtp_ts);
    if (captured === null) return { picture: null, capturedAt: null, estimated: true };
    // The picture captured then, once the clock is lined up; before that,
    // or when that picture was not kept, the nearest one.
    let picture = null;
    let gap = Infinity;
    for (const p of this.pictures) {
      const d = Math.abs(p.time - captured);
      if (d < gap) {
        gap = d;
        picture = p;
      }
    }
    const exact = this.clock.lined && gap <= CLOCK_TOLERANCE_MS;
    if (picture && !exact && gap <= NEAREST_PICTURE_MS) this.link.stats.nearestPicture += 1;
    return {
      picture: gap <= NEAREST_PICTURE_MS ? picture.bitmap : null,
      capturedAt: performance.timeOrigin + captured,
      estimated: !(this.encoderClock && this.clock.lined),
    };
  }

  answered() {}

  serverStats() {}

  /** Pause and resume: the HUD's tick (and the button) call here. */
  tick() {
    if (this.isOpen && this.sendingPaused !== this.link.source.paused()) this.applySendParameters();
  }

  settingsChanged() {
    this.applySendParameters();
  }

  /**
   * The encoder sends at most the fps asked of the server: frames above the
   * server's cap would be decoded and dropped there, after costing uplink.
   * Short of bandwidth it keeps the resolution and drops frames: landmarks
   * need pixels more than a high frame rate. Paused, it sends nothing (the
   * connection stays up).
   */
  applySendParameters() {
    const sender = this.sender;
    if (!sender || this.ended) return;
    const params = sender.getParameters();
    if (!params.encodings?.length) return;
    this.sendingPaused = this.link.source.paused();
    params.encodings[0].active = !this.sendingPaused;
    params.encodings[0].maxFramerate = this.link.source.settings.fps;
    params.degradationPreference = 'maintain-resolution';
    sender.setParameters(params).catch((e) => this.link.error('webrtc', `cannot cap the frame rate: ${e.message}`));
  }

  async readStats() {
    const pc = this.pc;
    if (!pc || this.ended) return;
    const report = await pc.getStats(this.sender?.track ?? null).catch(() => null);
    if (!report || this.ended) return;
    let bytes = 0;
    let frames = 0;
    report.forEach((r) => {
      if (r.type === 'outbound-rtp' && r.kind === 'video') {
        bytes += r.bytesSent ?? 0;
        frames += r.framesSent ?? 0;
      }
    });
    const now = performance.now();
    const last = this.lastStats;
    if (last && now > last.now) {
      this.bps = ((bytes - last.bytes) * 8 * 1000) / (now - last.now);
      // Without the encoder's frames, getStats counts what went up.
      if (!this.encoderClock) for (let i = last.frames; i < frames; i++) this.link.sent(now);
    }
    this.lastStats = { now, bytes, frames };
  }

  upstreamBps() {
    return this.bps;
  }

  /** For the page's state (tests, devtools): how results are being matched. */
  info() {
    return {
      codec: this.codec,
      encoderClock: this.encoderClock,
      clockLined: this.clock.lined,
      picturesKept: this.pictures.length,
    };
  }

  /** Ends the attempt or session unasked: reports once, then tears down. */
  fail(kind, text) {
    if (this.ended) return;
    this.teardown();
    this.link.closed({ kind, text });
  }

  close() {
    if (this.ended) return;
    this.teardown();
  }

  teardown() {
    this.ended = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    clearInterval(this.statsTimer);
    if (this.videoCallback !== null) this.link.source.video.cancelVideoFrameCallback?.(this.videoCallback);
    for (const p of this.pictures) p.bitmap.close();
    this.pictures = [];
    // The connection closes once the server has the DELETE: closed first,
    // the server could see the peer vanish and count that instead.
    const { pc, channel } = this;
    this.deleteResource().finally(() => {
      channel?.close();
      pc?.close();
    });
  }

  /**
   * DELETE the session: the server frees it now rather than at its ICE
   * timeout. keepalive: the request outlives the page on pagehide.
   */
  deleteResource() {
    if (!this.resource) return Promise.resolve();
    const url = this.resource;
    this.resource = null;
    return fetch(url, { method: 'DELETE', credentials: 'same-origin', keepalive: true }).catch(() => {});
  }

  later(ms, fn) {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  clearTimer(t) {
    if (t === undefined || t === null) return;
    clearTimeout(t);
    this.timers.delete(t);
  }
}

/** The codec the answer settled on (its first video payload type), e.g. "VP8". */
function negotiatedCodec(sdp) {
  const lines = sdp.split(/\r?\n/);
  const media = lines.find((l) => l.startsWith('m=video'));
  const pt = media?.split(' ')[3];
  const rtpmap = lines.find((l) => l.startsWith(`a=rtpmap:${pt} `));
  return rtpmap ? rtpmap.split(' ')[1].split('/')[0] : null;
}

/** The server's `{"error": ...}` text of a refusal, or its status line. */
async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && typeof body.error === 'string') return `${resp.status} ${body.error}`;
  } catch {
    // Not JSON: the status line is still the server's answer.
  }
  return `HTTP ${resp.status} ${resp.statusText}`.trim();
}
