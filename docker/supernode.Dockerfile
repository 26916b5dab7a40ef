# FedRA SuperNode: Flower's official SuperNode image, pinned to 1.42.0, plus the app's
# dependencies. The ClientApp runs as a subprocess of the SuperNode (--isolation subprocess, the
# default), so torch & co. must be installed here. The app code itself arrives in the bundle that
# `flwr run` sends; no code, data, weights, keys or certificates are baked in.
#
# Build from the repository root:
#   CPU (default):   docker build -f docker/supernode.Dockerfile -t fedra/supernode:flwr1.42.0 .
#   NVIDIA GPU host: docker build -f docker/supernode.Dockerfile \
#                      --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 \
#                      -t fedra/supernode:flwr1.42.0-cuda .
#   (the CUDA wheels bring their own CUDA libraries: the host needs the NVIDIA driver and the
#    NVIDIA Container Toolkit, and the container `--gpus all`; see deploy/compose.gpu.yaml)
#
# Override BASE_IMAGE to pin a digest (flwr/supernode@sha256:...) once you have pulled the tag.
ARG BASE_IMAGE=flwr/supernode:1.42.0-py3.11-ubuntu24.04
FROM ${BASE_IMAGE}

# Writable cache (backbones, built datasets) for the named volume of deploy/compose.yaml.
USER root
RUN mkdir -p /data/cache /data/datasets /app/keys /app/certs \
    && chown -R app:app /data /app
USER app

# Staged under the working directory (relative paths) and removed once the dependencies are in.
# Two layers: torch from its own pin list first, so that editing pyproject.toml (or the code, which
# is not copied at all) re-runs only the second, small install and never re-installs torch.
WORKDIR /app
COPY --chown=app:app docker/install_deps.sh docker/requirements-torch.txt .fedra-build/
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN TORCH_INDEX_URL="${TORCH_INDEX_URL}" bash .fedra-build/install_deps.sh torch .fedra-build/requirements-torch.txt
COPY --chown=app:app pyproject.toml .fedra-build/
# declared here, after the torch layer: a build argument invalidates the RUNs that follow it
ARG WITH_DIGITS=1
ARG WITH_LLM=0
RUN WITH_DIGITS="${WITH_DIGITS}" WITH_LLM="${WITH_LLM}" bash .fedra-build/install_deps.sh rest .fedra-build/pyproject.toml \
    && rm -rf .fedra-build

ENV FEDRA_CACHE=/data/cache
ENTRYPOINT ["flower-supernode"]
