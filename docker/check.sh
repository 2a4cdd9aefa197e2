#!/usr/bin/env bash
# Checks the deploy files as far as a machine without a Docker engine allows:
#   1. docker/compose.yaml parses and validates (docker-compose `config`,
#      which resolves anchors, merges and env interpolation and checks the
#      schema), and names the services the docs promise;
#   2. docker/nginx.conf passes `nginx -t` in both of its sites, each picked
#      by docker/nginx-site.sh as in the container: plain HTTP (no
#      certificate) and HTTPS (a throwaway self-signed one); the upstream host
#      names are pointed at loopback in a scratch copy, since only compose's
#      network resolves them. tests/nginx.rs runs the same files with real
#      traffic;
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
export HOLISTREAM_PASSWORD=check REDIS_PASSWORD=check-redis
docker-compose -f docker/compose.yaml config >"$scratch/compose.resolved.yaml"
services=$(docker-compose -f docker/compose.yaml config --services | sort | tr '\n' ' ')
[ "$services" = "gateway1 gateway2 nginx redis worker " ] || { echo "unexpected services: $services" >&2; exit 1; }
# The passwords must be required, not defaulted.
for secret in HOLISTREAM_PASSWORD REDIS_PASSWORD; do
  if env -u "$secret" docker-compose -f docker/compose.yaml config >/dev/null 2>&1; then
    echo "compose accepted a missing $secret" >&2; exit 1
  fi
done
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
# Redis wants its password, and everyone who talks to it has it.
r = c["services"]["redis"]["command"]
assert r[r.index("--requirepass") + 1] == "check-redis", r
for s in ("gateway1", "gateway2", "worker"):
    assert c["services"][s]["environment"]["REDIS_URL"] == "redis://:check-redis@redis:6379/0", s
# Only nginx is published over TCP; it forwards the client address, which
# the gateways believe from the compose network only. A gateway publishes
# its WebRTC UDP port, as itself (the SDP answer announces that port).
for s in ("worker", "redis"):
    assert "ports" not in c["services"][s], s
for g, port in (("gateway1", 8189), ("gateway2", 8190)):
    ports = c["services"][g]["ports"]
    assert [(p["protocol"], p["target"], int(p["published"])) for p in ports] == [("udp", port, port)], (g, ports)
    env = c["services"][g]["environment"]
    assert env["HOLISTREAM_RTC_PORT"] == str(port), (g, env)
    assert env["HOLISTREAM_RTC_PUBLIC_IP"] == "127.0.0.1", (g, env)
subnet = c["networks"]["default"]["ipam"]["config"][0]["subnet"]
for g in ("gateway1", "gateway2"):
    assert c["services"][g]["environment"]["HOLISTREAM_TRUSTED_PROXIES"] == subnet, g
targets = sorted(p["target"] for p in c["services"]["nginx"]["ports"])
assert targets == [80, 443], targets
mounts = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in c["services"]["nginx"]["volumes"]]
for t in ("/etc/nginx/nginx.conf", "/etc/nginx/holistream", "/etc/nginx/certs",
          "/docker-entrypoint.d/40-holistream-site.sh"):
    assert t in mounts, (t, mounts)
PY

echo "== nginx: nginx -t, plain HTTP and HTTPS"
# The layout of the container: nginx.conf, holistream/ beside it, certs/.
conf="$scratch/nginx"
mkdir -p "$conf/holistream"
sed -e 's/server gateway[12]:8080/server 127.0.0.1:8080/' -e "s#^pid .*#pid $conf/nginx.pid;#" \
  docker/nginx.conf >"$conf/nginx.conf"
cp docker/nginx/*.conf "$conf/holistream/"
[ -x docker/nginx-site.sh ] || { echo "docker/nginx-site.sh is not executable (the image's entrypoint skips it)" >&2; exit 1; }
docker/nginx-site.sh "$conf" >/dev/null
grep -q 'include holistream/http.conf;' "$conf/holistream-site.conf"
"$NGINX" -t -q -c "$conf/nginx.conf" -e "$conf/error.log"
mkdir "$conf/certs"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
  -keyout "$conf/certs/privkey.pem" -out "$conf/certs/fullchain.pem" 2>/dev/null
HOLISTREAM_HTTPS_PORT=8443 docker/nginx-site.sh "$conf" >/dev/null
grep -q 'include holistream/https.conf;' "$conf/holistream-site.conf"
"$NGINX" -t -q -c "$conf/nginx.conf" -e "$conf/error.log"
# Half a pair is refused, not served as plain HTTP.
rm "$conf/certs/privkey.pem"
if docker/nginx-site.sh "$conf" >/dev/null 2>&1; then
  echo "nginx-site.sh accepted a certificate without its key" >&2; exit 1
fi
for f in docker/nginx/locations.conf; do
  grep -q 'proxy_set_header Upgrade \$http_upgrade' "$f"
  grep -q 'proxy_set_header Host \$http_host' "$f"
  grep -q 'proxy_set_header X-Forwarded-For \$remote_addr' "$f"
  grep -q 'proxy_read_timeout 3600s' "$f"
done
grep -q 'ssl_protocols TLSv1.2 TLSv1.3;' docker/nginx/https.conf
grep -q 'Strict-Transport-Security' docker/nginx/https.conf

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
