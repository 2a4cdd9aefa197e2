// The WebSocket protocol of `holistream serve`, client side.
//
// Mirrors src/actors/protocol.rs: a frame travels client → server as one
// binary message, a little-endian header followed by the JPEG bytes; the
// server answers in JSON text messages.

/** First byte of every frame: protocol version 1 (FRAME_VERSION in protocol.rs). */
export const FRAME_VERSION = 0xa1;

/** Header bytes before the JPEG: u8 version, u32 seq, f64 capture_ts (ms). */
export const FRAME_HEADER_BYTES = 1 + 4 + 8;

/** Landmark counts of each part in a result, when the part was found. */
export const LANDMARK_COUNTS = Object.freeze({ pose: 33, face: 468, left_hand: 21, right_hand: 21 });

/** The parts a config message may ask for. */
export const PARTS = Object.freeze(['pose', 'face', 'hands']);

/**
 * Builds the binary message for one frame.
 * @param {number} seq frame sequence number (u32, wraps)
 * @param {number} captureTsMs capture time in ms since the epoch; echoed back in the result
 * @param {ArrayBuffer} jpeg the encoded frame
 * @returns {ArrayBuffer}
 */
export function encodeFrame(seq, captureTsMs, jpeg) {
  const out = new Uint8Array(FRAME_HEADER_BYTES + jpeg.byteLength);
  const view = new DataView(out.buffer);
  view.setUint8(0, FRAME_VERSION);
  view.setUint32(1, seq >>> 0, true);
  view.setFloat64(5, captureTsMs, true);
  out.set(new Uint8Array(jpeg), FRAME_HEADER_BYTES);
  return out.buffer;
}

/**
 * The config control message.
 * @param {number} fps the most frames per second the server should process
 * @param {{pose: boolean, face: boolean, hands: boolean}} parts
 * @param {number} people the most people to find (1..=max_people of `hello`);
 *   1 is single-person Holistic, whose results carry no `people` list
 */
export function configMessage(fps, parts, people = 1) {
  return JSON.stringify({ type: 'config', fps, parts: PARTS.filter((p) => parts[p]), people });
}

/** A server message that does not follow the protocol. */
export class ProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ProtocolError';
  }
}

function checkLandmarks(msg, part, withVisibility, holder = msg, who = '') {
  const list = holder[part];
  if (!Array.isArray(list)) throw new ProtocolError(`result ${msg.seq}:${who} "${part}" is not a list`);
  if (list.length !== 0 && list.length !== LANDMARK_COUNTS[part]) {
    throw new ProtocolError(`result ${msg.seq}:${who} ${list.length} ${part} landmarks, expected 0 or ${LANDMARK_COUNTS[part]}`);
  }
  for (const lm of list) {
    if (typeof lm?.x !== 'number' || typeof lm?.y !== 'number' || (withVisibility && typeof lm?.visibility !== 'number')) {
      throw new ProtocolError(`result ${msg.seq}:${who} malformed ${part} landmark`);
    }
  }
}

/** Checks a result's `people` list (present only when the session asked for more than one). */
function checkPeople(msg) {
  if (msg.people === undefined) return;
  if (!Array.isArray(msg.people)) throw new ProtocolError(`result ${msg.seq}: "people" is not a list`);
  const ids = new Set();
  for (const person of msg.people) {
    if (!Number.isInteger(person?.id)) throw new ProtocolError(`result ${msg.seq}: a person without an id`);
    if (ids.has(person.id)) throw new ProtocolError(`result ${msg.seq}: person ${person.id} listed twice`);
    ids.add(person.id);
    const who = ` person ${person.id}:`;
    checkLandmarks(msg, 'pose', true, person, who);
    checkLandmarks(msg, 'face', false, person, who);
    checkLandmarks(msg, 'left_hand', false, person, who);
    checkLandmarks(msg, 'right_hand', false, person, who);
  }
}

/**
 * Parses and checks one text message from the server, so the page never
 * draws or counts something malformed.
 * @param {string} text
 * @returns {{type: 'hello'|'result'|'error'|'stats'} & object}
 * @throws {ProtocolError}
 */
export function parseServerMessage(text) {
  let msg;
  try {
    msg = JSON.parse(text);
  } catch (e) {
    throw new ProtocolError(`server sent invalid JSON: ${e.message}`);
  }
  if (msg === null || typeof msg !== 'object') throw new ProtocolError('server message is not an object');
  switch (msg.type) {
    case 'result':
      if (!Number.isInteger(msg.seq)) throw new ProtocolError('result without a seq');
      if (typeof msg.capture_ts !== 'number') throw new ProtocolError(`result ${msg.seq} without capture_ts`);
      checkLandmarks(msg, 'pose', true);
      checkLandmarks(msg, 'face', false);
      checkLandmarks(msg, 'left_hand', false);
      checkLandmarks(msg, 'right_hand', false);
      checkPeople(msg);
      return msg;
    case 'error':
      if (typeof msg.code !== 'string' || typeof msg.message !== 'string') {
        throw new ProtocolError('error message without code or message');
      }
      return msg;
    case 'hello':
      if (typeof msg.config !== 'object' || msg.config === null) throw new ProtocolError('hello without config');
      return msg;
    case 'stats':
      for (const k of ['received', 'processed', 'dropped_stale', 'dropped_fps', 'dropped_overload', 'errors']) {
        if (typeof msg[k] !== 'number') throw new ProtocolError(`stats without a number "${k}"`);
      }
      return msg;
    default:
      throw new ProtocolError(`unknown server message type ${JSON.stringify(msg.type)}`);
  }
}
