"""MediaPipe's side of `holistream bench --mediapipe PYTHON`.

Run by the bench with a Python that has mediapipe==0.10.14 (and, for the
per-net rows, ai-edge-litert or tflite-runtime): times MediaPipe Holistic per
frame in static and in tracking mode on the same images, and each net's
forward pass with the TFLite interpreter (XNNPACK, one thread), and prints
one JSON object. Usage: python mediapipe_bench.py ITERS IMAGE...

Throughput: python mediapipe_bench.py throughput static|tracking FRAMES
IMAGE... loads one Holistic, runs a warm-up frame, prints "ready", waits for
a line on stdin (the bench starts all its processes together this way), then
processes FRAMES frames cycling through the images and prints one JSON
object with its wall-clock start and end (time.time(), shared by the
processes) and the frame count.
"""
import json
import os
import statistics
import sys
import time

import cv2
import mediapipe as mp
import numpy as np


def read_frames(paths):
    frames = []
    for path in paths:
        bgr = cv2.imread(path)
        if bgr is None:
            sys.exit(f"cannot read {path}")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return frames


def holistic(static):
    return mp.solutions.holistic.Holistic(
        static_image_mode=static, model_complexity=1, refine_face_landmarks=False
    )


if sys.argv[1] == "throughput":
    static = {"static": True, "tracking": False}[sys.argv[2]]
    count = int(sys.argv[3])
    frames = read_frames(sys.argv[4:])
    with holistic(static) as h:
        h.process(frames[0])
        print("ready", flush=True)
        sys.stdin.readline()
        start = time.time()
        for i in range(count):
            h.process(frames[i % len(frames)])
        end = time.time()
    print(json.dumps({"start": start, "end": end, "frames": count}), flush=True)
    sys.exit(0)

iters = int(sys.argv[1])
frames = read_frames(sys.argv[2:])


def frame_ms(static):
    # As the Rust bench: per image one warm-up frame, then `iters` frames; in
    # tracking mode each image is a still video (a fresh graph per image).
    times = []
    for img in frames:
        with holistic(static) as h:
            h.process(img)
            for _ in range(iters):
                t = time.perf_counter()
                h.process(img)
                times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


out = {
    "source": f"mediapipe {mp.__version__}, measured in this run",
    "static_ms": frame_ms(True),
    "tracking_ms": frame_ms(False),
    "nets": {},
}

interpreter = None
try:
    from ai_edge_litert.interpreter import Interpreter as interpreter
except ImportError:
    try:
        from tflite_runtime.interpreter import Interpreter as interpreter
    except ImportError:
        out["nets_error"] = "no TFLite interpreter (pip install ai-edge-litert)"

if interpreter is not None:
    modules = os.path.join(os.path.dirname(mp.__file__), "modules")
    nets = {
        "pose_detection": "pose_detection/pose_detection.tflite",
        "pose_landmark_full": "pose_landmark/pose_landmark_full.tflite",
        "face_detection_short_range": "face_detection/face_detection_short_range.tflite",
        "face_landmark": "face_landmark/face_landmark.tflite",
        "hand_recrop": "holistic_landmark/hand_recrop.tflite",
        "hand_landmark_full": "hand_landmark/hand_landmark_full.tflite",
    }
    for name, rel in nets.items():
        net = interpreter(model_path=os.path.join(modules, rel), num_threads=1)
        net.allocate_tensors()
        inp = net.get_input_details()[0]
        net.set_tensor(inp["index"], np.full(inp["shape"], 0.5, dtype=np.float32))
        net.invoke()
        times = []
        for _ in range(max(iters, 5) * 4):
            t = time.perf_counter()
            net.invoke()
            times.append((time.perf_counter() - t) * 1e3)
        out["nets"][name] = statistics.median(times)

print(json.dumps(out))
