#!/usr/bin/env bash
# Start a FedRA SuperLink: TLS and SuperNode authentication unless --insecure is given.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/start_superlink.sh [options] [-- extra flower-superlink arguments]

Starts flower-superlink (Flower 1.42) in the foreground on one port (default 8000) that serves
SuperNodes (Fleet API), the operator's flwr CLI (Control API) and the ServerApp it launches.
Default: TLS with the certificates of deploy/gen_certs.sh and --enable-supernode-auth
(register SuperNode keys with deploy/register_nodes.sh). The ServerApp runs as a subprocess, so
this machine needs the app's dependencies (pip install . in this repo, or the docker image).

Options:
  --certs DIR       folder with ca.crt, server.pem, server.key (default: deploy/certs)
  --host ADDR       address to listen on (default 0.0.0.0: every interface)
  --port N          port to listen on (default 8000); open it to SuperNodes and the operator
  --database PATH   SQLite file for the SuperLink's state (runs, registered SuperNodes);
                    default: in memory, lost when the SuperLink stops
  --insecure        no TLS and no SuperNode authentication: for a closed test network only
  -h, --help        show this help

Environment: FEDRA_CACHE (backbones and data cache of the ServerApp), HF_HUB_OFFLINE, ...
are passed on to the ServerApp.
EOF
}

# shellcheck source=deploy/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
die() { echo "start_superlink.sh: error: $*" >&2; exit 1; }

certs="$FEDRA_REPO/deploy/certs" host=0.0.0.0 port=8000 database="" insecure=0
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --certs) [[ $# -ge 2 ]] || die "$1 needs a folder"; certs="$2"; shift 2 ;;
    --host) [[ $# -ge 2 ]] || die "$1 needs an address"; host="$2"; shift 2 ;;
    --port) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || die "$1 needs a port number"; port="$2"; shift 2 ;;
    --database) [[ $# -ge 2 ]] || die "$1 needs a file path"; database="$2"; shift 2 ;;
    --insecure) insecure=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

superlink="$(fedra_bin flower-superlink)" || exit 1
# the SuperLink launches flower-superexec and flwr-serverapp: they must be on PATH
export PATH="$(dirname "$superlink"):$PATH"
# dependencies are installed beforehand; never let the SuperLink run `uv sync`
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

args=(--host "$host" --port "$port" --disable-runtime-dependency-installation)
if [[ -n "$database" ]]; then
  mkdir -p "$(dirname "$database")"
  args+=(--database "$database")
fi
if [[ $insecure -eq 1 ]]; then
  echo "start_superlink.sh: WARNING: --insecure: no TLS, any SuperNode may connect" >&2
  args+=(--insecure)
else
  for f in ca.crt server.pem server.key; do
    [[ -f "$certs/$f" ]] || die "$certs/$f not found: run deploy/gen_certs.sh (or pass --certs DIR, or --insecure)"
    [[ -r "$certs/$f" ]] || die "$certs/$f is not readable by $(id -un)"
  done
  args+=(--ssl-ca-certfile "$certs/ca.crt" --ssl-certfile "$certs/server.pem" --ssl-keyfile "$certs/server.key"
         --enable-supernode-auth)
fi
echo "+ $superlink ${args[*]} ${extra[*]:-}" >&2
exec "$superlink" "${args[@]}" "${extra[@]}"
