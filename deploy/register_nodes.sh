#!/usr/bin/env bash
# Register SuperNode public keys on a SuperLink that runs with --enable-supernode-auth.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/register_nodes.sh [options] PUBLIC_KEY.pub [PUBLIC_KEY.pub ...]

Runs `flwr supernode register <key.pub> <connection> --name <key name>` for every key.
A SuperNode whose key is not registered is refused by the SuperLink (it exits, code 305).
Run it from the operator's machine (or the SuperLink host) before starting the SuperNodes.

Options:
  --superlink HOST:PORT  the SuperLink's Control API: write/replace the connection entry first
                         (default when the entry does not exist: 127.0.0.1:9093, the SuperLink
                         host's loopback; elsewhere through ssh -N -L 9093:127.0.0.1:9093 HOST).
                         Not the SuperNodes' public Fleet address: that one refuses the flwr CLI
  --ca FILE              CA certificate for that entry (default: deploy/certs/ca.crt)
  --insecure             connection without TLS (only for a SuperLink started with --insecure,
                         which cannot authenticate SuperNodes anyway)
  --connection NAME      connection name in $FLWR_HOME/config.toml (default: fedra)
  --flwr-home DIR        Flower CLI home (default: $FLWR_HOME, else <repo>/.flwr_home)
  -h, --help             show this help

Example (from the operator's machine, through an SSH tunnel to the SuperLink host):
  ssh -N -L 9093:127.0.0.1:9093 fl.example.org &
  deploy/register_nodes.sh --superlink 127.0.0.1:9093 --ca deploy/certs/ca.crt deploy/keys/*.pub
EOF
}

# shellcheck source=deploy/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
die() { echo "register_nodes.sh: error: $*" >&2; exit 1; }

superlink="" ca="$FEDRA_REPO/deploy/certs/ca.crt" insecure=0 conn=fedra
home="${FLWR_HOME:-$FEDRA_REPO/.flwr_home}"
keys=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --superlink) [[ $# -ge 2 ]] || die "$1 needs HOST:PORT"; superlink="$2"; shift 2 ;;
    --ca) [[ $# -ge 2 ]] || die "$1 needs a file"; ca="$2"; shift 2 ;;
    --insecure) insecure=1; shift ;;
    --connection) [[ $# -ge 2 ]] || die "$1 needs a name"; conn="$2"; shift 2 ;;
    --flwr-home) [[ $# -ge 2 ]] || die "$1 needs a folder"; home="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) keys+=("$1"); shift ;;
  esac
done
[[ ${#keys[@]} -gt 0 ]] || { usage >&2; die "give at least one public key file"; }
mkdir -p "$home"
home="$(cd "$home" && pwd)"
export FLWR_HOME="$home"

fedra_ensure_connection "$home" "$conn" "$superlink" "$ca" "$insecure"

flwr="$(fedra_bin flwr)" || exit 1
status=0
for key in "${keys[@]}"; do
  [[ -f "$key" ]] || die "public key $key not found"
  [[ "$key" == *.pub ]] || die "$key is not a .pub file (register the public key, never the private one)"
  name="$(basename "$key" .pub)"
  echo "registering $key as '$name' on connection '$conn'"
  if out="$("$flwr" supernode register "$key" "$conn" --name "$name" 2>&1)"; then
    echo "$out"
  elif grep -q "already in use" <<<"$out"; then
    echo "$key is already registered on this SuperLink"
  else
    echo "$out" >&2
    fedra_control_hint "$out"
    echo "register_nodes.sh: error: registering $key failed" >&2
    status=1
  fi
done
exit $status
