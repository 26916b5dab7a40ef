#!/usr/bin/env bash
# Generate a private CA and a SuperLink TLS certificate signed by it (openssl).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/gen_certs.sh [-o OUT_DIR] [-d DAYS] [--force] [NAME_OR_IP ...]

Creates, in OUT_DIR (default: deploy/certs next to this script):
  ca.crt      CA certificate: give it to every SuperNode and to the operator (flwr CLI)
  ca.key      CA private key: keep it offline, it can sign new server certificates
  server.pem  SuperLink certificate (signed by the CA)
  server.key  SuperLink private key: stays on the SuperLink host

Every NAME_OR_IP becomes a subjectAltName of server.pem (IPv4/IPv6 addresses as IP
entries, anything else as DNS entries). SuperNodes and the operator must reach the
SuperLink by one of these names. Defaults: localhost 127.0.0.1 ::1 superlink
(superlink is the service name in deploy/compose.yaml). localhost and 127.0.0.1 are
always added: the SuperLink's own SuperExec connects to it on loopback.

Options:
  -o, --out DIR    output folder (created if missing)
  -d, --days N     validity in days (default 365)
  --force          overwrite existing files in OUT_DIR
  -h, --help       show this help

Example (SuperLink reachable as fl.example.org and 203.0.113.10):
  deploy/gen_certs.sh fl.example.org 203.0.113.10
EOF
}

die() { echo "gen_certs.sh: error: $*" >&2; exit 1; }

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out_dir="$script_dir/certs"
days=365
force=0
names=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -o|--out) [[ $# -ge 2 ]] || die "$1 needs a folder"; out_dir="$2"; shift 2 ;;
    -d|--days) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || die "$1 needs a number of days"; days="$2"; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) names+=("$1"); shift ;;
  esac
done
[[ ${#names[@]} -gt 0 ]] || names=(localhost 127.0.0.1 ::1 superlink)
names+=(localhost 127.0.0.1)

command -v openssl >/dev/null || die "openssl is not installed"
mkdir -p "$out_dir"
for f in ca.crt ca.key server.pem server.key; do
  if [[ -e "$out_dir/$f" && $force -eq 0 ]]; then
    die "$out_dir/$f exists; pass --force to overwrite"
  fi
done

# subjectAltName list without duplicates
san=""
declare -A seen=()
for n in "${names[@]}"; do
  [[ -n "$n" ]] || continue
  [[ -z "${seen[$n]:-}" ]] || continue
  seen[$n]=1
  if [[ "$n" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ || "$n" == *:* ]]; then
    san+="${san:+,}IP:$n"
  elif [[ "$n" =~ ^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
    san+="${san:+,}DNS:$n"
  else
    die "'$n' is neither an IP address nor a DNS name"
  fi
done
cn="${names[0]}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
umask 077

# CA: self-signed, may only sign certificates
openssl req -x509 -new -newkey rsa:3072 -nodes -sha256 -days "$days" \
  -subj "/O=FedRA/CN=FedRA federation CA" \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout "$tmp/ca.key" -out "$tmp/ca.crt" 2>/dev/null || die "could not create the CA"

# SuperLink key and certificate request
openssl req -new -newkey rsa:3072 -nodes -sha256 -subj "/O=FedRA/CN=$cn" \
  -keyout "$tmp/server.key" -out "$tmp/server.csr" 2>/dev/null || die "could not create the SuperLink key"
cat > "$tmp/server.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san
EOF
openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial \
  -sha256 -days "$days" -extfile "$tmp/server.ext" -out "$tmp/server.pem" 2>/dev/null \
  || die "could not sign the SuperLink certificate"
openssl verify -CAfile "$tmp/ca.crt" "$tmp/server.pem" >/dev/null || die "the new certificate does not verify"

install -m 0644 "$tmp/ca.crt" "$out_dir/ca.crt"
install -m 0644 "$tmp/server.pem" "$out_dir/server.pem"
install -m 0600 "$tmp/ca.key" "$out_dir/ca.key"
install -m 0600 "$tmp/server.key" "$out_dir/server.key"
echo "wrote $out_dir/{ca.crt,ca.key,server.pem,server.key}; subjectAltName: $san"
