"""A node's own data: the imagefolder layout, the other formats, and the one-line refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fedra_core.data.federation import DataSpec, client_train_data, domain_split
from fedra_core.data.node_data import LabelSpace, NodeDataError, NodeDataSpec, load_node_data

RUN = DataSpec(dataset="digits", domains=("mnist", "printed", "usps"))
TEN = LabelSpace(10)


def _solid(path, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 12), colour).save(path)


def _folder(root, classes=("cat", "dog"), n=2):
    for c, name in enumerate(classes):
        for i in range(n):
            _solid(root / "train" / name / f"{i}.png", (10 * c, 100, 200))
        _solid(root / "test" / name / "0.jpg" if c else root / "test" / name / "0.png", (10 * c, 100, 200))
    return root


def _load(root, labels=LabelSpace(2), domain=""):
    return load_node_data(NodeDataSpec("imagefolder", str(root), domain), RUN, labels, img_size=8)


def test_imagefolder_decodes_resizes_and_labels_by_sorted_class_folders(tmp_path):
    data = _load(_folder(tmp_path / "site-a", classes=("dog", "cat")))
    assert data.domain == "site-a" and data.eval_set == ""
    assert len(data.train) == 4 and len(data.test) == 2
    image, label = data.test[1]  # dog: written first, red channel 0
    assert image.shape == (3, 8, 8) and int(label) == 1  # sorted: cat=0, dog=1
    # a solid colour survives any resize and crop: (value / 255 - 0.5) / 0.5 per channel
    expected = torch.tensor([0 / 255 * 2 - 1, 100 / 255 * 2 - 1, 200 / 255 * 2 - 1]).view(3, 1, 1).expand(3, 8, 8)
    assert torch.allclose(image, expected, atol=1e-6)
    train_image, train_label = data.train[0]
    assert train_image.shape == (3, 8, 8) and int(train_label) == 0


def test_classes_txt_and_run_class_names_fix_the_label_order(tmp_path):
    root = _folder(tmp_path / "b", classes=("cat", "dog"))
    (root / "classes.txt").write_text("dog\ncat\nbird\n")
    data = _load(root, LabelSpace(3))
    assert sorted(int(data.train[i][1]) for i in range(4)) == [0, 0, 1, 1]
    assert int(data.test[0][1]) == 1  # test/cat is label 1 in classes.txt
    run_names = _load(root, LabelSpace(3, ("bird", "cat", "dog")))  # the run's class-names win over classes.txt
    assert int(run_names.test[0][1]) == 1 and int(run_names.test[1][1]) == 2


def test_a_missing_test_split_leaves_the_node_without_evaluation(tmp_path):
    root = _folder(tmp_path / "c")
    for f in (root / "test").rglob("*.*"):
        f.unlink()
    assert len(_load(root).test) == 0


@pytest.mark.parametrize(
    "make, labels, expected",
    [
        (lambda r: r / "nowhere", LabelSpace(2), "no such folder"),
        (lambda r: (r / "x").mkdir() or r / "x", LabelSpace(2), "no train/ folder"),
        (lambda r: [(r / "y" / "train" / c).mkdir(parents=True) for c in ("a", "b")] and r / "y", LabelSpace(2), "holds no image"),
        (lambda r: _folder(r / "z", classes=("a", "b", "c")), LabelSpace(2), "3 class folders"),
        (lambda r: _folder(r / "w", classes=("a", "zebra")), LabelSpace(2, ("a", "b")), "class folder 'train/zebra'"),
    ],
)
def test_bad_folders_are_refused_with_one_line_naming_data_root(tmp_path, make, labels, expected):
    root = make(tmp_path)
    with pytest.raises(NodeDataError) as info:
        _load(root, labels)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"node-config 'data-root' = '{root}'") and expected in message


def test_an_unreadable_image_is_named_and_a_changed_file_is_decoded_again(tmp_path):
    root = _folder(tmp_path / "d")
    _load(root)  # decoded into the cache
    (root / "train" / "dog" / "1.png").write_bytes(b"not an image at all")
    with pytest.raises(NodeDataError, match=r"cannot read image train/dog/1.png"):
        _load(root)


def test_labels_outside_the_run_label_space_are_refused():
    with pytest.raises(NodeDataError, match=r"node-config 'data-root' = 'usps': train label 9 lies outside .*0\.\.4"):
        load_node_data(NodeDataSpec("digits", domain="usps"), RUN, LabelSpace(5), img_size=28)


def test_digits_and_partition_formats_hold_one_domain_only():
    digits = load_node_data(NodeDataSpec("digits", domain="printed"), RUN, TEN, img_size=28, max_test=50)
    reference = domain_split(RUN, "printed", "test")
    assert digits.domain == "printed" and len(digits.test) == 50
    kept = digits.test.indices
    assert torch.equal(digits.test[7][0], reference[kept[7]][0])
    part = load_node_data(NodeDataSpec("partition", partition_id=2), RUN, TEN, img_size=28)
    domain, train = client_train_data(RUN, 2)
    assert part.domain == domain == "usps" and len(part.train) == len(train) == 3000
    assert part.eval_set == "digits:usps"
    with pytest.raises(NodeDataError, match=r"'partition-id' = 3: .*0\.\.2"):
        load_node_data(NodeDataSpec("partition", partition_id=3), RUN, TEN, img_size=28)


@pytest.mark.parametrize(
    "spec, key",
    [
        (dict(data_format="csv"), "'data-format' = 'csv'"),
        (dict(data_format="imagefolder"), "lacks 'data-root'"),
        (dict(data_format="domainnet", root="/x"), "lacks 'domain'"),
        (dict(data_format="partition"), "lacks 'partition-id'"),
    ],
)
def test_incomplete_node_configs_are_refused(spec, key):
    with pytest.raises(NodeDataError, match=key):
        NodeDataSpec(**spec)


def test_imagefolder_written_from_digits_keeps_its_labels(tmp_path):
    from app_helpers import write_imagefolder

    root = write_imagefolder(tmp_path / "printed", "printed", max_train=30, max_test=20)
    data = _load(root, TEN, domain="printed")
    labels = domain_split(RUN, "printed", "test").tensors[1][:20].numpy()
    got = np.array([int(data.test[i][1]) for i in range(20)])
    assert sorted(got.tolist()) == sorted(labels.tolist())


def test_eval_max_examples_draws_a_seeded_class_stratified_sample(tmp_path):
    # the audit: 10 examples of a 10-class folder were the first 10 files, labels 0 and 1 only
    root = tmp_path / "ten"
    for c in range(10):
        _solid(root / "train" / str(c) / "0.png", (20 * c, 0, 0))
        for i in range(5):
            _solid(root / "test" / str(c) / f"{i}.png", (20 * c, 0, 0))
    data = load_node_data(NodeDataSpec("imagefolder", str(root)), RUN, TEN, img_size=8, max_test=10)
    labels = [int(data.test[i][1]) for i in range(len(data.test))]
    assert sorted(labels) == list(range(10))  # one of each class; the first 10 files hold labels 0 and 1
    again = load_node_data(NodeDataSpec("imagefolder", str(root)), RUN, TEN, img_size=8, max_test=10)
    assert list(again.test.indices) == list(data.test.indices)  # one seed, one sample
    other = load_node_data(NodeDataSpec("imagefolder", str(root)), DataSpec(dataset="digits", seed=1), TEN, img_size=8, max_test=10)
    assert list(other.test.indices) != list(data.test.indices)  # another seed, another sample


def test_stratified_indices_hand_worked_example():
    from fedra_core.data.partition import stratified_indices

    targets = np.array([0] * 6 + [1] * 3 + [2] * 1)  # shares of 5: 3, 1.5, 0.5 -> 3, 2 (larger remainder, lower label), 0
    picked = stratified_indices(targets, 5, seed=0)
    assert len(picked) == 5 and picked == sorted(picked)
    assert np.bincount(targets[picked], minlength=3).tolist() == [3, 2, 0]


def test_a_rewrite_that_keeps_size_and_mtime_is_not_served_stale(tmp_path):
    # cp -p keeps size and mtime: the cache is keyed by content, so the new pixels are read
    import os

    from PIL import Image

    root = tmp_path / "bmp"
    for split in ("train", "test"):
        for label, colour in (("cat", (200, 10, 10)), ("dog", (10, 10, 200))):
            (root / split / label).mkdir(parents=True)
            Image.new("RGB", (8, 8), colour).save(root / split / label / "0.bmp")  # BMP: same size for any colour
    before = _load(root)
    path = root / "test" / "cat" / "0.bmp"
    st = path.stat()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    after = _load(root)
    assert not torch.equal(after.test[0][0], before.test[0][0])
    assert after.test[0][0][1].mean() > after.test[0][0][0].mean()  # green now


def test_a_corrupt_cache_file_is_rebuilt_with_a_line_saying_so(tmp_path, caplog):
    from fedra_core.backbones import cache_dir

    root = _folder(tmp_path / "pets")
    first = _load(root).test[0][0].clone()  # a copy: the cache file is memory-mapped
    for cached in (cache_dir() / "node-data").glob("*.safetensors"):  # keyed by content: maybe another test's too
        cached.write_bytes(b"\x00" * 64)
    with caplog.at_level("WARNING", logger="fedra"):
        again = _load(root)
    assert "is unreadable" in caplog.text and "rebuilding it" in caplog.text
    assert torch.equal(again.test[0][0], first)
