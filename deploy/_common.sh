# Helpers sourced by the deploy/*.sh scripts (not meant to be run on its own).
# shellcheck shell=bash

FEDRA_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# fedra_bin NAME: print the path of a Flower executable: PATH first, then the repo's .venv.
fedra_bin() {
  local name="$1"
  if command -v "$name" >/dev/null 2>&1; then
    command -v "$name"
  elif [[ -x "$FEDRA_REPO/.venv/bin/$name" ]]; then
    echo "$FEDRA_REPO/.venv/bin/$name"
  else
    echo "error: $name not found on PATH nor in $FEDRA_REPO/.venv/bin (pip install flwr==1.42.0)" >&2
    return 1
  fi
}

# The SuperLink's own address in the deploy scripts: Control API (the operator's flwr CLI) and
# Runtime API, on loopback only; SuperNodes reach the Fleet API through deploy/fleet_proxy.sh.
FEDRA_CONTROL_ADDRESS=127.0.0.1:9093

# Prefix for a background process of a deploy script: it gets SIGTERM when the script dies, even
# by SIGKILL (setpriv --pdeathsig, util-linux), so that nothing outlives the script.
FEDRA_TIED=()
if command -v setpriv >/dev/null 2>&1; then FEDRA_TIED=(setpriv --pdeathsig TERM --); fi

# fedra_nginx: print the path of nginx (installed with apt-get when missing and run as root).
fedra_nginx() {
  local found
  found="$(PATH="$PATH:/usr/sbin:/sbin" command -v nginx 2>/dev/null)" && { echo "$found"; return 0; }
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing nginx (apt-get install nginx-light) for the Fleet API proxy" >&2
    { apt-get install -y --no-install-recommends nginx-light || { apt-get update && apt-get install -y --no-install-recommends nginx-light; } \
      || apt-get install -y --no-install-recommends nginx; } >/dev/null 2>&1
    found="$(PATH="$PATH:/usr/sbin:/sbin" command -v nginx 2>/dev/null)" && { echo "$found"; return 0; }
  fi
  echo "error: nginx not found (it serves the Fleet API and keeps the Control API off the network): apt-get install nginx-light (or nginx)" >&2
  return 1
}

# fedra_abspath PATH: print PATH made absolute (the file must exist).
fedra_abspath() {
  local p="$1"
  [[ -e "$p" ]] || { echo "error: $p does not exist" >&2; return 1; }
  echo "$(cd "$(dirname "$p")" && pwd)/$(basename "$p")"
}

# fedra_write_connection HOME NAME ADDRESS CA_CERT|"" INSECURE(0|1)
# Write (or replace) the [superlink.NAME] entry of HOME/config.toml, keeping the other entries.
fedra_write_connection() {
  local home="$1" name="$2" address="$3" ca="$4" insecure="$5"
  local cfg="$home/config.toml"
  [[ "$name" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "error: connection name '$name' may only hold letters, digits, '_' and '-'" >&2; return 1; }
  [[ "$address" =~ ^[^[:space:]\"]+:[0-9]+$ ]] || { echo "error: SuperLink address '$address' must look like HOST:PORT" >&2; return 1; }
  mkdir -p "$home"
  if [[ ! -f "$cfg" ]]; then
    printf '[superlink]\ndefault = "%s"\n' "$name" > "$cfg"
  fi
  # drop an older [superlink.NAME] table (and its sub-tables), then append the new one
  awk -v head="[superlink.$name]" -v sub_="[superlink.$name." '
    /^[[:space:]]*\[/ { skip = (index($0, head) == 1 || index($0, sub_) == 1) }
    !skip { print }
  ' "$cfg" > "$cfg.tmp"
  {
    printf '\n[superlink.%s]\naddress = "%s"\n' "$name" "$address"
    if [[ "$insecure" == 1 ]]; then
      printf 'insecure = true\n'
    else
      printf 'root-certificates = "%s"\n' "$ca"
    fi
  } >> "$cfg.tmp"
  mv "$cfg.tmp" "$cfg"
}

# fedra_ensure_connection HOME CONN SUPERLINK CA INSECURE: write the connection CONN when SUPERLINK
# is given (checking the CA certificate unless INSECURE=1), or when CONN does not exist yet (then
# to the SuperLink's Control API on FEDRA_CONTROL_ADDRESS: this host, or an SSH tunnel to it).
fedra_ensure_connection() {
  local home="$1" conn="$2" superlink="$3" ca="$4" insecure="$5"
  if [[ -z "$superlink" ]] && ! grep -q "^\[superlink\.$conn\]" "$home/config.toml" 2>/dev/null; then
    superlink="$FEDRA_CONTROL_ADDRESS"
    echo "no connection '$conn' in $home/config.toml: using the SuperLink's Control API at $superlink (its host's loopback, or an SSH tunnel to it)" >&2
  fi
  if [[ -n "$superlink" ]]; then
    if [[ $insecure -eq 0 ]]; then
      [[ -f "$ca" ]] || die "CA certificate $ca not found (copy ca.crt from the SuperLink host, or pass --ca)"
      ca="$(fedra_abspath "$ca")"
    fi
    fedra_write_connection "$home" "$conn" "$superlink" "$ca" "$insecure" || die "could not write $home/config.toml"
  fi
}

# fedra_control_hint OUTPUT: print why a flwr command was refused when OUTPUT shows the Fleet
# proxy's 403 (the connection points at the public Fleet address, not at the Control API).
fedra_control_hint() {
  grep -q "403 Forbidden" <<<"$1" || return 0
  echo "hint: that address is the public Fleet API (deploy/fleet_proxy.sh), which refuses the flwr CLI; use the SuperLink's Control API: --superlink $FEDRA_CONTROL_ADDRESS on the SuperLink host, or elsewhere after ssh -N -L ${FEDRA_CONTROL_ADDRESS##*:}:$FEDRA_CONTROL_ADDRESS SUPERLINK_HOST" >&2
}
