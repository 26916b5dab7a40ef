"""Loaders for the paper's datasets: DomainNet and NICO++, one domain and one split at a time.

Both datasets ship official split files with one example per line, ``<image path> <integer label>``,
where the image path is relative to the dataset's root folder:

- DomainNet: ``<domain>_<split>.txt`` (e.g. ``clipart_train.txt``), lines such as
  ``clipart/aircraft_carrier/clipart_001_000018.jpg 0``. The split files are looked for first in
  ``<root>/splits/`` (where the FedRA reference code reads them) and then in ``<root>/`` itself
  (where they land when the official text files are downloaded next to the domain folders).
- NICO++ (domain-generalisation track): ``<root>/NICO_DG_official/<domain>_<split>.txt``, lines such
  as ``NICO_DG/autumn/hot air balloon/001.jpg 23``. Class folder names may contain spaces, so a
  line is split at its *last* run of whitespace.

Only the first ``num_classes`` labels are kept (DomainNet: 100 of 345 in the paper; NICO++: all 60);
labels are left as written in the split file, so they already lie in ``0..num_classes-1``.

Normalisation: by default images are normalised with mean = std = (0.5, 0.5, 0.5), which is what
timm's pretrained configs for both paper backbones (``vit_base_patch16_224`` and
``mixer_b16_224``, ImageNet-21k pre-trained) declare. The FedRA reference code normalises with the
CLIP statistics instead and resizes every image straight to 224x224 without augmentation; pass
``mean=CLIP_MEAN, std=CLIP_STD`` to :func:`image_transform` to match it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms

if TYPE_CHECKING:
    from fedra_core.data.federation import DataSpec

DOMAINNET_DOMAINS: tuple[str, ...] = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
NICOPP_DOMAINS: tuple[str, ...] = ("autumn", "dim", "grass", "outdoor", "rock", "water")
DOMAINNET_TOTAL_CLASSES = 345
NICOPP_TOTAL_CLASSES = 60
SPLITS: tuple[str, ...] = ("train", "test")

# timm pretrained_cfg of vit_base_patch16_224 (augreg) and mixer_b16_224 (goog_in21k_ft_in1k).
IMAGE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
IMAGE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
# Statistics the FedRA reference code normalises with.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_LABEL_RE = re.compile(r"[+-]?\d+")


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: must be one of {', '.join(SPLITS)}")
    return split


def image_transform(
    split: str,
    img_size: int = 224,
    *,
    mean: Sequence[float] = IMAGE_MEAN,
    std: Sequence[float] = IMAGE_STD,
) -> Callable[[Image.Image], torch.Tensor]:
    """Return the PIL-image -> normalised float tensor (3, img_size, img_size) transform for ``split``.

    ``train``: RandomResizedCrop(img_size, scale=(0.75, 1)) and a horizontal flip; the mild crop
    range is the one the reference code uses for NICO++, suited to short fine-tuning.
    ``test``: resize the shorter side to ``round(img_size * 256 / 224)`` then centre-crop
    ``img_size`` (crop ratio 0.875, the usual ImageNet evaluation). Bicubic interpolation, as the
    backbones were pre-trained with. Normalised with ``mean`` / ``std`` (default 0.5 / 0.5, the
    backbones' own statistics; see the module docstring).
    """
    _check_split(split)
    if isinstance(img_size, bool) or int(img_size) != img_size or int(img_size) < 1:
        raise ValueError(f"img_size {img_size!r}: must be a positive integer")
    img_size = int(img_size)
    bicubic = transforms.InterpolationMode.BICUBIC
    tail = [transforms.ToTensor(), transforms.Normalize(list(mean), list(std))]
    if split == "train":
        head = [
            transforms.RandomResizedCrop(img_size, scale=(0.75, 1.0), interpolation=bicubic),
            transforms.RandomHorizontalFlip(),
        ]
    else:
        head = [
            transforms.Resize(int(round(img_size * 256 / 224)), interpolation=bicubic),
            transforms.CenterCrop(img_size),
        ]
    return transforms.Compose(head + tail)


class SplitFileDataset(torch.utils.data.Dataset):
    """Images listed in a split file: ``dataset[i]`` is ``(transform(RGB image), label)``.

    ``samples`` is a sequence of ``(image path, label)`` pairs. Attributes: ``samples`` (list of
    ``(Path, int)``), ``targets`` (int64 array of the labels, in order), ``domain``, ``split`` and
    ``transform`` (``None`` returns the PIL image itself).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str | Path, int]],
        transform: Callable | None = None,
        domain: str = "",
        split: str = "",
    ) -> None:
        self.samples: list[tuple[Path, int]] = [(Path(p), int(y)) for p, y in samples]
        self.targets: np.ndarray = np.fromiter((y for _, y in self.samples), dtype=np.int64, count=len(self.samples))
        self.transform = transform
        self.domain = domain
        self.split = split

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | Image.Image, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except FileNotFoundError:
            raise ValueError(f"image listed for {self.domain or 'dataset'} ({self.split}) is missing: {path}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from None
        if self.transform is not None:
            img = self.transform(img)
        return img, label


def read_split_file(
    split_file: Path, image_root: Path, num_classes: int, total_classes: int
) -> list[tuple[Path, int]]:
    """Parse a split file into ``(root / path, label)`` pairs, keeping labels below ``num_classes``.

    Blank lines are skipped. Raises ValueError naming the file and line number for a line that
    does not parse or a label outside ``0..total_classes-1``.
    """
    samples: list[tuple[Path, int]] = []
    with open(split_file, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not _LABEL_RE.fullmatch(parts[1]):
                raise ValueError(
                    f"{split_file}:{lineno}: cannot parse {line!r}: expected '<image path> <integer label>'"
                )
            label = int(parts[1])
            if not 0 <= label < total_classes:
                raise ValueError(f"{split_file}:{lineno}: label {label} outside 0..{total_classes - 1}")
            if label < num_classes:
                samples.append((image_root / parts[0], label))
    return samples


def _check_images_exist(samples: Sequence[tuple[Path, int]], split_file: Path) -> None:
    missing = [p for p, _ in samples if not os.path.isfile(p)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"image listed in {split_file} is missing: {missing[0]}{more}")


def _check_common(
    name: str, root: str | Path, domain: str, domains: tuple[str, ...], split: str, num_classes: int, total: int
) -> Path:
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise ValueError(f"{name} folder not found: {root_path}")
    if domain not in domains:
        raise ValueError(f"unknown {name} domain {domain!r}: must be one of {', '.join(domains)}")
    _check_split(split)
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or not 1 <= int(num_classes) <= total:
        raise ValueError(f"num_classes {num_classes!r} for {name}: must be an integer in 1..{total}")
    return root_path


def _load_domain(
    split_file: Path,
    root_path: Path,
    domain: str,
    split: str,
    num_classes: int,
    total: int,
    img_size: int,
    verify_files: bool,
) -> SplitFileDataset:
    transform = image_transform(split, img_size)
    samples = read_split_file(split_file, root_path, int(num_classes), total)
    if not samples:
        raise ValueError(f"{split_file} lists no image with a label below num_classes={num_classes}")
    if verify_files:
        _check_images_exist(samples, split_file)
    return SplitFileDataset(samples, transform, domain=domain, split=split)


def domainnet_split_file(root: str | Path, domain: str, split: str) -> Path:
    """Return the DomainNet split file for ``domain``/``split``: ``<root>/splits/`` first, then ``<root>/``.

    Raises ValueError listing the paths looked at when neither exists.
    """
    root_path = Path(root).expanduser()
    name = f"{domain}_{split}.txt"
    candidates = (root_path / "splits" / name, root_path / name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ValueError(f"DomainNet split file not found: looked for {candidates[0]} and {candidates[1]}")


def domainnet_domain(
    root: str | Path,
    domain: str,
    split: str,
    num_classes: int = 100,
    img_size: int = 224,
    *,
    verify_files: bool = True,
) -> SplitFileDataset:
    """Load one DomainNet domain's official ``train`` or ``test`` split, first ``num_classes`` labels.

    ``root`` holds the domain folders (``clipart/``, ...) and the split files, either in
    ``root/splits/`` or in ``root/`` (see :func:`domainnet_split_file`). Images get
    :func:`image_transform` for ``split`` and ``img_size``. With ``verify_files`` every listed image
    is checked to exist up front. Raises ValueError for a missing folder or split file, an unknown
    domain or split, ``num_classes`` outside 1..345, an unparsable line or a missing image.
    """
    root_path = _check_common("DomainNet", root, domain, DOMAINNET_DOMAINS, split, num_classes, DOMAINNET_TOTAL_CLASSES)
    split_file = domainnet_split_file(root_path, domain, split)
    return _load_domain(
        split_file, root_path, domain, split, num_classes, DOMAINNET_TOTAL_CLASSES, img_size, verify_files
    )


def nicopp_split_file(root: str | Path, domain: str, split: str) -> Path:
    """Return ``<root>/NICO_DG_official/<domain>_<split>.txt``; ValueError naming it if it is missing."""
    path = Path(root).expanduser() / "NICO_DG_official" / f"{domain}_{split}.txt"
    if not path.is_file():
        raise ValueError(f"NICO++ split file not found: {path}")
    return path


def nicopp_domain(
    root: str | Path,
    domain: str,
    split: str,
    num_classes: int = 60,
    img_size: int = 224,
    *,
    verify_files: bool = True,
) -> SplitFileDataset:
    """Load one NICO++ domain's official ``train`` or ``test`` split, first ``num_classes`` labels.

    ``root`` holds ``NICO_DG/<domain>/<class>/<image>`` and ``NICO_DG_official/<domain>_<split>.txt``;
    paths in the split files are relative to ``root``. Images get :func:`image_transform` for
    ``split`` and ``img_size``. With ``verify_files`` every listed image is checked to exist up
    front. Raises ValueError for a missing folder or split file, an unknown domain or split,
    ``num_classes`` outside 1..60, an unparsable line or a missing image.
    """
    root_path = _check_common("NICO++", root, domain, NICOPP_DOMAINS, split, num_classes, NICOPP_TOTAL_CLASSES)
    split_file = nicopp_split_file(root_path, domain, split)
    return _load_domain(split_file, root_path, domain, split, num_classes, NICOPP_TOTAL_CLASSES, img_size, verify_files)


def domainnet_split(spec: DataSpec, domain: str, split: str) -> SplitFileDataset:
    """The registry's loader: one DomainNet domain's split for the run's data ``spec`` (root, size, classes)."""
    return domainnet_domain(spec.root, domain, split, spec.num_classes or 100, img_size=spec.img_size)


def nicopp_split(spec: DataSpec, domain: str, split: str) -> SplitFileDataset:
    """The registry's loader: one NICO++ domain's split for the run's data ``spec`` (root, size, classes)."""
    return nicopp_domain(spec.root, domain, split, spec.num_classes or 60, img_size=spec.img_size)
