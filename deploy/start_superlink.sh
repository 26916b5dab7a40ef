#!/usr/bin/env bash
# Start a FedRA SuperLink: TLS and SuperNode authentication unless --insecure is given.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/start_superlink.sh [options] [-- extra flower-superlink arguments]

Starts, in the foreground, flower-superlink (Flower 1.42) and in front of it the Fleet API proxy
(deploy/fleet_proxy.sh, nginx). Flower serves the Fleet API (SuperNodes), the Control API (the
operator's flwr CLI: runs code on every node, no authentication in open-source Flower) and the
Runtime API on ONE port, so:
  - the SuperLink listens on loopback only (--control-host/--control-port, default
    127.0.0.1:9093): the operator's flwr CLI and the ServerApp it launches;
  - the proxy listens on the public address (--host/--port, default 0.0.0.0:8000) and forwards
    only the Fleet API; everything else gets 403.
The operator runs deploy/register_nodes.sh and deploy/run_app.sh on this host, or elsewhere
through an SSH tunnel: ssh -N -L 9093:127.0.0.1:9093 THIS_HOST (see README, Security).
Default: TLS with the certificates of deploy/gen_certs.sh and --enable-supernode-auth
(register SuperNode keys with deploy/register_nodes.sh). The ServerApp runs as a subprocess, so
this machine needs the app's dependencies (pip install . in this repo, or the docker image),
and nginx (apt-get install nginx-light; installed when missing and run as root).

Options:
  --certs DIR          folder with ca.crt, server.pem, server.key (default: deploy/certs)
  --host ADDR          public address of the Fleet API (default 0.0.0.0: every interface)
  --port N             public port of the Fleet API (default 8000); open it to SuperNodes
  --control-host ADDR  the SuperLink's own address: Control + Runtime API (default 127.0.0.1;
                       anything but loopback puts the unauthenticated Control API on a network)
  --control-port N     its port (default 9093); never open it in a firewall
  --database PATH      SQLite file for the SuperLink's state (runs, registered SuperNodes);
                       default: in memory, lost when the SuperLink stops
  --insecure           no TLS and no SuperNode authentication: for a closed test network only
  -h, --help           show this help

Environment: FEDRA_CACHE (backbones and data cache of the ServerApp), HF_HUB_OFFLINE, ...
are passed on to the ServerApp.
EOF
}

# shellcheck source=deploy/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
die() { echo "start_superlink.sh: error: $*" >&2; exit 1; }

certs="$FEDRA_REPO/deploy/certs" host=0.0.0.0 port=8000 database="" insecure=0
control_host="${FEDRA_CONTROL_ADDRESS%:*}" control_port="${FEDRA_CONTROL_ADDRESS##*:}"
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --certs) [[ $# -ge 2 ]] || die "$1 needs a folder"; certs="$2"; shift 2 ;;
    --host) [[ $# -ge 2 ]] || die "$1 needs an address"; host="$2"; shift 2 ;;
    --port) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || die "$1 needs a port number"; port="$2"; shift 2 ;;
    --control-host) [[ $# -ge 2 ]] || die "$1 needs an address"; control_host="$2"; shift 2 ;;
    --control-port) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || die "$1 needs a port number"; control_port="$2"; shift 2 ;;
    --database) [[ $# -ge 2 ]] || die "$1 needs a file path"; database="$2"; shift 2 ;;
    --insecure) insecure=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
if [[ "$port" == "$control_port" ]]; then
  case "$host" in
    "$control_host"|0.0.0.0|::) die "--host $host --port $port overlaps --control-host $control_host --control-port $control_port: the Fleet proxy and the SuperLink need an address each (another --control-port)" ;;
  esac
fi
case "$control_host" in
  127.*|::1|localhost) ;;
  *) echo "start_superlink.sh: WARNING: --control-host $control_host: the Control API (flwr run: code on every node) has no authentication; keep it on loopback" >&2 ;;
esac
bracket() { [[ "$1" == *:* ]] && echo "[$1]" || echo "$1"; }   # IPv6 in HOST:PORT

superlink="$(fedra_bin flower-superlink)" || exit 1
fedra_nginx >/dev/null || exit 1
# the SuperLink launches flower-superexec and flwr-serverapp: they must be on PATH
export PATH="$(dirname "$superlink"):$PATH"
# dependencies are installed beforehand; never let the SuperLink run `uv sync`
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

args=(--host "$control_host" --port "$control_port" --disable-runtime-dependency-installation)
proxy=(--listen "$(bracket "$host"):$port" --upstream "$(bracket "$control_host"):$control_port")
if [[ -n "$database" ]]; then
  mkdir -p "$(dirname "$database")"
  args+=(--database "$database")
fi
if [[ $insecure -eq 1 ]]; then
  echo "start_superlink.sh: WARNING: --insecure: no TLS, any SuperNode may connect" >&2
  args+=(--insecure)
  proxy+=(--insecure)
else
  for f in ca.crt server.pem server.key; do
    [[ -f "$certs/$f" ]] || die "$certs/$f not found: run deploy/gen_certs.sh (or pass --certs DIR, or --insecure)"
    [[ -r "$certs/$f" ]] || die "$certs/$f is not readable by $(id -un)"
  done
  args+=(--ssl-ca-certfile "$certs/ca.crt" --ssl-certfile "$certs/server.pem" --ssl-keyfile "$certs/server.key"
         --enable-supernode-auth)
  proxy+=(--certs "$certs")
fi

# both in the background, stopped together: when one exits (or this script is stopped) so does the other
pids=()
stop_all() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop_all EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
echo "+ $superlink ${args[*]} ${extra[*]:-}" >&2
"${FEDRA_TIED[@]}" "$superlink" "${args[@]}" "${extra[@]}" &
pids+=($!)
echo "+ deploy/fleet_proxy.sh ${proxy[*]}" >&2
"${FEDRA_TIED[@]}" bash "$FEDRA_REPO/deploy/fleet_proxy.sh" "${proxy[@]}" &
pids+=($!)
echo "start_superlink.sh: SuperNodes -> $(bracket "$host"):$port (Fleet API only); operator (flwr CLI) -> $(bracket "$control_host"):$control_port" >&2
status=0
wait -n "${pids[@]}" || status=$?
echo "start_superlink.sh: the SuperLink or the Fleet proxy exited (code $status); stopping the other" >&2
exit "$status"
