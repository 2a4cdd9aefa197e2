// Drawing a Holistic result the way MediaPipe's Python demo does
// (drawing_utils.draw_landmarks with the default drawing_styles).
//
// The selfie view is a mirror of the *drawing*: the context is flipped, the
// landmarks are not, so a result's left hand stays the person's left hand.
//
// A result with a `people` list (the session asked for more than one) is
// drawn person by person, each in the colour of its id with the id by its
// head; a result without one is drawn in MediaPipe's own styles.

import {
  POSE_CONNECTIONS, POSE_LEFT, POSE_RIGHT,
  HAND_PALM_CONNECTIONS, HAND_THUMB_CONNECTIONS, HAND_INDEX_FINGER_CONNECTIONS,
  HAND_MIDDLE_FINGER_CONNECTIONS, HAND_RING_FINGER_CONNECTIONS, HAND_PINKY_FINGER_CONNECTIONS,
  HAND_DOT_GROUPS, FACEMESH_TESSELATION, FACEMESH_LIPS, FACEMESH_LEFT_EYE, FACEMESH_LEFT_EYEBROW,
  FACEMESH_RIGHT_EYE, FACEMESH_RIGHT_EYEBROW, FACEMESH_FACE_OVAL, STYLE,
} from './connections.js';

/** drawing_utils skips pose landmarks below this visibility. */
const VISIBILITY_THRESHOLD = 0.5;

const HAND_BONES = {
  PALM: HAND_PALM_CONNECTIONS,
  THUMB: HAND_THUMB_CONNECTIONS,
  INDEX_FINGER: HAND_INDEX_FINGER_CONNECTIONS,
  MIDDLE_FINGER: HAND_MIDDLE_FINGER_CONNECTIONS,
  RING_FINGER: HAND_RING_FINGER_CONNECTIONS,
  PINKY_FINGER: HAND_PINKY_FINGER_CONNECTIONS,
};

const FACE_CONTOURS = {
  LIPS: FACEMESH_LIPS,
  LEFT_EYE: FACEMESH_LEFT_EYE,
  LEFT_EYEBROW: FACEMESH_LEFT_EYEBROW,
  RIGHT_EYE: FACEMESH_RIGHT_EYE,
  RIGHT_EYEBROW: FACEMESH_RIGHT_EYEBROW,
  FACE_OVAL: FACEMESH_FACE_OVAL,
};

/**
 * One colour per person, chosen by id, so a person keeps its colour while
 * tracked. Bright enough on video; distinct from each other.
 */
export const PERSON_COLOURS = Object.freeze([
  '#ff5252', '#40c4ff', '#69f0ae', '#ffd740', '#e040fb', '#ff9100', '#18ffff', '#b2ff59',
]);

/** The colour of person `id`. */
export function personColour(id) {
  return PERSON_COLOURS[((id % PERSON_COLOURS.length) + PERSON_COLOURS.length) % PERSON_COLOURS.length];
}

function mirrorTransform(ctx, mirror) {
  if (mirror) ctx.setTransform(-1, 0, 0, 1, ctx.canvas.width, 0);
  else ctx.setTransform(1, 0, 0, 1, 0, 0);
}

/**
 * Draws one sent frame on the frame canvas (resizing it to the frame).
 * @param {CanvasRenderingContext2D} ctx
 * @param {ImageBitmap} bitmap
 * @param {boolean} mirror
 */
export function drawFrame(ctx, bitmap, mirror) {
  const canvas = ctx.canvas;
  if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
  }
  mirrorTransform(ctx, mirror);
  ctx.drawImage(bitmap, 0, 0);
  ctx.setTransform(1, 0, 0, 1, 0, 0);
}

/** Pixel positions of the landmarks to draw, `null` for the skipped ones. */
function toPixels(landmarks, w, h, checkVisibility) {
  return landmarks.map((lm) =>
    checkVisibility && lm.visibility < VISIBILITY_THRESHOLD ? null : [lm.x * w, lm.y * h]);
}

function strokeConnections(ctx, points, connections, colour, width) {
  ctx.strokeStyle = colour;
  ctx.lineWidth = width;
  ctx.beginPath();
  for (const [a, b] of connections) {
    const pa = points[a];
    const pb = points[b];
    if (!pa || !pb) continue;
    ctx.moveTo(pa[0], pa[1]);
    ctx.lineTo(pb[0], pb[1]);
  }
  ctx.stroke();
}

function circle(ctx, [x, y], radius, colour, filled, width) {
  ctx.beginPath();
  ctx.arc(x, y, radius, 0, 2 * Math.PI);
  if (filled) {
    ctx.fillStyle = colour;
    ctx.fill();
  } else {
    ctx.strokeStyle = colour;
    ctx.lineWidth = width;
    ctx.stroke();
  }
}

// Each draw function takes `colour`: null for MediaPipe's styles (one
// person), or one colour for every line and dot of a person (several).

function drawFace(ctx, face, w, h, colour = null) {
  const points = toPixels(face, w, h, false);
  strokeConnections(ctx, points, FACEMESH_TESSELATION, colour ?? STYLE.face.tesselation, STYLE.face.tesselationWidth);
  for (const [name, connections] of Object.entries(FACE_CONTOURS)) {
    strokeConnections(ctx, points, connections, colour ?? STYLE.face.contours[name], STYLE.face.contourWidth);
  }
}

function drawPose(ctx, pose, w, h, colour = null) {
  const points = toPixels(pose, w, h, true);
  strokeConnections(ctx, points, POSE_CONNECTIONS, colour ?? STYLE.pose.connection, STYLE.pose.connectionWidth);
  // drawing_utils: a white ring one pixel wider, then the landmark's own colour.
  const r = STYLE.pose.radius;
  points.forEach((p, i) => {
    if (!p) return;
    const own = POSE_LEFT.has(i) ? STYLE.pose.left : POSE_RIGHT.has(i) ? STYLE.pose.right : STYLE.pose.nose;
    circle(ctx, p, Math.max(r + 1, Math.trunc(r * 1.2)), STYLE.landmarkRing, false, STYLE.pose.connectionWidth);
    circle(ctx, p, r, colour ?? own, false, STYLE.pose.connectionWidth);
  });
}

function drawHand(ctx, hand, w, h, colour = null) {
  const points = toPixels(hand, w, h, false);
  for (const [name, bones] of Object.entries(HAND_BONES)) {
    const width = name === 'PALM' ? STYLE.hand.palmWidth : STYLE.hand.fingerWidth;
    strokeConnections(ctx, points, bones, colour ?? STYLE.hand.colours[name], width);
  }
  const r = STYLE.hand.radius;
  for (const [name, indices] of Object.entries(HAND_DOT_GROUPS)) {
    const own = name === 'PALM' ? STYLE.hand.palmDot : STYLE.hand.colours[name];
    for (const i of indices) {
      circle(ctx, points[i], Math.max(r + 1, Math.trunc(r * 1.2)), STYLE.landmarkRing, true);
      circle(ctx, points[i], r, colour ?? own, true);
    }
  }
}

/**
 * Labels a hand at its wrist with the person's side. Text is drawn without
 * the mirror transform (mirrored letters are unreadable); only its position
 * is mirrored.
 */
function labelHand(ctx, hand, label, w, h, mirror) {
  const wrist = hand[0];
  drawLabel(ctx, label, wrist.x, wrist.y, 0, 22, w, h, mirror, 'white');
}

/** Text at normalised (x, y) plus a pixel offset, unmirrored, outlined for any background. */
function drawLabel(ctx, text, x, y, dx, dy, w, h, mirror, colour) {
  const px = (mirror ? (1 - x) * w : x * w) + dx;
  const py = y * h + dy;
  ctx.font = 'bold 16px system-ui, sans-serif';
  ctx.textAlign = 'center';
  ctx.lineWidth = 3;
  ctx.strokeStyle = 'rgba(0, 0, 0, 0.7)';
  ctx.strokeText(text, px, py);
  ctx.fillStyle = colour;
  ctx.fillText(text, px, py);
}

/**
 * Where a person's id goes: above the head, from the face's top when there
 * is a face, else from the pose's head landmarks (nose, eyes, ears), else
 * above the highest visible pose landmark.
 */
function headTop(person) {
  if (person.face.length) {
    const top = person.face.reduce((a, b) => (b.y < a.y ? b : a));
    const xs = person.face.map((p) => p.x);
    return { x: (Math.min(...xs) + Math.max(...xs)) / 2, y: top.y };
  }
  const head = person.pose.slice(0, 11).filter((p) => p.visibility >= VISIBILITY_THRESHOLD);
  const points = head.length ? head : person.pose.filter((p) => p.visibility >= VISIBILITY_THRESHOLD);
  if (!points.length) return null;
  const top = points.reduce((a, b) => (b.y < a.y ? b : a));
  return { x: top.x, y: top.y };
}

function drawPerson(ctx, person, w, h) {
  const colour = personColour(person.id);
  if (person.face.length) drawFace(ctx, person.face, w, h, colour);
  if (person.pose.length) drawPose(ctx, person.pose, w, h, colour);
  if (person.left_hand.length) drawHand(ctx, person.left_hand, w, h, colour);
  if (person.right_hand.length) drawHand(ctx, person.right_hand, w, h, colour);
}

function labelPerson(ctx, person, w, h, mirror) {
  const colour = personColour(person.id);
  if (person.left_hand.length) labelHand(ctx, person.left_hand, 'L', w, h, mirror);
  if (person.right_hand.length) labelHand(ctx, person.right_hand, 'R', w, h, mirror);
  const head = headTop(person);
  if (head) drawLabel(ctx, `#${person.id}`, head.x, head.y, 0, -10, w, h, mirror, colour);
}

/**
 * Clears the overlay canvas and draws a result on it: everyone in its
 * `people` list when it has one, else the one person of its top-level parts.
 * @param {CanvasRenderingContext2D} ctx overlay context, sized like the frame
 * @param {{pose: object[], face: object[], left_hand: object[], right_hand: object[], people?: object[]}} result
 * @param {boolean} mirror
 */
export function drawResult(ctx, result, mirror) {
  const { width: w, height: h } = ctx.canvas;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, w, h);
  mirrorTransform(ctx, mirror);
  ctx.lineCap = 'round';
  if (Array.isArray(result.people)) {
    for (const person of result.people) drawPerson(ctx, person, w, h);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    for (const person of result.people) labelPerson(ctx, person, w, h, mirror);
    return;
  }
  if (result.face.length) drawFace(ctx, result.face, w, h);
  if (result.pose.length) drawPose(ctx, result.pose, w, h);
  if (result.left_hand.length) drawHand(ctx, result.left_hand, w, h);
  if (result.right_hand.length) drawHand(ctx, result.right_hand, w, h);
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  if (result.left_hand.length) labelHand(ctx, result.left_hand, 'L', w, h, mirror);
  if (result.right_hand.length) labelHand(ctx, result.right_hand, 'R', w, h, mirror);
}

/** Clears the overlay. */
export function clearResult(ctx) {
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, ctx.canvas.width, ctx.canvas.height);
}
