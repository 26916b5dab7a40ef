#!/usr/bin/env bash
# Start a FedRA SuperNode that connects to a SuperLink with TLS and SuperNode authentication.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/start_supernode.sh [options] SUPERLINK_ADDRESS CAPACITY PRIVATE_KEY CA_CERT
       deploy/start_supernode.sh --insecure [options] SUPERLINK_ADDRESS CAPACITY

Starts flower-supernode in the foreground for a node that holds ONLY ITS OWN data. The ClientApp
runs as a subprocess, so this machine needs the app's dependencies (pip install . in this repo, or
the docker image).

  SUPERLINK_ADDRESS  HOST:PORT of the SuperLink (HOST must be in its certificate's subjectAltName)
  CAPACITY           how many transformer blocks this node can train (node-config capacity-layers)
  PRIVATE_KEY        this node's ECDSA private key (deploy/gen_node_keys.sh); its .pub must be
                     registered on the SuperLink (deploy/register_nodes.sh)
  CA_CERT            the federation's CA certificate (ca.crt of deploy/gen_certs.sh)

This node's data (node-config data-format, data-root, domain):
  --data-format F    imagefolder (default: --data-root DIR with DIR/train/<class>/*.png|jpg... and
                     optionally DIR/test/<class>/...) or another format of the README's node-config
                     table, e.g. digits --domain mnist; the node checks the format and its keys
  --data-root DIR    this node's data folder
  --domain NAME      this node's domain (for imagefolder: its name in the tables; default the
                     folder's name)
  --partition-id N   for --data-format partition

Options:
  --device DEV       auto | cpu | cuda | cuda:N (node-config device; default auto)
  --weights FILE     local backbone .safetensors (node-config backbone-weights)
  --threads N        torch threads (node-config num-threads)
  --node-worker M    auto (default) | on | off: answer messages in this node's warm worker, a
                     long-lived process next to the SuperNode that keeps torch, the backbone and
                     the data loaded (README: The node worker); off starts everything per message
  --node-worker-idle S  seconds without a message after which the worker exits (default 900)
  --port N           port of this SuperNode's local runtime API (default 9094; use a different
                     one for every SuperNode on the same machine). It is not exposed.
  --insecure         no TLS and no authentication (only against a SuperLink started --insecure)
  -h, --help         show this help

Environment: FEDRA_CACHE (backbones and decoded-image cache), HF_HUB_OFFLINE, ... reach the ClientApp.
EOF
}

# shellcheck source=deploy/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
die() { echo "start_supernode.sh: error: $*" >&2; exit 1; }


insecure=0 port=9094 data_format="imagefolder" data_root="" domain="" partition="" device="" weights="" threads="" node_worker="" worker_idle=""
pos=()
# value OPTION ARGS...: the option's value (die naming what it takes when it is missing)
need() { [[ $# -ge 3 && "$3" != --* ]] || die "$1 needs a value: $2"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data-format) need "$1" "a node data format (README: node-config data-format)" "${@:2}"; data_format="$2"; shift 2 ;;
    --data-root) need "$1" "this node's data folder" "${@:2}"; data_root="$2"; shift 2 ;;
    --domain) need "$1" "a domain name" "${@:2}"; domain="$2"; shift 2 ;;
    --partition-id) need "$1" "an integer >= 0" "${@:2}"; partition="$2"; shift 2 ;;
    --device) need "$1" "auto, cpu, cuda or cuda:N" "${@:2}"; device="$2"; shift 2 ;;
    --weights) need "$1" "a local .safetensors file" "${@:2}"; weights="$2"; shift 2 ;;
    --threads) need "$1" "a positive integer" "${@:2}"; threads="$2"; shift 2 ;;
    --port) need "$1" "a port number" "${@:2}"; port="$2"; shift 2 ;;
    --node-worker) need "$1" "auto, on or off" "${@:2}"; node_worker="$2"; shift 2 ;;
    --node-worker-idle) need "$1" "a number of seconds > 0" "${@:2}"; worker_idle="$2"; shift 2 ;;
    --insecure) insecure=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) pos+=("$1"); shift ;;
  esac
done
if [[ $insecure -eq 1 ]]; then
  [[ ${#pos[@]} -eq 2 ]] || { usage >&2; die "--insecure needs SUPERLINK_ADDRESS CAPACITY, got ${#pos[@]} arguments: ${pos[*]:-none}"; }
else
  [[ ${#pos[@]} -eq 4 ]] || { usage >&2; die "expected SUPERLINK_ADDRESS CAPACITY PRIVATE_KEY CA_CERT, got ${#pos[@]} arguments: ${pos[*]:-none}"; }
fi
address="${pos[0]}" capacity="${pos[1]}"
[[ "$address" =~ ^[^[:space:]]+:[0-9]+$ ]] || die "SUPERLINK_ADDRESS '$address' must look like HOST:PORT"
[[ "$capacity" =~ ^[1-9][0-9]*$ ]] || die "CAPACITY '$capacity' must be a positive integer (blocks this node can train)"
[[ "$port" =~ ^[0-9]+$ ]] || die "--port '$port': use a port number"
[[ -z "$threads" || "$threads" =~ ^[1-9][0-9]*$ ]] || die "--threads '$threads': use a positive integer"
[[ -z "$partition" || "$partition" =~ ^[0-9]+$ ]] || die "--partition-id '$partition': use an integer >= 0"
case "$node_worker" in ""|auto|on|off) ;; *) die "--node-worker '$node_worker': use auto, on or off" ;; esac
[[ -z "$worker_idle" || "$worker_idle" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--node-worker-idle '$worker_idle': use a number of seconds > 0"
case "$device" in ""|auto|cpu|cuda|cuda:[0-9]|cuda:[0-9][0-9]) ;; *) die "--device '$device': use auto, cpu, cuda or cuda:N" ;; esac
for opt in data-format:"$data_format" data-root:"$data_root" domain:"$domain" weights:"$weights"; do
  [[ "${opt#*:}" != *"'"* ]] || die "--${opt%%:*} '${opt#*:}': a value with a single quote cannot be passed in node-config"
done
# Which keys a format needs and what its folder must hold is the node's to check (fedra_core.data.registry;
# a bad value is refused by the node in one line, which the server logs): no copy of the list here.
[[ -z "$data_root" || -d "$data_root" ]] || die "--data-root '$data_root': no such folder"

node_config="data-format='$data_format' capacity-layers=$capacity"
[[ -z "$device" ]] || node_config+=" device='$device'"
[[ -z "$data_root" ]] || node_config+=" data-root='$(cd "$data_root" && pwd)'"
[[ -z "$domain" ]] || node_config+=" domain='$domain'"
[[ -z "$partition" ]] || node_config+=" partition-id=$partition"
[[ -z "$weights" ]] || { [[ -f "$weights" ]] || die "--weights '$weights': no such file (a local .safetensors)"; node_config+=" backbone-weights='$(fedra_abspath "$weights")'"; }
[[ -z "$threads" ]] || node_config+=" num-threads=$threads"
[[ -z "$node_worker" ]] || node_config+=" node-worker='$node_worker'"
[[ -z "$worker_idle" ]] || node_config+=" node-worker-idle=$worker_idle"

supernode="$(fedra_bin flower-supernode)" || exit 1
export PATH="$(dirname "$supernode"):$PATH"   # flower-superexec and flwr-clientapp
args=(--superlink "$address" --port "$port" --node-config "$node_config")
if [[ $insecure -eq 1 ]]; then
  echo "start_supernode.sh: WARNING: --insecure: no TLS, no authentication" >&2
  args+=(--insecure)
else
  key="${pos[2]}" ca="${pos[3]}"
  [[ -r "$key" ]] || die "PRIVATE_KEY '$key': not found or not readable (deploy/gen_node_keys.sh makes it)"
  [[ -r "$ca" ]] || die "CA_CERT '$ca': not found or not readable (the federation's ca.crt)"
  args+=(--root-certificates "$ca" --auth-supernode-private-key "$key")
fi
echo "+ $supernode ${args[*]}" >&2
exec "$supernode" "${args[@]}"
