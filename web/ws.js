// The WebSocket transport: each frame travels as one JPEG in a binary
// message (protocol.js), results come back as JSON text on the same socket.
//
// A pump sends frames at the chosen rate while at most MAX_IN_FLIGHT frames
// are unanswered, so a slow server never builds a queue in the browser. Every
// sent frame is kept (as an ImageBitmap) in a short ring keyed by seq; a
// result is drawn over the frame whose seq it carries.
//
// Same interface as RtcTransport (rtc.js); app.js holds the one that is live
// and never reaches into either:
//   new WsTransport(link)     link: what the page lends (see app.js `linkFor`)
//   connect()                 one attempt; link.opened() or link.closed(info) follows
//   isOpen                    true between opened and closed
//   sendControl(text)         a JSON control message (`config`)
//   match(result)             → {picture, capturedAt, estimated} for a result
//   answered(seq), serverStats(msg), tick()   bookkeeping the page forwards
//   settingsChanged()         fps or quality changed
//   upstreamBps(now)          upstream bits per second, or null
//   close()                   deliberate end: no link.closed() afterwards

import { encodeFrame } from './protocol.js';

/** Frames sent and not yet answered (result or error) before the pump waits. */
const MAX_IN_FLIGHT = 1;
/**
 * A frame unanswered this long is given up (and counted as "unanswered"), so a
 * frame the server dropped without a word cannot stall the stream for good.
 */
const ANSWER_TIMEOUT_MS = 5000;
/** Sent frames kept to draw results on; more than MAX_IN_FLIGHT covers late answers. */
const FRAME_RING_SIZE = 8;
/** Window of the upstream byte rate. */
const BYTES_WINDOW_MS = 2000;

export class WsTransport {
  /** @param {import('./app.js').Link} link */
  constructor(link) {
    this.link = link;
    this.name = 'websocket';
    this.label = 'WebSocket';
    /** @type {WebSocket|null} */
    this.ws = null;
    this.closedByPage = false;
    /** @type {Map<number, {bitmap: ImageBitmap}>} in insertion (= seq) order */
    this.ring = new Map();
    /** @type {Map<number, number>} seq → performance.now() when sent */
    this.inFlight = new Map();
    this.nextSeq = 0;
    /** Frames sent on this connection, to match against the server's `received`. */
    this.sentOnConnection = 0;
    this.capturing = false;
    this.nextDue = 0;
    this.pumpTimer = null;
    this.scratch = null;
    /** [performance.now(), bytes] of each frame sent in the last BYTES_WINDOW_MS. */
    this.bytes = [];
  }

  get isOpen() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  connect() {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const socket = new WebSocket(`${scheme}://${location.host}/ws`);
    socket.binaryType = 'arraybuffer';
    this.ws = socket;
    socket.addEventListener('open', () => {
      if (this.closedByPage) return;
      this.sentOnConnection = 0;
      this.link.opened();
      this.pump();
    });
    socket.addEventListener('message', (event) => {
      if (this.closedByPage) return;
      if (typeof event.data !== 'string') {
        this.link.error('protocol', 'server sent a binary message; expected JSON text');
        return;
      }
      this.link.message(event.data);
    });
    socket.addEventListener('close', (event) => {
      if (this.closedByPage) return;
      this.dropInFlight();
      const why = event.reason ? `: ${event.reason}` : '';
      // A refused upgrade (no session, foreign origin, full) looks like any
      // failed connect from here: the page asks the auth endpoint itself.
      this.link.closed({ kind: 'lost', text: `WebSocket closed (code ${event.code}${why})` });
    });
    // An 'error' event is always followed by 'close', which reports.
  }

  sendControl(text) {
    if (this.isOpen) this.ws.send(text);
  }

  /** Frames in flight on a closed socket will never be answered. */
  dropInFlight() {
    this.link.stats.lostOnDisconnect += this.inFlight.size;
    this.inFlight.clear();
  }

  close() {
    this.closedByPage = true;
    this.dropInFlight();
    if (this.pumpTimer !== null) clearTimeout(this.pumpTimer);
    this.ws?.close(1000, 'transport changed');
    this.ws = null;
    for (const { bitmap } of this.ring.values()) bitmap.close();
    this.ring.clear();
  }

  // ---- results

  answered(seq) {
    if (this.inFlight.delete(seq)) this.pump();
  }

  match(msg) {
    this.answered(msg.seq);
    const frame = this.ring.get(msg.seq);
    // capture_ts is our own clock (ms since the epoch), echoed back.
    return { picture: frame?.bitmap ?? null, capturedAt: msg.capture_ts, estimated: false };
  }

  serverStats(msg) {
    // The server drops frames over its fps cap, or replaced while waiting,
    // without an answer (only counted here). Answers and stats travel in one
    // ordered stream, so once the server has received every frame sent on
    // this connection and accounted for each one, a frame still unanswered
    // was dropped: free its slot now instead of waiting for the timeout.
    const accounted = msg.processed + msg.dropped_stale + msg.dropped_fps + msg.dropped_overload
      + (msg.dropped_expired ?? 0) + msg.errors;
    if (this.inFlight.size && msg.received >= this.sentOnConnection && accounted >= msg.received) {
      this.link.stats.droppedSilently += this.inFlight.size;
      this.inFlight.clear();
      this.pump();
    }
  }

  settingsChanged() {
    this.nextDue = performance.now();
  }

  /** The HUD's tick doubles as the pump's watchdog. */
  tick() {
    this.pump();
  }

  get inFlightCount() {
    return this.inFlight.size;
  }

  /** For the page's state (tests, devtools). */
  info() {
    return { framesKept: this.ring.size };
  }

  upstreamBps(now) {
    // Frames (with their header) per window, in bits per second.
    const cutoff = now - BYTES_WINDOW_MS;
    while (this.bytes.length && this.bytes[0][0] < cutoff) this.bytes.shift();
    const total = this.bytes.reduce((sum, [, n]) => sum + n, 0);
    return (total * 8 * 1000) / BYTES_WINDOW_MS;
  }

  // ---- the pump: capture and send when due and a slot is free

  giveUpOnSilentFrames(now) {
    for (const [seq, sentAt] of this.inFlight) {
      if (now - sentAt > ANSWER_TIMEOUT_MS) {
        this.inFlight.delete(seq);
        this.link.stats.unanswered += 1;
        this.link.error('server', `no answer to frame ${seq} within ${ANSWER_TIMEOUT_MS / 1000} s`);
      }
    }
  }

  pump() {
    if (this.closedByPage) return;
    if (this.pumpTimer !== null) {
      clearTimeout(this.pumpTimer);
      this.pumpTimer = null;
    }
    const now = performance.now();
    this.giveUpOnSilentFrames(now);
    const { video, settings } = this.link.source;
    const ready = this.isOpen && !this.link.source.paused() && this.link.source.ready();
    // Not ready, busy, or no free slot: a result, the socket opening or the
    // HUD tick calls pump again.
    if (!ready || this.capturing || this.inFlight.size >= MAX_IN_FLIGHT) return;
    if (now < this.nextDue) {
      this.pumpTimer = setTimeout(() => this.pump(), this.nextDue - now);
      return;
    }
    this.nextDue = Math.max(this.nextDue + 1000 / settings.fps, now);
    this.captureAndSend(video, settings.quality)
      .catch((e) => this.link.error('capture', e.message ?? String(e)));
  }

  async captureAndSend(video, quality) {
    this.capturing = true;
    try {
      const captureTs = performance.timeOrigin + performance.now();
      // The bitmap is both what gets encoded and what the result is drawn on.
      const bitmap = await createImageBitmap(video);
      const canvas = this.captureCanvas(bitmap.width, bitmap.height);
      canvas.getContext('2d').drawImage(bitmap, 0, 0);
      const blob = await encodeJpeg(canvas, quality);
      const jpeg = await blob.arrayBuffer();
      const socket = this.ws;
      if (this.closedByPage || socket?.readyState !== WebSocket.OPEN) {
        bitmap.close();
        return;
      }
      const seq = this.nextSeq;
      this.nextSeq = (this.nextSeq + 1) >>> 0;
      this.remember(seq, bitmap);
      const now = performance.now();
      this.inFlight.set(seq, now);
      const message = encodeFrame(seq, captureTs, jpeg);
      socket.send(message);
      this.bytes.push([now, message.byteLength]);
      this.sentOnConnection += 1;
      this.link.sent(now);
    } finally {
      this.capturing = false;
    }
    this.pump();
  }

  remember(seq, bitmap) {
    this.ring.set(seq, { bitmap });
    while (this.ring.size > FRAME_RING_SIZE) {
      const [oldest, entry] = this.ring.entries().next().value;
      entry.bitmap.close();
      this.ring.delete(oldest);
    }
  }

  captureCanvas(w, h) {
    if (!this.scratch) this.scratch = document.createElement('canvas');
    if (this.scratch.width !== w || this.scratch.height !== h) {
      this.scratch.width = w;
      this.scratch.height = h;
    }
    return this.scratch;
  }
}

function encodeJpeg(canvas, quality) {
  return new Promise((resolve, reject) => {
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error('JPEG encoding failed'))), 'image/jpeg', quality);
  });
}
