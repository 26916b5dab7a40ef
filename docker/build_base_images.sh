#!/usr/bin/env bash
# Build local stand-ins for Flower's official base images flwr/superlink and flwr/supernode, for
# hosts that cannot pull them from Docker Hub. Debian packages (debootstrap) and PyPI (pip) only.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: docker/build_base_images.sh [options]

Builds, only where they are missing (or with --force):
  PREFIX/rootfs:SUITE         a minimal Debian root file system (debootstrap) with python3, venv
  PREFIX/superlink:VERSION    stand-in for flwr/superlink:VERSION-py3.X-ubuntu24.04
  PREFIX/supernode:VERSION    stand-in for flwr/supernode:VERSION-py3.X-ubuntu24.04
laid out like Flower's images: a virtual environment /python/venv (first on PATH, owned by the
user `app`, uid/gid 49999) holding flwr==VERSION, HOME=/app, WORKDIR /app, USER app, entrypoint
flower-superlink / flower-supernode. Then build the project's images on top of them:
  docker build --network host -f docker/supernode.Dockerfile \
    --build-arg BASE_IMAGE=fedra-base/supernode:1.42.0 \
    --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t fedra/supernode:flwr1.42.0 .
(likewise superlink.Dockerfile with fedra-base/superlink:1.42.0 and fedra/superlink:flwr1.42.0).
Needs root (debootstrap), a running Docker engine, and network access to a Debian mirror and a
Python package index. Package downloads during the build use the host's network (--network host).

Options:
  --flwr-version V   flwr release to install (default 1.42.0)
  --prefix NAME      image name prefix (default fedra-base)
  --suite S          Debian release for the root file system (default bookworm: Python 3.11)
  --mirror URL       Debian mirror (default: the first Debian mirror of this host's apt sources,
                     else http://deb.debian.org/debian)
  --index-url URL    Python package index for flwr (default: $PIP_INDEX_URL, else this host's
                     pip index-url, else https://pypi.org/simple); a non-default index is also
                     written to the images' /etc/pip.conf, so that images built FROM them use it
  --no-host-ca       do not copy this host's local CA certificates into the images (by default
                     /usr/local/share/ca-certificates/*.crt are added to their trust store and
                     pip is pointed at it: needed behind a TLS-intercepting proxy the host trusts)
  --force            rebuild even when the tags exist
  -h, --help         show this help
EOF
}

die() { echo "build_base_images.sh: error: $*" >&2; exit 1; }
log() { echo "build_base_images.sh: $*" >&2; }

flwr_version=1.42.0 prefix=fedra-base suite=bookworm mirror="" index_url="" force=0 host_ca=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --flwr-version) [[ $# -ge 2 ]] || die "$1 needs a version"; flwr_version="$2"; shift 2 ;;
    --prefix) [[ $# -ge 2 ]] || die "$1 needs a name"; prefix="$2"; shift 2 ;;
    --suite) [[ $# -ge 2 ]] || die "$1 needs a Debian release"; suite="$2"; shift 2 ;;
    --mirror) [[ $# -ge 2 ]] || die "$1 needs a URL"; mirror="$2"; shift 2 ;;
    --index-url) [[ $# -ge 2 ]] || die "$1 needs a URL"; index_url="$2"; shift 2 ;;
    --no-host-ca) host_ca=0; shift ;;
    --force) force=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ "$flwr_version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "'$flwr_version' is not a release number like 1.42.0"
[[ "$prefix" =~ ^[a-z0-9]+([._/-][a-z0-9]+)*$ ]] || die "'$prefix' is not a valid image name prefix"

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (start dockerd, or run as a member of the docker group)"

rootfs_tag="$prefix/rootfs:$suite"
superlink_tag="$prefix/superlink:$flwr_version"
supernode_tag="$prefix/supernode:$flwr_version"
have() { docker image inspect "$1" >/dev/null 2>&1; }

if [[ $force -eq 0 ]] && have "$superlink_tag" && have "$supernode_tag"; then
  log "$superlink_tag and $supernode_tag exist (pass --force to rebuild)"
  exit 0
fi

# --- the Debian root file system ------------------------------------------------------------------
host_mirror() {
  # first Debian archive URI of this host's apt sources (deb822 *.sources or one-line *.list)
  local f
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r "$f" ]] || continue
    sed -nE -e 's/^URIs:[[:space:]]*//p' -e 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//p' "$f" \
      | tr ' ' '\n' | grep -E '^https?://.*/debian/?$' | head -n1
  done | head -n1
}

SECONDS=0
if [[ $force -eq 1 ]] || ! have "$rootfs_tag"; then
  [[ $(id -u) -eq 0 ]] || die "debootstrap needs root (run with sudo), or build $rootfs_tag elsewhere"
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
  [[ -n "$mirror" ]] || mirror="$(host_mirror || true)"
  [[ -n "$mirror" ]] || mirror=http://deb.debian.org/debian
  rootfs="$(mktemp -d "${TMPDIR:-/var/tmp}/fedra-rootfs.XXXXXX")"
  trap 'rm -rf "$rootfs"' EXIT
  log "debootstrap $suite from $mirror into $rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$rootfs" "$mirror" > "$rootfs.log" 2>&1 \
    || { tail -n 30 "$rootfs.log" >&2; rm -f "$rootfs.log"; die "debootstrap failed"; }
  rm -f "$rootfs.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
  # an imported image has no environment: give it the usual PATH, so that ENV PATH=...:$PATH works
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$rootfs_tag" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  log "built $rootfs_tag in ${SECONDS}s"
else
  log "$rootfs_tag exists"
fi

# --- flwr on top, laid out like Flower's images ----------------------------------------------------
if [[ -z "$index_url" ]]; then
  index_url="${PIP_INDEX_URL:-}"
  [[ -n "$index_url" ]] || index_url="$(pip config get global.index-url 2>/dev/null || true)"
  [[ -n "$index_url" ]] || index_url=https://pypi.org/simple
fi
pip_conf=""
if [[ "${index_url%/}" != https://pypi.org/simple ]]; then
  pip_conf="$index_url"
fi

# build context: the host's local CA certificates (public certificates only, never keys)
context="$(mktemp -d "${TMPDIR:-/var/tmp}/fedra-base-ctx.XXXXXX")"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/ca"
if [[ $host_ca -eq 1 ]]; then
  for crt in /usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/*/*.crt; do
    if [[ -f "$crt" ]]; then cp "$crt" "$context/ca/"; fi
  done
fi
n_ca=$(find "$context/ca" -name '*.crt' | wc -l)
[[ $n_ca -eq 0 ]] || log "adding $n_ca local CA certificate(s) of this host to the images' trust store"

SECONDS=0
dockerfile="$(cat <<EOF
FROM $rootfs_tag AS base
ARG FLWR_VERSION
ARG PIP_INDEX_URL
ARG PIP_CONF_INDEX_URL=""
COPY ca/ /usr/local/share/ca-certificates/fedra-host/
RUN useradd --no-create-home --home-dir /app -c "" --uid 49999 --user-group app \\
    && mkdir -p /app && chown app:app /app \\
    && update-ca-certificates >/dev/null \\
    && { printf '[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n'; \\
         if [ -n "\$PIP_CONF_INDEX_URL" ]; then printf 'index-url = %s\\n' "\$PIP_CONF_INDEX_URL"; fi; } > /etc/pip.conf \\
    && python3 -m venv /python/venv \\
    && /python/venv/bin/pip install --no-cache-dir --disable-pip-version-check --index-url "\$PIP_INDEX_URL" "flwr==\$FLWR_VERSION" \\
    && chown -R app:app /python/venv \\
    && /python/venv/bin/flower-superlink --help >/dev/null && /python/venv/bin/flower-supernode --help >/dev/null
ENV PATH=/python/venv/bin:\$PATH \\
    PYTHONUNBUFFERED=1 \\
    PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONIOENCODING=UTF-8 \\
    LANG=C.UTF-8 \\
    LC_ALL=C.UTF-8
WORKDIR /app
USER app
ENV HOME=/app
LABEL org.fedra.stand-in-for="flwr/superlink and flwr/supernode $flwr_version"

FROM base AS superlink
ENTRYPOINT ["flower-superlink"]

FROM base AS supernode
ENTRYPOINT ["flower-supernode"]
EOF
)"
for target in superlink supernode; do
  tag="$prefix/$target:$flwr_version"
  log "building $tag (flwr==$flwr_version from $index_url)"
  docker build --network host --force-rm --target "$target" -t "$tag" \
    --build-arg FLWR_VERSION="$flwr_version" --build-arg PIP_INDEX_URL="$index_url" \
    --build-arg PIP_CONF_INDEX_URL="$pip_conf" -f - "$context" <<<"$dockerfile" >&2 \
    || die "building $tag failed"
done
docker run --rm --entrypoint python "$supernode_tag" -c 'import flwr; assert flwr.__version__ == "'"$flwr_version"'", flwr.__version__' \
  || die "$supernode_tag does not hold flwr $flwr_version"
log "built $superlink_tag and $supernode_tag in ${SECONDS}s"
