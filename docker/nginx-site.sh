#!/bin/sh
# Picks nginx's site for holistream at start: HTTPS when a certificate and its
# key are mounted, plain HTTP otherwise. No hand-editing of nginx.conf.
#
# docker/compose.yaml mounts this as /docker-entrypoint.d/40-holistream-site.sh;
# the nginx image's entrypoint runs it before nginx starts. It writes
# <conf>/holistream-site.conf, which nginx.conf includes:
#   - <conf>/certs/fullchain.pem and <conf>/certs/privkey.pem both present:
#     holistream/https.conf (443 with TLS, 80 redirects to
#     https://<host>:$HOLISTREAM_HTTPS_PORT, the port compose publishes 443 on);
#   - otherwise holistream/http.conf (plain HTTP on 80).
#
# Usage: nginx-site.sh [conf-dir]   (default /etc/nginx; tests/nginx.rs and
# docker/check.sh pass a scratch copy of it)
set -eu

conf=${1:-/etc/nginx}
https_port=${HOLISTREAM_HTTPS_PORT:-443}
case "$https_port" in
  '' | *[!0-9]*) echo "$0: HOLISTREAM_HTTPS_PORT must be a port number, got '$https_port'" >&2; exit 1 ;;
esac

site="$conf/holistream-site.conf"
if [ -f "$conf/certs/fullchain.pem" ] && [ -f "$conf/certs/privkey.pem" ]; then
  cat >"$site" <<SITE
# Written by nginx-site.sh at start: a certificate is mounted, so HTTPS.
# The public HTTPS port, for the redirect from plain HTTP.
map \$host \$holistream_https_port { default "$https_port"; }
include holistream/https.conf;
SITE
  echo "holistream: HTTPS on 443 (public port $https_port), HTTP redirects to it"
elif [ -e "$conf/certs/fullchain.pem" ] || [ -e "$conf/certs/privkey.pem" ]; then
  # Half a pair is a mistake, not a request for plain HTTP.
  echo "$0: $conf/certs needs both fullchain.pem and privkey.pem" >&2
  exit 1
else
  cat >"$site" <<SITE
# Written by nginx-site.sh at start: no certificate in certs/, so plain HTTP.
include holistream/http.conf;
SITE
  echo "holistream: plain HTTP on 80 (no certificate in $conf/certs)"
fi
