"""Reading a transformers checkpoint folder into this project's canonical weights file, shared by the
transformers families (hf_encoder.py, hf_causal_lm.py): which safetensors files the folder holds,
and the one-time conversion of their tensors, renamed by the family, to one float32 safetensors
file in the cache, named after the source files' version."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from fedra_core.cache import cache_dir


def safetensors_shards(folder: Path, reference: str) -> list[Path]:
    """Return the safetensors files of the checkpoint in ``folder`` (one, or the shards its index
    names); ValueError names ``reference`` when there is none (a pickled ``pytorch_model.bin`` is never read)."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / n for n in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    extra = " (pytorch_model.bin is never read: re-save the model with save_pretrained(..., safe_serialization=True))"
    raise ValueError(f"backbone '{reference}': no model.safetensors in that folder{extra if (folder / 'pytorch_model.bin').is_file() else ''}")


def file_sha256(path: Path) -> str:
    """Return the sha256 (hex) of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted_weights(reference: str | None, prefix: str, stem: str, version: int,
                      convert: Callable[[Path, list[Path], Path], None]) -> Path | None:
    """Return the canonical float32 file of the transformers folder ``reference`` (None: None), made
    by ``convert(folder, shards, out)`` the first time. It lives in ``cache_dir()/backbones``, named
    after ``stem``, the folder and a hash of the converter ``version`` and each shard's (name, size,
    mtime), so a changed checkpoint is converted again; ``prefix`` names the backbone in errors."""
    if reference is None:
        return None
    folder = Path(reference).expanduser().resolve()
    shards = safetensors_shards(folder, f"{prefix}{folder}")
    stats = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in shards]
    tag = hashlib.sha256(json.dumps([version, str(folder), stats]).encode()).hexdigest()[:16]
    out = cache_dir() / "backbones" / f"{stem}-{folder.name}-{tag}.safetensors"
    if not out.is_file():
        convert(folder, shards, out)
    return out


def read_renamed(shards: list[Path], rename: Callable[[str], str | None]) -> tuple[dict[str, torch.Tensor], str]:
    """Read every tensor of ``shards`` whose key ``rename`` maps to a canonical key (None: skipped),
    floating point as float32; return them and the sha256 of the shards' bytes."""
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    digest = hashlib.sha256()
    for shard in shards:
        with open(shard, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                canonical = rename(key)
                if canonical is None:
                    continue
                value = f.get_tensor(key)
                tensors[canonical] = value.float() if value.is_floating_point() else value
    return tensors, digest.hexdigest()


def save_canonical(tensors: dict[str, torch.Tensor], out: Path, folder: Path, source_sha256: str) -> None:
    """Write ``tensors`` to ``out`` atomically, with the source folder and its sha256 as metadata."""
    from safetensors.torch import save_file

    meta = {"source": f"transformers checkpoint {folder}", "source_sha256": source_sha256}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # writers racing on one cache each use their own
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, out)
