"""SVHN: a tiny fixture in the real format (PNGs + MATLAB v7.3 digitStruct.mat) read back, and bad files."""
from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import SVHN_TEST, SVHN_TRAIN, write_svhn_dir

from mist_core.config import ConfigError
from mist_core.data import DataError, dataset_config, load_splits
from mist_core.data.svhn import read_digit_struct


@pytest.fixture
def svhn(tmp_path):
    return write_svhn_dir(tmp_path / "train", SVHN_TRAIN), write_svhn_dir(tmp_path / "test", SVHN_TEST, seed=1)


def _cfg(train, test, **over):
    return dataset_config("svhn", {"train_dir": str(train), "test_dir": str(test), **over})


def test_digit_struct_reads_values_and_references(svhn):
    entries = read_digit_struct(svhn[0] / "digitStruct.mat")
    assert [n for n, _ in entries] == ["1.png", "2.png", "3.png", "4.png"]
    for (_, rows), (_, _, want) in zip(entries, SVHN_TRAIN):
        want = np.array(want, np.float64)
        want[:, 0] = np.where(want[:, 0] == 10, 0, want[:, 0])
        np.testing.assert_array_equal(rows, want)
    assert entries[0][1][1, 0] == 0  # label 10 -> digit 0


def test_round_trip_two_digit_images_resized_with_boxes(svhn, tmp_path):
    s = load_splits(_cfg(*svhn), cache_dir=tmp_path / "cache")
    tr, te = s.train, s.test
    assert tr.images.shape == (2, 3, 60, 240) and tr.images.dtype == np.uint8
    assert tr.labels.tolist() == [[1, 0], [5, 6]] and (tr.counts == 2).all()
    # 1.png is 50 x 100: x scales by 2.4, y by 1.2
    np.testing.assert_allclose(tr.boxes[0, 0], [10 * 2.4, 5 * 1.2, 25 * 2.4, 40 * 1.2], rtol=1e-6)
    np.testing.assert_array_equal(tr.extras["orig_size"], [[50, 100], [80, 160]])
    # the drawn rectangle fills the rescaled box: the box centre is bright red, far outside it is dark
    x0, y0, x1, y1 = tr.boxes[1, 0]
    assert tr.images[1, 0, int((y0 + y1) / 2), int((x0 + x1) / 2)] > 150 and tr.images[1, 0, 30, 235] < 80
    # test split: the image with a 20 px-high digit is dropped (paper: exclude boxes < 30 px high)
    assert te.labels.tolist() == [[8, 9]]
    keep_all = load_splits(_cfg(*svhn, test_min_box_height=None), cache_dir=tmp_path / "cache")
    assert keep_all.test.labels.tolist() == [[8, 9], [0, 1]]


def test_n_train_takes_a_seeded_subset(svhn):
    a = load_splits(_cfg(*svhn, n_train=1, seed=5), use_cache=False)
    b = load_splits(_cfg(*svhn, n_train=1, seed=5), use_cache=False)
    assert len(a.train) == 1 and a.train.images.tobytes() == b.train.images.tobytes()


def test_missing_dirs_and_files_are_named(svhn, tmp_path):
    with pytest.raises(ConfigError, match="test_dir"):
        dataset_config("svhn", {"train_dir": str(svhn[0])})
    with pytest.raises(DataError, match="train_dir"):
        load_splits(_cfg(tmp_path / "absent", svhn[1]), cache_dir=tmp_path / "cache")
    (svhn[1] / "digitStruct.mat").unlink()
    with pytest.raises(DataError, match="digitStruct.mat"):
        load_splits(_cfg(*svhn), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_corrupt_files_are_named(svhn, tmp_path):
    mat = svhn[0] / "digitStruct.mat"
    good = mat.read_bytes()
    mat.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError, match="digitStruct.mat"):
        load_splits(_cfg(*svhn), use_cache=False)
    mat.write_bytes(b"MATLAB 5.0 MAT-file, not HDF5" + bytes(200))  # wrong format
    with pytest.raises(DataError, match="HDF5"):
        load_splits(_cfg(*svhn), use_cache=False)
    mat.write_bytes(good)
    (svhn[0] / "4.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="4.png"):
        load_splits(_cfg(*svhn), cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*"))
