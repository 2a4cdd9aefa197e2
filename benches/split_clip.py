"""Writes the in-repo clip's frames (tests/fixtures/clip/obama_640x480.mjpeg,
baseline JPEGs back to back) as f000.jpg, f001.jpg, ... into the folder given,
for `holistream loadgen --image` (which takes image files, not a clip).

    python3 benches/split_clip.py OUT_DIR
"""

import sys

clip = open("tests/fixtures/clip/obama_640x480.mjpeg", "rb").read()
i = n = 0
# Entropy-coded data stuffs every 0xFF, so FFD9 only ends an image.
while (s := clip.find(b"\xff\xd8", i)) >= 0 and (e := clip.find(b"\xff\xd9", s)) >= 0:
    open(f"{sys.argv[1]}/f{n:03d}.jpg", "wb").write(clip[s : e + 2])
    n, i = n + 1, e + 2
