#!/usr/bin/env bash
# Submit the FedRA app to a SuperLink with `flwr run` and stream its log.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/run_app.sh [options] [KEY=VALUE ...]

Writes (with --superlink) the connection entry [superlink.NAME] of $FLWR_HOME/config.toml with
the CA certificate, then runs
  flwr run APP_DIR NAME --stream --run-config "KEY=VALUE ..."
KEY=VALUE pairs override [tool.flwr.app.config] of pyproject.toml; strings in single quotes,
e.g. num-server-rounds=5 capacities='12,6,3' run-name='trial1'.
The ServerApp writes its outputs on the SuperLink host under output-dir (default 'runs',
relative to the SuperLink's working directory).

Options:
  --superlink HOST:PORT  the SuperLink's Control API (writes/replaces the connection entry;
                         default when the entry does not exist: 127.0.0.1:9093, the SuperLink
                         host's loopback; elsewhere through ssh -N -L 9093:127.0.0.1:9093 HOST).
                         Not the SuperNodes' public Fleet address: that one refuses the flwr CLI
  --ca FILE              CA certificate (default: deploy/certs/ca.crt)
  --insecure             no TLS (only for a SuperLink started with --insecure)
  --connection NAME      connection name (default: fedra)
  --flwr-home DIR        Flower CLI home (default: $FLWR_HOME, else <repo>/.flwr_home)
  --app DIR              the Flower app to submit (default: this repo)
  -h, --help             show this help

Example (from the operator's machine, through an SSH tunnel to the SuperLink host):
  ssh -N -L 9093:127.0.0.1:9093 fl.example.org &
  deploy/run_app.sh --superlink 127.0.0.1:9093 --ca deploy/certs/ca.crt num-server-rounds=20
EOF
}

# shellcheck source=deploy/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
die() { echo "run_app.sh: error: $*" >&2; exit 1; }

superlink="" ca="$FEDRA_REPO/deploy/certs/ca.crt" insecure=0 conn=fedra app="$FEDRA_REPO"
home="${FLWR_HOME:-$FEDRA_REPO/.flwr_home}"
overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --superlink) [[ $# -ge 2 ]] || die "$1 needs HOST:PORT"; superlink="$2"; shift 2 ;;
    --ca) [[ $# -ge 2 ]] || die "$1 needs a file"; ca="$2"; shift 2 ;;
    --insecure) insecure=1; shift ;;
    --connection) [[ $# -ge 2 ]] || die "$1 needs a name"; conn="$2"; shift 2 ;;
    --flwr-home) [[ $# -ge 2 ]] || die "$1 needs a folder"; home="$2"; shift 2 ;;
    --app) [[ $# -ge 2 ]] || die "$1 needs a folder"; app="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *=*) overrides+=("$1"); shift ;;
    *) die "'$1' is not a KEY=VALUE run-config override" ;;
  esac
done
[[ -f "$app/pyproject.toml" ]] || die "$app has no pyproject.toml: not a Flower app"
mkdir -p "$home"
home="$(cd "$home" && pwd)"
export FLWR_HOME="$home"

fedra_ensure_connection "$home" "$conn" "$superlink" "$ca" "$insecure"

flwr="$(fedra_bin flwr)" || exit 1
cmd=("$flwr" run "$app" "$conn" --stream)
[[ ${#overrides[@]} -eq 0 ]] || cmd+=(--run-config "${overrides[*]}")
echo "+ FLWR_HOME=$home ${cmd[*]}" >&2
exec "${cmd[@]}"
