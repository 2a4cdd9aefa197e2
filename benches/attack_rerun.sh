#!/usr/bin/env bash
# The open-internet review's attack list (issue 11), re-run against a build
# of holistream behind the shipped nginx, on loopback only: prints each
# attack's answer (status codes, times) and the processes' memory.
#
#   cargo build --release && bash benches/attack_rerun.sh [target/release/holistream]
#
# Needs redis-server, nginx-light, curl. Starts: a Redis with a password, two
# `worker`s, two `serve --pool redis` gateways trusting 127.0.0.1, the shipped
# nginx in front of them on a free port, and one `serve` with the in-process
# pool (whose /metrics counts worker restarts). Everything is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release/holistream}")
T=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$T/nginx.pid" ] && kill "$(cat "$T/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 600); do curl -fs -o /dev/null "$1" && return 0; sleep 0.2; done; echo "no answer from $1" >&2; exit 1; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
threads() { awk '/Threads/ {print $2}' "/proc/$1/status"; }

CODE=attack-rerun-entry-code
RPW=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
RP=$(free_port); G1=$(free_port); G2=$(free_port); N=$(free_port); L=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --requirepass "$RPW" --save "" --appendonly no >/dev/null &
PIDS+=($!)
export REDIS_URL="redis://:$RPW@127.0.0.1:$RP/0" HOLISTREAM_PASSWORD=$CODE RUST_LOG=info
for w in 1 2; do "$BIN" worker --workers 1 --name "w$w" >"$T/w$w.log" 2>&1 & PIDS+=($!); done
HOLISTREAM_TRUSTED_PROXIES=127.0.0.1/32 "$BIN" serve --pool redis --port "$G1" --gateway-id g1 >"$T/g1.log" 2>&1 &
PIDS+=($!); GW1=$!
HOLISTREAM_TRUSTED_PROXIES=127.0.0.1/32 "$BIN" serve --pool redis --port "$G2" --gateway-id g2 >"$T/g2.log" 2>&1 &
PIDS+=($!); GW2=$!
env -u REDIS_URL "$BIN" serve --port "$L" --workers 2 >"$T/local.log" 2>&1 &
PIDS+=($!); LOCAL=$!

# nginx with the shipped files; only upstreams, listen port, pid and scratch
# folders rewritten (as tests/nginx.rs does).
mkdir -p "$T/conf/holistream" "$T/temp"
sed -e "s/server gateway1:8080 /server 127.0.0.1:$G1 /" -e "s/server gateway2:8080 /server 127.0.0.1:$G2 /" \
    -e "s#pid /tmp/nginx.pid;#pid $T/nginx.pid;#" \
    -e "s#^http {#http {\n    client_body_temp_path $T/temp/cb; proxy_temp_path $T/temp/p; fastcgi_temp_path $T/temp/f; uwsgi_temp_path $T/temp/u; scgi_temp_path $T/temp/s;#" \
    docker/nginx.conf >"$T/conf/nginx.conf"
for f in docker/nginx/*.conf; do
  sed -e "s/listen 80 default_server;/listen 127.0.0.1:$N default_server;/" "$f" >"$T/conf/holistream/$(basename "$f")"
done
sh docker/nginx-site.sh "$T/conf" >/dev/null
nginx -p "$T/conf" -c "$T/conf/nginx.conf" -e "$T/nginx.err" -g 'daemon on;'
NG="http://127.0.0.1:$N"
wait_http "http://127.0.0.1:$L/healthz"; wait_http "http://127.0.0.1:$G1/healthz"; wait_http "http://127.0.0.1:$G2/healthz"
wait_http "$NG/healthz"

login() { # login BASE [curl args...] -> prints "status cookie"
  local base=$1; shift
  curl -s -o /dev/null -D "$T/h" -w '%{http_code}' "$@" -H 'Content-Type: application/json' \
    -d "{\"code\":\"$CODE\"}" "$base/auth/code"
  echo " $(grep -io 'holistream_session=[^;]*' "$T/h" || true)"
}
code_of() { curl -s -o /dev/null -w '%{http_code} %{time_total}s' "$@"; }

echo "== 1. admin routes with an ordinary login"
read -r _ COOKIE <<<"$(login "$NG")"
echo "POST /admin/faults stall=1:3600s with a session cookie, through nginx: $(code_of -H "Cookie: $COOKIE" -H 'Content-Type: application/json' -d '{"faults":"stall=1:3600s"}' "$NG/admin/faults")"
echo "the same, straight to a gateway:                                    $(code_of -H "Cookie: $COOKIE" -H 'Content-Type: application/json' -d '{"faults":"stall=1:3600s"}' "http://127.0.0.1:$G1/admin/faults")"
echo "GET /metrics through nginx: $(code_of "$NG/metrics"); //metrics: $(code_of --path-as-is "$NG//metrics"); straight to a gateway: $(code_of "http://127.0.0.1:$G1/metrics")"

echo "== 2. wrong codes from 127.0.0.21, then the right code from 127.0.0.22 (through nginx)"
for i in 1 2 3 4 5 6; do
  printf '%s ' "$(curl -s -o /dev/null -w '%{http_code}' --interface 127.0.0.21 -H 'Content-Type: application/json' -d '{"code":"guess"}' "$NG/auth/code")"
done; echo "(127.0.0.21, wrong code x6)"
echo "127.0.0.22, right code: $(login "$NG" --interface 127.0.0.22 | cut -d' ' -f1)"
echo "127.0.0.21, right code, claiming X-Forwarded-For 203.0.113.9: $(login "$NG" --interface 127.0.0.21 -H 'X-Forwarded-For: 203.0.113.9' | cut -d' ' -f1)"

echo "== 3. the demo's WebSocket through nginx on port $N (Origin and Host 127.0.0.1:$N)"
echo "upgrade: $(curl -s -o /dev/null -w '%{http_code}' --max-time 3 -H "Cookie: $COOKIE" -H "Origin: $NG" \
  -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
  -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' "$NG/ws" || true)"
"$BIN" loadgen --url "$NG" --password "$CODE" --clients 1 --fps 10 --duration 5 --image tests/fixtures/obama.jpg --json >"$T/lg_ok.json"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("loadgen through nginx: sent", r["sent"], "results", r["results"], "errors", r["errors"])' "$T/lg_ok.json" 2>/dev/null || head -c 600 "$T/lg_ok.json"

echo "== 4/5. decoder bombs and a CMYK frame against the in-process pool (127.0.0.1:$L)"
LB="http://127.0.0.1:$L"
echo "before: RSS $(rss_mb $LOCAL) MB, $(threads $LOCAL) threads"
"$BIN" loadgen --url "$LB" --password "$CODE" --clients 1 --fps 20 --duration 10 --image tests/fixtures/obama.jpg --json >"$T/victim.json" &
V=$!
"$BIN" loadgen --url "$LB" --password "$CODE" --clients 4 --fps 20 --duration 10 --size original \
  --image tests/fixtures/attack/progressive_8192x4880.jpg tests/fixtures/attack/baseline_8192x4880.jpg \
          tests/fixtures/attack/progressive_1920x1080.jpg --json >"$T/bombs.json"
wait $V
echo "after 4 clients x 20 fps of bombs for 10 s: RSS $(rss_mb $LOCAL) MB, $(threads $LOCAL) threads"
python3 - "$T/bombs.json" "$T/victim.json" <<'PY'
import json, sys
b, v = (json.load(open(p)) for p in sys.argv[1:3])
print("bombs: sent", b["sent"], "answers by code", b["errors"], "results", b["results"])
print("an honest client beside them: sent", v["sent"], "results", v["results"], "latency", v.get("latency_ms"))
PY
"$BIN" loadgen --url "$LB" --password "$CODE" --clients 1 --fps 60 --duration 10 --size original \
  --image tests/fixtures/attack/cmyk_8x8.jpg --json >"$T/cmyk.json"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("CMYK at 60 fps, 10 s: sent", r["sent"], "answers", r["errors"])' "$T/cmyk.json"
echo "worker restarts: $(curl -s "$LB/metrics" | grep '^holistream_worker_restarts_total' | tr '\n' ' ')"
echo "after: RSS $(rss_mb $LOCAL) MB, $(threads $LOCAL) threads"

echo "== 6. the session token in logs or hello"
TOKEN=${COOKIE#holistream_session=}
echo "gateway logs naming the token: $(cat "$T"/g1.log "$T"/g2.log "$T"/local.log | grep -c "$TOKEN" || true)"

echo "== 7. headers through nginx"
curl -s -D - -o /dev/null "$NG/" | grep -iE '^(content-security-policy|x-content-type-options|x-frame-options|referrer-policy|strict-transport-security):' || true
echo "Redis without its password: $(redis-cli -p "$RP" ping 2>&1 | head -1)"
