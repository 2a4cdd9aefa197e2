#!/usr/bin/env bash
# The WebSocket against WebRTC (H.264 and VP8) on one server, alternating:
# upstream bitrate, end-to-end latency, server times, and each codec's decode
# time (from /metrics). One loadgen client at 20 fps for 15 s per run, on the
# in-repo clip's frames (tests/fixtures/clip, 45 frames of 640x480), on
# loopback, client and server sharing the machine's cores.
#
#   cargo build && bash benches/transport_compare.sh [target/debug/holistream] [rounds]
#
# Needs curl and python3 (to split the clip into JPEG files).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/debug/holistream}")
ROUNDS=${2:-2}
T=$(mktemp -d)
SERVER=""
cleanup() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
python3 benches/split_clip.py "$T"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export HOLISTREAM_PASSWORD=transport-compare-code
HOLISTREAM_RTC_PORT=0 RUST_LOG=warn "$BIN" serve --port "$PORT" >"$T/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 600); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.2; done
for round in $(seq 1 "$ROUNDS"); do
  for t in "ws" "rtc h264" "rtc vp8"; do
    set -- $t
    extra=()
    [ "$1" = rtc ] && extra=(--transport rtc --codec "$2")
    echo "== round $round: $t"
    "$BIN" loadgen --url "http://127.0.0.1:$PORT" --clients 1 --fps 20 --duration 15 \
      --image "$T"/f*.jpg "${extra[@]}" | grep -E "transport|latency|result fps|server ms"
  done
done
echo "== decode per frame (mean over every run)"
curl -fs "http://127.0.0.1:$PORT/metrics" | awk '
  /^holistream_rtc_decode_seconds_sum/ { split($1, a, "\""); sum[a[2]] = $2 }
  /^holistream_rtc_decode_seconds_count/ { split($1, a, "\""); n[a[2]] = $2 }
  END { for (c in n) if (n[c] > 0) printf "%s %.2f ms over %d frames\n", c, 1000 * sum[c] / n[c], n[c] }'
