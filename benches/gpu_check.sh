#!/usr/bin/env bash
# The GPU path in one go, for a machine with a GPU (issue 15): builds the
# binary with a GPU feature in its own target folder (the CPU build stays),
# checks parity on the GPU device, times the nets per frame (alone and in a
# batch of $BATCH), then serves it twice, one frame at a time
# (pool.max_batch = 1) and batched across sessions ($WORKERS workers in
# batches of $BATCH), each loaded with 1, 16 and 64 clients at 20 fps;
# prints one table.
#
#   bash benches/gpu_check.sh [wgpu|cuda] [--bin PATH]
#   GPU_CHECK_WORKERS=64 GPU_CHECK_BATCH=16 (the defaults)
#
# `--bin` skips the build and uses that binary (built with the feature).
# Without a GPU, Mesa's lavapipe runs the `wgpu` path on the CPU (slowly):
#   VK_ICD_FILENAMES=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json XDG_RUNTIME_DIR=/tmp \
#     bash benches/gpu_check.sh wgpu --bin target/debug/holistream
# Needs ../shared/testdata (the photos and MediaPipe's goldens), curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
FEATURE=${1:-wgpu}
WORKERS=${GPU_CHECK_WORKERS:-64}
BATCH=${GPU_CHECK_BATCH:-16}
BIN=""
if [ "${2:-}" = "--bin" ]; then BIN=$(realpath "$3"); fi
case "$FEATURE" in wgpu|cuda) ;; *) echo "feature must be wgpu or cuda" >&2; exit 2 ;; esac
TESTDATA=../shared/testdata
[ -d "$TESTDATA/images" ] || { echo "missing $TESTDATA (photos and goldens)" >&2; exit 2; }
T=$(mktemp -d)
SERVER=""
cleanup() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
stamp() { date +%s; }
START=$(stamp)

if [ -z "$BIN" ]; then
  echo "== build (--features $FEATURE, target/gpu-$FEATURE)"
  b0=$(stamp)
  CARGO_TARGET_DIR=target/gpu-$FEATURE cargo build --release --locked --features "$FEATURE" --bin holistream
  BIN=$(realpath "target/gpu-$FEATURE/release/holistream")
  echo "built in $(( $(stamp) - b0 )) s"
fi
# The generated burn code runs on the GPU device; the fused kernels are CPU only.
export HOLISTREAM_NETS=burn

echo "== parity on the $FEATURE device"
p0=$(stamp)
"$BIN" parity "$TESTDATA" >"$T/parity.txt" 2>"$T/parity.err" && PARITY=pass || PARITY=FAIL
PARITY_LINE=$(grep -m1 "^summary: .* images" "$T/parity.txt" || echo "no summary (see stderr)")
echo "$PARITY_LINE ($(( $(stamp) - p0 )) s)"

echo "== per-frame times"
"$BIN" bench --nets burn --iters 5 --throughput-frames 20 --batch "$BATCH" >"$T/bench.txt" 2>&1 || true
# Rows "frame static  <burn ms> <fused ms> ...": the burn column.
FRAME_STATIC=$(awk '/^frame static/ {print $3; exit}' "$T/bench.txt")
FRAME_TRACK=$(awk '/^frame tracking/ {print $3; exit}' "$T/bench.txt")
BATCH_LINE=$(grep -m1 "^batch burn" "$T/bench.txt" || echo "batch: no figure (see the bench's output)")
grep -E "^frame|^burn |^batch " "$T/bench.txt" | head -10 || true

echo "== served"
python3 benches/split_clip.py "$T"
export HOLISTREAM_PASSWORD=gpu-check-entry-code
ROWS=""
# "batch 1": the pool's default workers, one frame per pass; "batched":
# $WORKERS workers grouped by $BATCH around one model thread per group.
for setting in "1 default" "$BATCH $WORKERS"; do
  read -r batch workers <<<"$setting"
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  flags=(--port "$PORT")
  [ "$workers" = default ] || flags+=(--workers "$workers")
  HOLISTREAM_MAX_BATCH=$batch HOLISTREAM_RTC_ENABLED=false RUST_LOG=warn \
    "$BIN" serve "${flags[@]}" >"$T/serve-$batch.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 900); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.2; done
  for clients in 1 16 64; do
    "$BIN" loadgen --url "http://127.0.0.1:$PORT" --clients "$clients" --fps 20 --duration 15 \
      --image "$T"/f*.jpg --json >"$T/load-$batch-$clients.json" 2>"$T/load-$batch-$clients.err" || true
    ROWS+=$(python3 - "$T/load-$batch-$clients.json" "$clients" "$batch" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception:
    print(f"| {sys.argv[3]} | {sys.argv[2]} | failed | | | | |")
    sys.exit()
per = r["result_fps_per_client"]
at20 = sum(1 for f in per if f >= 19.0)
errors = " ".join(f"{k}={v}" for k, v in sorted(r["errors"].items())) or "none"
print(f"| {sys.argv[3]} | {r['clients']} | {r['result_fps_mean']:.1f} | {at20} | {r['latency_ms']['p50']:.0f} | {r['latency_ms']['p99']:.0f} | {errors} |")
PY
)$'\n'
  done
  BATCHES=$(curl -fs "http://127.0.0.1:$PORT/metrics" | awk '/^holistream_inference_batch_frames_(sum|count)/ {printf "%s=%s ", $1, $2}')
  [ -z "$BATCHES" ] || echo "max_batch $batch: $BATCHES"
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  SERVER=""
done

echo
echo "GPU check: --features $FEATURE, HOLISTREAM_NETS=burn, $(( $(stamp) - START )) s in all"
echo "parity: $PARITY: $PARITY_LINE"
echo "per frame (median ms): static ${FRAME_STATIC:-?}, tracking ${FRAME_TRACK:-?} (batch 1)"
echo "$BATCH_LINE"
echo
echo "| max_batch | clients | results/s per client | clients at 20 fps | p50 ms | p99 ms | errors |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
printf "%s" "$ROWS"
[ "$PARITY" = pass ]
