// The web demo: the login page and the stream page (see data-page on <body>).
//
// Stream page, in order: check the session, open the camera, connect a
// transport: WebRTC (rtc.js: the camera as a video track, results on a data
// channel) where the browser has it, else the WebSocket (ws.js: one JPEG per
// frame); the control in the panel switches, and WebRTC falls back to the
// WebSocket by itself when the server has it off or it cannot connect. Both
// deliver the same JSON messages, handled here once; each keeps the pictures
// it sent, so a result is drawn over the picture it was computed on.
//
// The page's state is exposed as `window.holistream` for the end-to-end test
// and for anyone curious in the devtools console.

import { configMessage, parseServerMessage, ProtocolError } from './protocol.js';
import { drawFrame, drawResult, clearResult } from './overlay.js';
import { RateMeter, SampleWindow, drawSparkline } from './hud.js';
import { WsTransport } from './ws.js';
import { RtcTransport, rtcSupported } from './rtc.js';

/** Where the transport control's choice is kept between visits. */
const TRANSPORT_KEY = 'holistream.transport';
/** Reconnect backoff: first delay, growth factor, ceiling. */
const BACKOFF_START_MS = 500;
const BACKOFF_FACTOR = 2;
const BACKOFF_MAX_MS = 10000;
/** After this many failed connects in a row, check whether the session is still valid. */
const FAILURES_BEFORE_AUTH_CHECK = 2;
/** Window of the HUD's rates, latency percentiles and server timing means. */
const RATE_WINDOW_MS = 2000;
const LATENCY_WINDOW_MS = 5000;
const SPARKLINE_WINDOW_MS = 20000;
/** Errors listed on the page (older ones stay counted). */
const ERROR_LOG_LENGTH = 8;

const LOGIN_PAGE = '/';
const STREAM_PAGE = '/stream.html';

const $ = (id) => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`page is missing #${id}`);
  return el;
};

/** GET /auth/code: true with a valid session, false without; throws when the server can't be asked. */
async function hasSession() {
  const resp = await fetch('/auth/code', { credentials: 'same-origin', cache: 'no-store' });
  if (resp.ok) return true;
  if (resp.status === 401) return false;
  throw new Error(`session check failed: HTTP ${resp.status}`);
}

/** The server's `{"error": ...}` message of a failed response, or its status line. */
async function serverErrorText(resp) {
  try {
    const body = await resp.json();
    if (body && typeof body.error === 'string') return body.error;
  } catch {
    // Not JSON: fall through to the status line, which is still the server's answer.
  }
  return `HTTP ${resp.status} ${resp.statusText}`.trim();
}

// ---------------------------------------------------------------- login page

async function initLogin() {
  const form = $('login-form');
  const input = $('code');
  const submit = $('login-submit');
  const errorText = $('login-error');
  const note = $('login-note');
  const showError = (text) => {
    errorText.textContent = text;
    errorText.hidden = false;
  };

  const reason = new URLSearchParams(location.search).get('reason');
  if (reason === 'expired') {
    note.textContent = 'Your session has ended; please enter the password again.';
    note.hidden = false;
  } else if (reason === 'logout') {
    note.textContent = 'Logged out.';
    note.hidden = false;
  }

  try {
    if (await hasSession()) {
      location.replace(STREAM_PAGE);
      return;
    }
  } catch (e) {
    showError(`Cannot reach the server: ${e.message}`);
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    errorText.hidden = true;
    submit.disabled = true;
    try {
      const resp = await fetch('/auth/code', {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ code: input.value }),
      });
      if (resp.ok) {
        location.replace(STREAM_PAGE);
        return;
      }
      let text = await serverErrorText(resp);
      const retry = resp.headers.get('Retry-After');
      if (resp.status === 429 && retry) text += ` (try again in ${retry} s)`;
      showError(text);
      input.select();
    } catch (e) {
      showError(`Cannot reach the server: ${e.message}`);
    } finally {
      submit.disabled = false;
    }
  });
}

// --------------------------------------------------------------- stream page

/** What the page knows, in one place; `window.holistream` points here. */
function newState() {
  return {
    connection: 'idle',
    /** The transport in use: 'webrtc' or 'websocket'. */
    transport: null,
    /** Why WebRTC was given up for the WebSocket on this page, or null. */
    fallback: null,
    /** Whether the latencies rest on an estimated clock (WebRTC without the encoder's timestamps). */
    latencyEstimated: false,
    /** What the transport says of itself (WebRTC: codec, how results find their pictures). */
    transportInfo: null,
    camera: 'starting',
    paused: false,
    stats: {
      sent: 0,
      results: 0,
      serverErrors: 0,
      unanswered: 0,
      droppedSilently: 0,
      lostOnDisconnect: 0,
      missingFrame: 0,
      drawn: 0,
      /** WebRTC results drawn over a neighbouring picture (theirs not kept, or the RTP clock not yet lined up). */
      nearestPicture: 0,
      reconnects: 0,
      pageErrors: 0,
      sentFps: 0,
      resultFps: 0,
      latencyP50: null,
      latencyP95: null,
      inFlight: 0,
      /** Upstream bits per second (WebRTC: RTP payload bytes; WebSocket: frame messages), or null. */
      upstreamBps: null,
    },
    /** The server's `hello` on the current connection. */
    session: null,
    /** The server's last `stats` message. */
    serverStats: null,
    /** Summary of the last result: seq, latency and landmark counts per part. */
    lastResult: null,
    /** seq of the last result drawn on the canvas. */
    drawnSeq: null,
    /** Errors shown on the page, newest first: {time, source, text}. */
    errors: [],
  };
}

async function initStream() {
  const state = newState();
  window.holistream = state;

  const ui = {
    connState: $('conn-state'),
    stageMessage: $('stage-message'),
    cameraError: $('camera-error'),
    video: $('camera'),
    frameCtx: $('frame').getContext('2d'),
    overlayCtx: $('overlay').getContext('2d'),
    sparkline: $('sparkline'),
    fps: $('fps'),
    quality: $('quality'),
    mirror: $('mirror'),
    pause: $('pause'),
    transport: $('transport'),
    parts: { pose: $('part-pose'), face: $('part-face'), hands: $('part-hands') },
    people: $('people'),
    peopleMax: $('people-max'),
    errorLog: $('error-log'),
    errorCount: $('error-count'),
  };

  const reportError = (source, text) => {
    const latest = state.errors[0];
    // A repeat of the latest error (e.g. each failed reconnect) is folded into
    // it with a count, so it cannot push the other errors off the list.
    if (latest && latest.source === source && latest.text === text) {
      latest.repeats += 1;
      latest.time = new Date();
    } else {
      state.errors.unshift({ time: new Date(), source, text, repeats: 1 });
      if (state.errors.length > ERROR_LOG_LENGTH) state.errors.length = ERROR_LOG_LENGTH;
    }
    state.stats.pageErrors += 1;
    ui.errorCount.textContent = String(state.stats.pageErrors);
    ui.errorLog.replaceChildren(...state.errors.map((e) => {
      const li = document.createElement('li');
      const times = e.repeats > 1 ? ` (×${e.repeats})` : '';
      li.textContent = `${e.time.toLocaleTimeString()} [${e.source}] ${e.text}${times}`;
      return li;
    }));
    console.error(`[${source}] ${text}`);
  };
  window.addEventListener('error', (e) => reportError('page', e.message));
  window.addEventListener('unhandledrejection', (e) => reportError('page', String(e.reason?.message ?? e.reason)));

  $('logout').addEventListener('click', async () => {
    try {
      const resp = await fetch('/auth/logout', { method: 'POST', credentials: 'same-origin' });
      if (!resp.ok) {
        reportError('auth', `logout failed: ${await serverErrorText(resp)}`);
        return;
      }
      location.replace(`${LOGIN_PAGE}?reason=logout`);
    } catch (e) {
      reportError('auth', `logout failed: ${e.message}`);
    }
  });

  // The page is only for signed-in visitors: without a session, off to the login page.
  try {
    if (!(await hasSession())) {
      location.replace(LOGIN_PAGE);
      return;
    }
  } catch (e) {
    reportError('auth', `${e.message}; streaming anyway, the connection will tell`);
  }

  const settings = {
    fps: Number(ui.fps.value),
    quality: Number(ui.quality.value) / 100,
    mirror: ui.mirror.checked,
    parts: { pose: ui.parts.pose.checked, face: ui.parts.face.checked, hands: ui.parts.hands.checked },
    people: 1,
  };

  // ---- measurements
  const sentRate = new RateMeter(RATE_WINDOW_MS);
  const resultRate = new RateMeter(RATE_WINDOW_MS);
  const latency = new SampleWindow(LATENCY_WINDOW_MS);
  const latencyTrace = new SampleWindow(SPARKLINE_WINDOW_MS);
  const serverTimings = {
    queue_ms: new SampleWindow(LATENCY_WINDOW_MS),
    decode_ms: new SampleWindow(LATENCY_WINDOW_MS),
    infer_ms: new SampleWindow(LATENCY_WINDOW_MS),
    serialize_ms: new SampleWindow(LATENCY_WINDOW_MS),
    total_ms: new SampleWindow(LATENCY_WINDOW_MS),
  };

  // ---- the transport: WebRTC or WebSocket, one at a time

  /** The camera's track once it plays, or null if it failed; the WebRTC transport waits on it. */
  let cameraSettled;
  const cameraTrack = new Promise((resolve) => { cameraSettled = resolve; });
  const source = {
    video: ui.video,
    settings,
    track: () => cameraTrack,
    paused: () => state.paused,
    ready: () => state.camera === 'live' && ui.video.readyState >= 2 && ui.video.videoWidth > 0,
  };

  /** The transport asked for: the control's (kept in localStorage), else WebRTC where it exists. */
  const stored = localStorage.getItem(TRANSPORT_KEY);
  let chosen = stored === 'websocket' || (stored === 'webrtc' && rtcSupported()) ? stored
    : rtcSupported() ? 'webrtc' : 'websocket';
  /** Why the page is on the WebSocket though WebRTC was chosen, or null. */
  let fallbackReason = null;
  /** Whether a WebRTC connection ever opened on this page: then a failed one is an outage, not a blocked path. */
  let rtcEverOpened = false;
  ui.transport.value = chosen;
  if (!rtcSupported()) {
    ui.transport.querySelector('option[value="webrtc"]').disabled = true;
  }

  /** @type {WsTransport|RtcTransport|null} */
  let transport = null;
  let failures = 0;
  let everOpened = false;
  let reconnectTimer = null;

  const activeName = () => (chosen === 'webrtc' && fallbackReason === null ? 'webrtc' : 'websocket');

  const setConnection = (name, text) => {
    state.connection = name;
    ui.connState.dataset.state = name;
    ui.connState.textContent = text;
  };

  const sendConfig = () => transport?.sendControl(configMessage(settings.fps, settings.parts, settings.people));

  /**
   * What the page lends a transport: the camera and settings, the counters it
   * keeps, and callbacks that are ignored once the transport is replaced.
   * @typedef {ReturnType<typeof linkFor>} Link
   */
  function linkFor(getSelf) {
    const live = () => transport !== null && transport === getSelf();
    return {
      source,
      stats: state.stats,
      opened: () => live() && onOpened(),
      message: (text) => live() && onMessage(text),
      closed: (info) => live() && onClosed(info),
      sent: (now) => {
        if (!live()) return;
        state.stats.sent += 1;
        sentRate.mark(now);
      },
      error: (sourceName, text) => live() && reportError(sourceName, text),
    };
  }

  function connect() {
    reconnectTimer = null;
    const name = activeName();
    let self = null;
    const link = linkFor(() => self);
    self = name === 'webrtc' ? new RtcTransport(link) : new WsTransport(link);
    transport = self;
    state.transport = name;
    state.latencyEstimated = false;
    // Each transport numbers its results afresh (the WebSocket its frames,
    // WebRTC the server its pictures): an older seq means nothing now.
    state.drawnSeq = null;
    setConnection('connecting', everOpened ? 'reconnecting…' : 'connecting…');
    ui.quality.disabled = name !== 'websocket';
    self.connect();
  }

  function onOpened() {
    if (everOpened) state.stats.reconnects += 1;
    everOpened = true;
    failures = 0;
    if (transport.name === 'webrtc') rtcEverOpened = true;
    // The pill says connected; the HUD says over what.
    setConnection('open', 'connected');
    sendConfig();
  }

  function onClosed(info) {
    const was = transport;
    transport = null;
    reportError('connection', info.text);
    // WebRTC off on this server, refused for this browser's offer, or never
    // connecting (UDP blocked on the way): the WebSocket gets through anywhere
    // HTTP does. Once WebRTC has worked on this page, a failure is an outage:
    // retry it as the WebSocket would be retried.
    const blocked = info.kind === 'off' || info.kind === 'refused' || info.kind === 'no-camera'
      || (info.kind === 'timeout' && !rtcEverOpened);
    if (was.name === 'webrtc' && blocked) {
      fallbackReason = info.text;
      reportError('connection', 'using the WebSocket instead of WebRTC');
      connect();
      return;
    }
    if (info.kind === 'auth') {
      location.replace(`${LOGIN_PAGE}?reason=expired`);
      return;
    }
    if (everOpened) {
      // Say so over the picture too: the last frame stays, but it is not live.
      ui.stageMessage.textContent = 'Connection lost · reconnecting…';
      ui.stageMessage.classList.add('over-frame');
      ui.stageMessage.hidden = false;
    }
    scheduleReconnect();
  }

  function onMessage(text) {
    let msg;
    try {
      msg = parseServerMessage(text);
    } catch (e) {
      reportError('protocol', e instanceof ProtocolError ? e.message : String(e));
      return;
    }
    if (msg.type === 'result') onResult(msg);
    else if (msg.type === 'error') onServerError(msg);
    else if (msg.type === 'hello') onHello(msg);
    else onServerStats(msg);
  }

  const scheduleReconnect = async () => {
    failures += 1;
    if (failures >= FAILURES_BEFORE_AUTH_CHECK) {
      // A connection refused for a missing session looks like any failed
      // connect from here; ask the auth endpoint which one it is.
      try {
        if (!(await hasSession())) {
          location.replace(`${LOGIN_PAGE}?reason=expired`);
          return;
        }
      } catch {
        // Server unreachable (e.g. restarting): keep backing off.
      }
      // The visitor switched transports meanwhile: that one is connecting.
      if (transport !== null) return;
    }
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * BACKOFF_FACTOR ** (failures - 1));
    const delay = Math.round(base * (0.8 + 0.4 * Math.random()));
    setConnection('reconnecting', `disconnected · retry in ${(delay / 1000).toFixed(1)} s (attempt ${failures})`);
    reconnectTimer = setTimeout(connect, delay);
  };

  /** Ends the current transport (if any) and starts the chosen one now. */
  function switchTransport() {
    transport?.close();
    transport = null;
    if (reconnectTimer !== null) clearTimeout(reconnectTimer);
    failures = 0;
    fallbackReason = null;
    // A switch asked for is no reconnect: the count stays that of outages.
    everOpened = false;
    connect();
  }

  // The server frees a WebRTC session at once on DELETE, not at its ICE timeout.
  window.addEventListener('pagehide', () => {
    transport?.close();
    transport = null;
    if (reconnectTimer !== null) clearTimeout(reconnectTimer);
  });
  // Back from the back-forward cache: the page lives on, its connection does not.
  window.addEventListener('pageshow', (event) => {
    if (event.persisted && transport === null) connect();
  });

  // ---- server messages

  function onResult(msg) {
    const now = performance.now();
    state.stats.results += 1;
    resultRate.mark(now);
    // The transport knows which picture a result belongs to and when it was
    // captured: the WebSocket from the seq it sent, WebRTC from the RTP timestamp.
    const match = transport.match(msg);
    state.latencyEstimated = match.estimated;
    const ms = match.capturedAt === null ? null : performance.timeOrigin + now - match.capturedAt;
    if (ms !== null) {
      latency.add(now, ms);
      latencyTrace.add(now, ms);
    }
    const t = msg.timings ?? {};
    for (const [name, window] of Object.entries(serverTimings)) {
      if (typeof t[name] === 'number') window.add(now, t[name]);
    }
    // Without a `people` list (one person asked for) the result is one
    // person when it has a pose, nobody otherwise.
    const ids = Array.isArray(msg.people) ? msg.people.map((p) => p.id) : null;
    state.lastResult = {
      seq: msg.seq,
      rtpTs: msg.rtp_ts ?? null,
      latencyMs: ms,
      people: ids ? ids.length : Number(msg.pose.length > 0),
      peopleIds: ids,
      counts: {
        pose: msg.pose.length,
        face: msg.face.length,
        left_hand: msg.left_hand.length,
        right_hand: msg.right_hand.length,
      },
      timings: t,
    };
    // A late answer to an older frame must not replace a newer picture.
    if (state.drawnSeq !== null && msg.seq < state.drawnSeq) return;
    const bitmap = match.picture;
    if (bitmap) {
      drawFrame(ui.frameCtx, bitmap, settings.mirror);
      const overlay = ui.overlayCtx.canvas;
      if (overlay.width !== bitmap.width || overlay.height !== bitmap.height) {
        overlay.width = bitmap.width;
        overlay.height = bitmap.height;
      }
      drawResult(ui.overlayCtx, msg, settings.mirror);
      state.drawnSeq = msg.seq;
      state.stats.drawn += 1;
      ui.stageMessage.hidden = true;
      ui.stageMessage.classList.remove('over-frame');
    } else {
      state.stats.missingFrame += 1;
      reportError('overlay', `result ${msg.seq} is for a frame no longer kept; not drawn`);
    }
  }

  function onServerError(msg) {
    if (Number.isInteger(msg.seq)) transport.answered(msg.seq);
    state.stats.serverErrors += 1;
    const seq = Number.isInteger(msg.seq) ? ` (frame ${msg.seq})` : '';
    reportError('server', `${msg.code}: ${msg.message}${seq}`);
  }

  function onHello(msg) {
    state.session = msg;
    // The people field offers what this server allows, as the fps slider does.
    const maxPeople = msg.config.max_people;
    if (Number.isInteger(maxPeople) && maxPeople > 0) {
      ui.people.max = String(maxPeople);
      ui.peopleMax.textContent = `of ${maxPeople}`;
      if (settings.people > maxPeople) {
        settings.people = maxPeople;
        ui.people.value = String(maxPeople);
        sendConfig();
      }
    }
    // The slider offers what this server allows; a cap above it would be refused.
    const maxFps = msg.config.max_fps;
    if (Number.isInteger(maxFps) && maxFps > 0) {
      ui.fps.max = String(maxFps);
      if (settings.fps > maxFps) {
        settings.fps = maxFps;
        ui.fps.value = String(maxFps);
        fpsValue.textContent = ui.fps.value;
        sendConfig();
      }
    }
  }

  function onServerStats(msg) {
    state.serverStats = msg;
    transport.serverStats(msg);
  }

  // ---- controls

  const fpsValue = $('fps-value');
  const qualityValue = $('quality-value');
  ui.fps.addEventListener('input', () => {
    settings.fps = Number(ui.fps.value);
    fpsValue.textContent = ui.fps.value;
    transport?.settingsChanged();
  });
  ui.fps.addEventListener('change', sendConfig);
  // A number field can hold anything while typed: only a whole number in
  // range is sent, and the field shows what was.
  ui.people.addEventListener('change', () => {
    const max = Number(ui.people.max) || 1;
    const asked = Math.round(Number(ui.people.value));
    settings.people = Number.isFinite(asked) ? Math.min(max, Math.max(1, asked)) : settings.people;
    ui.people.value = String(settings.people);
    sendConfig();
  });
  ui.quality.addEventListener('input', () => {
    settings.quality = Number(ui.quality.value) / 100;
    qualityValue.textContent = ui.quality.value;
  });
  for (const [part, box] of Object.entries(ui.parts)) {
    box.addEventListener('change', () => {
      settings.parts[part] = box.checked;
      sendConfig();
    });
  }
  ui.mirror.addEventListener('change', () => {
    settings.mirror = ui.mirror.checked;
    ui.video.classList.toggle('unmirrored', !settings.mirror);
    // The picture on screen was drawn with the old setting; clear it rather than show it wrong.
    clearResult(ui.overlayCtx);
    clearResult(ui.frameCtx);
    state.drawnSeq = null;
  });
  ui.pause.addEventListener('click', () => {
    state.paused = !state.paused;
    ui.pause.textContent = state.paused ? 'Resume' : 'Pause';
    transport?.tick();
  });
  ui.transport.addEventListener('change', () => {
    chosen = ui.transport.value;
    localStorage.setItem(TRANSPORT_KEY, chosen);
    switchTransport();
  });

  // ---- HUD

  const hud = {
    sentFps: $('hud-sent-fps'),
    resultFps: $('hud-result-fps'),
    p50: $('hud-p50'),
    p95: $('hud-p95'),
    people: $('hud-people'),
    queue: $('hud-queue'),
    decode: $('hud-decode'),
    infer: $('hud-infer'),
    serialize: $('hud-serialize'),
    total: $('hud-total'),
    received: $('hud-received'),
    processed: $('hud-processed'),
    droppedStale: $('hud-dropped-stale'),
    droppedFps: $('hud-dropped-fps'),
    droppedOverload: $('hud-dropped-overload'),
    droppedExpired: $('hud-dropped-expired'),
    workerErrors: $('hud-worker-errors'),
    unanswered: $('hud-unanswered'),
    reconnects: $('hud-reconnects'),
    transport: $('hud-transport'),
    upstream: $('hud-upstream'),
    latencyNote: [$('hud-p50-note'), $('hud-p95-note')],
  };
  const fmt = (v, digits = 1) => (v === null || v === undefined ? '–' : v.toFixed(digits));
  const count = (v) => (typeof v === 'number' ? String(v) : '–');

  function refreshHud() {
    const now = performance.now();
    const s = state.stats;
    s.sentFps = sentRate.perSecond(now);
    s.resultFps = resultRate.perSecond(now);
    s.latencyP50 = latency.quantile(now, 0.5);
    s.latencyP95 = latency.quantile(now, 0.95);
    s.inFlight = transport?.inFlightCount ?? 0;
    s.upstreamBps = transport?.upstreamBps(now) ?? null;
    state.fallback = fallbackReason;
    state.transportInfo = transport?.info() ?? null;
    hud.sentFps.textContent = fmt(s.sentFps);
    hud.resultFps.textContent = fmt(s.resultFps);
    hud.p50.textContent = fmt(s.latencyP50, 0);
    hud.p95.textContent = fmt(s.latencyP95, 0);
    hud.people.textContent = count(state.lastResult?.people);
    hud.queue.textContent = fmt(serverTimings.queue_ms.mean(now));
    hud.decode.textContent = fmt(serverTimings.decode_ms.mean(now));
    hud.infer.textContent = fmt(serverTimings.infer_ms.mean(now));
    hud.serialize.textContent = fmt(serverTimings.serialize_ms.mean(now));
    hud.total.textContent = fmt(serverTimings.total_ms.mean(now));
    const st = state.serverStats ?? {};
    hud.received.textContent = count(st.received);
    hud.processed.textContent = count(st.processed);
    hud.droppedStale.textContent = count(st.dropped_stale);
    hud.droppedFps.textContent = count(st.dropped_fps);
    hud.droppedOverload.textContent = count(st.dropped_overload);
    hud.droppedExpired.textContent = count(st.dropped_expired);
    hud.workerErrors.textContent = count(st.errors);
    hud.unanswered.textContent = String(s.unanswered + s.lostOnDisconnect);
    hud.reconnects.textContent = String(s.reconnects);
    const codec = state.transportInfo?.codec;
    const label = state.transport === 'webrtc' ? `WebRTC${codec ? ` (${codec})` : ''}` : 'WebSocket';
    hud.transport.textContent = fallbackReason === null ? label : `${label} (fallback from WebRTC)`;
    hud.transport.title = fallbackReason ?? '';
    hud.upstream.textContent = s.upstreamBps === null ? '–' : (s.upstreamBps / 1000).toFixed(0);
    for (const note of hud.latencyNote) note.hidden = !state.latencyEstimated;
    drawSparkline(ui.sparkline, latencyTrace, now);
    // Also the WebSocket pump's watchdog: frees slots of frames that will never be answered.
    transport?.tick();
  }
  setInterval(refreshHud, 250);

  // ---- camera, then the connection

  connect();
  cameraSettled(await startCamera(ui, state, reportError));
  transport?.tick();
}

/**
 * Opens the camera into the <video>, with a clear message for each way it
 * can fail; returns its video track, or null when it failed.
 */
async function startCamera(ui, state, reportError) {
  const fail = (text) => {
    state.camera = 'failed';
    ui.cameraError.textContent = text;
    ui.cameraError.hidden = false;
    ui.stageMessage.textContent = 'No camera picture.';
    reportError('camera', text);
  };
  if (!navigator.mediaDevices?.getUserMedia) {
    fail('This browser offers no camera access here. Cameras need HTTPS (or localhost) and a current browser.');
    return null;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: 'user' },
      audio: false,
    });
  } catch (e) {
    const messages = {
      NotAllowedError: 'Camera permission was denied. Allow the camera for this site (the icon in the address bar) and reload.',
      SecurityError: 'Camera access is blocked by the browser’s security settings for this page.',
      NotFoundError: 'No camera was found. Connect a camera and reload.',
      OverconstrainedError: 'No camera supports the requested format.',
      NotReadableError: 'The camera is in use by another application, or the system refused to open it.',
      AbortError: 'Opening the camera was aborted.',
    };
    fail(messages[e.name] ?? `Could not open the camera: ${e.name}: ${e.message}`);
    return null;
  }
  const video = ui.video;
  video.srcObject = stream;
  try {
    await video.play();
  } catch (e) {
    fail(`The camera opened but its video did not start: ${e.message}`);
    return null;
  }
  const track = stream.getVideoTracks()[0];
  track.addEventListener('ended', () => fail('The camera stopped (unplugged or turned off).'));
  state.camera = 'live';
  const { width, height } = track.getSettings();
  state.cameraSize = { width: width ?? video.videoWidth, height: height ?? video.videoHeight };
  ui.stageMessage.textContent = 'Waiting for the first result…';
  return track;
}

// ------------------------------------------------------------------- routing

const page = document.body.dataset.page;
const start = page === 'login' ? initLogin : page === 'stream' ? initStream : null;
if (start) {
  start().catch((e) => {
    // Last resort: a failure during start-up is shown on the page, never just logged.
    const p = document.createElement('p');
    p.className = 'banner error';
    p.textContent = `The page failed to start: ${e.message}`;
    document.body.prepend(p);
    console.error(e);
  });
}
