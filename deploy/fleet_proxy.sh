#!/usr/bin/env bash
# The SuperLink's public face: an nginx reverse proxy that passes on the Fleet API and nothing else.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/fleet_proxy.sh [options]

Runs nginx in the foreground as the only thing SuperNodes (and the network) can reach: it listens
on the public address with the SuperLink's certificate and forwards exactly the Fleet API
(POST /v1/fleet/<route>, what flower-supernode sends) to the SuperLink, which itself listens on
loopback. Everything else (the Control API of `flwr run`, `flwr ls`, `flwr supernode register`;
the Runtime API; /docs; health) is answered 403 (405 for a method other than POST) and logged.
Flower 1.42 serves all of these on one HTTP port with no authentication on Control in its
open-source build, hence this filter (README "Security").

deploy/start_superlink.sh starts it for you; run it yourself only for a SuperLink you start
otherwise (e.g. a separate container, as deploy/compose.yaml does).

Options:
  --listen HOST:PORT    public address (default 0.0.0.0:8000; [::]:8000 for IPv6)
  --upstream HOST:PORT  the SuperLink's own address (default 127.0.0.1:9093)
  --upstream-name NAME  DNS name to check the SuperLink's certificate against (default
                        localhost, which deploy/gen_certs.sh always puts in; it must be a DNS
                        entry of the certificate's subjectAltName)
  --certs DIR           ca.crt, server.pem, server.key (default: deploy/certs)
  --insecure            plain HTTP on both sides (only for a SuperLink started with --insecure)
  --run-dir DIR         folder for nginx.conf, its pid and temporary files (default: a new one
                        under ${TMPDIR:-/tmp}, removed on exit)
  -h, --help            show this help

Needs nginx (Debian/Ubuntu: apt-get install -y nginx).
EOF
}

# shellcheck source=deploy/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
die() { echo "fleet_proxy.sh: error: $*" >&2; exit 1; }

listen=0.0.0.0:8000 upstream="$FEDRA_CONTROL_ADDRESS" upstream_name="" certs="$FEDRA_REPO/deploy/certs" insecure=0 run_dir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --listen) [[ $# -ge 2 ]] || die "$1 needs HOST:PORT"; listen="$2"; shift 2 ;;
    --upstream) [[ $# -ge 2 ]] || die "$1 needs HOST:PORT"; upstream="$2"; shift 2 ;;
    --upstream-name) [[ $# -ge 2 ]] || die "$1 needs a name"; upstream_name="$2"; shift 2 ;;
    --certs) [[ $# -ge 2 ]] || die "$1 needs a folder"; certs="$2"; shift 2 ;;
    --insecure) insecure=1; shift ;;
    --run-dir) [[ $# -ge 2 ]] || die "$1 needs a folder"; run_dir="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
for a in "listen:$listen" "upstream:$upstream"; do
  [[ "${a#*:}" =~ ^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]+$ ]] || die "--${a%%:*} '${a#*:}' must look like HOST:PORT (IPv6: [ADDR]:PORT)"
done
# nginx checks DNS entries only (not IP entries), and the upstream's name may be a container alias
# the certificate lacks (compose: superlink-control): check localhost, which gen_certs.sh always adds
upstream_name="${upstream_name:-localhost}"
[[ "$upstream_name" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ && ! "$upstream_name" =~ ^[0-9.]+$ ]] \
  || die "--upstream-name '$upstream_name' is not a DNS name (nginx checks the certificate's DNS entries only)"

nginx="$(fedra_nginx)" || exit 1

if [[ -z "$run_dir" ]]; then
  run_dir="$(mktemp -d "${TMPDIR:-/tmp}/fedra-fleet-proxy.XXXXXX")"
  trap 'rm -rf "$run_dir"' EXIT
fi
mkdir -p "$run_dir"
run_dir="$(cd "$run_dir" && pwd)"
# nginx started as root runs its workers as `nobody`: they must reach the temporary folders
[[ $EUID -ne 0 ]] || chmod 0711 "$run_dir"

if [[ $insecure -eq 1 ]]; then
  echo "fleet_proxy.sh: WARNING: --insecure: plain HTTP, no TLS" >&2
  listen_tls="" scheme=http upstream_tls=""
else
  for f in ca.crt server.pem server.key; do
    [[ -r "$certs/$f" ]] || die "$certs/$f not found or not readable: run deploy/gen_certs.sh (or pass --certs DIR)"
  done
  certs="$(cd "$certs" && pwd)"
  listen_tls=" ssl"
  scheme=https
  # the hop to the SuperLink is TLS too, and checked against the federation's CA
  upstream_tls="
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 2;
      proxy_ssl_trusted_certificate $certs/ca.crt;
      proxy_ssl_name $upstream_name;
      proxy_ssl_session_reuse on;"
  upstream_tls+="
      proxy_ssl_server_name on;"
  server_tls="
    ssl_certificate $certs/server.pem;
    ssl_certificate_key $certs/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;"
fi

cat > "$run_dir/nginx.conf" <<EOF
# written by deploy/fleet_proxy.sh: only the Fleet API reaches the SuperLink
worker_processes auto;
pid $run_dir/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
  server_tokens off;
  client_body_temp_path $run_dir/client_body;
  proxy_temp_path $run_dir/proxy;
  fastcgi_temp_path $run_dir/fastcgi;
  uwsgi_temp_path $run_dir/uwsgi;
  scgi_temp_path $run_dir/scgi;
  # the request line as sent, before any decoding or normalisation: exactly the Fleet routes pass
  map \$request_uri \$fleet_refused {
    "~^/v1/fleet/[a-z][a-z-]*\$" 0;
    default 1;
  }
  log_format refused '\$remote_addr refused: "\$request" \$status';
  access_log /dev/stderr refused if=\$fleet_refused;
  upstream superlink {
    server $upstream;
    keepalive 32;
  }
  server {
    listen $listen$listen_tls;${server_tls:-}
    client_max_body_size 0;
    if (\$fleet_refused) { return 403 "only the Fleet API is served here\\n"; }
    if (\$request_method != POST) { return 405; }
    location /v1/fleet/ {
      proxy_pass $scheme://superlink;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;$upstream_tls
    }
    location / { return 403 "only the Fleet API is served here\\n"; }
  }
}
EOF

"$nginx" -e stderr -p "$run_dir" -c "$run_dir/nginx.conf" -t -q || die "nginx refused the configuration in $run_dir/nginx.conf"
# nginx opens /dev/stderr (the refused-request log) anew: on a log FILE that second opening would
# write over its error lines, on a pipe both arrive in order
exec 2> >(exec cat >&2)
echo "+ $nginx -e stderr -p $run_dir -c $run_dir/nginx.conf (Fleet API: $scheme://$listen -> $upstream)" >&2
if [[ -n "$(trap -p EXIT)" ]]; then
  # keep this shell to remove the run folder afterwards; pass TERM/INT on to nginx
  "${FEDRA_TIED[@]}" "$nginx" -e stderr -p "$run_dir" -c "$run_dir/nginx.conf" -g "daemon off;" &
  pid=$!
  trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
  status=0
  wait "$pid" || status=$?
  if kill -0 "$pid" 2>/dev/null; then  # interrupted by the trap: wait for nginx to go
    wait "$pid" || true
  fi
  exit $status
fi
exec "$nginx" -e stderr -p "$run_dir" -c "$run_dir/nginx.conf" -g "daemon off;"
