// Rolling measurements for the heads-up display: rates and latency
// percentiles over the last few seconds, and the latency sparkline.

/** Events per second over a sliding window. */
export class RateMeter {
  /** @param {number} windowMs */
  constructor(windowMs = 2000) {
    this.windowMs = windowMs;
    this.times = [];
  }

  /** Records one event at `now` (performance.now() ms). */
  mark(now) {
    this.times.push(now);
    this.prune(now);
  }

  prune(now) {
    const cutoff = now - this.windowMs;
    let drop = 0;
    while (drop < this.times.length && this.times[drop] < cutoff) drop++;
    if (drop) this.times.splice(0, drop);
  }

  /** Events per second over the window ending at `now`. */
  perSecond(now) {
    this.prune(now);
    return (this.times.length * 1000) / this.windowMs;
  }
}

/** Samples kept with their time, dropped once older than the window. */
export class SampleWindow {
  /** @param {number} windowMs */
  constructor(windowMs) {
    this.windowMs = windowMs;
    this.samples = []; // [time, value]
  }

  add(now, value) {
    this.samples.push([now, value]);
    this.prune(now);
  }

  prune(now) {
    const cutoff = now - this.windowMs;
    let drop = 0;
    while (drop < this.samples.length && this.samples[drop][0] < cutoff) drop++;
    if (drop) this.samples.splice(0, drop);
  }

  values(now) {
    this.prune(now);
    return this.samples.map((s) => s[1]);
  }

  /** The q-quantile (0..1, nearest rank) of the window, or null when empty. */
  quantile(now, q) {
    const sorted = this.values(now).sort((a, b) => a - b);
    if (!sorted.length) return null;
    const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
    return sorted[rank];
  }

  /** Mean of the window, or null when empty. */
  mean(now) {
    const v = this.values(now);
    return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
  }
}

/**
 * Draws the latency samples of `window` as a sparkline, time on x (the
 * window's span), latency on y (scaled to the largest sample, at least 100 ms).
 * @param {HTMLCanvasElement} canvas
 * @param {SampleWindow} window
 * @param {number} now
 */
export function drawSparkline(canvas, window, now) {
  const ctx = canvas.getContext('2d');
  const { width: w, height: h } = canvas;
  ctx.clearRect(0, 0, w, h);
  window.prune(now);
  const samples = window.samples;
  const top = Math.max(100, ...samples.map((s) => s[1]));
  // Guide line at 100 ms, so the scale can be read without numbers.
  ctx.strokeStyle = 'rgba(255, 255, 255, 0.15)';
  ctx.lineWidth = 1;
  ctx.beginPath();
  const guide = h - (100 / top) * (h - 4) - 2;
  ctx.moveTo(0, guide);
  ctx.lineTo(w, guide);
  ctx.stroke();
  ctx.fillStyle = 'rgba(255, 255, 255, 0.5)';
  ctx.font = '10px system-ui, sans-serif';
  ctx.textAlign = 'left';
  ctx.fillText(`${Math.round(top)} ms`, 2, 10);
  if (samples.length < 2) return;
  ctx.strokeStyle = '#4fc3f7';
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  samples.forEach(([t, v], i) => {
    const x = w - ((now - t) / window.windowMs) * w;
    const y = h - (v / top) * (h - 4) - 2;
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
}
