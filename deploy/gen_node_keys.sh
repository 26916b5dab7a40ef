#!/usr/bin/env bash
# Generate ECDSA P-384 key pairs for SuperNode authentication (ssh-keygen).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/gen_node_keys.sh [-o OUT_DIR] [--force] [NAME ...]

Creates OUT_DIR/NAME (private key, stays on that SuperNode's host) and OUT_DIR/NAME.pub
(public key, registered on the SuperLink with deploy/register_nodes.sh) for every NAME.
Defaults: OUT_DIR = deploy/keys next to this script, NAMEs = supernode-1 supernode-2 supernode-3
(the SuperNode services of deploy/compose.yaml).

Options:
  -o, --out DIR   output folder (created if missing)
  --force         replace existing key pairs
  -h, --help      show this help
EOF
}

die() { echo "gen_node_keys.sh: error: $*" >&2; exit 1; }

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out_dir="$script_dir/keys"
force=0
names=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -o|--out) [[ $# -ge 2 ]] || die "$1 needs a folder"; out_dir="$2"; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) names+=("$1"); shift ;;
  esac
done
[[ ${#names[@]} -gt 0 ]] || names=(supernode-1 supernode-2 supernode-3)

command -v ssh-keygen >/dev/null || die "ssh-keygen is not installed (package openssh-client)"
mkdir -p "$out_dir"
for name in "${names[@]}"; do
  [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "key name '$name' may only hold letters, digits, '.', '_' and '-'"
  key="$out_dir/$name"
  if [[ -e "$key" || -e "$key.pub" ]]; then
    [[ $force -eq 1 ]] || die "$key exists; pass --force to replace it"
    rm -f "$key" "$key.pub"
  fi
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedra-$name" -f "$key" || die "ssh-keygen failed for $name"
  echo "wrote $key (private) and $key.pub (public)"
done
