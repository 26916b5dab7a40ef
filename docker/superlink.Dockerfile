# FedRA SuperLink: Flower's official SuperLink image, pinned to 1.42.0, plus the app's
# dependencies. The ServerApp runs as a subprocess of the SuperLink (--isolation subprocess, the
# default), so torch & co. must be installed here. The app code itself arrives in the bundle that
# `flwr run` sends; no code, data, weights or certificates are baked in.
#
# Build from the repository root:
#   docker build -f docker/superlink.Dockerfile -t fedra/superlink:flwr1.42.0 .
#
# flwr/superlink has Ubuntu (glibc) variants for the newest Python of the release only; the plain
# `1.42.0` tag is Alpine (musl), where torch wheels do not install. Override BASE_IMAGE to pin a
# digest (flwr/superlink@sha256:...) once you have pulled the tag.
ARG BASE_IMAGE=flwr/superlink:1.42.0-py3.13-ubuntu24.04
FROM ${BASE_IMAGE}

# Writable places for the named volumes of deploy/compose.yaml (a new volume copies this ownership).
# nginx: the same image also runs the compose file's fleet-proxy service (deploy/fleet_proxy.sh),
# which puts only the Fleet API on the network; the Control API stays off it (README, Security).
USER root
RUN mkdir -p /data/cache /app/state /app/runs /app/certs \
    && chown -R app:app /data /app \
    && apt-get update && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/_common.sh deploy/fleet_proxy.sh /opt/fedra/deploy/
USER app

# Staged under the working directory (relative paths) and removed once the dependencies are in.
# Two layers: torch from its own pin list first, so that editing pyproject.toml (or the code, which
# is not copied at all) re-runs only the second, small install and never re-installs torch.
WORKDIR /app
COPY --chown=app:app docker/install_deps.sh docker/requirements-torch.txt .fedra-build/
# CPU wheels by default; the server only evaluates the global model.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN TORCH_INDEX_URL="${TORCH_INDEX_URL}" bash .fedra-build/install_deps.sh torch .fedra-build/requirements-torch.txt
COPY --chown=app:app pyproject.toml .fedra-build/
# declared here, after the torch layer: a build argument invalidates the RUNs that follow it
ARG WITH_DIGITS=1
ARG WITH_LLM=0
RUN WITH_DIGITS="${WITH_DIGITS}" WITH_LLM="${WITH_LLM}" bash .fedra-build/install_deps.sh rest .fedra-build/pyproject.toml \
    && rm -rf .fedra-build

ENV FEDRA_CACHE=/data/cache \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
# flower-superlink: one port, 9093 in deploy/compose.yaml (Fleet, Control and Runtime API over
# HTTPS), published on the host's loopback only; fleet-proxy: 8000, Fleet API only, public.
EXPOSE 9093 8000
ENTRYPOINT ["flower-superlink"]
