"""A node's own data: the training and test split a node holds, named by its node-config.

Formats (node-config ``data-format``), registered in :mod:`fedra_core.data.registry`:

* ``imagefolder``: ``data-root/train/<class>/*.png|jpg|...`` and optionally ``data-root/test/<class>/...``.
  Labels come from the run's ``class-names``, else from ``data-root/classes.txt`` (one class name per
  line, in label order), else from the sorted class folder names (then every node must hold every class).
  Images are decoded once into a cache file (``$FEDRA_CACHE/node-data``), re-decoded when a file changes.
* every registered dataset (``digits``, ``domainnet``, ``nicopp``): one domain of it (``domain``, and
  ``data-root`` for a dataset read from a folder: DomainNet's and NICO++'s official layouts).
* ``partition``: client ``partition-id`` of the run's partitioned dataset (simulation and benchmarks).
* ``tokens``: pre-tokenised text for the ``hf-encoder`` family: ``data-root/train.safetensors`` and
  optionally ``data-root/test.safetensors``, each with int64 ``input_ids`` (N, T), padded with the
  model's ``pad_token_id`` (the attention mask is ``input_ids != pad_token_id``), and int64 ``labels``
  (N,). The data owner tokenises once, with the tokenizer of the checkpoint folder::

      enc = AutoTokenizer.from_pretrained(folder)(texts, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
      save_file({"input_ids": enc["input_ids"], "labels": torch.tensor(labels)}, "train.safetensors")  # safetensors.torch

  Single sentences only: the model uses all-zero token_type_ids (what a tokenizer gives for one sentence).

Nothing here opens another node's files or another domain's split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset, TensorDataset

from fedra_core.data.federation import DataSpec, client_train_data, domain_split
from fedra_core.data.partition import dataset_targets, eval_sample
from fedra_core.data.registry import dataset_entry, node_format, resolve

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_CACHE_VERSION = 2  # 2: files keyed by content hash
log = logging.getLogger("fedra")
_MEAN, _STD = 0.5, 0.5  # the backbones' own statistics, as for the paper datasets


class NodeDataError(ValueError):
    """A node's data cannot be used; the message is one line naming the node-config key and value."""


@dataclass(frozen=True)
class NodeDataSpec:
    """Which data a node holds (its node-config): format, folder, domain, partition id."""

    data_format: str
    root: str = ""
    domain: str = ""
    partition_id: int | None = None

    def __post_init__(self) -> None:
        try:
            needs = node_format(self.data_format).needs
        except ValueError as exc:
            raise NodeDataError(str(exc)) from None
        given = {"partition-id": self.partition_id is not None, "data-root": bool(self.root), "domain": bool(self.domain)}
        what = {"partition-id": "the node's partition", "data-root": "the node's data folder", "domain": "the node's domain"}
        for key in needs:
            if not given[key]:
                raise NodeDataError(f"node-config lacks {key!r}: data-format {self.data_format!r} needs {what[key]}")


@dataclass(frozen=True)
class NodeData:
    """A node's splits: ``domain`` (its name in the tables), ``train``, ``test`` (may be empty) and
    ``eval_set``: an id shared by nodes that hold the very same test split (they evaluate once), or
    ``""`` when the split is the node's own."""

    domain: str
    train: Dataset
    test: Dataset
    eval_set: str


@dataclass(frozen=True)
class LabelSpace:
    """The run's label space: ``num_classes`` and optional ``class_names`` (label i = class_names[i])."""

    num_classes: int
    class_names: tuple[str, ...] = ()


def load_node_data(
    spec: NodeDataSpec, run: DataSpec, labels: LabelSpace, img_size: int, max_test: int = 0
) -> NodeData:
    """Load the node's training and test split.

    ``run`` is the run's dataset settings (used by ``partition``, and the seed by ``digits``);
    ``labels`` the run's label space; ``img_size`` the backbone's input size (``imagefolder``);
    ``max_test``, when positive, keeps a sample of that many test examples drawn with the run's seed
    and stratified by class (:func:`stratified_indices`). Raises NodeDataError naming the
    node-config key, the value and what is expected.
    """
    data = resolve(node_format(spec.data_format).loader)(spec, run, labels, img_size)
    _check_labels(data, spec, labels.num_classes)
    if max_test and len(data.test) > max_test:
        data = NodeData(data.domain, data.train, eval_sample(data.test, max_test, run.seed), data.eval_set)
    return data



def load_partition(spec: NodeDataSpec, run: DataSpec, labels: LabelSpace, img_size: int) -> NodeData:
    """Format ``partition``: client ``partition-id`` of the run's partitioned dataset; the test split
    is its domain's (shared with the domain's other clients, who evaluate it once)."""
    try:
        domain, train = client_train_data(run, int(spec.partition_id))
    except ValueError as exc:
        raise NodeDataError(f"node-config 'partition-id' = {spec.partition_id}: {exc}") from None
    return NodeData(domain, train, domain_split(run, domain, "test"), f"{run.dataset}:{domain}")


def load_dataset_domain(spec: NodeDataSpec, run: DataSpec, labels: LabelSpace, img_size: int) -> NodeData:
    """Format ``<dataset>``: one domain of a registered dataset (``data-root`` when it is read from a folder)."""
    needs_root = dataset_entry(spec.data_format).needs_root
    key, value = ("data-root", spec.root) if needs_root else ("domain", spec.domain)
    one = DataSpec(dataset=spec.data_format, root=spec.root, num_classes=labels.num_classes, img_size=run.img_size, seed=run.seed,
                   tokenizer=run.tokenizer)
    try:
        train, test = domain_split(one, spec.domain, "train"), domain_split(one, spec.domain, "test")
    except (ValueError, OSError) as exc:
        raise NodeDataError(f"node-config {key!r} = {value!r}: {exc}") from None
    return NodeData(spec.domain, train, test, f"{spec.data_format}:{spec.domain}:{run.seed}")


def load_imagefolder(spec: NodeDataSpec, run: DataSpec, labels: LabelSpace, img_size: int) -> NodeData:
    """Format ``imagefolder``: the node's own ``data-root/train/<class>/...`` (and ``test/``), at ``img_size``."""
    return _imagefolder(Path(spec.root).expanduser(), spec.domain, labels, img_size)


def load_tokens(spec: NodeDataSpec, run: DataSpec, labels: LabelSpace, img_size: int) -> NodeData:
    """Format ``tokens``: the node's own pre-tokenised ``data-root/train.safetensors`` (and ``test.safetensors``)."""
    return _tokens(Path(spec.root).expanduser(), spec.domain)


def _check_labels(data: NodeData, spec: NodeDataSpec, num_classes: int) -> None:
    key, value = ("partition-id", spec.partition_id) if spec.data_format == "partition" else ("data-root", spec.root or spec.domain)
    if len(data.train) == 0:
        raise NodeDataError(f"node-config {key!r} = {value!r}: no training example (a node needs at least one)")
    for split, ds in (("train", data.train), ("test", data.test)):
        targets = dataset_targets(ds)
        if len(targets) and not (0 <= int(targets.min()) and int(targets.max()) < num_classes):
            bad = int(targets.max()) if int(targets.max()) >= num_classes else int(targets.min())
            raise NodeDataError(
                f"node-config {key!r} = {value!r}: {split} label {bad} lies outside the run's label space 0..{num_classes - 1} "
                "(config key 'num-classes')"
            )


# ----------------------------------------------------------------------------------------------
# tokens

TOKEN_TENSORS = ("input_ids", "labels")


def _tokens(root: Path, domain: str) -> NodeData:
    where = f"node-config 'data-root' = '{root}'"
    expected = "train.safetensors and optionally test.safetensors with int64 'input_ids' (N, T) and 'labels' (N,)"
    if not root.is_dir():
        raise NodeDataError(f"{where}: no such folder (expected {expected})")
    if not (root / "train.safetensors").is_file():
        raise NodeDataError(f"{where}: no train.safetensors (expected {expected})")
    train = tokens_split(root / "train.safetensors", where)
    test = tokens_split(root / "test.safetensors", where) if (root / "test.safetensors").is_file() else None
    if test is None:
        width = train.tensors[0].shape[1]
        test = TensorDataset(torch.empty((0, width), dtype=torch.int64), torch.empty((0,), dtype=torch.int64))
    return NodeData(domain or root.name, train, test, "")


def tokens_split(path: Path, where: str = "") -> TensorDataset:
    """Return the ``input_ids`` (N, T) and ``labels`` (N,) of a token file as a ``TensorDataset`` of int64.

    Raises NodeDataError (prefixed by ``where``) for an unreadable file, a missing tensor, a tensor
    that is not integer or a shape mismatch.
    """
    where = where or f"'{path.parent}'"
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a corrupt file
        raise NodeDataError(f"{where}: cannot read {path.name} ({exc.__class__.__name__}: {exc})") from None
    for name in TOKEN_TENSORS:
        if name not in tensors:
            raise NodeDataError(f"{where}: {path.name} lacks tensor {name!r} (has {sorted(tensors)}; expected int64 'input_ids' (N, T) and 'labels' (N,))")
        if tensors[name].is_floating_point() or tensors[name].dtype == torch.bool or tensors[name].is_complex():
            raise NodeDataError(f"{where}: {path.name} tensor {name!r} has dtype {tensors[name].dtype}, expected int64")
    ids, labels = tensors["input_ids"], tensors["labels"]
    if ids.ndim != 2 or labels.ndim != 1 or ids.shape[0] != labels.shape[0] or ids.shape[1] == 0:
        raise NodeDataError(
            f"{where}: {path.name} has 'input_ids' of shape {tuple(ids.shape)} and 'labels' of shape {tuple(labels.shape)}, "
            "expected (N, T) and (N,) with the same N and T >= 1"
        )
    if len(ids) and int(ids.min()) < 0:
        raise NodeDataError(f"{where}: {path.name} 'input_ids' holds a negative token id {int(ids.min())}")
    return TensorDataset(ids.long(), labels.long())


# ----------------------------------------------------------------------------------------------
# imagefolder


class ImageTensorDataset(Dataset):
    """Decoded uint8 images (N, 3, H, W) with int64 labels; ``train`` draws a random resized crop of
    ``size`` (scale 0.75-1, the mild crop of the paper datasets; no flip, which would change digits or
    laterality), the test split is stored at ``size`` already. Returns normalised float images."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int, train: bool) -> None:
        self.images, self.labels, self.size, self.train = images, labels.long(), size, train

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.transforms import v2

        image = self.images[index]
        if self.train:
            image = v2.RandomResizedCrop(self.size, scale=(0.75, 1.0), antialias=True)(image)
        return (image.float() / 255.0 - _MEAN) / _STD, self.labels[index]


def _imagefolder(root: Path, domain: str, labels: LabelSpace, size: int) -> NodeData:
    where = f"node-config 'data-root' = '{root}'"
    if not root.is_dir():
        raise NodeDataError(f"{where}: no such folder (expected a folder holding train/<class>/ and test/<class>/)")
    if not (root / "train").is_dir():
        raise NodeDataError(f"{where}: no train/ folder (expected {root}/train/<class>/*.png and {root}/test/<class>/...)")
    train = imagefolder_split(root, "train", labels, size, where)
    if len(train) == 0:
        raise NodeDataError(f"{where}: train/ holds no image ({', '.join(sorted(IMAGE_SUFFIXES))}) in a class folder")
    return NodeData(domain or root.name, train, imagefolder_split(root, "test", labels, size, where), "")


def imagefolder_split(root: Path, split: str, labels: LabelSpace, size: int, where: str = "") -> ImageTensorDataset:
    """Return ``root/split/<class>/*`` decoded (once, then from the cache) as an :class:`ImageTensorDataset`.

    The test split is stored at ``size``, the training split a little larger for its random crops. A
    missing split folder gives an empty dataset. Raises NodeDataError (prefixed by ``where``) for a
    class outside the label space or an unreadable image.
    """
    where = where or f"'{root}'"
    from fedra_core.backbones import cache_dir

    names = _class_names(root, labels, where)
    files = _list_images(root / split, names, where)
    stored = size if split == "test" else round(size * 256 / 224)
    try:
        hashes = _content_hashes([p for p, _ in files], cache_dir() / "node-data" / "hashes")
    except PermissionError as exc:
        raise NodeDataError(f"{where}: cannot read {exc.filename}: permission denied") from None
    listing = [(str(p.relative_to(root)), y, h) for (p, y), h in zip(files, hashes)]
    key = hashlib.sha256(json.dumps([_CACHE_VERSION, size, stored, names, listing]).encode()).hexdigest()[:32]
    cache = cache_dir() / "node-data" / f"{key}.safetensors"
    tensors = None
    if cache.is_file():
        try:
            tensors = load_file(str(cache))
            if set(tensors) != {"x", "y"} or len(tensors["x"]) != len(files):
                raise ValueError("unexpected content")
        except Exception as exc:  # a torn or damaged cache file: decode the images again
            log.warning("node data cache %s is unreadable (%s); rebuilding it from %s", cache, exc.__class__.__name__, root)
            tensors = None
    if tensors is None:
        load = round(size * 256 / 224)
        tensors = {
            "x": _decode([p for p, _ in files], load, stored, where, root),
            "y": torch.tensor([y for _, y in files], dtype=torch.int64),
        }
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, cache)
    return ImageTensorDataset(tensors["x"], tensors["y"], size, train=split == "train")


def _class_names(root: Path, labels: LabelSpace, where: str) -> list[str]:
    """Label order: the run's class-names, else classes.txt, else the sorted class folders."""
    if labels.class_names:
        names = list(labels.class_names)
    elif (root / "classes.txt").is_file():
        names = [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    else:
        names = sorted({p.name for s in ("train", "test") if (root / s).is_dir() for p in (root / s).iterdir() if p.is_dir()})
        if len(names) != labels.num_classes:
            raise NodeDataError(
                f"{where}: {len(names)} class folders {names[:5]} but the run has num-classes = {labels.num_classes}; "
                "give the run's 'class-names' or a classes.txt so that every node maps classes to the same labels"
            )
    if len(names) > labels.num_classes:
        raise NodeDataError(f"{where}: {len(names)} class names but the run has num-classes = {labels.num_classes}")
    return names


def _content_hashes(paths: Sequence[Path], index_dir: Path) -> list[str]:
    """Return the sha256 of each file's content. A file is read again only when its (size, mtime,
    ctime, inode) changed since it was last hashed: a rewrite that keeps size and mtime (``cp -p``)
    still changes its ctime. The (stat -> hash) index is one JSON file per folder in ``index_dir``."""
    if not paths:
        return []
    folder = str(paths[0].parent.parent.resolve())
    index_path = index_dir / f"{hashlib.sha256(folder.encode()).hexdigest()[:32]}.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):  # no index yet, or a damaged one: hash everything again
        index = {}
    out, changed = [], False
    for path in paths:
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = index.get(str(path))
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == stamp):
            entry = [stamp, hashlib.sha256(path.read_bytes()).hexdigest()]
            index[str(path)] = entry
            changed = True
        out.append(entry[1])
    if changed:
        index_dir.mkdir(parents=True, exist_ok=True)
        tmp = index_path.with_name(f"{index_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index))
        os.replace(tmp, index_path)
    return out


def _list_images(folder: Path, names: Sequence[str], where: str) -> list[tuple[Path, int]]:
    """Return (path, label) of every image under folder/<class>/, sorted."""
    if not folder.is_dir():
        return []
    label_of = {n: i for i, n in enumerate(names)}
    out = []
    try:
        class_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
        for class_dir in class_dirs:
            if class_dir.name not in label_of:
                raise NodeDataError(
                    f"{where}: class folder '{folder.name}/{class_dir.name}' is not in the run's label space {list(names)[:10]}"
                )
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    out.append((path, label_of[class_dir.name]))
    except PermissionError as exc:
        raise NodeDataError(f"{where}: cannot read {exc.filename}: permission denied") from None
    return out


def _decode(paths: Sequence[Path], load: int, out: int, where: str, root: Path) -> torch.Tensor:
    """Decode images as RGB, resize the shorter side to ``load``, centre-crop ``out``; uint8 (N,3,out,out)."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

    images = torch.empty((len(paths), 3, out, out), dtype=torch.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise NodeDataError(f"{where}: cannot read image {path.relative_to(root)} ({exc.__class__.__name__})") from None
        x = resize(pil_to_tensor(rgb), [load], interpolation=InterpolationMode.BICUBIC, antialias=True)
        images[i] = center_crop(x, [out])
    return images
