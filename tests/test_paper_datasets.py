"""Tests for fedra_core.data.paper_datasets on tiny DomainNet / NICO++ trees with real image files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedra_core.data.paper_datasets import (
    DOMAINNET_DOMAINS,
    NICOPP_DOMAINS,
    SplitFileDataset,
    domainnet_domain,
    image_transform,
    nicopp_domain,
)

IMG = 32
DN_CLASSES = ["aircraft_carrier", "airplane", "alarm_clock", "ambulance", "angel"]  # labels 0..4
NICO_CLASSES = ["airplane", "hot air balloon", "bear", "fishing rod"]  # labels 0..3, with spaces


def write_image(path: Path, label: int, index: int) -> None:
    """A small image whose format / mode varies, so RGB conversion is exercised."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = (40 * label % 256, 60 + index * 10, 200)
    size = (40 + 3 * index, 30 + label)
    kind = (label + index) % 3
    if kind == 0:
        Image.new("RGB", size, colour).save(path, format="JPEG")
    elif kind == 1:
        Image.new("L", size, colour[0]).save(path, format="PNG")
    else:
        Image.new("RGBA", size, colour + (128,)).save(path, format="PNG")


def make_tree(
    root: Path, rel_dir: str, classes: list[str], per_class: int, split_file: Path, offset: int
) -> list[tuple[str, int]]:
    """Write ``per_class`` images per class under ``root/rel_dir/<class>/`` and list them in ``split_file``."""
    rows = []
    for label, cls in enumerate(classes):
        for k in range(per_class):
            rel = f"{rel_dir}/{cls}/img_{offset + k:03d}.jpg"
            write_image(root / rel, label, k)
            rows.append((rel, label))
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("".join(f"{rel} {label}\n" for rel, label in rows) + "\n")
    return rows


@pytest.fixture(scope="module")
def domainnet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("DomainNet")
    # clipart: split files in root/splits/ (the reference code's layout)
    make_tree(root, "clipart", DN_CLASSES, 3, root / "splits" / "clipart_train.txt", 0)
    make_tree(root, "clipart", DN_CLASSES, 2, root / "splits" / "clipart_test.txt", 100)
    # real: split files next to the domain folders (the official download's layout)
    make_tree(root, "real", DN_CLASSES, 2, root / "real_train.txt", 0)
    make_tree(root, "real", DN_CLASSES, 1, root / "real_test.txt", 100)
    return root


@pytest.fixture(scope="module")
def nicopp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("NICOpp")
    make_tree(root, "NICO_DG/autumn", NICO_CLASSES, 3, root / "NICO_DG_official" / "autumn_train.txt", 0)
    make_tree(root, "NICO_DG/autumn", NICO_CLASSES, 2, root / "NICO_DG_official" / "autumn_test.txt", 100)
    return root


# ---------------------------------------------------------------- transforms


def test_domain_lists() -> None:
    assert DOMAINNET_DOMAINS == ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
    assert NICOPP_DOMAINS == ("autumn", "dim", "grass", "outdoor", "rock", "water")


@pytest.mark.parametrize("split", ["train", "test"])
def test_image_transform_shape_and_normalisation(split: str) -> None:
    out = image_transform(split, IMG)(Image.new("RGB", (70, 45), (255, 255, 255)))
    assert out.shape == (3, IMG, IMG) and out.dtype == torch.float32
    # mean = std = 0.5 maps white (1.0) to 1.0
    assert torch.allclose(out, torch.ones_like(out), atol=1e-2)


def test_image_transform_custom_statistics() -> None:
    out = image_transform("test", IMG, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(Image.new("RGB", (40, 40), (0, 0, 0)))
    assert torch.allclose(out, torch.zeros_like(out))


@pytest.mark.parametrize("split,img_size,match", [("val", 32, r"split 'val'.*train, test"), ("test", 0, "img_size 0")])
def test_image_transform_bad_arguments(split: str, img_size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        image_transform(split, img_size)


# ---------------------------------------------------------------- DomainNet


def test_domainnet_lengths_labels_and_class_filter(domainnet_root: Path) -> None:
    train = domainnet_domain(domainnet_root, "clipart", "train", num_classes=3, img_size=IMG)
    test = domainnet_domain(domainnet_root, "clipart", "test", num_classes=3, img_size=IMG)
    assert len(train) == 3 * 3 and len(test) == 3 * 2
    assert train.targets.dtype == np.int64
    np.testing.assert_array_equal(train.targets, np.repeat([0, 1, 2], 3))
    assert train.domain == "clipart" and train.split == "train"
    assert all(p.parts[-3] == "clipart" and p.parts[-2] == DN_CLASSES[y] for p, y in train.samples)
    full = domainnet_domain(domainnet_root, "clipart", "train", num_classes=345, img_size=IMG)
    assert len(full) == 5 * 3 and set(full.targets.tolist()) == set(range(5))


def test_domainnet_images_load_as_tensors(domainnet_root: Path) -> None:
    test = domainnet_domain(domainnet_root, "clipart", "test", num_classes=5, img_size=IMG)
    for i in range(len(test)):
        x, y = test[i]
        assert isinstance(x, torch.Tensor) and x.shape == (3, IMG, IMG)
        assert y == test.targets[i]
    batch = next(iter(torch.utils.data.DataLoader(test, batch_size=4)))
    assert batch[0].shape == (4, 3, IMG, IMG)
    train = domainnet_domain(domainnet_root, "clipart", "train", num_classes=5, img_size=IMG)
    assert train[0][0].shape == (3, IMG, IMG)


def test_domainnet_split_files_in_root_are_found(domainnet_root: Path) -> None:
    real = domainnet_domain(domainnet_root, "real", "train", num_classes=4, img_size=IMG)
    assert len(real) == 4 * 2
    assert real[0][0].shape == (3, IMG, IMG)


def test_domainnet_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="DomainNet folder not found: " + re.escape(str(missing))):
        domainnet_domain(missing, "clipart", "train")


def test_domainnet_missing_split_file_names_both_places(domainnet_root: Path) -> None:
    with pytest.raises(ValueError) as e:
        domainnet_domain(domainnet_root, "sketch", "train")
    msg = str(e.value)
    assert str(domainnet_root / "splits" / "sketch_train.txt") in msg
    assert str(domainnet_root / "sketch_train.txt") in msg


def test_domainnet_unknown_domain_lists_allowed(domainnet_root: Path) -> None:
    allowed = "clipart, infograph, painting, quickdraw, real, sketch"
    with pytest.raises(ValueError, match=f"unknown DomainNet domain 'cartoon'.*{allowed}"):
        domainnet_domain(domainnet_root, "cartoon", "train")


def test_domainnet_bad_split(domainnet_root: Path) -> None:
    with pytest.raises(ValueError, match=r"split 'validation'.*train, test"):
        domainnet_domain(domainnet_root, "clipart", "validation")


@pytest.mark.parametrize("num_classes", [0, 346, -3])
def test_domainnet_num_classes_out_of_range(domainnet_root: Path, num_classes: int) -> None:
    with pytest.raises(ValueError, match=rf"num_classes {num_classes} for DomainNet.*1\.\.345"):
        domainnet_domain(domainnet_root, "clipart", "train", num_classes=num_classes)


def _bad_split_root(tmp_path: Path, content: str) -> Path:
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "painting_train.txt").write_text(content)
    return tmp_path / "splits" / "painting_train.txt"


@pytest.mark.parametrize(
    "content,lineno,what",
    [
        ("painting/a/1.jpg 0\npainting/a/2.jpg\n", 2, "painting/a/2.jpg"),
        ("painting/a/1.jpg 0\n\npainting/a/2.jpg zero\n", 3, "zero"),
        ("painting/a/1.jpg 0.5\n", 1, "0.5"),
    ],
)
def test_domainnet_unparsable_line_names_file_and_line(tmp_path: Path, content: str, lineno: int, what: str) -> None:
    split_file = _bad_split_root(tmp_path, content)
    with pytest.raises(ValueError) as e:
        domainnet_domain(tmp_path, "painting", "train")
    msg = str(e.value)
    assert f"{split_file}:{lineno}" in msg and what in msg and "\n" not in msg


def test_domainnet_label_out_of_range(tmp_path: Path) -> None:
    split_file = _bad_split_root(tmp_path, "painting/a/1.jpg 345\n")
    with pytest.raises(ValueError, match=re.escape(f"{split_file}:1: label 345 outside 0..344")):
        domainnet_domain(tmp_path, "painting", "train")


def test_domainnet_no_example_left(tmp_path: Path) -> None:
    _bad_split_root(tmp_path, "painting/a/1.jpg 200\n")
    with pytest.raises(ValueError, match="no image with a label below num_classes=100"):
        domainnet_domain(tmp_path, "painting", "train")


def test_domainnet_missing_image_names_path(tmp_path: Path) -> None:
    write_image(tmp_path / "painting" / "a" / "1.jpg", 0, 0)
    split_file = _bad_split_root(tmp_path, "painting/a/1.jpg 0\npainting/a/gone.jpg 0\npainting/b/gone.jpg 1\n")
    with pytest.raises(ValueError) as e:
        domainnet_domain(tmp_path, "painting", "train")
    msg = str(e.value)
    assert str(split_file) in msg and str(tmp_path / "painting" / "a" / "gone.jpg") in msg and "1 more" in msg
    # Without the up-front check the error comes when the image is read.
    ds = domainnet_domain(tmp_path, "painting", "train", verify_files=False, img_size=IMG)
    assert ds[0][0].shape == (3, IMG, IMG)
    with pytest.raises(ValueError, match="missing: " + re.escape(str(tmp_path / "painting" / "a" / "gone.jpg"))):
        ds[1]


def test_unreadable_image_names_path(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    ds = SplitFileDataset([(bad, 0)], image_transform("test", IMG), domain="real", split="test")
    with pytest.raises(ValueError, match="cannot read image " + re.escape(str(bad))):
        ds[0]


# ---------------------------------------------------------------- NICO++


def test_nicopp_lengths_labels_class_filter_and_spaces(nicopp_root: Path) -> None:
    train = nicopp_domain(nicopp_root, "autumn", "train", num_classes=2, img_size=IMG)
    assert len(train) == 2 * 3
    np.testing.assert_array_equal(train.targets, np.repeat([0, 1], 3))
    # "hot air balloon" has spaces: the path must keep them.
    assert {p.parent.name for p, y in train.samples if y == 1} == {"hot air balloon"}
    test = nicopp_domain(nicopp_root, "autumn", "test", img_size=IMG)
    assert len(test) == 4 * 2 and test.domain == "autumn"
    for i in range(len(test)):
        x, y = test[i]
        assert x.shape == (3, IMG, IMG) and y == test.targets[i]


def test_nicopp_errors(nicopp_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"NICO\+\+ folder not found: " + re.escape(str(tmp_path / "none"))):
        nicopp_domain(tmp_path / "none", "autumn", "train")
    looked = nicopp_root / "NICO_DG_official" / "dim_train.txt"
    with pytest.raises(ValueError, match="split file not found: " + re.escape(str(looked))):
        nicopp_domain(nicopp_root, "dim", "train")
    with pytest.raises(ValueError, match=r"unknown NICO\+\+ domain 'winter'.*autumn, dim, grass, outdoor, rock, water"):
        nicopp_domain(nicopp_root, "winter", "train")
    with pytest.raises(ValueError, match=r"split 'val'"):
        nicopp_domain(nicopp_root, "autumn", "val")
    with pytest.raises(ValueError, match=r"num_classes 61 for NICO\+\+.*1\.\.60"):
        nicopp_domain(nicopp_root, "autumn", "train", num_classes=61)


def test_nicopp_bad_line_and_missing_image(tmp_path: Path) -> None:
    official = tmp_path / "NICO_DG_official"
    official.mkdir()
    (official / "rock_train.txt").write_text("NICO_DG/rock/bear/1.jpg 0\nNICO_DG/rock/bear/2.jpg\n")
    with pytest.raises(ValueError, match=re.escape(f"{official / 'rock_train.txt'}:2: cannot parse")):
        nicopp_domain(tmp_path, "rock", "train")
    (official / "rock_test.txt").write_text("NICO_DG/rock/fishing rod/9.jpg 3\n")
    gone = tmp_path / "NICO_DG" / "rock" / "fishing rod" / "9.jpg"
    with pytest.raises(ValueError, match="missing: " + re.escape(str(gone))):
        nicopp_domain(tmp_path, "rock", "test")
