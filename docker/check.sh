#!/usr/bin/env bash
# Checks the deploy files as far as a machine without a Docker engine allows:
#   1. docker/compose.yaml parses and validates (docker-compose `config`,
#      which resolves anchors, merges and env interpolation and checks the
#      schema), and names the services the docs promise;
#   2. docker/nginx.conf passes `nginx -t` (the upstream host names are
#      pointed at loopback in a scratch copy, since only compose's network
#      resolves them);
#   3. docker/Dockerfile: every COPY source exists, the stages, the build
#      command (tests/deploy_files.rs checks it against CI's build);
#   4. with --build: builds the exact binary the Dockerfile builds, the same
#      way (`cargo build --release --locked --bin holistream`), and runs it.
# Needs: docker-compose (Debian package) and nginx (nginx-light); installs them
# when missing and running as root.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing: ${need[*]} (install them, or run as root)" >&2; exit 1
  fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

echo "== compose: validate"
HOLISTREAM_PASSWORD=check docker-compose -f docker/compose.yaml config >"$scratch/compose.resolved.yaml"
services=$(HOLISTREAM_PASSWORD=check docker-compose -f docker/compose.yaml config --services | sort | tr '\n' ' ')
[ "$services" = "gateway1 gateway2 nginx redis worker " ] || { echo "unexpected services: $services" >&2; exit 1; }
# The password must be required, not defaulted.
if env -u HOLISTREAM_PASSWORD docker-compose -f docker/compose.yaml config >/dev/null 2>&1; then
  echo "compose accepted a missing HOLISTREAM_PASSWORD" >&2; exit 1
fi
# The worker must be scalable: no fixed container name, no published port.
# Debian's python3 has yaml (python3-yaml comes with docker-compose).
PY3=$([ -x /usr/bin/python3 ] && echo /usr/bin/python3 || command -v python3)
"$PY3" - "$scratch/compose.resolved.yaml" <<'PY'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
w = c["services"]["worker"]
assert "container_name" not in w and "ports" not in w, "worker cannot be scaled"
for g in ("gateway1", "gateway2"):
    env = c["services"][g]["environment"]
    assert env["HOLISTREAM_POOL"] == "redis", g
assert c["services"]["worker"]["command"][0] == "worker"
PY

echo "== nginx: nginx -t"
mkdir -p "$scratch/nginx"
sed -e 's/server gateway[12]:8080/server 127.0.0.1:8080/' docker/nginx.conf >"$scratch/nginx/nginx.conf"
"$NGINX" -t -q -c "$scratch/nginx/nginx.conf" -g "error_log $scratch/nginx/error.log;"
# The optional TLS block too: uncommented, with a throwaway self-signed pair.
python3 - "$scratch/nginx/nginx.conf" "$scratch/nginx/tls.conf" "$scratch/nginx" <<'PY'
import sys
src, dst, certs = sys.argv[1:]
out, tls = [], False
for line in open(src):
    if "TLS termination" in line:
        tls = True
    if tls and line.startswith("    # ") and not line.startswith("    # TLS") and (line[6:7] in " s}"):
        line = "    " + line[6:]
    out.append(line.replace("/etc/nginx/certs", certs))
text = "".join(out)
assert "listen 443 ssl;" in text and "\n    server {\n        listen 443" in text, "TLS block not found"
open(dst, "w").write(text)
PY
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
  -keyout "$scratch/nginx/privkey.pem" -out "$scratch/nginx/fullchain.pem" 2>/dev/null
"$NGINX" -t -q -c "$scratch/nginx/tls.conf" -g "error_log $scratch/nginx/error.log;"
grep -q 'proxy_set_header Upgrade \$http_upgrade' docker/nginx.conf
grep -q 'proxy_read_timeout 3600s' docker/nginx.conf

echo "== Dockerfile: sources and stages"
grep -q '^FROM .* AS build$' docker/Dockerfile
grep -q '^FROM .* AS runtime$' docker/Dockerfile
grep -q 'cargo build --release --locked --bin holistream' docker/Dockerfile
grep -q '^USER holistream' docker/Dockerfile
grep -q '^HEALTHCHECK ' docker/Dockerfile
# Each COPY from the context must name something that exists (after .dockerignore).
grep -E '^COPY [^-]' docker/Dockerfile | while read -r _ src _; do
  [ -e "$src" ] || { echo "Dockerfile copies missing $src" >&2; exit 1; }
done

if [ "${1:-}" = "--build" ]; then
  echo "== build the image's binary the way the Dockerfile does"
  cargo build --release --locked --bin holistream
  ./target/release/holistream --help >/dev/null
fi
echo "deploy files: ok"
